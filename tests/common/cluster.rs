//! Clusters of real `fairway serve --cluster` processes on loopback, for
//! the cluster suites: start, kill -9, restart on the same data dir, ask
//! each node for its own view, compare the replicas' stores, and (started
//! with [`Cluster::start_proxied`]) cut the Raft links between nodes.
//! Included by the tests that need it, with the proxy
//! (`#[path = "common/cluster.rs"] mod cluster;`,
//! `#[path = "common/proxy.rs"] mod proxy;`).
#![allow(dead_code)]

use super::process::BrokerProcess;
use super::proxy::Link;
use fairway::pb;
use fairway::pb::admin_service_client::AdminServiceClient;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// `n` different free loopback ports: all bound at once (so the system
/// cannot hand out one twice), then released for the nodes to take.
pub fn free_ports(n: usize) -> Vec<u16> {
    Reserved::new(n).ports()
}

/// Loopback ports held until dropped: nothing else (a proxy of the same
/// test, say) can take them meanwhile.
pub struct Reserved(Vec<std::net::TcpListener>);

impl Reserved {
    pub fn new(n: usize) -> Reserved {
        Reserved((0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind")).collect())
    }

    pub fn ports(&self) -> Vec<u16> {
        self.0.iter().map(|l| l.local_addr().expect("addr").port()).collect()
    }
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    file: PathBuf,
    /// Per node: its client port.
    grpc: Vec<u16>,
    pub nodes: Vec<Option<BrokerProcess>>,
    pub partitions: u32,
    /// With proxies: the link node `a` dials node `b`'s Raft service over.
    links: HashMap<(usize, usize), Link>,
    /// Per node: how far its wall clock is off (libfaketime), if at all.
    clocks: Vec<Option<String>>,
}

/// How to start a cluster (see [`Cluster::start_spec`]).
#[derive(Default)]
pub struct Spec {
    pub nodes: usize,
    pub partitions: u32,
    /// Each node dials the others through a proxy per link.
    pub proxied: bool,
    /// Per node, a libfaketime offset of its wall clock ("+2s", "-2s");
    /// monotonic clocks stay true, as on separate machines.
    pub clock_offsets: Vec<&'static str>,
    /// More top-level settings for the cluster file.
    pub settings: &'static str,
}

/// A process's state line from /proc ("R (running)", "Z (zombie)", ...).
fn process_state(pid: u32) -> String {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_else(|e| format!("State: gone ({e})"));
    status.lines().find_map(|l| l.strip_prefix("State:")).unwrap_or("?").trim().to_string()
}

/// libfaketime, for skewed clocks (installed by scripts/setup).
fn libfaketime() -> String {
    let found = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|d| d.path().join("faketime/libfaketime.so.1"))
        .find(|p| p.exists());
    found.expect("libfaketime is installed (scripts/setup installs the faketime package)").display().to_string()
}

impl Cluster {
    /// `n` nodes sharing one cluster file.
    pub async fn start(n: usize, partitions: u32) -> Cluster {
        Cluster::start_spec(Spec { nodes: n, partitions, ..Default::default() }).await
    }

    /// `n` nodes, each dialling every other's Raft service through its own
    /// proxy ([`Link`]), so a test can cut any link one way.
    pub async fn start_proxied(n: usize, partitions: u32) -> Cluster {
        Cluster::start_spec(Spec { nodes: n, partitions, proxied: true, ..Default::default() }).await
    }

    pub async fn start_spec(spec: Spec) -> Cluster {
        let Spec { nodes: n, partitions, proxied, clock_offsets, settings } = spec;
        let dir = tempfile::tempdir().expect("temp dir");
        // The nodes' ports stay held while the proxies bind theirs.
        let reserved = Reserved::new(2 * n);
        let ports: Vec<(u16, u16)> = reserved.ports().chunks(2).map(|p| (p[0], p[1])).collect();
        let mut links = HashMap::new();
        if proxied {
            for a in 0..n {
                for b in (0..n).filter(|&b| b != a) {
                    let target = format!("127.0.0.1:{}", ports[b].1).parse().expect("address");
                    links.insert((a, b), Link::start(target).await);
                }
            }
        }
        // One file; with proxies, a route for every link.
        let mut text = format!("replicas = 3\npartitions = {partitions}\nelection_timeout_ms = 500\n{settings}");
        for (i, (grpc, raft)) in ports.iter().enumerate() {
            text +=
                &format!("[[nodes]]\nid = \"n{}\"\ngrpc = \"127.0.0.1:{grpc}\"\nraft = \"127.0.0.1:{raft}\"\n", i + 1);
        }
        for a in 0..n {
            let routes: Vec<String> =
                (0..n).filter_map(|b| links.get(&(a, b)).map(|l| format!("n{} = \"{}\"\n", b + 1, l.addr))).collect();
            if !routes.is_empty() {
                text += &format!("[routes.n{}]\n{}", a + 1, routes.concat());
            }
        }
        let file = dir.path().join("cluster.toml");
        std::fs::write(&file, text).expect("write cluster file");
        let grpc = ports.iter().map(|p| p.0).collect();
        drop(reserved);
        let clocks = (0..n).map(|i| clock_offsets.get(i).map(|o| o.to_string())).collect();
        let mut c = Cluster { dir, file, grpc, nodes: Vec::new(), partitions, links, clocks };
        for i in 0..n {
            let node = c.spawn(i).await;
            c.nodes.push(Some(node));
        }
        c
    }

