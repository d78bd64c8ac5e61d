//! Three-node clusters of real `fairway serve --cluster` processes on
//! loopback: any node takes any call (the others forward it to the home,
//! the node leading every partition); a Work stream on any node gets jobs
//! from every partition; after kill -9 of the home another node serves
//! within seconds and every acknowledged enqueue is there.

mod common;
#[path = "common/process.rs"]
mod process;

use common::*;
use fairway::partition::placement::partition_of_job;
use fairway::pb;
use fairway::pb::admin_service_client::AdminServiceClient;
use fairway::pb::job_service_client::JobServiceClient;
use fairway::pb::work_request::Request as Req;
use fairway::pb::work_response::Response as Resp;
use fairway::pb::worker_service_client::WorkerServiceClient;
use process::BrokerProcess;
use std::collections::HashSet;
use std::time::{Duration, Instant};
use tokio_stream::StreamExt;

/// A free loopback port (bound, then released for the node to take).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

struct Cluster {
    _dir: tempfile::TempDir,
    nodes: Vec<Option<BrokerProcess>>,
}

impl Cluster {
    fn channel(&self, i: usize) -> tonic::transport::Channel {
        self.nodes[i].as_ref().expect("live node").channel.clone()
    }

    fn live(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.nodes.len()).filter(|&i| self.nodes[i].is_some())
    }
}

async fn start_cluster(n: usize, partitions: u32) -> Cluster {
    let dir = tempfile::tempdir().expect("temp dir");
    let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
    let mut file = format!("replicas = 3\npartitions = {partitions}\nelection_timeout_ms = 500\n");
    for (i, (grpc, raft)) in ports.iter().enumerate() {
        file += &format!("[[nodes]]\nid = \"n{}\"\ngrpc = \"127.0.0.1:{grpc}\"\nraft = \"127.0.0.1:{raft}\"\n", i + 1);
    }
    let path = dir.path().join("cluster.toml");
    std::fs::write(&path, file).expect("write cluster file");
    let mut nodes = Vec::new();
    for (i, (grpc, _)) in ports.iter().enumerate() {
        let data = dir.path().join(format!("n{}", i + 1));
        let id = format!("n{}", i + 1);
        let extra = ["--cluster", path.to_str().expect("utf-8 path"), "--node-id", &id];
        nodes.push(Some(BrokerProcess::spawn_at(&data, &format!("127.0.0.1:{grpc}"), &extra).await));
    }
    Cluster { _dir: dir, nodes }
}

/// Runs `call` until it succeeds; UNAVAILABLE (an election, leadership
/// moving to the home) is retried every 50 ms, anything else fails the
/// test. Returns the answer and how long it took.
async fn retried<T, F, Fut>(within: Duration, what: &str, mut call: F) -> (T, Duration)
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
fn unforwarded<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert("fairway-forwarded-by", "test".parse().expect("ascii"));
    req
}

