//! Soak: a mixed workload against the real binary for a bounded time —
//! several tenants (one with a weight), plain jobs, delayed jobs, dedup
//! keys, nack -> retry, and jobs that exhaust their attempts into the dead
//! letters — while the broker's own RSS and open files (from /proc) and the
//! enqueue and lease latencies are sampled every second. No sample may trend
//! upward, and at the end every job is accounted for.
//!
//! CI runs it for 30 s. The long version prints the same samples:
//!   FAIRWAY_SOAK_SECS=1800 cargo test --release --test soak -- --nocapture

mod common;
#[path = "common/process.rs"]
mod process;

use common::*;
use fairway::pb;
use fairway::pb::work_request::Request as WorkMsg;
use fairway::pb::work_response::Response as WorkResp;
use process::BrokerProcess;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

const TENANTS: usize = 5;
const MAX_ATTEMPTS: u32 = 3;

/// What a job is meant to go through; chosen by the producer, read by the
/// worker from the payload.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
enum Kind {
    Plain,
    Delayed,
    Dedup,
    /// Nacked on its first attempt, acked on its second.
    RetryOnce,
    /// Nacked until it is dead-lettered.
    Fail,
}

fn kind_of(i: u64) -> Kind {
    match i % 10 {
        0 => Kind::Delayed,
        1 => Kind::Dedup,
        2 => Kind::RetryOnce,
        3 => Kind::Fail,
        _ => Kind::Plain,
    }
}

#[derive(Default)]
struct Ledger {
    /// Every job id the broker confirmed, with its kind (a dedup hit
    /// returns an id already here).
    jobs: HashMap<String, Kind>,
    dedup_hits: u64,
    /// Confirmed acks per job.
    acked: HashMap<String, u32>,
    /// Enqueue latencies (µs) since the last sample.
    enqueue_us: Vec<u64>,
}

type Shared = Arc<Mutex<Ledger>>;

#[derive(Debug)]
struct Sample {
    at: Duration,
    rss_kib: u64,
    fds: usize,
    /// Median and p99 of the workload's enqueues in this second, ms.
    enqueue_p50: f64,
    enqueue_p99: f64,
    /// One probe job: enqueue, then a long-poll lease of it, ms.
    probe_lease: f64,
}

fn quantile(v: &mut [u64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_unstable();
    v[((v.len() - 1) as f64 * q) as usize] as f64 / 1000.0
}

async fn producer(p: usize, channel: Channel, ledger: Shared, stop: Arc<AtomicBool>) {
    let mut jobs = pb::job_service_client::JobServiceClient::new(channel);
    // Paced, not flat out: this measures drift, not throughput.
    let mut tick = tokio::time::interval(Duration::from_millis(4));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut i = p as u64;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        i += 3;
        let kind = kind_of(i);
        let mut req = job("soak", &format!("t{}", i % TENANTS as u64), "e", &format!("{kind:?} {p}-{i}"));
        match kind {
            Kind::Delayed => {
                req.schedule = Some(pb::enqueue_request::Schedule::Delay(dur(Duration::from_millis(100 + i % 400))))
            }
            Kind::Dedup => req.dedup_key = format!("k{}", i % 40),
            _ => {}
        }
        let started = Instant::now();
        let r = jobs.enqueue(req).await.expect("enqueue during the soak").into_inner();
        let us = started.elapsed().as_micros() as u64;
        let mut l = ledger.lock().unwrap();
        l.enqueue_us.push(us);
        if r.deduplicated {
            l.dedup_hits += 1;
        }
        l.jobs.entry(r.job_id).or_insert(kind);
    }
}

