//! The cluster under faults, Jepsen-style. Producers and Work-stream
//! workers run against every node of a three-node cluster while a nemesis
//! kills the home (the node leading every partition) with SIGKILL and
//! restarts it, round after round. Every operation and its outcome goes
//! into a history, and a checker judges it:
//! - every acknowledged enqueue is acked by a worker, or still stored, or
//!   had an ack sent whose answer was lost (indeterminate);
//! - no job is acked successfully twice, and none is delivered again after
//!   a confirmed ack;
//! - no two leases of one job overlap, unless the first expired or its
//!   Work stream had ended;
//!
//! and at the end, every partition's three stores are identical.
//!
//! Also here: two of three nodes down (writes refused at once, nothing
//! acknowledged lost, service back with the majority) and a rolling
//! SIGTERM restart of every node (no job lost, leases held across it).
//!
//! Rounds: `FAIRWAY_NEMESIS_ROUNDS` (3 by default, as CI runs it; 20 or
//! 100 on demand). Each round also measures the failover: from the kill to
//! the first acknowledged enqueue and the first delivery.

#[path = "common/cluster.rs"]
mod cluster;
mod common;
#[path = "common/process.rs"]
mod process;
#[path = "common/proxy.rs"]
mod proxy;

use cluster::*;
use common::*;
use fairway::pb;
use fairway::pb::job_service_client::JobServiceClient;
use fairway::pb::work_request::Request as Req;
use fairway::pb::work_response::Response as Resp;
use fairway::pb::worker_service_client::WorkerServiceClient;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

/// One recorded operation or outcome.
#[derive(Debug, Clone)]
enum Event {
    /// An enqueue answered with this id.
    Enqueued { job: String, sent: SystemTime, at: SystemTime },
    /// A delivery on stream `stream`, its lease ending at `expires`.
    Delivered { job: String, lease: String, stream: u64, at: SystemTime, expires: SystemTime },
    /// An ack sent; its answer may never come.
    AckSent { job: String },
    /// The broker confirmed the ack of `lease`.
    AckOk { job: String, lease: String },
    /// A stream ended (its node died, or the home it was forwarded to).
    StreamEnded { stream: u64, at: SystemTime },
}

#[derive(Clone, Default)]
struct History(Arc<Mutex<Vec<Event>>>);

impl History {
    fn add(&self, e: Event) {
        self.0.lock().expect("history").push(e);
    }

    fn events(&self) -> Vec<Event> {
        self.0.lock().expect("history").clone()
    }
}

/// The checker (see the module doc): every violation, in words. `stored`
/// holds the enqueued jobs still stored at the end.
fn check(events: &[Event], stored: &HashSet<String>) -> Vec<String> {
    let mut bad = Vec::new();
    let mut acked: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut sent: HashSet<&str> = HashSet::new();
    let mut ended: HashMap<u64, SystemTime> = HashMap::new();
    let mut deliveries: HashMap<&str, Vec<(&str, u64, SystemTime, SystemTime)>> = HashMap::new();
    for e in events {
        match e {
            Event::AckOk { job, lease } => acked.entry(job).or_default().push(lease),
            Event::AckSent { job, .. } => {
                sent.insert(job);
            }
            Event::StreamEnded { stream, at } => {
                ended.entry(*stream).or_insert(*at);
            }
            Event::Delivered { job, lease, stream, at, expires, .. } => {
                deliveries.entry(job).or_default().push((lease, *stream, *at, *expires))
            }
            Event::Enqueued { .. } => {}
        }
    }
    for e in events {
        if let Event::Enqueued { job, .. } = e {
            if !acked.contains_key(job.as_str()) && !stored.contains(job) && !sent.contains(job.as_str()) {
                bad.push(format!("acknowledged enqueue {job} is lost: never acked, not stored"));
            }
        }
    }
    for (job, leases) in &acked {
        if leases.len() > 1 {
            bad.push(format!("job {job} acked successfully {} times (leases {leases:?})", leases.len()));
        }
    }
    for (job, ds) in deliveries.iter_mut() {
        ds.sort_by_key(|d| d.2);
        for pair in ds.windows(2) {
            let ((l1, s1, _, exp1), (l2, _, at2, _)) = (pair[0], pair[1]);
            if acked.get(job).is_some_and(|ls| ls.contains(&l1)) {
                bad.push(format!("job {job} delivered again (lease {l2}) after the ack of lease {l1} was confirmed"));
            }
            // A stream that ended gave its leases back; allow for the
            // broker seeing the end a little before the worker did.
            let released = ended.get(&s1).is_some_and(|&e| e <= at2 + Duration::from_secs(1));
            if at2 < exp1 && !released {
                bad.push(format!(
                    "job {job}: lease {l2} granted at {at2:?} while lease {l1} held until {exp1:?} on a live stream"
                ));
            }
        }
    }
    bad
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn time_of(t: Option<&prost_types::Timestamp>) -> SystemTime {
    let t = t.expect("a timestamp");
    SystemTime::UNIX_EPOCH + Duration::new(t.seconds as u64, t.nanos as u32)
}

/// Enqueues until `stop`, each call through a random node.
async fn producer(id: usize, nodes: Vec<Channel>, history: History, stop: tokio::sync::watch::Receiver<bool>) {
    let mut i = 0u64;
    while !*stop.borrow() {
        i += 1;
        let via = (rand::random::<u32>() as usize) % nodes.len();
        let mut jobs = JobServiceClient::new(nodes[via].clone());
        let req = job("emails", &format!("tenant-{}", i % 6), "", &format!("p{id}-{i}"));
        let sent = SystemTime::now();
        match tokio::time::timeout(Duration::from_secs(5), jobs.enqueue(req)).await {
            Ok(Ok(r)) => history.add(Event::Enqueued { job: r.into_inner().job_id, sent, at: SystemTime::now() }),
            // Indeterminate (refused, or the answer lost with a node):
            // nothing to check, try again elsewhere.
            Ok(Err(s))
                if matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled) =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(_) => {}
            Ok(Err(s)) => panic!("producer {id}: unexpected refusal {s:?}"),
        }
    }
}

