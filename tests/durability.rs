//! Crash safety with the real binary: `kill -9` mid-load loses no
//! acknowledged job, leases survive restarts, and a graceful stop drains.

mod common;
#[path = "common/process.rs"]
mod process;

use common::*;
use fairway::pb;
use fairway::pb::job_service_client::JobServiceClient;
use process::{scan_all, BrokerProcess as Broker};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Waits until `b` serves, creates queue `q`, and returns a producer.
async fn serving_with_queue_q(b: &Broker) -> JobServiceClient<tonic::transport::Channel> {
    b.wait_serving().await;
    let mut admin = pb::admin_service_client::AdminServiceClient::new(b.channel.clone());
    admin.create_queue(pb::CreateQueueRequest { name: "q".into(), config: None }).await.unwrap();
    JobServiceClient::new(b.channel.clone())
}

#[tokio::test]
async fn kill_9_mid_load_loses_no_acknowledged_job() {
    let tmp = tempfile::tempdir().unwrap();
    let mut b = Broker::spawn(tmp.path()).await;
    let mut jobs = serving_with_queue_q(&b).await;

    // One job leased before the crash, with a long lease.
    let leased_id = jobs.enqueue(job("q", "t", "e", "leased")).await.unwrap().into_inner().job_id;
    let mut workers = pb::worker_service_client::WorkerServiceClient::new(b.channel.clone());
    let d = workers
        .lease(pb::LeaseRequest {
            queues: vec!["q".into()],
            max_jobs: 1,
            lease_duration: Some(dur(Duration::from_secs(120))),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .deliveries;
    assert_eq!(d[0].job.as_ref().unwrap().id, leased_id);
    let lease_id = d[0].lease_id.clone();

    // Producers: unary and batch, recording every id the broker confirmed.
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut producers = Vec::new();
    for p in 0..8 {
        let mut c = JobServiceClient::new(b.channel.clone());
        let acked = acked.clone();
        producers.push(tokio::spawn(async move {
            for i in 0.. {
                if p % 2 == 0 {
                    match c.enqueue(job("q", &format!("t{p}"), "e", &format!("{p}-{i}"))).await {
                        Ok(r) => acked.lock().unwrap().push(r.into_inner().job_id),
                        Err(_) => break,
                    }
                } else {
                    let batch = (0..20).map(|k| job("q", &format!("t{p}"), "e", &format!("{p}-{i}-{k}"))).collect();
                    match c.enqueue_batch(pb::EnqueueBatchRequest { jobs: batch }).await {
                        Ok(r) => acked.lock().unwrap().extend(r.into_inner().results.into_iter().map(|r| r.job_id)),
                        Err(_) => break,
                    }
                }
            }
        }));
    }
    eventually(Duration::from_secs(60), || {
        let n = acked.lock().unwrap().len();
        async move { (n >= 5000).then_some(()) }
    })
    .await;
    b.kill9();
    for p in producers {
        let _ = p.await;
    }
    let confirmed: HashSet<String> = acked.lock().unwrap().iter().cloned().collect();
    assert!(confirmed.len() >= 5000);

    let started = Instant::now();
    let b = Broker::spawn(tmp.path()).await;
    b.wait_serving().await;
    let restart = started.elapsed();
    assert!(restart < Duration::from_secs(10), "restart took {restart:?}");

    let mut admin = pb::admin_service_client::AdminServiceClient::new(b.channel.clone());
    let stored: HashSet<String> = scan_all(&b.channel, "q").await.into_iter().map(|j| j.id).collect();
    let lost: Vec<_> = confirmed.difference(&stored).take(5).collect();
    assert!(lost.is_empty(), "acknowledged jobs lost after kill -9: {lost:?}");
    let stats = admin.get_queue_stats(pb::GetQueueStatsRequest { queue: "q".into() }).await.unwrap().into_inner();
    assert_eq!(stats.ready + stats.leased, stored.len() as u64, "counters agree with what is stored");
    assert_eq!(stats.leased, 1);

    // The lease survived the crash: the worker can still ack with it.
    let mut workers = pb::worker_service_client::WorkerServiceClient::new(b.channel.clone());
    workers.ack(pb::AckRequest { queue: "q".into(), job_id: leased_id.clone(), lease_id }).await.unwrap();
    // And the broker keeps working: new ids never collide with old ones.
    let mut jobs = JobServiceClient::new(b.channel.clone());
    let fresh = jobs.enqueue(job("q", "t", "e", "after")).await.unwrap().into_inner().job_id;
    assert!(!stored.contains(&fresh));
}

#[tokio::test]
async fn sigterm_drains_and_exits_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let b = Broker::spawn(tmp.path()).await;
    let mut jobs = serving_with_queue_q(&b).await;
    let id = jobs.enqueue(job("q", "t", "e", "x")).await.unwrap().into_inner().job_id;
    b.signal("-TERM");
    let exit = b.wait_exit(Duration::from_secs(15)).await;
    assert!(exit.success(), "clean exit: {exit:?}");
    let b = Broker::spawn(tmp.path()).await;
    b.wait_serving().await;
    let mut jobs = JobServiceClient::new(b.channel.clone());
    let j = jobs.get_job(pb::GetJobRequest { queue: "q".into(), job_id: id }).await.unwrap().into_inner();
    assert_eq!(j.payload.as_ref(), b"x");
}

/// A SIGTERM the moment the broker says it listens (RocksDB may still be
/// opening) is a graceful stop too, not death by the default action.
#[tokio::test]
async fn a_sigterm_during_start_up_still_stops_gracefully() {
    let tmp = tempfile::tempdir().unwrap();
    let b = Broker::spawn(tmp.path()).await;
    b.signal("-TERM");
    let exit = b.wait_exit(Duration::from_secs(15)).await;
    assert!(exit.success(), "clean exit: {exit:?}");
    let b = Broker::spawn(tmp.path()).await;
    b.wait_serving().await;
}

/// A second SIGTERM ends a broker still draining at once, with exit code
/// 130 (not an abort from RocksDB closing during exit), and loses nothing
/// acknowledged.
#[tokio::test]
async fn a_second_sigterm_exits_at_once_and_loses_nothing_acknowledged() {
    let tmp = tempfile::tempdir().unwrap();
    let mut b = Broker::spawn(tmp.path()).await;
    let mut jobs = serving_with_queue_q(&b).await;
    let mut ids = HashSet::new();
    for i in 0..50 {
        ids.insert(jobs.enqueue(job("q", "t", "e", &format!("j{i}"))).await.unwrap().into_inner().job_id);
    }
    // A producer stream left open: draining waits for it (up to 5 s).
    let (held_tx, held_rx) = tokio::sync::mpsc::channel::<pb::EnqueueRequest>(1);
    held_tx.send(job("q", "t", "e", "streamed")).await.unwrap();
    let own = tonic::transport::Endpoint::from_shared(format!("http://{}", b.addr)).unwrap().connect().await.unwrap();
    let mut held = JobServiceClient::new(own)
        .enqueue_stream(tokio_stream::wrappers::ReceiverStream::new(held_rx))
        .await
        .unwrap()
        .into_inner();
    ids.insert(held.message().await.unwrap().expect("streamed job acknowledged").job_id);

    b.signal("-TERM");
    // The listener closes once the writer has stopped; the held stream
    // keeps the broker draining.
    eventually(Duration::from_secs(15), || async { std::net::TcpStream::connect(b.addr).err().map(|_| ()) }).await;
    assert_eq!(b.child.try_wait().unwrap(), None, "the held stream keeps the broker draining");
    let signalled = Instant::now();
    b.signal("-TERM");
    let exit = b.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(exit.code(), Some(130), "forced exit: {exit:?}");
    assert!(signalled.elapsed() < Duration::from_secs(3), "exit took {:?}", signalled.elapsed());
    drop((held, held_tx));

    let b = Broker::spawn(tmp.path()).await;
    b.wait_serving().await;
    let stored: HashSet<String> = scan_all(&b.channel, "q").await.into_iter().map(|j| j.id).collect();
    assert_eq!(stored, ids);
}

#[tokio::test]
async fn graceful_stop_ends_work_streams_but_keeps_their_leases() {
    let tmp = tempfile::tempdir().unwrap();
    let s = TestServer::start_in(tmp.path()).await;
    s.create_queue("q", Default::default()).await;
    s.enqueue(job("q", "t", "e", "x")).await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::WorkRequest {
        request: Some(pb::work_request::Request::Subscribe(pb::Subscribe {
            queues: vec!["q".into()],
            max_in_flight: 1,
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let mut stream = s.workers().work(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    let d = match stream.message().await.unwrap().unwrap().response.unwrap() {
        pb::work_response::Response::Delivery(d) => d,
        other => panic!("{other:?}"),
    };
    s.stop().await;
    let end = stream.message().await;
    let code = end.err().map(|e| e.code());
    assert!(matches!(code, Some(tonic::Code::Unavailable) | Some(tonic::Code::Unknown) | None), "{code:?}");
    let s = TestServer::start_in(tmp.path()).await;
    s.ack("q", &d).await.expect("the lease outlives a graceful restart");
    s.stop().await;
}