async fn worker(w: usize, channel: Channel, ledger: Shared, stop: Arc<AtomicBool>) {
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    let sub = pb::Subscribe {
        queues: vec!["soak".into()],
        worker_id: format!("w{w}"),
        max_in_flight: 32,
        ..Default::default()
    };
    tx.send(pb::WorkRequest { request: Some(WorkMsg::Subscribe(sub)) }).await.unwrap();
    let mut client = pb::worker_service_client::WorkerServiceClient::new(channel);
    let mut stream = client.work(tokio_stream::wrappers::ReceiverStream::new(rx)).await.expect("work").into_inner();
    loop {
        let msg = tokio::select! {
            m = stream.message() => m.expect("work stream").expect("stream open"),
            _ = tokio::time::sleep(Duration::from_millis(100)) => {
                if stop.load(Ordering::Relaxed) { return } else { continue }
            }
        };
        match msg.response.expect("response") {
            WorkResp::Delivery(d) => {
                let job = d.job.expect("job");
                let text = String::from_utf8_lossy(&job.payload).to_string();
                let fail = text.starts_with("Fail") || (text.starts_with("RetryOnce") && job.attempt == 1);
                let msg = if fail {
                    let retry_after = text.starts_with("Fail").then(|| dur(Duration::ZERO));
                    WorkMsg::Nack(pb::NackRequest {
                        queue: "soak".into(),
                        job_id: job.id,
                        lease_id: d.lease_id,
                        error: format!("soak failure on attempt {}", job.attempt),
                        retry_after,
                        dead: false,
                    })
                } else {
                    WorkMsg::Ack(pb::AckRequest { queue: "soak".into(), job_id: job.id, lease_id: d.lease_id })
                };
                tx.send(pb::WorkRequest { request: Some(msg) }).await.unwrap();
            }
            WorkResp::Outcome(o) => {
                assert!(o.ok, "a settle failed during the soak: {o:?}");
                if o.kind == "ack" {
                    *ledger.lock().unwrap().acked.entry(o.job_id).or_default() += 1;
                }
            }
        }
    }
}

