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
    pub channel: Channel,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
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
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let config = ServeConfig::for_dir(dir);
        let task = tokio::spawn(async move {
            fairway::server::run(listener, &config, async {
                let _ = stopped.await;
            })
            .await
            .expect("server run");
        });
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{addr}")).expect("endpoint").connect_lazy();
        TestServer { addr, channel, data_dir: dir.to_path_buf(), _tmp: None, stop: Some(stop), task: Some(task) }
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

    /// Graceful stop; waits until storage is closed.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(20), t).await.expect("server stops in time").expect("join");
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
