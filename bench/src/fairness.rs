//! Fairness scenarios of `fairway-bench`: a flooding tenant next to
//! trickling ones, weighted shares (and Jain's index for equal weights), and
//! a tenant whose jobs hang. Each runs on its own queue of the broker the
//! bench started, with real workers on `Work` streams.

use fairway::client::Client;
use fairway::pb;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Sizes of the fairness scenarios.
#[derive(Debug, Clone, clap::Args)]
pub struct FairnessArgs {
    /// Jobs the flooding tenant enqueues (0 skips the fairness scenarios).
    #[arg(long, default_value_t = 1_000_000)]
    pub flood_jobs: u64,
    /// How long the trickling tenants enqueue, in seconds.
    #[arg(long, default_value_t = 10)]
    pub trickle_secs: u64,
    /// Jobs per tenant in the weights and hung-tenant scenarios.
    #[arg(long, default_value_t = 20_000)]
    pub fair_jobs: u64,
    /// Prefetch window of each worker stream in the fairness scenarios.
    #[arg(long, default_value_t = 256)]
    pub fair_window: u32,
    /// Active tenants in the scheduling-cost scenario.
    #[arg(long, default_value_t = 100_000)]
    pub many_tenants: usize,
}

fn now_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

fn stamped(queue: &str, tenant: &str) -> pb::EnqueueRequest {
    pb::EnqueueRequest {
        queue: queue.into(),
        tenant: tenant.into(),
        payload: now_nanos().to_be_bytes().to_vec().into(),
        ..Default::default()
    }
}

/// What the workers saw: per tenant, deliveries and enqueue-to-delivery
/// latencies (µs), in delivery order.
#[derive(Default)]
struct Seen {
    order: Vec<String>,
    latency: HashMap<String, Vec<u64>>,
}

/// Workers on Work streams that ack every job, except those of `hang`
/// (held until their lease runs out, like a worker stuck on them).
struct Workers {
    seen: Arc<Mutex<Seen>>,
    acked: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<BenchResult<()>>>,
}

impl Workers {
    /// Each stream gets its own connection, like separate worker processes:
    /// on one shared HTTP/2 connection every stream would queue behind the
    /// others' frames.
    async fn start(addr: &str, queue: &str, streams: usize, window: u32, hang: Option<&str>) -> BenchResult<Workers> {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let acked = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for w in 0..streams {
            let ch = crate::connect(addr).await?;
            let (seen, acked, stop) = (seen.clone(), acked.clone(), stop.clone());
            let (queue, hang) = (queue.to_string(), hang.map(str::to_string));
            tasks.push(tokio::spawn(async move {
                let sub = pb::Subscribe {
                    queues: vec![queue],
                    worker_id: format!("fair-{w}"),
                    max_in_flight: window,
                    lease_duration: Some(fairway::broker::view::duration(Duration::from_secs(2))),
                    ..Default::default()
                };
                let mut work = ch.work(sub).await?;
                let settler = work.settler();
                while let Some(d) = work.next_delivery().await? {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let job = d.job.as_ref().ok_or("delivery without job")?;
                    let ts = u64::from_be_bytes(job.payload[..8].try_into()?);
                    {
                        let mut s = seen.lock().map_err(|_| "poisoned")?;
                        s.order.push(job.tenant.clone());
                        s.latency.entry(job.tenant.clone()).or_default().push(now_nanos().saturating_sub(ts) / 1000);
                    }
                    if hang.as_deref() == Some(job.tenant.as_str()) {
                        continue;
                    }
                    settler.ack(&d).await?;
                    acked.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            }));
        }
        Ok(Workers { seen, acked, stop, tasks })
    }

    fn stop(self) -> BenchResult<Seen> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.abort();
        }
        let mut s = self.seen.lock().map_err(|_| "poisoned")?;
        Ok(std::mem::take(&mut *s))
    }
}

async fn create(ch: &Client, name: &str) -> BenchResult<()> {
    let mut admin = ch.admin();
    admin.create_queue(pb::CreateQueueRequest { name: name.into(), config: None }).await?;
    Ok(())
}

async fn set_weight(ch: &Client, queue: &str, tenant: &str, weight: u32, max_in_flight: u32) -> BenchResult<()> {
    let mut admin = ch.admin();
    admin
        .set_tenant_policy(pb::SetTenantPolicyRequest {
            queue: queue.into(),
            tenant: tenant.into(),
            weight,
            max_in_flight,
            ..Default::default()
        })
        .await?;
    Ok(())
}

