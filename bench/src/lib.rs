//! `fairway-bench`: throughput and latency percentiles against a real broker
//! process, started here on a temp dir from the `fairway` binary (the one
//! next to this one, or `--broker-bin`, so two builds can be compared).
//!
//! Scenarios: unary `Enqueue` with many concurrent callers; `EnqueueBatch`;
//! end to end (producers batch-enqueue while workers on `Work` streams ack);
//! restart time with a stored backlog; and, only when asked for by name, the
//! soak ([`soak`]). Every enqueue is fsynced unless the broker runs with
//! `--durability relaxed`.

use fairway::client::{Client, ClientConfig, Conn, WorkEvent};
use fairway::pb;
use fairway::pb::worker_service_client::WorkerServiceClient;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub mod backlog;
pub mod fairness;
pub mod paced;
pub mod peers;
pub mod soak;

pub type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Jobs per throughput scenario.
    #[arg(long, default_value_t = 50_000)]
    pub jobs: u64,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 100)]
    pub payload_bytes: usize,
    /// Concurrent unary callers.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Jobs per EnqueueBatch call.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Tenants the unary, stream, batch and end-to-end jobs are spread over
    /// (t0, t1, ...). 1 = one tenant, which lives in one partition: that
    /// partition's rate is the most one tenant gets.
    #[arg(long, default_value_t = 16)]
    pub tenants: usize,
    /// Work streams in the end-to-end scenario.
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Prefetch window of each Work stream.
    #[arg(long, default_value_t = 256)]
    pub max_in_flight: u32,
    /// End to end: most acks a worker sends in one message (an `AckBatch`
    /// of the deliveries that arrived together); 1 = one Ack per job.
    #[arg(long, default_value_t = 1)]
    pub ack_batch: usize,
    /// Stop the backlog broker with `kill -9` (not SIGTERM) before measuring restart,
    /// so the restart replays the WAL as after a crash.
    #[arg(long)]
    pub crash: bool,
    /// Broker durability for the broker started here.
    #[arg(long, value_enum, default_value = "strict")]
    pub durability: fairway::storage::Durability,
    /// The broker binary to measure (default: `fairway` next to this
    /// program). Point it at another build to compare two side by side.
    #[arg(long, env = "FAIRWAY_BROKER_BIN")]
    pub broker_bin: Option<std::path::PathBuf>,
    /// An extra argument for the broker's `serve`, repeatable, e.g.
    /// `--broker-arg=--partitions=4`.
    #[arg(long = "broker-arg", allow_hyphen_values = true)]
    pub broker_args: Vec<String>,
    /// Data dir for the broker started here (default: a fresh temp dir).
    #[arg(long)]
    pub data_dir: Option<std::path::PathBuf>,
    /// Rate of the paced scenario; 0 = half of the end-to-end result.
    #[arg(long, default_value_t = 0.0)]
    pub paced_rate: f64,
    /// Scenarios to run, comma separated: unary, stream, batch, e2e, paced, expiry,
    /// flood, weights, hung, tenants, backlog; or `all`. `--peers --scenarios peers` runs
    /// only the peer comparison. `soak` (a mixed load on a broker of its own for
    /// --soak-secs, 10 minutes by default, with a PASS/FAIL verdict) is long, so it is
    /// not part of `all`: name it.
    #[arg(long, value_delimiter = ',', default_value = "all")]
    pub scenarios: Vec<String>,
    #[command(flatten)]
    pub fairness: crate::fairness::FairnessArgs,
    #[command(flatten)]
    pub backlog: crate::backlog::BacklogArgs,
    #[command(flatten)]
    pub peers: crate::peers::PeerArgs,
    #[command(flatten)]
    pub soak: crate::soak::SoakArgs,
}

/// Scenarios `all` leaves out: they run only when named.
const NOT_IN_ALL: &[&str] = &["soak"];

impl BenchArgs {
    /// Whether the scenario `name` was asked for.
    pub fn wants(&self, name: &str) -> bool {
        self.scenarios.iter().any(|s| s == name || (s == "all" && !NOT_IN_ALL.contains(&name)))
    }
}