/// One probe: enqueue a job on a queue of its own and long-poll it.
async fn probe(channel: &Channel) -> f64 {
    let mut jobs = pb::job_service_client::JobServiceClient::new(channel.clone());
    let mut workers = pb::worker_service_client::WorkerServiceClient::new(channel.clone());
    let started = Instant::now();
    jobs.enqueue(job("probe", "t", "e", "probe")).await.expect("probe enqueue");
    let lease = pb::LeaseRequest {
        queues: vec!["probe".into()],
        max_jobs: 1,
        wait: Some(dur(Duration::from_secs(10))),
        ..Default::default()
    };
    let d = workers.lease(lease).await.expect("probe lease").into_inner().deliveries;
    let took = started.elapsed().as_secs_f64() * 1000.0;
    let j = d[0].job.as_ref().expect("probe job");
    let ack = pb::AckRequest { queue: "probe".into(), job_id: j.id.clone(), lease_id: d[0].lease_id.clone() };
    workers.ack(ack).await.expect("probe ack");
    took
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    sum / n.max(1) as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mixed_workload_holds_steady_and_accounts_for_every_job() {
    let secs: u64 = std::env::var("FAIRWAY_SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(30);
    let run_for = Duration::from_secs(secs.max(6));
    let tmp = tempfile::tempdir().unwrap();
    let b = BrokerProcess::spawn(tmp.path()).await;
    b.wait_serving().await;
    let mut admin = pb::admin_service_client::AdminServiceClient::new(b.channel.clone());
    let config = pb::QueueConfig {
        max_attempts: MAX_ATTEMPTS,
        backoff_initial: Some(dur(Duration::from_millis(50))),
        backoff_max: Some(dur(Duration::from_millis(200))),
        // A key comes back every ~160 ms per producer: with a window, a
        // repeat is a hit even when its job was already acked, so every run
        // exercises dedup whatever the timing.
        dedup_window: Some(dur(Duration::from_secs(2))),
        ..Default::default()
    };
    admin.create_queue(pb::CreateQueueRequest { name: "soak".into(), config: Some(config) }).await.unwrap();
    admin.create_queue(pb::CreateQueueRequest { name: "probe".into(), config: None }).await.unwrap();
    let policy =
        pb::SetTenantPolicyRequest { queue: "soak".into(), tenant: "t0".into(), weight: 3, ..Default::default() };
    admin.set_tenant_policy(policy).await.unwrap();

    let ledger: Shared = Arc::default();
    let stop_producers = Arc::new(AtomicBool::new(false));
    let stop_workers = Arc::new(AtomicBool::new(false));
    let producers: Vec<_> =
        (0..3).map(|p| tokio::spawn(producer(p, b.channel.clone(), ledger.clone(), stop_producers.clone()))).collect();
    let workers: Vec<_> =
        (0..2).map(|w| tokio::spawn(worker(w, b.channel.clone(), ledger.clone(), stop_workers.clone()))).collect();

    let started = Instant::now();
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    while started.elapsed() < run_for {
        tick.tick().await;
        let probe_lease = probe(&b.channel).await;
        let mut lat = std::mem::take(&mut ledger.lock().unwrap().enqueue_us);
        let s = Sample {
            at: started.elapsed(),
            rss_kib: b.rss_kib(),
            fds: b.open_fds(),
            enqueue_p50: quantile(&mut lat, 0.5),
            enqueue_p99: quantile(&mut lat, 0.99),
            probe_lease,
        };
        println!(
            "soak t={:>5.1}s rss={:>7} KiB fds={:>4} enqueue p50={:>6.2}ms p99={:>6.2}ms probe enqueue+lease={:>6.2}ms jobs={}",
            s.at.as_secs_f64(),
            s.rss_kib,
            s.fds,
            s.enqueue_p50,
            s.enqueue_p99,
            s.probe_lease,
            ledger.lock().unwrap().jobs.len()
        );
        samples.push(s);
    }
    stop_producers.store(true, Ordering::Relaxed);
    for p in producers {
        p.await.unwrap();
    }

    // No growth trend: the last third against the middle third (the first
    // third is warm-up: caches, memtables and connections filling).
    let n = samples.len();
    assert!(n >= 6, "too few samples: {n}");
    let (middle, last) = (&samples[n / 3..2 * n / 3], &samples[2 * n / 3..]);
    let rss = |s: &[Sample]| mean(s.iter().map(|x| x.rss_kib as f64));
    let fds = |s: &[Sample]| s.iter().map(|x| x.fds).max().unwrap_or(0);
    let p50 = |s: &[Sample]| mean(s.iter().map(|x| x.enqueue_p50));
    let probe_ms = |s: &[Sample]| mean(s.iter().map(|x| x.probe_lease));
    println!(
        "middle third: rss {:.0} KiB, fds {}, enqueue p50 {:.2}ms, probe {:.2}ms; last third: rss {:.0} KiB, fds {}, enqueue p50 {:.2}ms, probe {:.2}ms",
        rss(middle), fds(middle), p50(middle), probe_ms(middle), rss(last), fds(last), p50(last), probe_ms(last)
    );
    assert!(rss(last) <= rss(middle) * 1.25 + 32.0 * 1024.0, "RSS grows: {:.0} -> {:.0} KiB", rss(middle), rss(last));
    let peak_rss = samples.iter().map(|s| s.rss_kib).max().unwrap();
    assert!(peak_rss < 1536 * 1024, "RSS above the 1.5 GiB ceiling: {peak_rss} KiB");
    assert!(fds(last) <= fds(middle) + 16, "open files grow: {} -> {}", fds(middle), fds(last));
    assert!(p50(last) <= p50(middle) * 3.0 + 5.0, "enqueue latency grows: {:.2} -> {:.2} ms", p50(middle), p50(last));
    assert!(
        probe_ms(last) <= probe_ms(middle) * 3.0 + 20.0,
        "enqueue+lease latency grows: {:.2} -> {:.2} ms",
        probe_ms(middle),
        probe_ms(last)
    );

    // Let the workers finish what is left (delays, retries), then account
    // for every job.
    let stats = eventually(Duration::from_secs(60), || {
        let mut admin = admin.clone();
        async move {
            let s = admin.get_queue_stats(pb::GetQueueStatsRequest { queue: "soak".into() }).await.ok()?.into_inner();
            (s.ready + s.scheduled + s.leased == 0).then_some(s)
        }
    })
    .await;
    stop_workers.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let mut dead = HashSet::new();
    let mut token = String::new();
    loop {
        let page = admin
            .list_jobs(pb::ListJobsRequest {
                queue: "soak".into(),
                state: pb::JobState::Dead as i32,
                page_size: 1000,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        for j in page.jobs {
            assert_eq!(j.attempt, MAX_ATTEMPTS, "dead after its last attempt: {j:?}");
            dead.insert(j.id);
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let l = ledger.lock().unwrap();
    for (id, kind) in &l.jobs {
        let acks = l.acked.get(id).copied().unwrap_or(0);
        match kind {
            Kind::Fail => assert!(dead.contains(id) && acks == 0, "job {id} ({kind:?}) not dead-lettered"),
            _ => assert!(acks == 1 && !dead.contains(id), "job {id} ({kind:?}) acked {acks} times"),
        }
    }
    assert_eq!(l.acked.len() + dead.len(), l.jobs.len(), "no job the producers did not enqueue");
    assert_eq!(stats.dead, dead.len() as u64);
    assert_eq!(stats.acked_total, l.acked.len() as u64);
    assert_eq!(stats.enqueued_total, l.jobs.len() as u64);
    assert_eq!(stats.deduplicated_total, l.dedup_hits);
    assert!(l.dedup_hits > 0 && !dead.is_empty(), "the mix exercised dedup and dead letters");
    println!(
        "soak of {run_for:?}: {} jobs ({} acked, {} dead, {} dedup hits), peak RSS {peak_rss} KiB",
        l.jobs.len(),
        l.acked.len(),
        dead.len(),
        l.dedup_hits
    );
}
