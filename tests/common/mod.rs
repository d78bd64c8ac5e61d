//! Shared harness: a real server on an ephemeral port with a temp data dir,
//! and small helpers to talk gRPC to it.
#![allow(dead_code)]

use fairway::config::ServeConfig;
use fairway::pb;
use fairway::pb::admin_service_client::AdminServiceClient;
use fairway::pb::job_service_client::JobServiceClient;
use fairway::pb::worker_service_client::WorkerServiceClient;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::oneshot;
use tonic::transport::Channel;

pub struct TestServer {
    pub addr: SocketAddr,
    /// `/metrics` and the dashboard.
    pub http_addr: SocketAddr,
    pub channel: Channel,
    pub data_dir: PathBuf,
    /// Sent: graceful stop. Dropped unsent: the server is abandoned at once.
    stop: Option<oneshot::Sender<()>>,
    /// The broker's own thread and runtime, like a process of its own. Its
    /// end means RocksDB is closed: a test binary must not exit while a
    /// database closes, or RocksDB aborts it ("pthread lock: Invalid
    /// argument"), so dropping a `TestServer` joins it.
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
    /// Removed only after the thread ended, so storage never loses its
    /// files while still open.
    _tmp: Option<tempfile::TempDir>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // Not stopped: abandon the server (like a crash, minus losing
        // acknowledged writes) and wait until its storage is closed.
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl TestServer {
    pub async fn start() -> TestServer {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().to_path_buf();
        let mut s = TestServer::start_in(&dir).await;
        s._tmp = Some(tmp);
        s
    }

    pub async fn start_in(dir: &Path) -> TestServer {
        TestServer::start_at(dir, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Like `start_in`, listening on `listen`: a broker restarted on its old
    /// address is found again by workers that reconnect.
    pub async fn start_at(dir: &Path, listen: SocketAddr) -> TestServer {
        let mut config = ServeConfig::for_dir(dir);
        config.listen = listen;
        TestServer::start_config(config).await
    }

    /// A broker in a temp dir with the settings `tune` changes (limits, TLS,
    /// auth file). `channel` is plain HTTP/2: a TLS test makes its own.
    pub async fn start_with(tune: impl FnOnce(&mut ServeConfig)) -> TestServer {
        let tmp = tempfile::tempdir().expect("temp dir");
        let mut config = ServeConfig::for_dir(tmp.path());
        tune(&mut config);
        let mut s = TestServer::start_config(config).await;
        s._tmp = Some(tmp);
        s
    }

    pub async fn start_config(mut config: ServeConfig) -> TestServer {
        if config.partitions.is_none() {
            config.partitions = test_partitions();
        }
        let dir = config.data_dir.clone();
        let (hold, tls) = (config.recovery_hold, config.tls_cert.is_some());
        let (bound_tx, bound) = oneshot::channel::<(SocketAddr, SocketAddr)>();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("test-broker".into())
            .spawn(move || serve_on_own_runtime(config, bound_tx, stopped))
            .expect("server thread");
        let Ok((addr, http_addr)) = bound.await else {
            let e = thread.join().expect("server thread").err().unwrap_or_default();
            panic!("test broker did not start: {e}");
        };
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{addr}")).expect("endpoint").connect_lazy();
        let s =
            TestServer { addr, http_addr, channel, data_dir: dir, _tmp: None, stop: Some(stop), thread: Some(thread) };
        // Health says NOT_SERVING until the writer has recovered; tests
        // that don't hold recovery start from a serving broker.
        if hold.is_zero() && !tls {
            let serving = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
            eventually(Duration::from_secs(30), || async {
                let ended = s.thread.as_ref().is_some_and(|t| t.is_finished());
                assert!(!ended, "test broker stopped while starting (its error is printed above)");
                let mut h = tonic_health::pb::health_client::HealthClient::new(s.channel.clone());
                let r = h.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await;
                r.ok().filter(|r| r.get_ref().status == serving).map(|_| ())
            })
            .await;
        }
        s
    }

    pub fn jobs(&self) -> JobServiceClient<Channel> {
        JobServiceClient::new(self.channel.clone())
    }

    pub fn workers(&self) -> WorkerServiceClient<Channel> {
        WorkerServiceClient::new(self.channel.clone())
    }

    pub fn admin(&self) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.channel.clone())
    }

    /// A client on a connection of its own (`channel` is one shared
    /// HTTP/2 connection).
    pub async fn fresh_channel(&self) -> Channel {
        tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect")
    }

    /// The overall gRPC health status, on a connection of its own.
    pub async fn health(&self) -> Result<i32, tonic::Status> {
        let mut h = tonic_health::pb::health_client::HealthClient::new(self.fresh_channel().await);
        Ok(h.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await?.into_inner().status)
    }

    /// Fails unless the broker answers health SERVING and a real call.
    pub async fn assert_serving(&self) {
        let serving = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
        assert_eq!(self.health().await.expect("health answers"), serving);
        let mut admin = AdminServiceClient::new(self.fresh_channel().await);
        admin.list_queues(pb::ListQueuesRequest {}).await.expect("the broker still serves calls");
    }

    /// Graceful stop; waits until storage is closed.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let ended = tokio::time::timeout(Duration::from_secs(20), tokio::task::spawn_blocking(move || t.join()))
                .await
                .expect("server stops in time")
                .expect("join task");
            ended.expect("server thread").expect("server run");
        }
    }

    pub async fn create_queue(&self, name: &str, config: pb::QueueConfig) {
        self.admin()
            .create_queue(pb::CreateQueueRequest { name: name.into(), config: Some(config) })
            .await
            .expect("create queue");
    }

    pub async fn enqueue(&self, req: pb::EnqueueRequest) -> pb::EnqueueResponse {
        self.jobs().enqueue(req).await.expect("enqueue").into_inner()
    }

    pub async fn stats(&self, queue: &str) -> pb::QueueStats {
        self.admin()
            .get_queue_stats(pb::GetQueueStatsRequest { queue: queue.into() })
            .await
            .expect("stats")
            .into_inner()
    }

    /// Long-polls up to `wait` for up to `max` jobs.
    pub async fn lease(&self, queue: &str, max: u32, wait: Duration, lease: Option<Duration>) -> Vec<pb::Delivery> {
        self.workers()
            .lease(pb::LeaseRequest {
                queues: vec![queue.into()],
                max_jobs: max,
                wait: Some(dur(wait)),
                lease_duration: lease.map(dur),
                worker_id: "test".into(),
                worker_version: String::new(),
            })
            .await
            .expect("lease")
            .into_inner()
            .deliveries
    }

    pub async fn ack(&self, queue: &str, d: &pb::Delivery) -> Result<(), tonic::Status> {
        let job = d.job.as_ref().expect("job");
        self.workers()
            .ack(pb::AckRequest { queue: queue.into(), job_id: job.id.clone(), lease_id: d.lease_id.clone() })
            .await
            .map(|_| ())
    }
}