/// Latency samples in microseconds.
#[derive(Default)]
pub(crate) struct Samples(pub(crate) Vec<u64>);

impl Samples {
    pub(crate) fn pct(&mut self, p: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        self.0.sort_unstable();
        let i = ((self.0.len() as f64 - 1.0) * p).round() as usize;
        self.0[i] as f64 / 1000.0
    }
}

struct Row {
    name: String,
    jobs: u64,
    secs: f64,
    lat: Samples,
    note: String,
    /// Broker CPU time (all its threads) per job: unlike jobs/s, it barely
    /// moves when something else shares the machine.
    cpu_us: Option<f64>,
}

/// CPU seconds (user + system, all threads) a process has used so far.
/// /proc reports clock ticks, which Linux fixes at 100 per second.
pub(crate) fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the `(comm)`, which may itself hold spaces.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// How the bench starts a broker: which binary, with which settings.
#[derive(Debug, Clone)]
pub struct BrokerLaunch {
    /// The `fairway` binary.
    pub bin: std::path::PathBuf,
    pub durability: fairway::storage::Durability,
    /// Appended to `serve`'s arguments.
    pub extra: Vec<String>,
}

impl BrokerLaunch {
    /// From the bench's arguments: `--broker-bin`, else `fairway` in this
    /// program's directory (or its parent, for a test binary in `deps/`).
    pub fn from_args(a: &BenchArgs) -> BenchResult<BrokerLaunch> {
        let bin = match &a.broker_bin {
            Some(b) => b.clone(),
            None => default_broker_bin()?,
        };
        Ok(BrokerLaunch { bin, durability: a.durability, extra: a.broker_args.clone() })
    }
}

fn default_broker_bin() -> BenchResult<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().ok_or("the bench's own path has no directory")?;
    for d in [Some(dir), dir.parent()].into_iter().flatten() {
        let bin = d.join("fairway");
        if bin.is_file() {
            return Ok(bin);
        }
    }
    Err(format!(
        "no `fairway` binary next to {} (build it with `cargo build --release --bin fairway`, or pass --broker-bin)",
        exe.display()
    )
    .into())
}

pub struct BrokerProc {
    child: Child,
    pub addr: String,
}

impl BrokerProc {
    pub fn start(dir: &std::path::Path, launch: &BrokerLaunch) -> BenchResult<BrokerProc> {
        BrokerProc::start_logging(dir, launch, "warn")
    }

    /// Like `start`, with the broker's `RUST_LOG` filter.
    pub fn start_logging(dir: &std::path::Path, launch: &BrokerLaunch, rust_log: &str) -> BenchResult<BrokerProc> {
        let mut child = Command::new(&launch.bin)
            .args(["serve", "--listen", "127.0.0.1:0", "--metrics-listen", "off", "--durability"])
            .arg(format!("{:?}", launch.durability).to_lowercase())
            .arg("--data-dir")
            .arg(dir)
            .args(&launch.extra)
            .env("RUST_LOG", rust_log)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start the broker {}: {e}", launch.bin.display()))?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().ok_or("no stdout")?).read_line(&mut line)?;
        let addr = line.trim().strip_prefix("fairway listening on ").ok_or("broker did not start")?.to_string();
        Ok(BrokerProc { child, addr: format!("http://{addr}") })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stop(mut self) -> BenchResult<()> {
        Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for BrokerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn now_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// A job of tenant `t{tenant % 16}` (the scenarios with their own tenant
/// count use [`job_of`]).
pub(crate) fn job(queue: &str, tenant: usize, size: usize) -> pb::EnqueueRequest {
    job_of(queue, tenant % 16, size)
}

/// A job of tenant `t{tenant}`.
pub(crate) fn job_of(queue: &str, tenant: usize, size: usize) -> pb::EnqueueRequest {
    let mut payload = vec![b'x'; size.max(8)];
    payload[..8].copy_from_slice(&now_nanos().to_be_bytes());
    pb::EnqueueRequest {
        queue: queue.into(),
        tenant: format!("t{tenant}"),
        payload: payload.into(),
        ..Default::default()
    }
}

/// A client of the bench's broker, waiting up to 5 s for it to listen.
pub(crate) async fn connect(addr: &str) -> BenchResult<Client> {
    let config = ClientConfig { retry_connect_for: Some(Duration::from_secs(5)), ..ClientConfig::new(addr) };
    Ok(Client::connect(&config).await?)
}

pub(crate) async fn create_queue(ch: &Client, name: &str) -> BenchResult<()> {
    Ok(ch.create_queue(name).await?)
}

/// Runs `rounds` calls spread over `tasks` concurrent callers; returns the
/// elapsed seconds and each call's latency. `make` builds one caller.
async fn timed_calls<F, Fut>(tasks: usize, rounds: u64, make: impl Fn() -> F) -> BenchResult<(f64, Samples)>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = BenchResult<()>> + Send,
{
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (next, mut call) = (next.clone(), make());
        handles.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < rounds {
                let t = Instant::now();
                call().await?;
                mine.push(t.elapsed().as_micros() as u64);
            }
            BenchResult::Ok(mine)
        }));
    }
    let mut lat = Samples::default();
    for h in handles {
        lat.0.extend(h.await??);
    }
    Ok((start.elapsed().as_secs_f64(), lat))
}

