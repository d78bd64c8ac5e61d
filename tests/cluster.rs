//! Three-node clusters of real `fairway serve --cluster` processes on
//! loopback: any node takes any call (the others forward it to the home,
//! the node leading every partition); a Work stream on any node gets jobs
//! from every partition; after kill -9 of the home another node serves
//! within seconds and every acknowledged enqueue is there.

#[path = "common/cluster.rs"]
mod cluster;
mod common;
#[path = "common/process.rs"]
mod process;
#[path = "common/proxy.rs"]
mod proxy;

use cluster::*;
use common::*;
use fairway::partition::placement::partition_of_job;
use fairway::pb;
use fairway::pb::admin_service_client::AdminServiceClient;
use fairway::pb::job_service_client::JobServiceClient;
use fairway::pb::work_request::Request as Req;
use fairway::pb::work_response::Response as Resp;
use fairway::pb::worker_service_client::WorkerServiceClient;
use std::collections::HashSet;
use std::time::{Duration, Instant};
use tokio_stream::StreamExt;

/// Which live node is the home: the one that answers a call it may not
/// forward.
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
    let c = Cluster::start(3, 3).await;
    create_queue(&c, 0, "emails", None).await;

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
    // Every node reports every partition healthy (a leader known to it).
    for i in 0..3 {
        let health = tonic_health::pb::health_client::HealthClient::new(c.channel(i));
        for p in 0..3 {
            let req = tonic_health::pb::HealthCheckRequest { service: format!("fairway.partition.{p}") };
            let (status, _) = retried(Duration::from_secs(10), "partition health", || {
                let (mut health, req) = (health.clone(), req.clone());
                async move {
                    let s = health.check(req).await?.into_inner().status;
                    (s == 1).then_some(s).ok_or_else(|| tonic::Status::unavailable(format!("status {s}")))
                }
            })
            .await;
            assert_eq!(status, 1);
        }
    }

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
    let mut c = Cluster::start(3, 2).await;
    create_queue(&c, 0, "emails", None).await;
    let home = find_home(&c, Duration::from_secs(30)).await;

    // Acknowledged enqueues, through every node.
    let mut ids = Vec::new();
    for i in 0..60 {
        let (id, _) = enqueue(&c, i % 3, &format!("t{}", i % 4), &format!("job {i}"), Duration::from_secs(30)).await;
        ids.push(id);
    }

    // kill -9 the home; through a surviving node, enqueues succeed again
    // within seconds.
    c.kill9(home);
    let via = c.live()[0];
    let (_, took) = enqueue(&c, via, "t0", "after the kill", Duration::from_secs(30)).await;
    assert!(took < Duration::from_secs(10), "served again after {took:?}");
    eprintln!("enqueues served again {took:?} after kill -9 of the home");
    let new_home = find_home(&c, Duration::from_secs(10)).await;
    assert_ne!(new_home, home);

    // Every acknowledged enqueue is there, asked of either live node.
    for (k, id) in ids.iter().enumerate() {
        let node = c.live()[k % 2];
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_cluster_script_starts_three_nodes_that_any_call_reaches_and_stops_them_on_a_signal() {
    let dir = tempfile::tempdir().expect("temp dir");
    let all: Vec<String> = free_ports(9).iter().map(|p| p.to_string()).collect();
    let (grpc, raft, metrics) = (all[0..3].to_vec(), all[3..6].to_vec(), all[6..9].to_vec());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/local-cluster");
    let mut child = std::process::Command::new("bash")
        .arg(script)
        .env("FAIRWAY_BIN", env!("CARGO_BIN_EXE_fairway"))
        .env("FAIRWAY_CLUSTER_DIR", dir.path())
        .env("FAIRWAY_CLUSTER_GRPC", grpc.join(" "))
        .env("FAIRWAY_CLUSTER_RAFT", raft.join(" "))
        .env("FAIRWAY_CLUSTER_METRICS", metrics.join(" "))
        .env("RUST_LOG", "warn,openraft=off")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run scripts/local-cluster");
    let channel = |i: usize| {
        tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", grpc[i]))
            .expect("endpoint")
            .connect_lazy()
    };
    // A queue made through n2, a job through n3, read back through n1.
    let admin = AdminServiceClient::new(channel(1));
    retried(Duration::from_secs(60), "create queue through n2", || {
        let mut admin = admin.clone();
        async move { admin.create_queue(pb::CreateQueueRequest { name: "emails".into(), config: None }).await }
    })
    .await;
    let jobs = JobServiceClient::new(channel(2));
    let (id, _) = retried(Duration::from_secs(30), "enqueue through n3", || {
        let mut jobs = jobs.clone();
        async move { jobs.enqueue(job("emails", "acme", "", "hello")).await }
    })
    .await;
    let id = id.into_inner().job_id;
    let mut n1 = JobServiceClient::new(channel(0));
    let got = n1.get_job(pb::GetJobRequest { queue: "emails".into(), job_id: id.clone() }).await.expect("get via n1");
    assert_eq!(got.into_inner().id, id);

    // SIGTERM to the script (what Ctrl-C's SIGINT does too; a test cannot
    // rely on SIGINT: a shell started in the background ignores it, and so
    // does everything it starts) stops all three, and the script exits 0.
    let interrupted = Instant::now();
    let status = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(status.success());
    let exited = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(s) = child.try_wait().expect("try_wait") {
                return s;
            }
            assert!(Instant::now() < deadline, "the script did not stop within 60 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .expect("join");
    assert!(exited.success(), "{exited:?}");
    eprintln!("the local cluster stopped {:?} after SIGTERM", interrupted.elapsed());
    for port in &grpc {
        assert!(std::net::TcpStream::connect(format!("127.0.0.1:{port}")).is_err(), "a node still listens on {port}");
    }
}

#[test]
fn a_cluster_node_with_tls_is_refused_at_start_saying_why() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("cluster.toml");
    let ports = free_ports(2);
    let (g, r) = (ports[0], ports[1]);
    std::fs::write(
        &file,
        format!("replicas = 1\n[[nodes]]\nid = \"n1\"\ngrpc = \"127.0.0.1:{g}\"\nraft = \"127.0.0.1:{r}\"\n"),
    )
    .expect("write cluster file");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fairway"))
        .args(["serve", "--listen", &format!("127.0.0.1:{g}"), "--metrics-listen", "off", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--cluster", file.to_str().expect("utf-8"), "--node-id", "n1"])
        .args(["--tls-cert", "cert.pem", "--tls-key", "key.pem"])
        .output()
        .expect("run fairway serve");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("node-to-node TLS") && stderr.contains("--tls-cert"), "{stderr}");
}
