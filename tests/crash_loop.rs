//! Crash loop: producers and Work-stream workers run against the real binary
//! while the test SIGKILLs it at random points several times, restarting it
//! on the same data dir each time. Afterwards every enqueue the broker
//! acknowledged was acked by a worker or is still stored, no job was acked
//! twice, and the queue's counters match a full scan. Also: a second broker
//! on a data dir in use refuses to start, and the circuit breaker's windows
//! outlive a kill.
//!
//! The kill points come from a seeded RNG; the seed is printed, and
//! `FAIRWAY_CRASH_SEED=N` replays it.

mod common;
#[path = "common/process.rs"]
mod process;

use common::*;
use fairway::pb;
use fairway::pb::work_request::Request as WorkMsg;
use fairway::pb::work_response::Response as WorkResp;
use process::{count_states, scan_all, BrokerProcess};
use rand::{Rng, SeedableRng};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

const KILLS: usize = 8;
/// Short, so leases a killed broker handed out come back quickly.
const LEASE: Duration = Duration::from_secs(2);

#[derive(Default)]
struct Ledger {
    /// Job ids whose enqueue the broker answered with success.
    confirmed: HashSet<String>,
    /// Job ids a worker sent an ack for (confirmed or not: a kill can
    /// land between the ack's commit and its Outcome).
    ack_sent: HashSet<String>,
    /// Job id -> acks the broker confirmed (an ok Outcome).
    acked: HashMap<String, u32>,
}

type Shared = Arc<Mutex<Ledger>>;

/// The channel of the broker incarnation now running (a new one after
/// each restart; clients pick it up when their call fails).
type Current = Arc<Mutex<Channel>>;

fn current(c: &Current) -> Channel {
    c.lock().unwrap().clone()
}

