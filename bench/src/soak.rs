//! The soak of `fairway-bench --scenarios soak` (and of `tests/soak.rs`, a
//! short run in CI): a mixed workload against a broker process for a
//! bounded time — several tenants (one with a weight), plain jobs, delayed
//! jobs, dedup keys, nack -> retry, and jobs that exhaust their attempts
//! into the dead letters — while the broker's own RSS and open files (from
//! /proc) and the enqueue and lease latencies are sampled every second. No
//! sample may trend upward, and at the end every job is accounted for.

use fairway::client::{Client, WorkEvent};
use fairway::pb;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// Length of the soak scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct SoakArgs {
    /// Seconds the soak scenario runs (one sample a second; at least 6).
    #[arg(long, default_value_t = 600)]
    pub soak_secs: u64,
}

const QUEUE: &str = "soak";
const PROBE_QUEUE: &str = "probe";
const TENANTS: u64 = 5;
const PRODUCERS: usize = 3;
const WORKERS: usize = 2;
/// Each producer enqueues one job per tick: paced, not flat out, since this
/// measures drift, not throughput.
const PRODUCER_TICK: Duration = Duration::from_millis(4);
const MAX_ATTEMPTS: u32 = 3;
/// How long the workers get to finish delays and retries after the
/// producers stop.
const DRAIN_FOR: Duration = Duration::from_secs(60);
/// Fewer samples than this say nothing about a trend.
const MIN_SAMPLES: usize = 6;

/// What a job is meant to go through; chosen by the producer, read by the
/// worker from the payload (its first word).
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

/// The ledger, even if a task panicked holding it (its figures still count).
fn lock(l: &Shared) -> std::sync::MutexGuard<'_, Ledger> {
    l.lock().unwrap_or_else(|e| e.into_inner())
}

/// One second of the soak.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub at: Duration,
    /// Broker resident memory, KiB.
    pub rss_kib: u64,
    /// Broker open file descriptors.
    pub fds: usize,
    /// Median and p99 of the workload's enqueues in this second, ms.
    pub enqueue_p50: f64,
    pub enqueue_p99: f64,
    /// One probe job: enqueue, then a long-poll lease of it, ms.
    pub probe_ms: f64,
    /// Distinct jobs enqueued so far.
    pub jobs: usize,
}

impl std::fmt::Display for Sample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "soak t={:>6.1}s rss={:>7} KiB fds={:>4} enqueue p50={:>6.2}ms p99={:>6.2}ms probe enqueue+lease={:>6.2}ms jobs={}",
            self.at.as_secs_f64(),
            self.rss_kib,
            self.fds,
            self.enqueue_p50,
            self.enqueue_p99,
            self.probe_ms,
            self.jobs
        )
    }
}

/// Averages (maxima for open files) over a run of samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Third {
    pub rss_kib: f64,
    pub fds: usize,
    pub enqueue_p50: f64,
    pub enqueue_p99: f64,
    pub probe_ms: f64,
}

impl Third {
    fn of(s: &[Sample]) -> Third {
        Third {
            rss_kib: mean(s.iter().map(|x| x.rss_kib as f64)),
            fds: s.iter().map(|x| x.fds).max().unwrap_or(0),
            enqueue_p50: mean(s.iter().map(|x| x.enqueue_p50)),
            enqueue_p99: mean(s.iter().map(|x| x.enqueue_p99)),
            probe_ms: mean(s.iter().map(|x| x.probe_ms)),
        }
    }
}

impl std::fmt::Display for Third {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "rss {:.0} KiB, fds {}, enqueue p50 {:.2} ms p99 {:.2} ms, probe {:.2} ms",
            self.rss_kib, self.fds, self.enqueue_p50, self.enqueue_p99, self.probe_ms
        )
    }
}

/// What a soak measured; [`SoakReport::check`] gives the verdict.
#[derive(Debug, Clone, Default)]
pub struct SoakReport {
    pub duration: Duration,
    pub samples: Vec<Sample>,
    /// Distinct jobs enqueued, acked once, and dead-lettered.
    pub jobs: usize,
    pub acked: usize,
    pub dead: usize,
    pub dedup_hits: u64,
    /// What the final accounting found wrong (empty: every job acked
    /// exactly once or dead after its last attempt, and the queue's
    /// counters equal the ledger).
    pub accounting: Vec<String>,
}