/// Partitions for the brokers tests start on new data dirs:
/// `FAIRWAY_TEST_PARTITIONS` (CI runs the guarantees' suites again with 4),
/// else the broker's default.
pub fn test_partitions() -> Option<u32> {
    std::env::var("FAIRWAY_TEST_PARTITIONS").ok().and_then(|v| v.parse().ok())
}

/// Runs `fairway::server::run` on a runtime of its own until `stopped`:
/// graceful when it is sent, abandoned when its sender is dropped. Returns
/// once the runtime, and with it every broker handle, is gone.
fn serve_on_own_runtime(
    config: ServeConfig,
    bound: oneshot::Sender<(SocketAddr, SocketAddr)>,
    stopped: oneshot::Receiver<()>,
) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let result = rt.block_on(async move {
        // Bound here: a listener is driven by the runtime that made it.
        let listeners = fairway::server::Listeners::bind(&config).await.map_err(|e| format!("bind: {e}"))?;
        let addr = listeners.grpc.local_addr().map_err(|e| e.to_string())?;
        let http = listeners.http.as_ref().ok_or("no metrics listener")?.local_addr().map_err(|e| e.to_string())?;
        let (graceful_tx, graceful) = oneshot::channel::<()>();
        let run = fairway::server::run(listeners, &config, async {
            let _ = graceful.await;
        });
        tokio::pin!(run);
        let _ = bound.send((addr, http));
        tokio::select! {
            r = &mut run => r.map_err(|e| e.to_string()),
            how = stopped => match how {
                Ok(()) => {
                    let _ = graceful_tx.send(());
                    run.await.map_err(|e| e.to_string())
                }
                Err(_) => Ok(()),
            },
        }
    });
    drop(rt);
    if let Err(e) = &result {
        eprintln!("test broker stopped with an error: {e}");
    }
    result
}

