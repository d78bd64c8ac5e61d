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
    Enqueued { job: String, at: SystemTime },
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
            Event::Delivered { job, lease, stream, at, expires } => {
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
        match tokio::time::timeout(Duration::from_secs(5), jobs.enqueue(req)).await {
            Ok(Ok(r)) => history.add(Event::Enqueued { job: r.into_inner().job_id, at: SystemTime::now() }),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_home_round_after_round_loses_nothing_and_double_leases_nothing() {
    let rounds: usize = std::env::var("FAIRWAY_NEMESIS_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(3);
    let mut c = Cluster::start(3, 2).await;
    create_queue(&c, 0, "emails", None).await;
    let nodes: Vec<Channel> = (0..3).map(|i| c.channel(i)).collect();
    let history = History::default();
    let (stop_producers, producers_stop) = tokio::sync::watch::channel(false);
    let (stop_workers, workers_stop) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for id in 0..2 {
        tasks.push(tokio::spawn(producer(id, nodes.clone(), history.clone(), producers_stop.clone())));
        tasks.push(tokio::spawn(worker(id as u64, nodes.clone(), history.clone(), workers_stop.clone())));
    }

    let (mut to_enqueue, mut to_deliver) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        // Progress first: 20 more confirmed acks.
        let before = count(&history, |e| matches!(e, Event::AckOk { .. }));
        eventually(Duration::from_secs(30), || {
            let history = history.clone();
            async move { (count(&history, |e| matches!(e, Event::AckOk { .. })) >= before + 20).then_some(()) }
        })
        .await;
        let home = c.home(Duration::from_secs(30)).await;
        let killed = SystemTime::now();
        c.kill9(home);
        let enq = first_after(&c, &history, killed, Duration::from_secs(30), |e| match e {
            Event::Enqueued { at, .. } => Some(*at),
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
    }

    // Quiet down: no more enqueues; workers finish what is stored (leases
    // orphaned by a kill expire, a grace after their stored expiry).
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
    let jobs = JobServiceClient::new(c.channel(0));
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

    // Replicas identical: every node applied the leader's last entry, then
    // all stop (the home last) and each partition's stores are compared.
    c.caught_up(Duration::from_secs(30)).await;
    let home = c.home(Duration::from_secs(10)).await;
    c.stop_all(home).await;
    for p in 0..c.partitions {
        let want = c.dump(0, p);
        assert!(!want.is_empty(), "partition {p} holds something");
        for i in 1..3 {
            let got = c.dump(i, p);
            if got != want {
                let only = |a: &[fairway::storage::DumpEntry], b: &[fairway::storage::DumpEntry]| {
                    a.iter()
                        .filter(|e| !b.contains(e))
                        .take(5)
                        .map(|(cf, k, v)| format!("{cf} {} = {}", hex(k), hex(v)))
                        .collect::<Vec<_>>()
                };
                panic!(
                    "partition {p}: node n{} differs from n1\nonly on n1: {:#?}\nonly on n{}: {:#?}",
                    i + 1,
                    only(&want, &got),
                    i + 1,
                    only(&got, &want)
                );
            }
        }
    }
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
    let enq = |job: &str| Event::Enqueued { job: job.into(), at: t(1) };
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

/// `n` acknowledged enqueues, each through the next node.
async fn enqueue_n(c: &Cluster, n: usize, tag: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let jobs = JobServiceClient::new(c.channel(c.live()[i % c.live().len()]));
        let (r, _) = retried(Duration::from_secs(30), "enqueue", || {
            let mut jobs = jobs.clone();
            async move { jobs.enqueue(job("emails", &format!("tenant-{}", i % 6), "", &format!("{tag}-{i}"))).await }
        })
        .await;
        ids.push(r.into_inner().job_id);
    }
    ids
}

/// Every job of `ids` is stored, asked through node `via`.
async fn all_stored(c: &Cluster, via: usize, ids: &[String]) {
    let jobs = JobServiceClient::new(c.channel(via));
    for id in ids {
        let (got, _) = retried(Duration::from_secs(30), "get job", || {
            let mut jobs = jobs.clone();
            let req = pb::GetJobRequest { queue: "emails".into(), job_id: id.clone() };
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
    let ids = enqueue_n(&c, 20, "before").await;
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

    // The majority back: service returns, with every acknowledged job.
    for &i in &others {
        c.restart(i).await;
    }
    let after = enqueue_n(&c, 5, "after").await;
    all_stored(&c, others[0], &ids).await;
    all_stored(&c, home, &after).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_sigterm_restart_of_every_node_keeps_every_job_and_the_leases_workers_hold() {
    let mut c = Cluster::start(3, 2).await;
    create_queue(&c, 0, "emails", None).await;
    let ids = enqueue_n(&c, 30, "before").await;
    // A worker holds 10 leases, taken through node n1, for a minute.
    let workers = WorkerServiceClient::new(c.channel(0));
    let (held, _) = retried(Duration::from_secs(30), "lease", || {
        let mut workers = workers.clone();
        async move {
            let req = pb::LeaseRequest {
                queues: vec!["emails".into()],
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

    // Each node in turn: SIGTERM, wait for it to exit, start it again, and
    // let it catch up; producers only ever see UNAVAILABLE, retried.
    let mut during = Vec::new();
    for i in 0..3 {
        let node = c.nodes[i].take().expect("live node");
        node.signal("-TERM");
        let exit = node.wait_exit(Duration::from_secs(30)).await;
        assert!(exit.success(), "node n{} stopped with {exit:?}", i + 1);
        during.extend(enqueue_n(&c, 5, &format!("while n{} is down", i + 1)).await);
        c.restart(i).await;
        c.caught_up(Duration::from_secs(30)).await;
    }

    // The leases taken before are still held and ack with their ids.
    let workers = WorkerServiceClient::new(c.channel(2));
    for d in &held {
        let job = d.job.as_ref().expect("job");
        let ack = pb::AckRequest { queue: "emails".into(), job_id: job.id.clone(), lease_id: d.lease_id.clone() };
        let (r, _) = retried(Duration::from_secs(30), "ack", || {
            let (mut workers, ack) = (workers.clone(), ack.clone());
            async move { workers.ack(ack).await }
        })
        .await;
        drop(r);
    }
    let acked: HashSet<&String> = held.iter().map(|d| &d.job.as_ref().expect("job").id).collect();
    let rest: Vec<String> = ids.iter().chain(&during).filter(|id| !acked.contains(id)).cloned().collect();
    all_stored(&c, 1, &rest).await;
}