/// Batch-enqueues `n` jobs of one tenant as fast as the broker takes them.
async fn flood(ch: &Client, queue: &str, tenant: &str, n: u64) -> BenchResult<()> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (mut c, next, q, t) = (ch.jobs(), next.clone(), queue.to_string(), tenant.to_string());
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(100, Ordering::Relaxed) < n {
                let jobs = (0..100).map(|_| stamped(&q, &t)).collect();
                c.enqueue_batch(pb::EnqueueBatchRequest { jobs }).await?;
            }
            BenchResult::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// Tenants t1..t10 each enqueue 10 jobs/s for `secs`.
async fn trickle(ch: &Client, queue: &str, secs: u64) -> BenchResult<()> {
    let mut c = ch.jobs();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    for _ in 0..secs * 10 {
        tick.tick().await;
        for t in 1..=10 {
            c.enqueue(stamped(queue, &format!("t{t}"))).await?;
        }
    }
    Ok(())
}

fn percentile(v: &mut [u64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_unstable();
    v[((v.len() as f64 - 1.0) * p).round() as usize] as f64 / 1000.0
}

fn trickle_latency(seen: &mut Seen) -> (f64, f64, usize) {
    let mut all: Vec<u64> =
        seen.latency.iter().filter(|(t, _)| t.starts_with('t')).flat_map(|(_, v)| v.iter().copied()).collect();
    let n = all.len();
    (percentile(&mut all, 0.5), percentile(&mut all, 0.99), n)
}

async fn scenario_flood(addr: &str, ch: &Client, a: &FairnessArgs) -> BenchResult<String> {
    create(ch, "fair-idle").await?;
    // Producers and workers each on their own connection, as separate
    // services would be.
    let trickler = crate::connect(addr).await?;
    let w = Workers::start(addr, "fair-idle", 4, a.fair_window, None).await?;
    trickle(&trickler, "fair-idle", a.trickle_secs).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (idle50, idle99, idle_n) = trickle_latency(&mut w.stop()?);

    create(ch, "fair-flood").await?;
    let w = Workers::start(addr, "fair-flood", 4, a.fair_window, None).await?;
    let flooder = {
        let (ch, n) = (crate::connect(addr).await?, a.flood_jobs);
        tokio::spawn(async move { flood(&ch, "fair-flood", "a", n).await })
    };
    // Let the backlog build before the trickle starts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    trickle(&trickler, "fair-flood", a.trickle_secs).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let acked = w.acked.load(Ordering::Relaxed);
    let mut seen = w.stop()?;
    flooder.abort();
    let (f50, f99, n) = trickle_latency(&mut seen);
    Ok(format!(
        "| flood: tenant a enqueues up to {} jobs while t1..t10 send 10 jobs/s each | t1..t10 enqueue-to-delivery p50 {:.2} ms, p99 {:.2} ms ({} jobs; {} jobs acked in all) | idle broker: p50 {:.2} ms, p99 {:.2} ms ({} jobs); p99 ratio {:.2}x |",
        a.flood_jobs, f50, f99, n, acked, idle50, idle99, idle_n, f99 / idle99.max(0.001)
    ))
}

async fn scenario_weights(addr: &str, ch: &Client, a: &FairnessArgs) -> BenchResult<String> {
    create(ch, "fair-weights").await?;
    for (t, w) in [("w1", 1), ("w2", 2), ("w4", 4)] {
        set_weight(ch, "fair-weights", t, w, 0).await?;
    }
    for t in ["w1", "w2", "w4"] {
        flood(ch, "fair-weights", t, a.fair_jobs).await?;
    }
    let w = Workers::start(addr, "fair-weights", 4, 256, None).await?;
    // Measure while all three are still backlogged (the weight-4 tenant
    // runs dry first, after 4/7 of deliveries for 1/3 of the jobs).
    let window = a.fair_jobs * 7 / 4 * 9 / 10;
    while w.acked.load(Ordering::Relaxed) < window {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seen = w.stop()?;
    let counted = &seen.order[..seen.order.len().min(window as usize)];
    let share = |t: &str| counted.iter().filter(|x| *x == t).count() as f64 / counted.len() as f64;
    let weights = format!(
        "w1 {:.2}% (target 14.29%), w2 {:.2}% (28.57%), w4 {:.2}% (57.14%) over {} deliveries",
        share("w1") * 100.0,
        share("w2") * 100.0,
        share("w4") * 100.0,
        counted.len()
    );

    create(ch, "fair-equal").await?;
    for t in 0..10 {
        flood(ch, "fair-equal", &format!("e{t}"), a.fair_jobs / 5).await?;
    }
    let w = Workers::start(addr, "fair-equal", 4, 256, None).await?;
    let window = a.fair_jobs * 10 / 5 / 2;
    while w.acked.load(Ordering::Relaxed) < window {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seen = w.stop()?;
    let counted = &seen.order[..seen.order.len().min(window as usize)];
    let xs: Vec<f64> = (0..10).map(|t| counted.iter().filter(|x| **x == format!("e{t}")).count() as f64).collect();
    let jain = xs.iter().sum::<f64>().powi(2) / (xs.len() as f64 * xs.iter().map(|x| x * x).sum::<f64>());
    Ok(format!("| weights 1:2:4, all backlogged | {weights} | equal weights, 10 tenants: Jain's index {jain:.4} |"))
}

async fn scenario_hung(addr: &str, ch: &Client, a: &FairnessArgs) -> BenchResult<String> {
    let run = |queue: String, with_hung: bool| {
        let ch = ch.clone();
        let n = a.fair_jobs;
        let addr = addr.to_string();
        async move {
            let queue = queue.as_str();
            create(&ch, queue).await?;
            if with_hung {
                set_weight(&ch, queue, "a", 1, 64).await?;
                flood(&ch, queue, "a", n).await?;
            }
            flood(&ch, queue, "b", n).await?;
            let w = Workers::start(&addr, queue, 4, 256, with_hung.then_some("a")).await?;
            let start = Instant::now();
            loop {
                let b = w.seen.lock().map_err(|_| "poisoned")?.latency.get("b").map_or(0, Vec::len) as u64;
                if b >= n {
                    break;
                }
                if start.elapsed() > Duration::from_secs(300) {
                    return Err("hung-tenant scenario did not finish in 300 s".into());
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let rate = n as f64 / start.elapsed().as_secs_f64();
            w.stop()?;
            BenchResult::Ok(rate)
        }
    };
    // Alternate the two cases and compare medians, so a passing slowdown of
    // the machine doesn't land on one side only.
    let (mut alone, mut hung) = (Vec::new(), Vec::new());
    for round in 0..3 {
        alone.push(run(format!("fair-b-alone-{round}"), false).await?);
        hung.push(run(format!("fair-b-hung-{round}"), true).await?);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (alone, with_hung) = (median(&mut alone), median(&mut hung));
    Ok(format!(
        "| hung tenant: a's jobs never acked (a limited to 64 in flight), b drains {} jobs (median of 3 alternating runs) | b alone {:.0} jobs/s | b next to hung a {:.0} jobs/s ({:.0}%) |",
        a.fair_jobs,
        alone,
        with_hung,
        100.0 * with_hung / alone
    ))
}

/// Cost of a scheduling decision with many active tenants: the pure
/// scheduler alone, then leases through the broker over tenants with one
/// job each (every lease a different tenant, the worst case for caches).
async fn scenario_many_tenants(addr: &str, ch: &Client, a: &FairnessArgs) -> BenchResult<String> {
    let tenants = a.many_tenants;
    let mut s = fairway::scheduler::FairScheduler::new();
    let names: Vec<String> = (0..tenants).map(|t| format!("t{t}")).collect();
    for (i, t) in names.iter().enumerate() {
        s.activate(t, "e");
        if i % 7 == 0 {
            s.set_tenant_weight(t, 3);
        }
    }
    let picks = 1_000_000u64;
    let start = Instant::now();
    for _ in 0..picks {
        std::hint::black_box(s.next(|_, _| true));
    }
    let ns = start.elapsed().as_nanos() as f64 / picks as f64;

    create(ch, "fair-many").await?;
    let mut c = ch.jobs();
    for chunk in names.chunks(1000) {
        let jobs = chunk.iter().map(|t| stamped("fair-many", t)).collect();
        c.enqueue_batch(pb::EnqueueBatchRequest { jobs }).await?;
    }
    let w = Workers::start(addr, "fair-many", 4, 256, None).await?;
    let start = Instant::now();
    while w.acked.load(Ordering::Relaxed) < tenants as u64 {
        if start.elapsed() > Duration::from_secs(300) {
            return Err("many-tenants scenario did not finish in 300 s".into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let rate = tenants as f64 / start.elapsed().as_secs_f64();
    w.stop()?;
    Ok(format!(
        "| {tenants} active tenants | scheduler alone: {ns:.0} ns per pick | leased and acked through the broker, one job per tenant: {rate:.0} jobs/s |"
    ))
}

/// Runs the scenarios; returns markdown table rows.
pub async fn run(addr: &str, ch: &Client, a: &FairnessArgs, wants: &dyn Fn(&str) -> bool) -> BenchResult<Vec<String>> {
    let mut rows = Vec::new();
    if a.flood_jobs == 0 {
        return Ok(rows);
    }
    if wants("flood") {
        rows.push(scenario_flood(addr, ch, a).await?);
    }
    if wants("weights") {
        rows.push(scenario_weights(addr, ch, a).await?);
    }
    if wants("hung") {
        rows.push(scenario_hung(addr, ch, a).await?);
    }
    if wants("tenants") {
        rows.push(scenario_many_tenants(addr, ch, a).await?);
    }
    Ok(rows)
}
