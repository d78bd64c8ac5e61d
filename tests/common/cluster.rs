//! Clusters of real `fairway serve --cluster` processes on loopback, for
//! the cluster suites: start, kill -9, restart on the same data dir, ask
//! each node for its own view, compare the replicas' stores. Included by
//! the tests that need it (`#[path = "common/cluster.rs"] mod cluster;`).
#![allow(dead_code)]

use super::process::BrokerProcess;
use fairway::pb;
use fairway::pb::admin_service_client::AdminServiceClient;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A free loopback port (bound, then released for the node to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    file: PathBuf,
    /// Per node: its client port.
    grpc: Vec<u16>,
    pub nodes: Vec<Option<BrokerProcess>>,
    pub partitions: u32,
}

impl Cluster {
    pub async fn start(n: usize, partitions: u32) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let mut text = format!("replicas = 3\npartitions = {partitions}\nelection_timeout_ms = 500\n");
        for (i, (grpc, raft)) in ports.iter().enumerate() {
            text +=
                &format!("[[nodes]]\nid = \"n{}\"\ngrpc = \"127.0.0.1:{grpc}\"\nraft = \"127.0.0.1:{raft}\"\n", i + 1);
        }
        let file = dir.path().join("cluster.toml");
        std::fs::write(&file, text).expect("write cluster file");
        let mut c = Cluster { dir, file, grpc: ports.iter().map(|p| p.0).collect(), nodes: Vec::new(), partitions };
        for i in 0..n {
            let node = c.spawn(i).await;
            c.nodes.push(Some(node));
        }
        c
    }

    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("n{}", i + 1))
    }

    async fn spawn(&self, i: usize) -> BrokerProcess {
        let id = format!("n{}", i + 1);
        let extra = ["--cluster", self.file.to_str().expect("utf-8 path"), "--node-id", &id];
        BrokerProcess::spawn_at(&self.data_dir(i), &format!("127.0.0.1:{}", self.grpc[i]), &extra).await
    }

    /// Starts node `i` again on its data dir (after a kill).
    pub async fn restart(&mut self, i: usize) {
        assert!(self.nodes[i].is_none(), "node {i} is running");
        let node = self.spawn(i).await;
        self.nodes[i] = Some(node);
    }

    pub fn kill9(&mut self, i: usize) {
        self.nodes[i].as_mut().expect("live node").kill9();
        self.nodes[i] = None;
    }

    pub fn channel(&self, i: usize) -> tonic::transport::Channel {
        self.nodes[i].as_ref().expect("live node").channel.clone()
    }

    pub fn live(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&i| self.nodes[i].is_some()).collect()
    }

    /// Node `i`'s own view of the cluster (never forwarded).
    pub async fn status(&self, i: usize) -> Result<pb::ClusterStatus, tonic::Status> {
        let mut admin = AdminServiceClient::new(self.channel(i));
        Ok(admin.get_cluster_status(pb::GetClusterStatusRequest {}).await?.into_inner())
    }

    /// Which live node is the home, as every live node agrees.
    pub async fn home(&self, within: Duration) -> usize {
        let since = Instant::now();
        loop {
            let mut homes = Vec::new();
            for i in self.live() {
                homes.push(self.status(i).await.ok().map(|s| s.home_node_id));
            }
            if let Some(Some(h)) = homes.first() {
                if !h.is_empty() && homes.iter().all(|x| x.as_ref() == Some(h)) {
                    let i: usize = h.trim_start_matches('n').parse().expect("node name n<i>");
                    if self.nodes[i - 1].is_some() {
                        return i - 1;
                    }
                }
            }
            assert!(since.elapsed() < within, "no home agreed on within {within:?}: {homes:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every live node has applied, in every partition, the
    /// last entry of the partition's leader: the replicas hold the same
    /// entries (while nothing writes).
    pub async fn caught_up(&self, within: Duration) {
        let since = Instant::now();
        loop {
            let mut views = Vec::new();
            for i in self.live() {
                views.push(self.status(i).await.ok());
            }
            let done = views.iter().all(|v| v.is_some()) && {
                let views: Vec<&pb::ClusterStatus> = views.iter().flatten().collect();
                (0..self.partitions as usize).all(|p| {
                    let leaders: Vec<u64> = views
                        .iter()
                        .filter(|v| v.partitions[p].role == "leader")
                        .map(|v| v.partitions[p].last_log_index)
                        .collect();
                    leaders.len() == 1 && views.iter().all(|v| v.partitions[p].applied_index == leaders[0])
                })
            };
            if done {
                return;
            }
            assert!(since.elapsed() < within, "replicas not caught up within {within:?}: {views:#?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops every node with SIGTERM, the home last (the others first, so
    /// the home, left without a quorum, can commit nothing they miss).
    pub async fn stop_all(&mut self, home: usize) {
        let order: Vec<usize> = self.live().into_iter().filter(|&i| i != home).chain([home]).collect();
        for i in order {
            let Some(node) = self.nodes[i].take() else { continue };
            node.signal("-TERM");
            node.wait_exit(Duration::from_secs(30)).await;
        }
    }

    /// Each node's store of partition `p`, read offline (every node
    /// stopped): every table's entries in order.
    pub fn dump(&self, i: usize, p: u32) -> Vec<fairway::storage::DumpEntry> {
        let dir = self.data_dir(i).join("store").join(format!("p{p:04}"));
        let store = fairway::storage::Store::open(&dir, fairway::storage::Durability::Strict).expect("open a store");
        store.dump().expect("dump")
    }
}

/// Runs `call` until it succeeds; UNAVAILABLE (an election, leadership
/// moving to the home) is retried every 50 ms, anything else fails the
/// test. Returns the answer and how long it took.
pub async fn retried<T, F, Fut>(within: Duration, what: &str, mut call: F) -> (T, Duration)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let since = Instant::now();
    loop {
        match call().await {
            Ok(v) => return (v, since.elapsed()),
            Err(s) if s.code() == tonic::Code::Unavailable => {
                assert!(since.elapsed() < within, "{what}: still UNAVAILABLE after {within:?}: {s:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(s) => panic!("{what}: {s:?}"),
        }
    }
}

/// A request that no node forwards: only the home answers it.
pub fn unforwarded<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert("fairway-forwarded-by", "test".parse().expect("ascii"));
    req
}

pub async fn create_queue(c: &Cluster, via: usize, name: &str, config: Option<pb::QueueConfig>) {
    let admin = AdminServiceClient::new(c.channel(via));
    retried(Duration::from_secs(30), "create queue", || {
        let mut admin = admin.clone();
        async move {
            match admin.create_queue(pb::CreateQueueRequest { name: name.into(), config }).await {
                Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(()),
                r => r.map(|_| ()),
            }
        }
    })
    .await;
}