impl SoakReport {
    /// The middle and last thirds of the samples (the first third is
    /// warm-up: caches, memtables and connections filling).
    pub fn thirds(&self) -> (Third, Third) {
        let n = self.samples.len();
        (Third::of(&self.samples[n / 3..2 * n / 3]), Third::of(&self.samples[2 * n / 3..]))
    }

    pub fn peak_rss_kib(&self) -> u64 {
        self.samples.iter().map(|s| s.rss_kib).max().unwrap_or(0)
    }

    /// Every check that failed; empty means the soak passed. No growth
    /// trend (the last third against the middle one), an RSS ceiling, and
    /// the final accounting.
    pub fn check(&self) -> Vec<String> {
        let mut fails = Vec::new();
        let n = self.samples.len();
        if n < MIN_SAMPLES {
            fails.push(format!("too few samples to see a trend: {n} (at least {MIN_SAMPLES})"));
        } else {
            let (m, l) = self.thirds();
            if l.rss_kib > m.rss_kib * 1.25 + 32.0 * 1024.0 {
                fails.push(format!("RSS grows: {:.0} -> {:.0} KiB", m.rss_kib, l.rss_kib));
            }
            if l.fds > m.fds + 16 {
                fails.push(format!("open files grow: {} -> {}", m.fds, l.fds));
            }
            if l.enqueue_p50 > m.enqueue_p50 * 3.0 + 5.0 {
                fails.push(format!("enqueue latency grows: {:.2} -> {:.2} ms", m.enqueue_p50, l.enqueue_p50));
            }
            if l.probe_ms > m.probe_ms * 3.0 + 20.0 {
                fails.push(format!("enqueue+lease latency grows: {:.2} -> {:.2} ms", m.probe_ms, l.probe_ms));
            }
        }
        let peak = self.peak_rss_kib();
        if peak >= 1536 * 1024 {
            fails.push(format!("RSS above the 1.5 GiB ceiling: {peak} KiB"));
        }
        fails.extend(self.accounting.iter().cloned());
        if self.dedup_hits == 0 {
            fails.push("the mix exercised no dedup hit".into());
        }
        if self.dead == 0 {
            fails.push("the mix exercised no dead letter".into());
        }
        fails
    }

    /// Middle vs last third, totals, and the verdict.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        if self.samples.len() >= MIN_SAMPLES {
            let (m, l) = self.thirds();
            out.push_str(&format!("soak middle third: {m}\nsoak last third:   {l}\n"));
        }
        out.push_str(&format!(
            "soak of {} s: {} samples, {} jobs ({} acked, {} dead, {} dedup hits), peak RSS {} KiB, max fds {}\n",
            self.duration.as_secs(),
            self.samples.len(),
            self.jobs,
            self.acked,
            self.dead,
            self.dedup_hits,
            self.peak_rss_kib(),
            self.samples.iter().map(|s| s.fds).max().unwrap_or(0),
        ));
        let fails = self.check();
        if fails.is_empty() {
            out.push_str("soak verdict: PASS");
        } else {
            out.push_str(&format!("soak verdict: FAIL: {}", fails.join("; ")));
        }
        out
    }
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    sum / n.max(1) as f64
}

fn quantile(v: &mut [u64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_unstable();
    v[((v.len() - 1) as f64 * q) as usize] as f64 / 1000.0
}

/// Resident set size of a process, in KiB (Linux).
pub fn rss_kib(pid: u32) -> Result<u64, String> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| format!("read /proc/{pid}/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no VmRSS in /proc/{pid}/status"))
}

/// File descriptors a process has open (Linux).
pub fn open_fds(pid: u32) -> Result<usize, String> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd")).map_err(|e| format!("read /proc/{pid}/fd: {e}"))?.count())
}

fn dur(d: Duration) -> prost_types::Duration {
    fairway::broker::view::duration(d)
}