pub fn dur(d: Duration) -> prost_types::Duration {
    prost_types::Duration { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}

pub fn job(queue: &str, tenant: &str, env: &str, payload: &str) -> pb::EnqueueRequest {
    pb::EnqueueRequest {
        queue: queue.into(),
        tenant: tenant.into(),
        environment: env.into(),
        payload: payload.as_bytes().to_vec().into(),
        ..Default::default()
    }
}

pub fn payload_of(d: &pb::Delivery) -> String {
    String::from_utf8(d.job.as_ref().expect("job").payload.to_vec()).expect("utf8")
}

/// A worker that keeps the broker busy while a test runs: it leases from
/// `queue`, acks the jobs of `busy_tenant` (until `count` are acked) and
/// hands every other job straight back (nack, ready again at once), so
/// those stay live.
pub fn spawn_busy_worker(
    channel: Channel,
    queue: &str,
    busy_tenant: &str,
    count: usize,
) -> tokio::task::JoinHandle<()> {
    let (queue, busy) = (queue.to_string(), busy_tenant.to_string());
    tokio::spawn(async move {
        let mut w = WorkerServiceClient::new(channel);
        let mut acked = 0;
        while acked < count {
            let lease = pb::LeaseRequest {
                queues: vec![queue.clone()],
                max_jobs: 20,
                wait: Some(dur(Duration::from_secs(5))),
                ..Default::default()
            };
            for d in w.lease(lease).await.expect("lease").into_inner().deliveries {
                let j = d.job.expect("job");
                if j.tenant == busy {
                    w.ack(pb::AckRequest { queue: queue.clone(), job_id: j.id, lease_id: d.lease_id })
                        .await
                        .expect("ack");
                    acked += 1;
                } else {
                    let back = pb::NackRequest {
                        queue: queue.clone(),
                        job_id: j.id,
                        lease_id: d.lease_id,
                        retry_after: Some(dur(Duration::ZERO)),
                        ..Default::default()
                    };
                    w.nack(back).await.expect("nack");
                }
            }
        }
    })
}

/// Polls `f` until it returns Some, or fails after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "condition not met within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A plain HTTP/1.1 request (the tests need no HTTP client crate):
/// returns the status code and the body.
pub async fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    http_with(addr, method, path, &[]).await
}

/// [`http`] with extra request headers.
pub async fn http_with(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect to the metrics port");
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    let req =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("send");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("read");
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").expect("http response");
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("status code");
    // Bodies may come chunked: join the chunks.
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).expect("chunk size");
            if n == 0 {
                break;
            }
            out.push_str(&after[..n]);
            rest = &after[n + 2..];
        }
        out
    } else {
        body.to_string()
    };
    (status, body)
}

/// The value of one Prometheus sample line (`name{labels}`) in `text`.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A tool from the test venv `scripts/setup` creates (or `$var`).
pub fn tool(var: &str, default_rel: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_default();
        format!("{home}/.cache/fairway/venv/{default_rel}")
    })
}

pub fn python() -> String {
    let p = tool("FAIRWAY_PYTHON", "bin/python");
    assert!(std::path::Path::new(&p).exists(), "{p} missing: run scripts/setup (it creates the test venv)");
    p
}

/// Runs a blocking command off the async runtime; returns stdout on success.
pub async fn run(mut cmd: std::process::Command) -> String {
    let out = tokio::task::spawn_blocking(move || cmd.output()).await.unwrap().expect("spawn");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{:?} failed:\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