async fn producer(p: usize, chan: Current, ledger: Shared, stop: Arc<AtomicBool>) {
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let mut jobs = pb::job_service_client::JobServiceClient::new(current(&chan));
        i += 1;
        let tenant = format!("t{}", p % 3);
        if p.is_multiple_of(2) {
            match jobs.enqueue(job("q", &tenant, "e", &format!("{p}-{i}"))).await {
                Ok(r) => {
                    ledger.lock().unwrap().confirmed.insert(r.into_inner().job_id);
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        } else {
            let batch = (0..10).map(|k| job("q", &tenant, "e", &format!("{p}-{i}-{k}"))).collect();
            match jobs.enqueue_batch(pb::EnqueueBatchRequest { jobs: batch }).await {
                Ok(r) => {
                    let mut l = ledger.lock().unwrap();
                    l.confirmed.extend(r.into_inner().results.into_iter().map(|r| r.job_id));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }
}

/// A well-behaved Work-stream worker: acks every delivery, records every
/// ack the broker confirms, and reconnects whenever the broker goes away.
async fn worker(w: usize, chan: Current, ledger: Shared, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let sub = pb::Subscribe {
            queues: vec!["q".into()],
            worker_id: format!("w{w}"),
            max_in_flight: 8,
            lease_duration: Some(dur(LEASE)),
            ..Default::default()
        };
        tx.send(pb::WorkRequest { request: Some(WorkMsg::Subscribe(sub)) }).await.unwrap();
        let mut client = pb::worker_service_client::WorkerServiceClient::new(current(&chan));
        let mut stream = match client.work(tokio_stream::wrappers::ReceiverStream::new(rx)).await {
            Ok(s) => s.into_inner(),
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        loop {
            let msg = tokio::select! {
                m = stream.message() => m,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    if stop.load(Ordering::Relaxed) { return } else { continue }
                }
            };
            match msg {
                Ok(Some(pb::WorkResponse { response: Some(WorkResp::Delivery(d)) })) => {
                    let job = d.job.expect("job");
                    ledger.lock().unwrap().ack_sent.insert(job.id.clone());
                    let ack = pb::AckRequest { queue: "q".into(), job_id: job.id, lease_id: d.lease_id };
                    if tx.send(pb::WorkRequest { request: Some(WorkMsg::Ack(ack)) }).await.is_err() {
                        break;
                    }
                }
                Ok(Some(pb::WorkResponse { response: Some(WorkResp::Outcome(o)) })) => {
                    if o.ok && o.kind == "ack" {
                        *ledger.lock().unwrap().acked.entry(o.job_id).or_default() += 1;
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn repeated_kill_9_loses_no_acknowledged_job_and_acks_nothing_twice() {
    let started = Instant::now();
    let seed: u64 = std::env::var("FAIRWAY_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    println!("crash loop seed: {seed} (replay with FAIRWAY_CRASH_SEED={seed})");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let tmp = tempfile::tempdir().unwrap();
    let mut broker = BrokerProcess::spawn(tmp.path()).await;
    broker.wait_serving().await;
    // Restarts listen on the same port, so clients find the new incarnation.
    let listen = broker.addr.to_string();
    let mut admin = pb::admin_service_client::AdminServiceClient::new(broker.channel.clone());
    admin.create_queue(pb::CreateQueueRequest { name: "q".into(), config: None }).await.unwrap();

    let chan: Current = Arc::new(Mutex::new(broker.channel.clone()));
    let ledger: Shared = Arc::default();
    let stop_producers = Arc::new(AtomicBool::new(false));
    let stop_workers = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for p in 0..4 {
        tasks.push(tokio::spawn(producer(p, chan.clone(), ledger.clone(), stop_producers.clone())));
    }
    let mut workers = Vec::new();
    for w in 0..3 {
        workers.push(tokio::spawn(worker(w, chan.clone(), ledger.clone(), stop_workers.clone())));
    }

    for round in 0..KILLS {
        // Let both sides make progress in this incarnation, then kill it at
        // a random moment within the next few hundred milliseconds.
        let (c0, a0) = {
            let l = ledger.lock().unwrap();
            (l.confirmed.len(), l.acked.len())
        };
        eventually(Duration::from_secs(30), || {
            let l = ledger.lock().unwrap();
            let moved = l.confirmed.len() >= c0 + 200 && l.acked.len() >= a0 + 50;
            async move { moved.then_some(()) }
        })
        .await;
        let extra = Duration::from_millis(rng.random_range(0..1500));
        tokio::time::sleep(extra).await;
        broker.kill9();
        {
            let l = ledger.lock().unwrap();
            println!(
                "kill {} at +{extra:?}: {} enqueues and {} acks confirmed so far",
                round + 1,
                l.confirmed.len(),
                l.acked.len()
            );
        }
        broker = BrokerProcess::spawn_at(tmp.path(), &listen, &[]).await;
        broker.wait_serving().await;
        *chan.lock().unwrap() = broker.channel.clone();
    }

    // A last stretch of load on the final incarnation, then stop.
    let c0 = ledger.lock().unwrap().confirmed.len();
    eventually(Duration::from_secs(30), || {
        let n = ledger.lock().unwrap().confirmed.len();
        async move { (n >= c0 + 200).then_some(()) }
    })
    .await;
    stop_producers.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    // Workers drain part of what is left; then they leave, and leases the
    // killed incarnations handed out expire.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_workers.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let stats = eventually(Duration::from_secs(15), || {
        let mut admin = pb::admin_service_client::AdminServiceClient::new(broker.channel.clone());
        async move {
            let s = admin.get_queue_stats(pb::GetQueueStatsRequest { queue: "q".into() }).await.ok()?.into_inner();
            (s.leased == 0).then_some(s)
        }
    })
    .await;

    let stored_jobs = scan_all(&broker.channel, "q").await;
    let stored: HashSet<String> = stored_jobs.iter().map(|j| j.id.clone()).collect();
    assert_eq!(stored.len(), stored_jobs.len(), "the scan lists each job once");
    let l = ledger.lock().unwrap();
    let lost: Vec<_> = l.confirmed.iter().filter(|id| !stored.contains(*id) && !l.ack_sent.contains(*id)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged enqueues neither acked nor stored, e.g. {:?}",
        lost.len(),
        &lost[..5.min(lost.len())]
    );
    let twice: Vec<_> = l.acked.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "jobs acked successfully more than once: {twice:?}");
    let acked_but_stored: Vec<_> = l.acked.keys().filter(|id| stored.contains(*id)).take(5).collect();
    assert!(acked_but_stored.is_empty(), "confirmed acks undone by a crash: {acked_but_stored:?}");

    // Counters agree with a full scan, state by state.
    let (scheduled, ready, leased, dead) = count_states(&stored_jobs);
    assert_eq!((stats.scheduled, stats.ready, stats.leased, stats.dead), (scheduled, ready, leased, dead));
    let group_ready: u64 = stats.groups.iter().map(|g| g.ready).sum();
    assert_eq!(group_ready, ready, "per-group ready counts add up");
    // Every job ever stored is either still stored or was acked; the
    // lifetime counters were written with the changes they count.
    assert_eq!(stats.enqueued_total, stored.len() as u64 + stats.acked_total, "{stats:?}");
    assert!(stats.acked_total >= l.acked.len() as u64);
    // Acks that took effect but whose Outcome a kill swallowed: at most the
    // in-flight window of every worker at each kill.
    let unconfirmed = l.ack_sent.iter().filter(|id| !stored.contains(*id) && !l.acked.contains_key(*id)).count();
    assert!(unconfirmed <= KILLS * 3 * 8, "{unconfirmed} acks took effect unconfirmed");
    assert!(l.confirmed.len() >= KILLS * 200 && l.acked.len() >= KILLS * 50);
    println!(
        "{KILLS} kills in {:?}: {} enqueues confirmed, {} acks confirmed ({unconfirmed} more took effect unconfirmed), \
         {} jobs stored, enqueued_total {}",
        started.elapsed(),
        l.confirmed.len(),
        l.acked.len(),
        stored.len(),
        stats.enqueued_total
    );
}

#[tokio::test]
async fn a_second_broker_on_a_data_dir_in_use_exits_with_a_clear_message() {
    let tmp = tempfile::tempdir().unwrap();
    let first = BrokerProcess::spawn(tmp.path()).await;
    first.wait_serving().await;
    let mut admin = pb::admin_service_client::AdminServiceClient::new(first.channel.clone());
    admin.create_queue(pb::CreateQueueRequest { name: "q".into(), config: None }).await.unwrap();

    let dir = tmp.path().to_path_buf();
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_fairway"))
                .args(["serve", "--listen", "127.0.0.1:0", "--metrics-listen", "off", "--data-dir"])
                .arg(&dir)
                .env("RUST_LOG", "warn")
                .output()
                .expect("run the second broker")
        }),
    )
    .await
    .expect("the second broker exits instead of waiting for the lock")
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the second broker must fail: {:?}", out.status);
    assert!(
        stderr.contains("is in use by another running broker") && stderr.contains(&tmp.path().display().to_string()),
        "stderr names the data dir and the reason: {stderr}"
    );
    // The first broker is untouched and still serves.
    first.wait_serving().await;
    let stats = admin.get_queue_stats(pb::GetQueueStatsRequest { queue: "q".into() }).await.unwrap().into_inner();
    assert_eq!(stats.queue, "q");
}

/// The circuit breaker's windows are saved about once a second, so a
/// SIGKILL a moment later still leaves the restarted broker its baseline.
#[tokio::test]
async fn breaker_windows_outlive_a_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let mut b = BrokerProcess::spawn(tmp.path()).await;
    b.wait_serving().await;
    let mut admin = pb::admin_service_client::AdminServiceClient::new(b.channel.clone());
    let mut jobs = pb::job_service_client::JobServiceClient::new(b.channel.clone());
    let mut workers = pb::worker_service_client::WorkerServiceClient::new(b.channel.clone());
    admin.create_queue(pb::CreateQueueRequest { name: "q".into(), config: None }).await.unwrap();
    for i in 0..25 {
        jobs.enqueue(job("q", "t", "e", &format!("j{i}"))).await.unwrap();
    }
    let lease =
        pb::LeaseRequest { queues: vec!["q".into()], max_jobs: 25, worker_version: "v1".into(), ..Default::default() };
    let leased = workers.lease(lease).await.unwrap().into_inner().deliveries;
    assert_eq!(leased.len(), 25);
    for d in &leased {
        let ack = pb::AckRequest {
            queue: "q".into(),
            job_id: d.job.as_ref().unwrap().id.clone(),
            lease_id: d.lease_id.clone(),
        };
        workers.ack(ack).await.unwrap();
    }
    // The save can't be observed from outside while the broker runs: wait
    // out its interval twice over (a loaded CI machine delays the writer's
    // idle tick) before the kill.
    let save = fairway::broker::version_breaker::SAVE_INTERVAL_MS;
    tokio::time::sleep(Duration::from_millis(2 * save + 500)).await;
    b.kill9();

    let b = BrokerProcess::spawn(tmp.path()).await;
    b.wait_serving().await;
    let mut admin = pb::admin_service_client::AdminServiceClient::new(b.channel.clone());
    let st = admin.get_queue_stats(pb::GetQueueStatsRequest { queue: "q".into() }).await.unwrap().into_inner();
    let v1 = st.worker_versions.iter().find(|v| v.worker_version == "v1").expect("v1's window survived the kill");
    assert_eq!((v1.deliveries, v1.failures), (25, 0));
}