async fn producer(p: usize, client: Client, ledger: Shared, stop: Arc<AtomicBool>) -> Result<(), String> {
    let mut jobs = client.jobs();
    let mut tick = tokio::time::interval(PRODUCER_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut i = p as u64;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        i += PRODUCERS as u64;
        let kind = kind_of(i);
        let mut req = pb::EnqueueRequest {
            queue: QUEUE.into(),
            tenant: format!("t{}", i % TENANTS),
            environment: "e".into(),
            payload: format!("{kind:?} {p}-{i}").into_bytes().into(),
            ..Default::default()
        };
        match kind {
            Kind::Delayed => {
                req.schedule = Some(pb::enqueue_request::Schedule::Delay(dur(Duration::from_millis(100 + i % 400))))
            }
            Kind::Dedup => req.dedup_key = format!("k{}", i % 40),
            _ => {}
        }
        let started = Instant::now();
        let r = jobs.enqueue(req).await.map_err(|e| format!("producer {p}: enqueue failed: {e}"))?.into_inner();
        let us = started.elapsed().as_micros() as u64;
        let mut l = lock(&ledger);
        l.enqueue_us.push(us);
        if r.deduplicated {
            l.dedup_hits += 1;
        }
        l.jobs.entry(r.job_id).or_insert(kind);
    }
    Ok(())
}

/// Settles by payload: `Fail` is nacked (retry at once) on every attempt
/// until it is dead; `RetryOnce` is nacked (queue backoff) on its first
/// attempt; everything else is acked.
async fn worker(w: usize, client: Client, ledger: Shared, stop: Arc<AtomicBool>) -> Result<(), String> {
    let sub = pb::Subscribe {
        queues: vec![QUEUE.into()],
        worker_id: format!("w{w}"),
        max_in_flight: 32,
        ..Default::default()
    };
    let mut work = client.work(sub).await.map_err(|e| format!("worker {w}: Work stream: {e}"))?;
    let settler = work.settler();
    loop {
        let event = tokio::select! {
            e = work.next() => e
                .map_err(|e| format!("worker {w}: Work stream failed: {e}"))?
                .ok_or_else(|| format!("worker {w}: the broker ended the Work stream"))?,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {
                if stop.load(Ordering::Relaxed) { return Ok(()) } else { continue }
            }
        };
        match event {
            WorkEvent::Delivery(d) => {
                let job = d.job.as_ref().ok_or_else(|| format!("worker {w}: a delivery without its job"))?;
                let text = String::from_utf8_lossy(&job.payload);
                let fail = text.starts_with("Fail");
                let sent = if fail || (text.starts_with("RetryOnce") && job.attempt == 1) {
                    let retry_after = fail.then_some(Duration::ZERO);
                    settler.nack(&d, &format!("soak failure on attempt {}", job.attempt), retry_after).await
                } else {
                    settler.ack(&d).await
                };
                sent.map_err(|e| format!("worker {w}: settle: {e}"))?;
            }
            WorkEvent::Outcome(o) => {
                if !o.ok {
                    return Err(format!("worker {w}: a settle failed during the soak: {o:?}"));
                }
                if o.kind == "ack" {
                    *lock(&ledger).acked.entry(o.job_id).or_default() += 1;
                }
            }
        }
    }
}

/// One probe: enqueue a job on a queue of its own and long-poll it; ms.
async fn probe(client: &Client) -> Result<f64, String> {
    let (mut jobs, mut workers) = (client.jobs(), client.workers());
    let started = Instant::now();
    let req = pb::EnqueueRequest {
        queue: PROBE_QUEUE.into(),
        tenant: "t".into(),
        environment: "e".into(),
        payload: b"probe".to_vec().into(),
        ..Default::default()
    };
    jobs.enqueue(req).await.map_err(|e| format!("probe enqueue: {e}"))?;
    let lease = pb::LeaseRequest {
        queues: vec![PROBE_QUEUE.into()],
        max_jobs: 1,
        wait: Some(dur(Duration::from_secs(10))),
        ..Default::default()
    };
    let d = workers.lease(lease).await.map_err(|e| format!("probe lease: {e}"))?.into_inner().deliveries;
    let took = started.elapsed().as_secs_f64() * 1000.0;
    let d = d.first().ok_or("probe: no job leased within 10 s of its enqueue")?;
    let j = d.job.as_ref().ok_or("probe: a delivery without its job")?;
    let ack = pb::AckRequest { queue: PROBE_QUEUE.into(), job_id: j.id.clone(), lease_id: d.lease_id.clone() };
    workers.ack(ack).await.map_err(|e| format!("probe ack: {e}"))?;
    Ok(took)
}

/// The workload's tasks; dropped early (an error), they are aborted.
struct Tasks(Vec<JoinHandle<Result<(), String>>>);