/// Which live node is the home (answers a call it may not forward).
async fn find_home(c: &Cluster, within: Duration) -> usize {
    let since = Instant::now();
    loop {
        for i in c.live() {
            let mut admin = AdminServiceClient::new(c.channel(i));
            if admin.list_queues(unforwarded(pb::ListQueuesRequest {})).await.is_ok() {
                return i;
            }
        }
        assert!(since.elapsed() < within, "no home within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn create_queue(c: &Cluster, via: usize, name: &str) {
    let admin = AdminServiceClient::new(c.channel(via));
    retried(Duration::from_secs(30), "create queue", || {
        let mut admin = admin.clone();
        async move {
            match admin.create_queue(pb::CreateQueueRequest { name: name.into(), config: None }).await {
                Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(()),
                r => r.map(|_| ()),
            }
        }
    })
    .await;
}

async fn enqueue(c: &Cluster, via: usize, tenant: &str, payload: &str, within: Duration) -> (String, Duration) {
    let jobs = JobServiceClient::new(c.channel(via));
    let (r, took) = retried(within, "enqueue", || {
        let mut jobs = jobs.clone();
        async move { jobs.enqueue(job("emails", tenant, "", payload)).await }
    })
    .await;
    (r.into_inner().job_id, took)
}

/// A Work stream subscribed to `emails` on node `via`.
async fn work_stream(
    c: &Cluster,
    via: usize,
) -> (tokio::sync::mpsc::Sender<pb::WorkRequest>, tonic::Streaming<pb::WorkResponse>) {
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    let subscribe = pb::Subscribe {
        queues: vec!["emails".into()],
        worker_id: format!("w{via}"),
        worker_version: "1".into(),
        max_in_flight: 8,
        lease_duration: None,
    };
    tx.send(pb::WorkRequest { request: Some(Req::Subscribe(subscribe)) }).await.expect("send");
    let mut workers = WorkerServiceClient::new(c.channel(via));
    let stream = workers.work(tokio_stream::wrappers::ReceiverStream::new(rx)).await.expect("work").into_inner();
    (tx, stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_node_takes_any_call_and_work_streams_on_every_node_get_every_partitions_jobs() {
    let c = start_cluster(3, 3).await;
    create_queue(&c, 0, "emails").await;

    // Enqueues through every node, for tenants spread over the partitions.
    let mut ids = HashSet::new();
    for via in 0..3 {
        for t in 0..8 {
            let (id, _) =
                enqueue(&c, via, &format!("tenant-{t}"), &format!("{via}/{t}"), Duration::from_secs(30)).await;
            ids.insert(id);
        }
    }
    assert_eq!(ids.len(), 24);
    let partitions: HashSet<u16> =
        ids.iter().map(|id| partition_of_job(fairway::model::JobId::parse(id).expect("id")).0).collect();
    assert_eq!(partitions.len(), 3, "8 tenants land in all 3 partitions: {partitions:?}");

    // Exactly one node serves calls it may not forward: the home; the
    // others refuse them, naming the leader.
    let home = find_home(&c, Duration::from_secs(10)).await;
    for i in (0..3).filter(|&i| i != home) {
        let mut admin = AdminServiceClient::new(c.channel(i));
        let e = admin.list_queues(unforwarded(pb::ListQueuesRequest {})).await.expect_err("not the home");
        assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
        assert!(e.message().contains("led by node n"), "names the leader: {e:?}");
    }

    // A Work stream on each node; together they get all 24 jobs, each
    // once, from every partition, and every ack is confirmed.
    let mut streams = Vec::new();
    for via in 0..3 {
        streams.push(work_stream(&c, via).await);
    }
    let (mut delivered, mut acked) = (HashSet::new(), 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked < 24 {
        assert!(Instant::now() < deadline, "{acked} of 24 acked; delivered {delivered:?}");
        for (tx, rx) in streams.iter_mut() {
            let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(100), rx.next()).await else { continue };
            match msg.expect("stream open").response.expect("response") {
                Resp::Delivery(d) => {
                    let j = d.job.expect("job");
                    assert!(delivered.insert(j.id.clone()), "job {} delivered twice", j.id);
                    let ack = pb::AckRequest { queue: "emails".into(), job_id: j.id, lease_id: d.lease_id };
                    tx.send(pb::WorkRequest { request: Some(Req::Ack(ack)) }).await.expect("send ack");
                }
                Resp::Outcome(o) => {
                    assert!(o.ok && o.kind == "ack", "ack refused: {o:?}");
                    acked += 1;
                }
            }
        }
    }
    assert_eq!(delivered, ids);
    // And the stats, asked of any node, agree: nothing left.
    let mut admin = AdminServiceClient::new(c.channel((home + 1) % 3));
    let stats = admin.get_queue_stats(pb::GetQueueStatsRequest { queue: "emails".into() }).await.expect("stats");
    let stats = stats.into_inner();
    assert_eq!((stats.ready, stats.leased), (0, 0), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_home_killed_with_sigkill_loses_no_acknowledged_enqueue() {
    let mut c = start_cluster(3, 2).await;
    create_queue(&c, 0, "emails").await;
    let home = find_home(&c, Duration::from_secs(30)).await;

    // Acknowledged enqueues, through every node.
    let mut ids = Vec::new();
    for i in 0..60 {
        let (id, _) = enqueue(&c, i % 3, &format!("t{}", i % 4), &format!("job {i}"), Duration::from_secs(30)).await;
        ids.push(id);
    }

    // kill -9 the home; through a surviving node, enqueues succeed again
    // within seconds.
    c.nodes[home].as_mut().expect("live").kill9();
    c.nodes[home] = None;
    let via = c.live().next().expect("a live node");
    let (_, took) = enqueue(&c, via, "t0", "after the kill", Duration::from_secs(30)).await;
    assert!(took < Duration::from_secs(10), "served again after {took:?}");
    eprintln!("enqueues served again {took:?} after kill -9 of the home");
    let new_home = find_home(&c, Duration::from_secs(10)).await;
    assert_ne!(new_home, home);

    // Every acknowledged enqueue is there, asked of either live node.
    for (k, id) in ids.iter().enumerate() {
        let node = c.live().nth(k % 2).expect("two live nodes");
        let jobs = JobServiceClient::new(c.channel(node));
        let got = retried(Duration::from_secs(10), "get job", || {
            let req = pb::GetJobRequest { queue: "emails".into(), job_id: id.clone() };
            let mut jobs = jobs.clone();
            async move { jobs.get_job(req).await }
        })
        .await;
        assert_eq!(got.0.into_inner().id, *id);
    }
}
