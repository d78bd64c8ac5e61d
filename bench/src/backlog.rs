//! The backlog scenario of `fairway-bench`: how Fairway behaves with
//! millions of jobs stored. On its own broker process and data dir it fills
//! one queue step by step (1k, 1M, 10M by default) and at each size
//! measures lease+ack latency; with the largest size stored it measures
//! restart time and memory, drains the queue, and compares lease+ack
//! throughput on the drained queue (its key range full of tombstones) with
//! a fresh queue.

use crate::{connect, create_queue, job, BenchResult, BrokerProc, Samples};
use fairway::client::{Client, WorkEvent};
use fairway::pb;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_stream::StreamExt;

/// Sizes of the backlog scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct BacklogArgs {
    /// Stored-job counts at which lease+ack latency is measured, ascending;
    /// the last one is used for restart, memory and tombstones.
    #[arg(long, value_delimiter = ',', default_value = "1000,1000000,10000000")]
    pub backlog_sizes: Vec<u64>,
    /// Lease+ack round trips measured at each size.
    #[arg(long, default_value_t = 1000)]
    pub backlog_probes: usize,
    /// Jobs leased and acked when comparing a drained queue with a fresh one.
    #[arg(long, default_value_t = 200_000)]
    pub tombstone_jobs: u64,
}

/// The figures of one run, printed as markdown.
struct Report {
    lines: Vec<String>,
}

const QUEUE: &str = "backlog";
const STREAM_WINDOW: usize = 1024;

/// Resident memory of a process, in MiB (Linux).
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