    /// Cuts what node `a` sends to node `b` (a proxied cluster).
    pub fn cut(&self, a: usize, b: usize) {
        self.links.get(&(a, b)).expect("a proxied cluster").cut();
    }

    /// Heals what node `a` sends to node `b`.
    pub fn heal(&self, a: usize, b: usize) {
        self.links.get(&(a, b)).expect("a proxied cluster").heal();
    }

    /// Cuts node `i` off from every other node, both ways; clients still
    /// reach it.
    pub fn isolate(&self, i: usize) {
        for (&(a, b), link) in &self.links {
            if a == i || b == i {
                link.cut();
            }
        }
    }

    /// Heals every link.
    pub fn heal_all(&self) {
        for link in self.links.values() {
            link.heal();
        }
    }

    /// The directed links (`a` dials `b`) of a proxied cluster.
    pub fn link_ids(&self) -> Vec<(usize, usize)> {
        let mut ids: Vec<(usize, usize)> = self.links.keys().copied().collect();
        ids.sort();
        ids
    }

    /// Flips link `(a, b)`: cut if open, open if cut.
    pub fn flip(&self, a: usize, b: usize) {
        let link = self.links.get(&(a, b)).expect("a proxied cluster");
        if link.is_cut() {
            link.heal()
        } else {
            link.cut()
        }
    }

    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("n{}", i + 1))
    }

    async fn spawn(&self, i: usize) -> BrokerProcess {
        let id = format!("n{}", i + 1);
        let extra = ["--cluster", self.file.to_str().expect("utf-8 path"), "--node-id", &id];
        let listen = format!("127.0.0.1:{}", self.grpc[i]);
        match &self.clocks[i] {
            None => BrokerProcess::spawn_at(&self.data_dir(i), &listen, &extra).await,
            Some(offset) => {
                let lib = libfaketime();
                let envs = [("LD_PRELOAD", lib.as_str()), ("FAKETIME", offset), ("FAKETIME_DONT_FAKE_MONOTONIC", "1")];
                BrokerProcess::spawn_env(&self.data_dir(i), &listen, &extra, &envs).await
            }
        }
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
        self.home_among(&self.live(), within).await
    }

    /// Which node is the home, as every node of `among` agrees (the nodes
    /// not cut off, say).
    pub async fn home_among(&self, among: &[usize], within: Duration) -> usize {
        let since = Instant::now();
        loop {
            let mut homes = Vec::new();
            for &i in among {
                homes.push(self.status(i).await.ok().map(|s| s.home_node_id));
            }
            if let Some(Some(h)) = homes.first() {
                if !h.is_empty() && homes.iter().all(|x| x.as_ref() == Some(h)) {
                    let i: usize = h.trim_start_matches('n').parse().expect("node name n<i>");
                    if self.nodes[i - 1].is_some() && among.contains(&(i - 1)) {
                        return i - 1;
                    }
                }
            }
            if since.elapsed() >= within {
                let mut why = Vec::new();
                for &i in among {
                    let process = self.nodes[i].as_ref().map(|n| process_state(n.pid()));
                    why.push(format!(
                        "n{}: {:?} (process {process:?})",
                        i + 1,
                        self.status(i).await.map(|s| s.home_node_id)
                    ));
                }
                panic!("no home agreed on within {within:?}: {why:#?}");
            }
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

    /// Waits until node `i` has applied, in every partition, what the
    /// partition's leader held when asked: caught up, even while writes go
    /// on.
    pub async fn node_caught_up(&self, i: usize, within: Duration) {
        let since = Instant::now();
        let mut targets: Vec<Option<u64>> = vec![None; self.partitions as usize];
        loop {
            for j in self.live() {
                let Ok(v) = self.status(j).await else { continue };
                for p in &v.partitions {
                    let t = &mut targets[p.partition as usize];
                    if p.role == "leader" && t.is_none() {
                        *t = Some(p.last_log_index);
                    }
                }
            }
            if let (true, Ok(v)) = (targets.iter().all(|t| t.is_some()), self.status(i).await) {
                if v.partitions.iter().all(|p| Some(p.applied_index) >= targets[p.partition as usize]) {
                    return;
                }
            }
            assert!(since.elapsed() < within, "node {i} not caught up within {within:?} (targets {targets:?})");
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