async fn unary(ch: &Client, a: &BenchArgs) -> BenchResult<Row> {
    create_queue(ch, "bench-unary").await?;
    let (size, tenants) = (a.payload_bytes, a.tenants.max(1));
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (secs, lat) = timed_calls(a.concurrency, a.jobs, || {
        let (c, next) = (ch.jobs(), next.clone());
        move || {
            let mut c = c.clone();
            let tenant = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % tenants;
            async move {
                c.enqueue(job_of("bench-unary", tenant, size)).await?;
                Ok(())
            }
        }
    })
    .await?;
    Ok(Row {
        name: format!("unary Enqueue, {} callers", a.concurrency),
        jobs: a.jobs,
        secs,
        lat,
        note: "per call".into(),
        cpu_us: None,
    })
}

/// One EnqueueStream with `window` jobs sent but not yet confirmed.
async fn pipelined(ch: &Client, a: &BenchArgs, window: usize) -> BenchResult<Row> {
    create_queue(ch, "bench-stream").await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::EnqueueRequest>(window);
    let mut responses = ch.jobs().enqueue_stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
    let sent_at = Arc::new(Mutex::new(std::collections::VecDeque::<Instant>::with_capacity(window)));
    let permits = Arc::new(tokio::sync::Semaphore::new(window));
    let (n, size, tenants) = (a.jobs, a.payload_bytes, a.tenants.max(1));
    let start = Instant::now();
    let producer = {
        let (sent_at, permits) = (sent_at.clone(), permits.clone());
        tokio::spawn(async move {
            for i in 0..n {
                permits.acquire().await?.forget();
                sent_at.lock().map_err(|_| "poisoned")?.push_back(Instant::now());
                tx.send(job_of("bench-stream", i as usize % tenants, size)).await?;
            }
            BenchResult::Ok(())
        })
    };
    let mut lat = Samples::default();
    let mut confirmed = 0u64;
    while confirmed < n {
        let r = responses.message().await?.ok_or("stream ended early")?;
        if !r.error.is_empty() {
            return Err(format!("job refused: {} {}", r.code, r.error).into());
        }
        let t = sent_at.lock().map_err(|_| "poisoned")?.pop_front().ok_or("response without a request")?;
        lat.0.push(t.elapsed().as_micros() as u64);
        permits.add_permits(1);
        confirmed += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    producer.await??;
    Ok(Row {
        name: format!("EnqueueStream, one stream, {window} unconfirmed"),
        jobs: n,
        secs,
        lat,
        note: "per job, sent to stored".into(),
        cpu_us: None,
    })
}

async fn batch(ch: &Client, a: &BenchArgs, queue: &str, jobs: u64, in_flight: usize) -> BenchResult<Row> {
    let batches = jobs.div_ceil(a.batch as u64);
    let (size, per_batch, tenants) = (a.payload_bytes, a.batch, a.tenants.max(1));
    let (secs, lat) = timed_calls(in_flight, batches, || {
        let (c, q) = (ch.jobs(), queue.to_string());
        move || {
            let (mut c, q) = (c.clone(), q.clone());
            async move {
                let jobs = (0..per_batch).map(|i| job_of(&q, i % tenants, size)).collect();
                c.enqueue_batch(pb::EnqueueBatchRequest { jobs }).await?;
                Ok(())
            }
        }
    })
    .await?;
    Ok(Row {
        name: format!("EnqueueBatch of {}, {in_flight} in flight", a.batch),
        jobs: batches * a.batch as u64,
        secs,
        lat,
        note: "per batch".into(),
        cpu_us: None,
    })
}

/// EnqueueBatch calls in flight in the batch and end-to-end scenarios.
const BATCHES_IN_FLIGHT: usize = 8;

/// Producers batch-enqueue while workers on Work streams ack everything.
async fn end_to_end(ch: &Client, a: &BenchArgs, queue: &str) -> BenchResult<(Row, Row)> {
    create_queue(ch, queue).await?;
    let total = a.jobs.div_ceil(a.batch as u64) * a.batch as u64;
    let acked = Arc::new(AtomicU64::new(0));
    let delivery_lat = Arc::new(Mutex::new(Samples::default()));
    let ack_lat = Arc::new(Mutex::new(Samples::default()));
    let start = Instant::now();
    let mut workers = Vec::new();
    for w in 0..a.workers {
        let (ch, acked, dl, al, a) = (ch.clone(), acked.clone(), delivery_lat.clone(), ack_lat.clone(), a.clone());
        let queue = queue.to_string();
        workers.push(tokio::spawn(async move {
            let sub = pb::Subscribe {
                queues: vec![queue],
                worker_id: format!("bench-{w}"),
                max_in_flight: a.max_in_flight,
                ..Default::default()
            };
            let mut work = ch.work(sub).await?;
            let settler = work.settler();
            let mut sent: HashMap<String, Instant> = HashMap::new();
            let mut done: Vec<pb::Delivery> = Vec::new();
            let limit = a.ack_batch.clamp(1, fairway::limits::MAX_ACKS_PER_MESSAGE);
            loop {
                // With acks batched, what arrived together is acked together:
                // a message already buffered is taken without waiting.
                let event = if done.is_empty() {
                    work.next().await?
                } else {
                    match futures::FutureExt::now_or_never(work.next()) {
                        Some(e) => e?,
                        None => {
                            settler.ack_all(&done).await?;
                            done.clear();
                            continue;
                        }
                    }
                };
                let Some(event) = event else { break };
                match event {
                    WorkEvent::Delivery(d) => {
                        let job = d.job.as_ref().ok_or("delivery without job")?;
                        let ts = u64::from_be_bytes(job.payload[..8].try_into()?);
                        dl.lock().map_err(|_| "poisoned")?.0.push(now_nanos().saturating_sub(ts) / 1000);
                        sent.insert(job.id.clone(), Instant::now());
                        if limit == 1 {
                            settler.ack(&d).await?;
                        } else {
                            done.push(d);
                            if done.len() >= limit {
                                settler.ack_all(&done).await?;
                                done.clear();
                            }
                        }
                    }
                    WorkEvent::Outcome(o) => {
                        if !o.ok {
                            return Err(format!("ack failed: {}", o.error).into());
                        }
                        if let Some(t) = sent.remove(&o.job_id) {
                            al.lock().map_err(|_| "poisoned")?.0.push(t.elapsed().as_micros() as u64);
                        }
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            BenchResult::Ok(())
        }));
    }
    batch(ch, a, queue, total, BATCHES_IN_FLIGHT).await?;
    let deadline = Instant::now() + Duration::from_secs(300);
    while acked.load(Ordering::Relaxed) < total {
        if let Some(w) = workers.iter().find(|w| w.is_finished()) {
            return Err(format!("a worker stopped early: {:?}", w.is_finished()).into());
        }
        if Instant::now() > deadline {
            return Err("end-to-end run did not finish in 300s".into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    for w in workers {
        w.abort();
    }
    let dl = std::mem::take(&mut *delivery_lat.lock().map_err(|_| "poisoned")?);
    let al = std::mem::take(&mut *ack_lat.lock().map_err(|_| "poisoned")?);
    let acks = if a.ack_batch > 1 { format!(", acks in batches of up to {}", a.ack_batch) } else { String::new() };
    let name = format!("end to end, {} Work streams x {} in flight{acks}", a.workers, a.max_in_flight);
    Ok((
        Row {
            name: name.clone(),
            jobs: total,
            secs,
            lat: dl,
            note: "enqueue-to-delivery (at full load)".into(),
            cpu_us: None,
        },
        Row { name, jobs: total, secs, lat: al, note: "ack sent to ack confirmed".into(), cpu_us: None },
    ))
}

/// Leases jobs with a 1 s lease, lets the leases run out, and measures how
/// long after each expiry the job is delivered again.
async fn expiry_redelivery(w: &mut WorkerServiceClient<Conn>) -> BenchResult<Samples> {
    let lease = |max: u32, wait: Duration| pb::LeaseRequest {
        queues: vec!["bench-expiry".into()],
        max_jobs: max,
        wait: Some(fairway::broker::view::duration(wait)),
        lease_duration: Some(fairway::broker::view::duration(Duration::from_secs(1))),
        worker_id: "bench-expiry".into(),
        worker_version: String::new(),
    };
    let first = w.lease(lease(50, Duration::ZERO)).await?.into_inner().deliveries;
    let mut expires: HashMap<String, u64> = HashMap::new();
    for d in &first {
        let (Some(j), Some(t)) = (&d.job, &d.lease_expires_at) else { continue };
        expires.insert(j.id.clone(), t.seconds as u64 * 1_000_000_000 + t.nanos as u64);
    }
    let mut out = Samples::default();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !expires.is_empty() && Instant::now() < deadline {
        for d in w.lease(lease(50, Duration::from_secs(5))).await?.into_inner().deliveries {
            let j = d.job.ok_or("no job")?;
            if let Some(exp) = expires.remove(&j.id) {
                out.0.push(now_nanos().saturating_sub(exp) / 1000);
            }
            w.ack(pb::AckRequest { queue: j.queue, job_id: j.id, lease_id: d.lease_id }).await?;
        }
    }
    if !expires.is_empty() {
        return Err(format!("{} expired jobs were not redelivered within 30 s", expires.len()).into());
    }
    Ok(out)
}

/// fdatasync rate of the data dir's disk, for reading results against it.
fn fsync_rate(dir: &std::path::Path) -> BenchResult<f64> {
    let path = dir.join("fsync-probe");
    let mut f = std::fs::OpenOptions::new().create(true).truncate(true).write(true).open(&path)?;
    let buf = [7u8; 4096];
    let start = Instant::now();
    let n = 200;
    for _ in 0..n {
        f.write_all(&buf)?;
        f.sync_data()?;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    std::fs::remove_file(path)?;
    Ok(rate)
}

/// Runs the scenarios `a` asks for and writes their tables to `out`
/// (progress goes to stderr). A soak that fails is an error.
pub async fn run(a: BenchArgs, out: &mut (dyn Write + Send)) -> BenchResult<()> {
    let tmp;
    let dir = match &a.data_dir {
        Some(d) => d.clone(),
        None => {
            tmp = std::env::temp_dir().join(format!("fairway-bench-{}", std::process::id()));
            tmp.clone()
        }
    };
    std::fs::create_dir_all(&dir)?;
    let fsyncs = fsync_rate(&dir)?;
    let launch = BrokerLaunch::from_args(&a)?;
    let broker = BrokerProc::start(&dir.join("main"), &launch)?;
    let ch = connect(&broker.addr).await?;
    eprintln!(
        "bench: broker {} at {} on {} ({:?} {:?})",
        launch.bin.display(),
        broker.addr,
        dir.display(),
        a.durability,
        launch.extra
    );
    let mut rows: Vec<Row> = Vec::new();
    let cpu = || cpu_secs(broker.pid());
    // Charges the broker CPU used since `before` to the rows added since `from`.
    let charge = |rows: &mut Vec<Row>, from: usize, before: Option<f64>| {
        if let (Some(b), Some(a)) = (before, cpu_secs(broker.pid())) {
            for r in &mut rows[from..] {
                r.cpu_us = Some((a - b) * 1e6 / r.jobs.max(1) as f64);
            }
        }
    };
    if a.wants("unary") {
        let (from, before) = (rows.len(), cpu());
        rows.push(unary(&ch, &a).await?);
        charge(&mut rows, from, before);
    }
    if a.wants("stream") {
        let (from, before) = (rows.len(), cpu());
        rows.push(pipelined(&ch, &a, 256).await?);
        charge(&mut rows, from, before);
    }
    if a.wants("batch") {
        create_queue(&ch, "bench-batch").await?;
        let (from, before) = (rows.len(), cpu());
        rows.push(batch(&ch, &a, "bench-batch", a.jobs, 8).await?);
        charge(&mut rows, from, before);
    }
    let mut e2e_max = None;
    if a.wants("e2e") {
        let (from, before) = (rows.len(), cpu());
        let (e2e, acks) = end_to_end(&ch, &a, "bench-e2e").await?;
        e2e_max = Some(e2e.jobs as f64 / e2e.secs);
        rows.push(e2e);
        rows.push(acks);
        charge(&mut rows, from, before);
    }
    if a.wants("paced") {
        let rate = if a.paced_rate > 0.0 { a.paced_rate } else { e2e_max.map_or(40_000.0, |m| m / 2.0) };
        let (from, before) = (rows.len(), cpu());
        let p = crate::paced::run(&broker.addr, rate, a.jobs, a.payload_bytes).await?;
        rows.push(Row {
            name: format!("paced end to end at {:.0} jobs/s (half the end-to-end maximum)", p.rate),
            jobs: p.jobs,
            secs: p.jobs as f64 / p.achieved,
            lat: p.latency,
            note: "enqueue-to-delivery".into(),
            cpu_us: None,
        });
        charge(&mut rows, from, before);
    }
    // Fairway's row of the Peers table: the same scenario at the peers' sizes.
    let mut peer_rows = Vec::new();
    if a.peers.peers {
        let batch = crate::peers::fairway_batch(BATCHES_IN_FLIGHT);
        let sizes = BenchArgs {
            jobs: a.peers.peer_messages,
            payload_bytes: crate::peers::PAYLOAD,
            workers: crate::peers::CONSUMERS,
            max_in_flight: crate::peers::PREFETCH as u32,
            batch,
            ..a.clone()
        };
        let (e2e, _) = end_to_end(&ch, &sizes, "bench-peers").await?;
        let mut s = crate::peers::Summary { messages: e2e.jobs, secs: e2e.secs, lat_us: e2e.lat.0 };
        let strict = a.durability == fairway::storage::Durability::Strict;
        peer_rows.push(crate::peers::fairway_row(strict, batch, BATCHES_IN_FLIGHT, &mut s));
    }
    let fairness = crate::fairness::run(&broker.addr, &ch, &a.fairness, &|s| a.wants(s)).await?;

    let mut expiry_note = String::from("skipped");
    if a.wants("expiry") {
        create_queue(&ch, "bench-expiry").await?;
        batch(&ch, &a, "bench-expiry", 100, 1).await?;
        let mut lat = expiry_redelivery(&mut ch.workers()).await?;
        expiry_note = format!("expired lease to redelivery p50 {:.0} ms, max {:.0} ms", lat.pct(0.5), lat.pct(1.0));
    }
    drop(ch);
    broker.stop()?;
    let mut backlog = Vec::new();
    if a.wants("backlog") {
        let bdir = dir.join("backlog");
        backlog = crate::backlog::run(&bdir, &launch, a.crash, &a.backlog, a.payload_bytes).await?;
    }

    if !rows.is_empty() {
        writeln!(out, "| scenario | jobs | jobs/s | p50 ms | p99 ms | p99.9 ms | latency of | broker CPU µs/job |")?;
        writeln!(out, "|---|---:|---:|---:|---:|---:|---|---:|")?;
        for mut r in rows {
            writeln!(
                out,
                "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} |",
                r.name,
                r.jobs,
                r.jobs as f64 / r.secs,
                r.lat.pct(0.5),
                r.lat.pct(0.99),
                r.lat.pct(0.999),
                r.note,
                r.cpu_us.map_or("-".to_string(), |c| format!("{c:.1}")),
            )?;
        }
    }
    if !fairness.is_empty() {
        writeln!(out)?;
        writeln!(out, "| fairness scenario | result | baseline |")?;
        writeln!(out, "|---|---|---|")?;
        for row in &fairness {
            writeln!(out, "{row}")?;
        }
    }
    if !backlog.is_empty() {
        writeln!(out)?;
        writeln!(out, "Backlog (a broker of its own):")?;
        writeln!(out)?;
        for line in &backlog {
            writeln!(out, "{line}")?;
        }
    }
    writeln!(out)?;
    writeln!(out, "Lease expiry: {expiry_note}")?;
    writeln!(out, "Disk: {fsyncs:.0} fdatasync/s on the data dir ({:.2} ms each)", 1000.0 / fsyncs)?;
    writeln!(
        out,
        "Durability: {:?}; payload {} B; machine: {} cores",
        a.durability,
        a.payload_bytes,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    )?;
    if a.peers.peers {
        peer_rows.extend(crate::peers::run(&a.peers).await?);
        crate::peers::print_table(out, &peer_rows)?;
    }
    let soaked = if a.wants("soak") { soak(&dir.join("soak"), &a, &launch, out).await } else { Ok(()) };
    if a.data_dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    soaked
}

/// The soak scenario, on a broker of its own: a line per sample, then the
/// summary and verdict; a FAIL is an error, so the bench exits non-zero.
async fn soak(
    dir: &std::path::Path,
    a: &BenchArgs,
    launch: &BrokerLaunch,
    out: &mut (dyn Write + Send),
) -> BenchResult<()> {
    // A `--data-dir` reused from an earlier run: the soak starts empty.
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    // The soak dead-letters jobs on purpose: not a warning line each.
    let broker = BrokerProc::start_logging(dir, launch, "warn,fairway::broker::ops=error")?;
    let ch = connect(&broker.addr).await?;
    let secs = a.soak.soak_secs;
    eprintln!("bench: soak for {secs} s on a broker of its own at {}", broker.addr);
    writeln!(out)?;
    let report = crate::soak::run(&ch, broker.pid(), Duration::from_secs(secs)).await?;
    drop(ch);
    broker.stop()?;
    writeln!(out, "{}", report.summary())?;
    let fails = report.check();
    if !fails.is_empty() {
        return Err(format!("soak FAILED: {}", fails.join("; ")).into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    #[test]
    fn all_leaves_out_the_soak_which_runs_only_when_named() {
        let a = Cli::parse_from(["bench"]).bench;
        assert!(a.wants("unary") && a.wants("backlog") && !a.wants("soak"));
        assert_eq!(a.soak.soak_secs, 600);
        let a = Cli::parse_from(["bench", "--scenarios", "soak", "--soak-secs", "60"]).bench;
        assert!(a.wants("soak") && !a.wants("unary"));
        assert_eq!(a.soak.soak_secs, 60);
    }
}
