//! The paced end-to-end scenario of `fairway-bench`: producers enqueue at a
//! fixed rate (half of the measured end-to-end maximum) while workers drain,
//! so latency is measured on a broker that keeps up, not on a queue that
//! grows. Enqueue-to-delivery comes from a timestamp in each payload.

use crate::{connect, create_queue, job, BenchResult, Samples};
use fairway::pb;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_stream::StreamExt;

const QUEUE: &str = "bench-paced";
/// Producer ticks: jobs go out in small bursts this often.
const TICK: Duration = Duration::from_millis(1);

fn now_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// Result of one paced run.
pub(crate) struct Paced {
    /// Jobs/s asked for.
    pub rate: f64,
    /// Jobs/s enqueued and acked in the end.
    pub achieved: f64,
    /// Jobs sent.
    pub jobs: u64,
    /// Enqueue-to-delivery, µs.
    pub latency: Samples,
}

/// Enqueues `jobs` at `rate` jobs/s on one EnqueueStream while 4 Work
/// streams (256 in flight each) ack everything.
pub(crate) async fn run(addr: &str, rate: f64, jobs: u64, payload: usize) -> BenchResult<Paced> {
    let ch = connect(addr).await?;
    create_queue(&ch, QUEUE).await?;
    let latency = Arc::new(Mutex::new(Samples::default()));
    let acked = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for w in 0..4 {
        let (ch, latency, acked) = (connect(addr).await?, latency.clone(), acked.clone());
        workers.push(tokio::spawn(async move {
            let sub = pb::Subscribe {
                queues: vec![QUEUE.into()],
                worker_id: format!("paced-{w}"),
                max_in_flight: 256,
                ..Default::default()
            };
            let mut work = ch.work(sub).await?;
            let settler = work.settler();
            while let Some(d) = work.next_delivery().await? {
                let j = d.job.as_ref().ok_or("delivery without job")?;
                let ts = u64::from_be_bytes(j.payload[..8].try_into()?);
                latency.lock().map_err(|_| "poisoned")?.0.push(now_nanos().saturating_sub(ts) / 1000);
                settler.ack(&d).await?;
                acked.fetch_add(1, Ordering::Relaxed);
            }
            BenchResult::Ok(())
        }));
    }

    let (tx, rx) = tokio::sync::mpsc::channel::<pb::EnqueueRequest>(4096);
    let mut answers =
        connect(addr).await?.jobs().enqueue_stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
    let confirmer = tokio::spawn(async move {
        while let Some(r) = answers.next().await {
            let r = r?;
            if !r.error.is_empty() {
                return Err(format!("paced enqueue refused: {} {}", r.code, r.error).into());
            }
        }
        BenchResult::Ok(())
    });
    let start = Instant::now();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sent = 0u64;
    while sent < jobs {
        tick.tick().await;
        // Catch up to where the schedule says we should be.
        let due = ((start.elapsed().as_secs_f64() * rate) as u64).min(jobs);
        while sent < due {
            tx.send(job(QUEUE, sent as usize, payload)).await?;
            sent += 1;
        }
    }
    drop(tx);
    let deadline = Instant::now() + Duration::from_secs(120);
    while acked.load(Ordering::Relaxed) < jobs {
        if Instant::now() > deadline || workers.iter().any(|w| w.is_finished()) {
            return Err("paced run: workers did not ack every job".into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let achieved = jobs as f64 / start.elapsed().as_secs_f64();
    confirmer.await??;
    for w in workers {
        w.abort();
    }
    let latency = std::mem::take(&mut *latency.lock().map_err(|_| "poisoned")?);
    Ok(Paced { rate, achieved, jobs, latency })
}