impl Tasks {
    /// The first error of a task that has already ended (none should
    /// before it is told to stop).
    async fn check_running(&mut self) -> Result<(), String> {
        if let Some(i) = self.0.iter().position(|h| h.is_finished()) {
            self.0.remove(i).await.map_err(|e| format!("a soak task panicked: {e}"))??;
            return Err("a soak task stopped early".into());
        }
        Ok(())
    }

    async fn join(mut self) -> Result<(), String> {
        for h in std::mem::take(&mut self.0) {
            h.await.map_err(|e| format!("a soak task panicked: {e}"))??;
        }
        Ok(())
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

async fn setup(client: &Client) -> Result<(), String> {
    let mut admin = client.admin();
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
    let create = |name: &str, config| pb::CreateQueueRequest { name: name.into(), config };
    admin.create_queue(create(QUEUE, Some(config))).await.map_err(|e| format!("create queue {QUEUE}: {e}"))?;
    admin.create_queue(create(PROBE_QUEUE, None)).await.map_err(|e| format!("create queue {PROBE_QUEUE}: {e}"))?;
    let policy =
        pb::SetTenantPolicyRequest { queue: QUEUE.into(), tenant: "t0".into(), weight: 3, ..Default::default() };
    admin.set_tenant_policy(policy).await.map_err(|e| format!("set tenant policy: {e}"))?;
    Ok(())
}

/// Runs the soak for `duration` (at least 6 s) against the broker `client`
/// talks to, whose process is `broker_pid` (for /proc). The broker must not
/// hold queues named `soak` or `probe` yet. Prints a line per sample. Errs
/// when the workload itself breaks (a call fails, the queue does not drain
/// within a minute); growth and accounting are judged by
/// [`SoakReport::check`].
pub async fn run(client: &Client, broker_pid: u32, duration: Duration) -> Result<SoakReport, String> {
    let duration = duration.max(Duration::from_secs(MIN_SAMPLES as u64));
    setup(client).await?;
    let ledger: Shared = Arc::default();
    let stop_producers = Arc::new(AtomicBool::new(false));
    let stop_workers = Arc::new(AtomicBool::new(false));
    let mut producers = Tasks(
        (0..PRODUCERS)
            .map(|p| tokio::spawn(producer(p, client.clone(), ledger.clone(), stop_producers.clone())))
            .collect(),
    );
    let mut workers = Tasks(
        (0..WORKERS).map(|w| tokio::spawn(worker(w, client.clone(), ledger.clone(), stop_workers.clone()))).collect(),
    );

    let started = Instant::now();
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    while started.elapsed() < duration {
        tick.tick().await;
        producers.check_running().await?;
        workers.check_running().await?;
        let probe_ms = probe(client).await?;
        let (mut lat, jobs) = {
            let mut l = lock(&ledger);
            (std::mem::take(&mut l.enqueue_us), l.jobs.len())
        };
        let s = Sample {
            at: started.elapsed(),
            rss_kib: rss_kib(broker_pid)?,
            fds: open_fds(broker_pid)?,
            enqueue_p50: quantile(&mut lat, 0.5),
            enqueue_p99: quantile(&mut lat, 0.99),
            probe_ms,
            jobs,
        };
        println!("{s}");
        samples.push(s);
    }
    stop_producers.store(true, Ordering::Relaxed);
    producers.join().await?;

    // Let the workers finish what is left (delays, retries), then account
    // for every job.
    let mut admin = client.admin();
    let deadline = Instant::now() + DRAIN_FOR;
    let stats = loop {
        workers.check_running().await?;
        let s = admin
            .get_queue_stats(pb::GetQueueStatsRequest { queue: QUEUE.into() })
            .await
            .map_err(|e| format!("queue stats: {e}"))?
            .into_inner();
        if s.ready + s.scheduled + s.leased == 0 {
            break s;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the queue did not drain within {DRAIN_FOR:?} of the producers stopping: {} ready, {} scheduled, {} leased",
                s.ready, s.scheduled, s.leased
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    stop_workers.store(true, Ordering::Relaxed);
    workers.join().await?;

    let mut problems = Vec::new();
    let mut dead = HashSet::new();
    let mut token = String::new();
    loop {
        let req = pb::ListJobsRequest {
            queue: QUEUE.into(),
            state: pb::JobState::Dead as i32,
            page_size: 1000,
            page_token: token,
            ..Default::default()
        };
        let page = admin.list_jobs(req).await.map_err(|e| format!("list dead letters: {e}"))?.into_inner();
        for j in page.jobs {
            if j.attempt != MAX_ATTEMPTS {
                problems.push(format!("job {} dead after attempt {}, not {MAX_ATTEMPTS}", j.id, j.attempt));
            }
            dead.insert(j.id);
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let l = lock(&ledger);
    for (id, kind) in &l.jobs {
        let acks = l.acked.get(id).copied().unwrap_or(0);
        match kind {
            Kind::Fail if !(dead.contains(id) && acks == 0) => {
                problems.push(format!("job {id} ({kind:?}) not dead-lettered (acked {acks} times)"))
            }
            Kind::Fail => {}
            _ if acks != 1 || dead.contains(id) => {
                problems.push(format!("job {id} ({kind:?}) acked {acks} times, dead: {}", dead.contains(id)))
            }
            _ => {}
        }
    }
    if l.acked.len() + dead.len() != l.jobs.len() {
        problems.push(format!(
            "{} acked + {} dead != {} jobs enqueued: jobs the producers did not enqueue",
            l.acked.len(),
            dead.len(),
            l.jobs.len()
        ));
    }
    let counters = [
        ("dead", stats.dead, dead.len() as u64),
        ("acked_total", stats.acked_total, l.acked.len() as u64),
        ("enqueued_total", stats.enqueued_total, l.jobs.len() as u64),
        ("deduplicated_total", stats.deduplicated_total, l.dedup_hits),
    ];
    for (name, broker, ours) in counters {
        if broker != ours {
            problems.push(format!("queue stats {name} = {broker}, the ledger says {ours}"));
        }
    }
    // A broken run could list every job: keep the verdict readable.
    if problems.len() > 10 {
        let more = problems.len() - 10;
        problems.truncate(10);
        problems.push(format!("... and {more} more accounting problems"));
    }
    Ok(SoakReport {
        duration,
        samples,
        jobs: l.jobs.len(),
        acked: l.acked.len(),
        dead: dead.len(),
        dedup_hits: l.dedup_hits,
        accounting: problems,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steady(n: usize) -> SoakReport {
        let samples = (0..n)
            .map(|i| Sample {
                at: Duration::from_secs(i as u64 + 1),
                rss_kib: 100_000,
                fds: 40,
                enqueue_p50: 0.5,
                enqueue_p99: 2.0,
                probe_ms: 1.0,
                jobs: i * 700,
            })
            .collect();
        SoakReport {
            duration: Duration::from_secs(n as u64),
            samples,
            jobs: 10,
            acked: 8,
            dead: 2,
            dedup_hits: 3,
            ..Default::default()
        }
    }

    #[test]
    fn a_flat_run_passes() {
        let r = steady(30);
        assert!(r.check().is_empty(), "{:?}", r.check());
        assert!(r.summary().ends_with("soak verdict: PASS"), "{}", r.summary());
    }

    #[test]
    fn growth_in_the_last_third_fails() {
        let mut r = steady(30);
        for s in &mut r.samples[20..] {
            s.rss_kib = 200_000;
            s.fds = 80;
            s.enqueue_p50 = 9.0;
            s.probe_ms = 50.0;
        }
        let fails = r.check().join("; ");
        for what in ["RSS grows", "open files grow", "enqueue latency grows", "enqueue+lease latency grows"] {
            assert!(fails.contains(what), "{what} missing from {fails}");
        }
        assert!(r.summary().contains("soak verdict: FAIL"));
    }

    #[test]
    fn warm_up_growth_in_the_first_third_is_not_a_trend() {
        let mut r = steady(30);
        for s in &mut r.samples[..10] {
            s.rss_kib = 10_000;
        }
        assert!(r.check().is_empty(), "{:?}", r.check());
    }

    #[test]
    fn too_few_samples_an_accounting_problem_or_an_unexercised_mix_fail() {
        assert!(steady(3).check().join(" ").contains("too few samples"));
        let mut r = steady(30);
        r.accounting.push("job x acked 2 times".into());
        r.dedup_hits = 0;
        r.dead = 0;
        let fails = r.check();
        assert_eq!(fails.len(), 3, "{fails:?}");
    }

    #[test]
    fn proc_figures_of_this_process() {
        let me = std::process::id();
        assert!(rss_kib(me).unwrap() > 0);
        assert!(open_fds(me).unwrap() >= 3);
        assert!(rss_kib(u32::MAX).is_err());
    }
}