/// Enqueues `n` jobs over one EnqueueStream with a deep window; jobs/s.
async fn fill(ch: &Client, queue: &str, n: u64, payload: usize) -> BenchResult<f64> {
    if n == 0 {
        return Ok(0.0);
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::EnqueueRequest>(STREAM_WINDOW);
    let mut answers = ch.jobs().enqueue_stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
    let start = Instant::now();
    let q = queue.to_string();
    let producer = tokio::spawn(async move {
        for i in 0..n {
            tx.send(job(&q, i as usize, payload)).await?;
        }
        BenchResult::Ok(())
    });
    let mut got = 0;
    while let Some(r) = answers.next().await {
        let r = r?;
        if !r.error.is_empty() {
            return Err(format!("fill refused a job: {} {}", r.code, r.error).into());
        }
        got += 1;
    }
    producer.await??;
    if got != n {
        return Err(format!("fill stored {got} of {n} jobs").into());
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// `probes` unary Lease (one job, no wait) + Ack round trips.
async fn lease_ack_latency(ch: &Client, queue: &str, probes: usize) -> BenchResult<Samples> {
    let mut w = ch.workers();
    let mut lat = Samples::default();
    for _ in 0..probes {
        let t = Instant::now();
        let lease = pb::LeaseRequest { queues: vec![queue.into()], max_jobs: 1, ..Default::default() };
        let d = w.lease(lease).await?.into_inner().deliveries.pop().ok_or("backlog ran dry while probing")?;
        let j = d.job.ok_or("delivery without job")?;
        w.ack(pb::AckRequest { queue: j.queue, job_id: j.id, lease_id: d.lease_id }).await?;
        lat.0.push(t.elapsed().as_micros() as u64);
    }
    Ok(lat)
}

/// Leases and acks `n` jobs on 4 Work streams (256 in flight each); jobs/s.
async fn drain(addr: &str, queue: &str, n: u64) -> BenchResult<f64> {
    let acked = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut workers = Vec::new();
    for w in 0..4 {
        let (ch, acked, queue) = (connect(addr).await?, acked.clone(), queue.to_string());
        workers.push(tokio::spawn(async move {
            let sub = pb::Subscribe {
                queues: vec![queue],
                worker_id: format!("drain-{w}"),
                max_in_flight: 256,
                ..Default::default()
            };
            let mut work = ch.work(sub).await?;
            let settler = work.settler();
            while let Some(event) = work.next().await? {
                match event {
                    WorkEvent::Delivery(d) => settler.ack(&d).await?,
                    WorkEvent::Outcome(o) if o.ok => {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    WorkEvent::Outcome(o) => return Err(format!("ack failed: {}", o.error).into()),
                }
            }
            BenchResult::Ok(())
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(1800);
    while acked.load(Ordering::Relaxed) < n {
        if workers.iter().any(|w| w.is_finished()) {
            return Err("a drain worker stopped early".into());
        }
        if Instant::now() > deadline {
            return Err("drain did not finish in 30 minutes".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    for w in workers {
        w.abort();
    }
    Ok(rate)
}

fn lat_cells(l: &mut Samples) -> String {
    format!("{:.2} | {:.2} | {:.2}", l.pct(0.5), l.pct(0.99), l.pct(0.999))
}

/// Runs the scenario on a broker of its own in `dir`; returns markdown.
pub async fn run(
    dir: &std::path::Path,
    launch: &crate::BrokerLaunch,
    crash: bool,
    a: &BacklogArgs,
    payload: usize,
) -> BenchResult<Vec<String>> {
    let mut sizes = a.backlog_sizes.clone();
    sizes.sort_unstable();
    sizes.dedup();
    let Some(&largest) = sizes.last() else { return Ok(Vec::new()) };
    let mut r = Report { lines: Vec::new() };
    let broker = BrokerProc::start(dir, launch)?;
    let ch = connect(&broker.addr).await?;
    create_queue(&ch, QUEUE).await?;
    r.lines.push("| jobs stored | filled at jobs/s | lease+ack p50 ms | p99 ms | p99.9 ms | broker RSS MiB |".into());
    r.lines.push("|---:|---:|---:|---:|---:|---:|".into());
    let mut stored = 0u64;
    let mut first_p99 = None;
    for &n in &sizes {
        // Top up to n, plus what the probes will take out.
        let want = n + a.backlog_probes as u64;
        let rate = fill(&ch, QUEUE, want.saturating_sub(stored), payload).await?;
        stored = want;
        let mut lat = lease_ack_latency(&ch, QUEUE, a.backlog_probes).await?;
        stored -= a.backlog_probes as u64;
        first_p99.get_or_insert(lat.pct(0.99));
        r.lines.push(format!("| {n} | {rate:.0} | {} | {:.0} |", lat_cells(&mut lat), rss_mib(broker.pid())));
    }
    drop(ch);

    // Restart with the largest backlog stored.
    let how = if crash { "kill -9" } else { "SIGTERM" };
    if crash {
        drop(broker);
    } else {
        broker.stop()?;
    }
    let t = Instant::now();
    let broker = BrokerProc::start(dir, launch)?;
    let ch = connect(&broker.addr).await?;
    let mut health = ch.health();
    health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await?;
    let serving = t.elapsed().as_secs_f64();
    let rss_restart = rss_mib(broker.pid());
    let mut cold = lease_ack_latency(&ch, QUEUE, a.backlog_probes).await?;
    stored -= a.backlog_probes as u64;
    let cold_p99 = cold.pct(0.99);
    let rss_after = rss_mib(broker.pid());

    // Drain everything, then compare the drained queue with a fresh one.
    let drained_rate = drain(&broker.addr, QUEUE, stored).await?;
    fill(&ch, QUEUE, a.tombstone_jobs, payload).await?;
    let after_tombstones = drain(&broker.addr, QUEUE, a.tombstone_jobs).await?;
    create_queue(&ch, "fresh").await?;
    fill(&ch, "fresh", a.tombstone_jobs, payload).await?;
    let fresh = drain(&broker.addr, "fresh", a.tombstone_jobs).await?;
    broker.stop()?;

    r.lines.push(String::new());
    r.lines.push(format!(
        "Restart with {largest} stored (after {how}): serving in {serving:.2} s; broker RSS {rss_restart:.0} MiB at \
         start, {rss_after:.0} MiB after the first leases. Lease+ack right after restart: {} ms (p50 | p99 | p99.9); \
         p99 vs the smallest backlog: {:.2}x.",
        lat_cells(&mut cold),
        cold_p99 / first_p99.unwrap_or(cold_p99).max(0.001)
    ));
    r.lines.push(format!(
        "Drained all {stored} jobs at {drained_rate:.0} jobs/s (lease+ack, 4 Work streams). Then {} jobs leased and \
         acked on the drained queue (its key range full of tombstones): {after_tombstones:.0} jobs/s; on a fresh queue: \
         {fresh:.0} jobs/s ({:.0} %).",
        a.tombstone_jobs,
        after_tombstones / fresh.max(1.0) * 100.0
    ));
    Ok(r.lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_of_this_process_is_read() {
        assert!(rss_mib(std::process::id()) > 1.0);
        assert_eq!(rss_mib(u32::MAX), 0.0);
    }
}