/// Works `emails` on Work streams, each through a random node, acking
/// every job; reopens a stream that ends. Stops at `stop`.
async fn worker(id: u64, nodes: Vec<Channel>, history: History, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut stream_no = id * 1_000_000;
    while !*stop.borrow() {
        stream_no += 1;
        let via = (rand::random::<u32>() as usize) % nodes.len();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let subscribe = pb::Subscribe {
            queues: vec!["emails".into()],
            worker_id: format!("w{id}"),
            worker_version: "1".into(),
            max_in_flight: 4,
            lease_duration: Some(dur(Duration::from_secs(3))),
        };
        let _ = tx.send(pb::WorkRequest { request: Some(Req::Subscribe(subscribe)) }).await;
        let mut client = WorkerServiceClient::new(nodes[via].clone());
        let opened = client.work(tokio_stream::wrappers::ReceiverStream::new(rx)).await;
        let Ok(stream) = opened else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let mut stream = stream.into_inner();
        let mut leases: HashMap<String, String> = HashMap::new();
        loop {
            let msg = tokio::select! {
                m = stream.next() => m,
                _ = stop.wait_for(|s| *s) => return,
            };
            match msg {
                Some(Ok(pb::WorkResponse { response: Some(Resp::Delivery(d)) })) => {
                    let job = d.job.as_ref().expect("job").id.clone();
                    history.add(Event::Delivered {
                        job: job.clone(),
                        lease: d.lease_id.clone(),
                        stream: stream_no,
                        at: SystemTime::now(),
                        expires: time_of(d.lease_expires_at.as_ref()),
                    });
                    history.add(Event::AckSent { job: job.clone() });
                    leases.insert(job.clone(), d.lease_id.clone());
                    let ack = pb::AckRequest { queue: "emails".into(), job_id: job, lease_id: d.lease_id };
                    let _ = tx.send(pb::WorkRequest { request: Some(Req::Ack(ack)) }).await;
                }
                Some(Ok(pb::WorkResponse { response: Some(Resp::Outcome(o)) })) => {
                    if o.kind == "ack" && o.ok {
                        let lease = leases.remove(&o.job_id).expect("an ack answered was sent");
                        history.add(Event::AckOk { job: o.job_id, lease });
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    history.add(Event::StreamEnded { stream: stream_no, at: SystemTime::now() });
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn count(history: &History, f: impl Fn(&Event) -> bool) -> usize {
    history.events().iter().filter(|e| f(e)).count()
}

/// How long after `since` an event `f` matches first happened; fails the
/// test, with every live node's view, if none within `within`.
async fn first_after(
    c: &Cluster,
    history: &History,
    since: SystemTime,
    within: Duration,
    f: impl Fn(&Event) -> Option<SystemTime>,
) -> Duration {
    let deadline = Instant::now() + within;
    loop {
        if let Some(t) = history.events().iter().filter_map(&f).filter(|t| *t > since).min() {
            return t.duration_since(since).unwrap_or_default();
        }
        if Instant::now() >= deadline {
            let mut views = Vec::new();
            for i in c.live() {
                views.push(c.status(i).await);
            }
            panic!("nothing within {within:?} of the kill; the live nodes' views: {views:#?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

/// Producers and Work-stream workers on `emails` through every node, and
/// the history they record; [`Load::finish`] judges it.
struct Load {
    history: History,
    stop_producers: tokio::sync::watch::Sender<bool>,
    stop_workers: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Two producers and two workers, each call or stream through a random
    /// node of `c`.
    fn start(c: &Cluster) -> Load {
        let nodes: Vec<Channel> = (0..c.nodes.len()).map(|i| c.channel(i)).collect();
        let history = History::default();
        let (stop_producers, producers_stop) = tokio::sync::watch::channel(false);
        let (stop_workers, workers_stop) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        for id in 0..2 {
            tasks.push(tokio::spawn(producer(id, nodes.clone(), history.clone(), producers_stop.clone())));
            tasks.push(tokio::spawn(worker(id as u64, nodes.clone(), history.clone(), workers_stop.clone())));
        }
        Load { history, stop_producers, stop_workers, tasks }
    }

    /// Waits until `n` more events `f` matches are recorded: progress.
    async fn grows(&self, n: usize, what: &str, f: fn(&Event) -> bool) {
        let before = count(&self.history, f);
        let since = Instant::now();
        while count(&self.history, f) < before + n {
            assert!(since.elapsed() < Duration::from_secs(30), "no {n} more {what} within 30 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for `n` more confirmed acks.
    async fn acks_grow(&self, n: usize) {
        self.grows(n, "confirmed acks", |e| matches!(e, Event::AckOk { .. })).await
    }

    /// Waits for `n` more acknowledged enqueues.
    async fn enqueues_grow(&self, n: usize) {
        self.grows(n, "acknowledged enqueues", |e| matches!(e, Event::Enqueued { .. })).await
    }

    /// Stops producing, lets the workers finish every acknowledged job
    /// (leases orphaned by a fault expire, a grace after their stored
    /// expiry), stops them, runs the checker over the history, then stops
    /// every node and compares each partition's stores: identical. Returns
    /// the history.
    async fn finish(self, c: &mut Cluster) -> Vec<Event> {
        let Load { history, stop_producers, stop_workers, tasks } = self;
        stop_producers.send(true).expect("stop producers");
        let enqueued: HashSet<String> = history
            .events()
            .iter()
            .filter_map(|e| if let Event::Enqueued { job, .. } = e { Some(job.clone()) } else { None })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let acked: HashSet<String> = history
                .events()
                .iter()
                .filter_map(|e| if let Event::AckOk { job, .. } = e { Some(job.clone()) } else { None })
                .collect();
            // A job not confirmed acked is settled when it is gone (acked
            // with the answer lost, or lost: the checker tells which).
            let mut missing = Vec::new();
            let mut jobs = JobServiceClient::new(c.channel(c.live()[0]));
            for id in enqueued.difference(&acked) {
                let req = pb::GetJobRequest { queue: "emails".into(), job_id: id.clone() };
                if !matches!(jobs.get_job(req).await, Err(s) if s.code() == tonic::Code::NotFound) {
                    missing.push(id);
                }
            }
            if missing.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                let mut jobs = JobServiceClient::new(c.channel(c.live()[0]));
                let mut states = Vec::new();
                for id in missing.iter().take(10) {
                    let req = pb::GetJobRequest { queue: "emails".into(), job_id: (*id).clone() };
                    states.push((id, jobs.get_job(req).await.map(|j| j.into_inner())));
                }
                let mut views = Vec::new();
                for i in c.live() {
                    views.push(c.status(i).await);
                }
                panic!("{} acknowledged jobs never acked within 60 s: {states:#?}\nviews: {views:#?}", missing.len());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop_workers.send(true).expect("stop workers");
        for t in tasks {
            t.await.expect("task");
        }

        // What is still stored, asked of any node.
        let mut stored = HashSet::new();
        let jobs = JobServiceClient::new(c.channel(c.live()[0]));
        for job in &enqueued {
            let got = retried(Duration::from_secs(10), "get job", || {
                let mut jobs = jobs.clone();
                let req = pb::GetJobRequest { queue: "emails".into(), job_id: job.clone() };
                async move {
                    match jobs.get_job(req).await {
                        Ok(_) => Ok(true),
                        Err(s) if s.code() == tonic::Code::NotFound => Ok(false),
                        Err(s) => Err(s),
                    }
                }
            })
            .await;
            if got.0 {
                stored.insert(job.clone());
            }
        }
        let events = history.events();
        let violations = check(&events, &stored);
        assert!(violations.is_empty(), "{} violations:\n{}", violations.len(), violations.join("\n"));
        let delivered = count(&history, |e| matches!(e, Event::Delivered { .. }));
        eprintln!(
            "{} enqueues acknowledged, {delivered} deliveries, all acked once; checker: no violation",
            enqueued.len()
        );
        replicas_identical(c).await;
        events
    }
}

/// The log index a stopped replica's store has applied, read from its dump.
fn applied_index(dump: &[fairway::storage::DumpEntry]) -> u64 {
    let (_, _, v) = dump.iter().find(|(cf, k, _)| cf == "meta" && k == b"raft/applied").expect("an applied index");
    let v: serde_json::Value = serde_json::from_slice(v).expect("json");
    v["index"].as_u64().expect("index")
}

/// Every node applies the leader's last entry, then all stop (the home
/// last) and each partition's stores are compared entry by entry.
///
/// Even a quiet cluster writes now and then (an alert firing on time), so
/// a replica stopped first may miss the last entry: the stores are
/// compared at the same applied index; when the indexes differ, the nodes
/// start again and stop again (three tries).
async fn replicas_identical(c: &mut Cluster) {
    for attempt in 0.. {
        c.caught_up(Duration::from_secs(30)).await;
        let home = c.home(Duration::from_secs(10)).await;
        c.stop_all(home).await;
        let n = c.nodes.len();
        let dumps: Vec<Vec<Vec<fairway::storage::DumpEntry>>> =
            (0..c.partitions).map(|p| (0..n).map(|i| c.dump(i, p)).collect()).collect();
        let indexes: Vec<Vec<u64>> = dumps.iter().map(|d| d.iter().map(|x| applied_index(x)).collect()).collect();
        if indexes.iter().any(|i| i.iter().any(|x| *x != i[0])) {
            assert!(attempt < 2, "replicas never stopped at the same applied index: {indexes:?}");
            eprintln!("replicas stopped at different indexes {indexes:?}: starting them again");
            for i in 0..n {
                c.restart(i).await;
            }
            continue;
        }
        for (p, replicas) in dumps.iter().enumerate() {
            let want = &replicas[0];
            assert!(!want.is_empty(), "partition {p} holds something");
            for (i, got) in replicas.iter().enumerate().skip(1) {
                if got != want {
                    let only = |a: &[fairway::storage::DumpEntry], b: &[fairway::storage::DumpEntry]| {
                        a.iter()
                            .filter(|e| !b.contains(e))
                            .take(5)
                            .map(|(cf, k, v)| format!("{cf} {} = {}", hex(k), hex(v)))
                            .collect::<Vec<_>>()
                    };
                    panic!(
                        "partition {p}: node n{} differs from n1 at the same applied index {}\nonly on n1: {:#?}\nonly \
                         on n{}: {:#?}",
                        i + 1,
                        indexes[p][0],
                        only(want, got),
                        i + 1,
                        only(got, want)
                    );
                }
            }
        }
        return;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_home_round_after_round_loses_nothing_and_double_leases_nothing() {
    let rounds: usize = std::env::var("FAIRWAY_NEMESIS_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(3);
    let mut c = Cluster::start(3, 2).await;
    create_queue(&c, 0, "emails", None).await;
    let load = Load::start(&c);
    let history = load.history.clone();
    let (mut to_enqueue, mut to_deliver) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        load.acks_grow(20).await;
        let home = c.home(Duration::from_secs(30)).await;
        let killed = SystemTime::now();
        c.kill9(home);
        // The first enqueue sent after the kill (one answered just after
        // it may have been committed just before).
        let enq = first_after(&c, &history, killed, Duration::from_secs(30), |e| match e {
            Event::Enqueued { sent, at, .. } if *sent > killed => Some(*at),
            _ => None,
        })
        .await;
        let del = first_after(&c, &history, killed, Duration::from_secs(30), |e| match e {
            Event::Delivered { at, .. } => Some(*at),
            _ => None,
        })
        .await;
        eprintln!("round {round}: killed n{}; first enqueue after {enq:?}, first delivery after {del:?}", home + 1);
        to_enqueue.push(enq);
        to_deliver.push(del);
        c.restart(home).await;
        // Each round kills the home of a whole cluster: the node restarted
        // has caught up first (docs/cluster.md says what a second kill
        // sooner costs).
        c.node_caught_up(home, Duration::from_secs(30)).await;
    }
    load.finish(&mut c).await;
    to_enqueue.sort();
    to_deliver.sort();
    eprintln!(
        "failover over {rounds} rounds: first enqueue p50 {:?} max {:?}; first delivery p50 {:?} max {:?}",
        percentile(&to_enqueue, 0.5),
        to_enqueue[rounds - 1],
        percentile(&to_deliver, 0.5),
        to_deliver[rounds - 1]
    );
    assert!(to_enqueue[rounds - 1] < Duration::from_secs(10), "failover took {:?}", to_enqueue[rounds - 1]);
}

/// Enqueues to `probe` through node `via` only, each with a dedup key
/// `cut-{round}-{k}` and a 1 s deadline, until one is refused at once
/// (the node knows it is cut off) and at least `at_least` were sent.
/// Returns the keys sent and the refusals.
async fn probe_cut_off(via: Channel, round: usize, at_least: usize) -> (Vec<String>, Vec<tonic::Status>) {
    let mut jobs = JobServiceClient::new(via);
    let (mut keys, mut refusals) = (Vec::new(), Vec::new());
    let since = Instant::now();
    for k in 0.. {
        let key = format!("cut-{round}-{k}");
        let mut req = tonic::Request::new(pb::EnqueueRequest { dedup_key: key.clone(), ..job("probe", "t", "", &key) });
        req.set_timeout(Duration::from_secs(1));
        keys.push(key);
        match jobs.enqueue(req).await {
            Ok(r) => panic!("a node cut off from its followers acknowledged an enqueue: {r:?}"),
            Err(s) => refusals.push(s),
        }
        let knows = refusals.last().is_some_and(|s| s.message().contains("no majority of its replicas"));
        if knows && keys.len() >= at_least {
            break;
        }
        assert!(since.elapsed() < Duration::from_secs(20), "never refused at once: {refusals:?}");
    }
    (keys, refusals)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_home_cut_off_from_its_followers_commits_nothing_and_what_it_could_not_commit_never_surfaces() {
    let mut c = Cluster::start_proxied(3, 2).await;
    create_queue(&c, 0, "emails", None).await;
    create_queue(&c, 0, "probe", None).await;
    let load = Load::start(&c);
    let mut sent_while_cut = Vec::new();
    for round in 0..2 {
        load.acks_grow(20).await;
        let home = c.home(Duration::from_secs(30)).await;
        let rest: Vec<usize> = (0..3).filter(|&i| i != home).collect();
        c.isolate(home);
        // Clients still reach the cut-off node: it acknowledges nothing,
        // and soon refuses at once, naming the partition.
        let (keys, refusals) = probe_cut_off(c.channel(home), round, 5).await;
        let last = refusals.last().expect("a refusal");
        assert_eq!(last.code(), tonic::Code::Unavailable, "{last:?}");
        assert!(last.message().contains("partition "), "names the partition: {last:?}");
        sent_while_cut.extend(keys);
        // The other two carry on: a new home among them, producers served.
        let new_home = c.home_among(&rest, Duration::from_secs(30)).await;
        assert_ne!(new_home, home);
        load.enqueues_grow(20).await;
        c.heal_all();
        let agreed = c.home(Duration::from_secs(30)).await;
        eprintln!(
            "round {round}: cut n{} off; n{} took over; after the heal every node agrees on n{}",
            home + 1,
            new_home + 1,
            agreed + 1
        );
    }
    load.acks_grow(20).await;

    // Nothing the cut-off node wrote without a majority survived the heal:
    // the probe queue is empty everywhere, and its keys are new again.
    let admin = fairway::pb::admin_service_client::AdminServiceClient::new(c.channel(0));
    let (stats, _) = retried(Duration::from_secs(30), "probe stats", || {
        let mut admin = admin.clone();
        async move { admin.get_queue_stats(pb::GetQueueStatsRequest { queue: "probe".into() }).await }
    })
    .await;
    let stats = stats.into_inner();
    assert_eq!((stats.enqueued_total, stats.ready, stats.scheduled), (0, 0, 0), "{stats:?}");
    let jobs = JobServiceClient::new(c.channel(1));
    for key in &sent_while_cut {
        let (r, _) = retried(Duration::from_secs(30), "enqueue again", || {
            let mut jobs = jobs.clone();
            let req = pb::EnqueueRequest { dedup_key: key.clone(), ..job("probe", "t", "", key) };
            async move { jobs.enqueue(req).await }
        })
        .await;
        assert!(!r.into_inner().deduplicated, "{key}: a job the cut-off node could not commit survived");
    }
    load.finish(&mut c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_way_links_keep_the_cluster_serving_and_lose_nothing() {
    let mut c = Cluster::start_proxied(3, 2).await;
    create_queue(&c, 0, "emails", None).await;
    let load = Load::start(&c);
    load.acks_grow(20).await;
    // What the home sends is lost (its followers elect another home, and
    // it follows, hearing them); then what it receives (it stays home,
    // its answers travel back on its own connections).
    for outgoing in [true, false] {
        let home = c.home(Duration::from_secs(30)).await;
        let rest: Vec<usize> = (0..3).filter(|&i| i != home).collect();
        for &other in &rest {
            if outgoing {
                c.cut(home, other)
            } else {
                c.cut(other, home)
            }
        }
        if outgoing {
            // Its followers stop hearing it: they agree on another home.
            assert_ne!(c.home_among(&rest, Duration::from_secs(30)).await, home);
        }
        load.acks_grow(30).await;
        load.enqueues_grow(30).await;
        c.heal_all();
        eprintln!(
            "n{} lost its {} links; the cluster kept serving",
            home + 1,
            if outgoing { "outgoing" } else { "incoming" }
        );
    }
    load.acks_grow(20).await;
    load.finish(&mut c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flapping_links_lose_nothing() {
    let mut c = Cluster::start_proxied(3, 2).await;
    create_queue(&c, 0, "emails", None).await;
    let load = Load::start(&c);
    load.acks_grow(20).await;
    // For 8 s, one random directed link flips every 100-600 ms.
    let links = c.link_ids();
    let since = Instant::now();
    let mut flips = 0;
    while since.elapsed() < Duration::from_secs(8) {
        let (a, b) = links[rand::random::<u32>() as usize % links.len()];
        c.flip(a, b);
        flips += 1;
        tokio::time::sleep(Duration::from_millis(100 + u64::from(rand::random::<u32>() % 500))).await;
    }
    c.heal_all();
    let home = c.home(Duration::from_secs(30)).await;
    let terms: u64 = c.status(home).await.expect("status").partitions.iter().map(|p| p.term).sum();
    eprintln!("{flips} link flips over 8 s; the partitions' terms now add up to {terms}");
    load.acks_grow(20).await;
    load.finish(&mut c).await;
}

#[test]
fn the_checker_finds_a_lost_job_a_double_ack_and_overlapping_leases() {
    let t = |s: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
    let delivered = |lease: &str, stream, at, expires| Event::Delivered {
        job: "j1".into(),
        lease: lease.into(),
        stream,
        at: t(at),
        expires: t(expires),
    };
    let ok = |lease: &str| Event::AckOk { job: "j1".into(), lease: lease.into() };
    let enq = |job: &str| Event::Enqueued { job: job.into(), sent: t(1), at: t(1) };
    // Clean: delivered, acked once; j2 still stored.
    let clean = vec![enq("j1"), enq("j2"), delivered("a", 1, 2, 10), ok("a")];
    assert!(check(&clean, &HashSet::from(["j2".to_string()])).is_empty());
    // j2 gone without an ack: lost.
    assert!(check(&clean, &HashSet::new())[0].contains("j2 is lost"));
    // A second lease while the first is held on a live stream, and both acked.
    let twice = vec![enq("j1"), delivered("a", 1, 2, 10), delivered("b", 2, 5, 15), ok("b"), ok("a")];
    let v = check(&twice, &HashSet::new());
    assert!(v.iter().any(|v| v.contains("acked successfully 2 times")), "{v:?}");
    assert!(v.iter().any(|v| v.contains("while lease a held")), "{v:?}");
    assert!(v.iter().any(|v| v.contains("after the ack of lease a was confirmed")), "{v:?}");
    // The same second lease after the first stream ended: allowed.
    let released = vec![
        enq("j1"),
        delivered("a", 1, 2, 10),
        Event::StreamEnded { stream: 1, at: t(4) },
        delivered("b", 2, 5, 15),
        ok("b"),
    ];
    assert!(check(&released, &HashSet::new()).is_empty());
}

/// `n` acknowledged enqueues to `queue`, each through the next live node.
async fn enqueue_n(c: &Cluster, queue: &str, n: usize, tag: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let jobs = JobServiceClient::new(c.channel(c.live()[i % c.live().len()]));
        let (r, _) = retried(Duration::from_secs(30), "enqueue", || {
            let mut jobs = jobs.clone();
            async move { jobs.enqueue(job(queue, &format!("tenant-{}", i % 6), "", &format!("{tag}-{i}"))).await }
        })
        .await;
        ids.push(r.into_inner().job_id);
    }
    ids
}

/// Every job of `ids` is stored in `queue`, asked through node `via`.
async fn all_stored(c: &Cluster, via: usize, queue: &str, ids: &[String]) {
    let jobs = JobServiceClient::new(c.channel(via));
    for id in ids {
        let (got, _) = retried(Duration::from_secs(30), "get job", || {
            let mut jobs = jobs.clone();
            let req = pb::GetJobRequest { queue: queue.into(), job_id: id.clone() };
            async move { jobs.get_job(req).await }
        })
        .await;
        assert_eq!(got.into_inner().id, *id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_of_three_nodes_down_writes_are_refused_at_once_and_nothing_acknowledged_is_lost() {
    let mut c = Cluster::start(3, 2).await;
    create_queue(&c, 0, "emails", None).await;
    let load = Load::start(&c);
    load.acks_grow(20).await;
    let home = c.home(Duration::from_secs(30)).await;
    let others: Vec<usize> = (0..3).filter(|&i| i != home).collect();
    for &i in &others {
        c.kill9(i);
    }

    // The home, cut off from its majority, refuses at once (within two
    // election timeouts of the loss), naming what is missing; a write
    // already waiting ends with the caller's deadline.
    let jobs = JobServiceClient::new(c.channel(home));
    let refused = eventually(Duration::from_secs(15), || {
        let mut jobs = jobs.clone();
        async move {
            let mut req = tonic::Request::new(job("emails", "tenant-0", "", "while cut off"));
            req.set_timeout(Duration::from_secs(2));
            let started = Instant::now();
            match jobs.enqueue(req).await {
                Err(s) if s.code() == tonic::Code::Unavailable && started.elapsed() < Duration::from_millis(500) => {
                    Some(s)
                }
                Ok(r) => panic!("a write without a majority was acknowledged: {r:?}"),
                Err(_) => None,
            }
        }
    })
    .await;
    assert!(refused.message().contains("no majority of its replicas has answered"), "{refused:?}");
    assert!(refused.message().contains("partition "), "names the partition: {refused:?}");

    // The majority back: service returns (producers and workers carry on);
    // the checker finds every acknowledged job.
    for &i in &others {
        c.restart(i).await;
    }
    load.enqueues_grow(20).await;
    load.acks_grow(20).await;
    load.finish(&mut c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_sigterm_restart_of_every_node_keeps_every_job_and_the_leases_workers_hold() {
    let mut c = Cluster::start(3, 2).await;
    create_queue(&c, 0, "emails", None).await;
    create_queue(&c, 0, "held", None).await;
    let load = Load::start(&c);
    let ids = enqueue_n(&c, "held", 30, "before").await;
    // A worker holds 10 leases of `held`, taken through node n1, for a minute.
    let workers = WorkerServiceClient::new(c.channel(0));
    let (held, _) = retried(Duration::from_secs(30), "lease", || {
        let mut workers = workers.clone();
        async move {
            let req = pb::LeaseRequest {
                queues: vec!["held".into()],
                max_jobs: 10,
                wait: Some(dur(Duration::from_secs(1))),
                lease_duration: Some(dur(Duration::from_secs(60))),
                worker_id: "holder".into(),
                worker_version: String::new(),
            };
            workers.lease(req).await
        }
    })
    .await;
    let held = held.into_inner().deliveries;
    assert_eq!(held.len(), 10);

    // Each node in turn, under producers and workers on `emails`: SIGTERM,
    // wait for it to exit, start it again, and let it catch up; clients
    // only ever see UNAVAILABLE, retried.
    let mut during = Vec::new();
    for i in 0..3 {
        load.acks_grow(10).await;
        let node = c.nodes[i].take().expect("live node");
        node.signal("-TERM");
        let exit = node.wait_exit(Duration::from_secs(30)).await;
        assert!(exit.success(), "node n{} stopped with {exit:?}", i + 1);
        during.extend(enqueue_n(&c, "held", 5, &format!("while n{} is down", i + 1)).await);
        c.restart(i).await;
        c.node_caught_up(i, Duration::from_secs(30)).await;
    }

    // The leases taken before are still held and ack with their ids.
    let workers = WorkerServiceClient::new(c.channel(2));
    for d in &held {
        let job = d.job.as_ref().expect("job");
        let ack = pb::AckRequest { queue: "held".into(), job_id: job.id.clone(), lease_id: d.lease_id.clone() };
        retried(Duration::from_secs(30), "ack", || {
            let (mut workers, ack) = (workers.clone(), ack.clone());
            async move { workers.ack(ack).await }
        })
        .await;
    }
    let acked: HashSet<&String> = held.iter().map(|d| &d.job.as_ref().expect("job").id).collect();
    let rest: Vec<String> = ids.iter().chain(&during).filter(|id| !acked.contains(id)).cloned().collect();
    all_stored(&c, 1, "held", &rest).await;
    load.acks_grow(10).await;
    load.finish(&mut c).await;
}

/// Makes node `t` the home of a proxied cluster, whatever the logs hold:
/// the home is cut off, and the other two elect one of them; if that is
/// not `t`, it is cut off in turn and `t` alone may ask the old home (whose
/// log is now older than `t`'s) for its vote. Then every link heals.
async fn make_home(c: &Cluster, t: usize) {
    let home = c.home(Duration::from_secs(30)).await;
    if home == t {
        return;
    }
    let third = (0..3).find(|&i| i != t && i != home).expect("three nodes");
    c.isolate(home);
    if c.home_among(&[t, third], Duration::from_secs(30)).await != t {
        c.isolate(third);
        c.heal(t, home);
        assert_eq!(c.home_among(&[t, home], Duration::from_secs(30)).await, t);
    }
    c.heal_all();
    assert_eq!(c.home(Duration::from_secs(30)).await, t);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_clocks_two_seconds_off_each_way_no_lease_ends_early_across_a_failover() {
    // n1's wall clock runs 2 s behind, n2's and n3's 2 s ahead (libfaketime;
    // the file allows clocks 4 s apart). A lease n1 grants is stored with an
    // expiry that the node taking over reads as 4 s nearer than it is: only
    // the grace a new leader adds (election timeout + allowed skew) keeps
    // the lease whole.
    let mut c = Cluster::start_spec(Spec {
        nodes: 3,
        partitions: 2,
        proxied: true,
        clock_offsets: vec!["-2s", "+2s", "+2s"],
        settings: "max_clock_skew_ms = 4000\n",
    })
    .await;
    create_queue(&c, 0, "emails", None).await;
    make_home(&c, 0).await;
    let ids: HashSet<String> = enqueue_n(&c, "emails", 10, "skewed").await.into_iter().collect();

    // A worker leases all 10 for 4 s through n1, the home; then n1 dies.
    const LEASE: Duration = Duration::from_secs(4);
    let asked = Instant::now();
    let mut workers = WorkerServiceClient::new(c.channel(0));
    let lease = |queue: &str, lease: Duration| pb::LeaseRequest {
        queues: vec![queue.into()],
        max_jobs: 10,
        wait: Some(dur(Duration::from_millis(500))),
        lease_duration: Some(dur(lease)),
        worker_id: "first".into(),
        worker_version: String::new(),
    };
    let first = workers.lease(lease("emails", LEASE)).await.expect("lease").into_inner().deliveries;
    assert_eq!(first.len(), 10, "the first worker holds every job");
    c.kill9(0);

    // A second worker asks the survivors until every job comes back: none
    // before the first worker's 4 s are over, by the true clock.
    let mut back: HashMap<String, Duration> = HashMap::new();
    let mut k = 0;
    while back.len() < ids.len() {
        assert!(asked.elapsed() < Duration::from_secs(30), "only {} of 10 jobs came back within 30 s", back.len());
        k += 1;
        let mut workers = WorkerServiceClient::new(c.channel(1 + k % 2));
        let Ok(r) = workers.lease(lease("emails", Duration::from_secs(60))).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        for d in r.into_inner().deliveries {
            let id = d.job.expect("job").id;
            assert!(ids.contains(&id), "an unknown job {id}");
            back.insert(id, asked.elapsed());
        }
    }
    let earliest = back.values().min().copied().expect("ten jobs");
    eprintln!("leased for {LEASE:?} by a node 2 s behind; handed out again after {earliest:?} by nodes 2 s ahead");
    assert!(
        earliest >= LEASE,
        "a lease ended early: the job went to a second worker {earliest:?} after the first asked"
    );
}

/// Enqueues `key` to `dedup` through `via` until an answer comes (every
/// refusal retried, as a client with a dedup key may safely do); returns
/// the job id.
async fn enqueue_key(via: Channel, key: String) -> String {
    let mut jobs = JobServiceClient::new(via);
    let since = Instant::now();
    loop {
        let mut req = tonic::Request::new(pb::EnqueueRequest { dedup_key: key.clone(), ..job("dedup", "t", "", &key) });
        req.set_timeout(Duration::from_secs(1));
        match jobs.enqueue(req).await {
            Ok(r) => return r.into_inner().job_id,
            Err(s) => {
                assert!(since.elapsed() < Duration::from_secs(60), "{key}: no answer within 60 s: {s:?}");
                assert!(
                    matches!(
                        s.code(),
                        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
                    ),
                    "{key}: {s:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_dedup_key_sent_to_every_node_during_a_leader_change_makes_exactly_one_job() {
    let c = Cluster::start_proxied(3, 2).await;
    create_queue(&c, 0, "dedup", None).await;
    let rounds = 3;
    for round in 0..rounds {
        // The home is cut off as the same key goes to every node; the home's
        // own client gets its answer only after the heal.
        let home = c.home(Duration::from_secs(30)).await;
        c.isolate(home);
        let key = format!("key-{round}");
        let calls: Vec<_> = (0..3).map(|i| tokio::spawn(enqueue_key(c.channel(i), key.clone()))).collect();
        let rest: Vec<usize> = (0..3).filter(|&i| i != home).collect();
        c.home_among(&rest, Duration::from_secs(30)).await;
        c.heal_all();
        let mut ids = HashSet::new();
        for call in calls {
            ids.insert(call.await.expect("call"));
        }
        assert_eq!(ids.len(), 1, "{key}: one job, every node answering with its id: {ids:?}");
    }
    let admin = fairway::pb::admin_service_client::AdminServiceClient::new(c.channel(0));
    let (stats, _) = retried(Duration::from_secs(30), "stats", || {
        let mut admin = admin.clone();
        async move { admin.get_queue_stats(pb::GetQueueStatsRequest { queue: "dedup".into() }).await }
    })
    .await;
    let stats = stats.into_inner();
    assert_eq!((stats.enqueued_total, stats.ready), (rounds, rounds), "one job per key: {stats:?}");
}
