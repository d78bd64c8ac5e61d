//! A three-node cluster of real `fairway serve --cluster` processes on
//! loopback: the node that leads serves, the others refuse with
//! UNAVAILABLE naming it; after kill -9 of the leader the cluster serves
//! again from another node within seconds, and every acknowledged enqueue
//! is there.

mod common;
#[path = "common/process.rs"]
mod process;

use common::*;
use fairway::pb;
use fairway::pb::admin_service_client::AdminServiceClient;
use fairway::pb::job_service_client::JobServiceClient;
use process::BrokerProcess;
use std::time::{Duration, Instant};

/// A free loopback port (bound, then released for the node to take).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

struct Cluster {
    _dir: tempfile::TempDir,
    nodes: Vec<Option<BrokerProcess>>,
}

async fn start_cluster(n: usize) -> Cluster {
    let dir = tempfile::tempdir().expect("temp dir");
    let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
    let mut file = String::from("replicas = 3\npartitions = 1\nelection_timeout_ms = 500\n");
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

/// Asks every live node until one serves `CreateQueue`/`GetQueue`; the
/// others must refuse with UNAVAILABLE. Returns the serving node's index
/// and how long finding it took.
async fn find_leader(c: &Cluster, within: Duration) -> (usize, Duration) {
    let since = Instant::now();
    loop {
        for (i, node) in c.nodes.iter().enumerate() {
            let Some(node) = node else { continue };
            let mut admin = AdminServiceClient::new(node.channel.clone());
            let got = admin.get_queue(pb::GetQueueRequest { queue: "emails".into() }).await;
            match got {
                Ok(_) => return (i, since.elapsed()),
                Err(s) if s.code() == tonic::Code::NotFound => {
                    let req = pb::CreateQueueRequest { name: "emails".into(), config: None };
                    match admin.create_queue(req).await {
                        Ok(_) => return (i, since.elapsed()),
                        Err(s) => assert!(
                            matches!(s.code(), tonic::Code::Unavailable | tonic::Code::AlreadyExists),
                            "node {i}: {s:?}"
                        ),
                    }
                }
                Err(s) => assert_eq!(s.code(), tonic::Code::Unavailable, "node {i}: {s:?}"),
            }
        }
        assert!(since.elapsed() < within, "no node served within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_with_sigkill_loses_no_acknowledged_enqueue() {
    let mut c = start_cluster(3).await;
    let (leader, _) = find_leader(&c, Duration::from_secs(30)).await;
    let lead = c.nodes[leader].as_ref().expect("live");

    // Acknowledged enqueues on the leader.
    let mut jobs = JobServiceClient::new(lead.channel.clone());
    let mut ids = Vec::new();
    for i in 0..50 {
        let r = jobs.enqueue(job("emails", &format!("t{}", i % 4), "", &format!("job {i}"))).await.expect("enqueue");
        ids.push(r.into_inner().job_id);
    }
    // A follower refuses, naming where the leader is.
    let follower = (0..3).find(|&i| i != leader).expect("a follower");
    let fj = JobServiceClient::new(c.nodes[follower].as_ref().expect("live").channel.clone());
    let refused = eventually(Duration::from_secs(5), || {
        let mut fj = fj.clone();
        async move {
            let e = fj.enqueue(job("emails", "t0", "", "x")).await.expect_err("a follower refuses");
            (e.code() == tonic::Code::Unavailable && e.message().contains("led by node")).then_some(e)
        }
    })
    .await;
    assert!(refused.message().contains("127.0.0.1:"), "{refused:?}");

    // kill -9 the leader; another node serves within seconds.
    c.nodes[leader].as_mut().expect("live").kill9();
    c.nodes[leader] = None;
    let (new_leader, took) = find_leader(&c, Duration::from_secs(30)).await;
    assert_ne!(new_leader, leader);
    assert!(took < Duration::from_secs(10), "served again after {took:?}");
    eprintln!("served again {took:?} after kill -9 of the leader");

    // Every acknowledged enqueue is there.
    let mut nj = JobServiceClient::new(c.nodes[new_leader].as_ref().expect("live").channel.clone());
    for id in &ids {
        let got = nj.get_job(pb::GetJobRequest { queue: "emails".into(), job_id: id.clone() }).await;
        assert!(got.is_ok(), "acknowledged job {id} lost: {got:?}");
    }
}
