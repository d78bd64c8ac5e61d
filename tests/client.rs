//! `fairway::client` against a live broker: connecting, the service
//! clients, and a Work stream's deliveries, acks, nacks, extends and
//! dead-lettering; the token reaches a secured broker.

mod common;

use common::TestServer;
use fairway::client::{Client, ClientConfig, ClientError, WorkEvent, WorkStream};
use fairway::pb;
use std::time::Duration;
use tonic::Code;

const BOUND: Duration = Duration::from_secs(30);

async fn client_of(s: &TestServer) -> Client {
    Client::connect(&ClientConfig::new(format!("http://{}", s.addr))).await.expect("connect")
}

/// The next event, failing the test instead of hanging.
async fn next(work: &mut WorkStream) -> WorkEvent {
    tokio::time::timeout(BOUND, work.next()).await.expect("event in time").expect("stream ok").expect("stream open")
}

async fn next_outcome(work: &mut WorkStream) -> pb::Outcome {
    match next(work).await {
        WorkEvent::Outcome(o) => o,
        WorkEvent::Delivery(d) => panic!("expected an outcome, got a delivery of {:?}", d.job.map(|j| j.id)),
    }
}

async fn next_delivery(work: &mut WorkStream) -> pb::Delivery {
    tokio::time::timeout(BOUND, work.next_delivery()).await.expect("delivery in time").expect("ok").expect("open")
}

fn job(payload: &str) -> pb::EnqueueRequest {
    pb::EnqueueRequest {
        queue: "q".into(),
        payload: payload.as_bytes().to_vec().into(),
        max_attempts: 2,
        ..Default::default()
    }
}

#[tokio::test]
async fn a_worker_settles_deliveries_through_the_client() {
    let s = TestServer::start().await;
    let c = client_of(&s).await;
    c.create_queue("q").await.expect("create");
    c.create_queue("q").await.expect("creating an existing queue again is fine");
    let ids: Vec<String> = {
        let mut ids = Vec::new();
        for p in ["ack", "extend", "nack", "dead"] {
            ids.push(c.jobs().enqueue(job(p)).await.expect("enqueue").into_inner().job_id);
        }
        ids
    };

    let sub =
        pb::Subscribe { queues: vec!["q".into()], worker_id: "rust".into(), max_in_flight: 1, ..Default::default() };
    let mut work = c.work(sub).await.expect("work stream");
    let settler = work.settler();
    let payload = |d: &pb::Delivery| String::from_utf8_lossy(&d.job.as_ref().expect("job").payload).to_string();

    // One in flight at a time, in enqueue order.
    let d = next_delivery(&mut work).await;
    assert_eq!(payload(&d), "ack");
    settler.ack(&d).await.expect("send ack");
    let o = next_outcome(&mut work).await;
    assert!(o.ok && o.kind == "ack" && o.job_id == ids[0], "{o:?}");

    let d = next_delivery(&mut work).await;
    assert_eq!(payload(&d), "extend");
    settler.extend(&d, Some(Duration::from_secs(600))).await.expect("send extend");
    let o = next_outcome(&mut work).await;
    assert!(o.ok && o.kind == "extend", "{o:?}");
    let old = d.lease_expires_at.as_ref().expect("expiry").seconds;
    assert!(o.lease_expires_at.as_ref().expect("new expiry").seconds > old + 60, "{o:?}");
    settler.ack(&d).await.expect("send ack");
    assert!(next_outcome(&mut work).await.ok);

    // A nack with retry_after 0 comes straight back; its second failure is
    // its last attempt, so it is dead-lettered.
    let d = next_delivery(&mut work).await;
    assert_eq!(payload(&d), "nack");
    settler.nack(&d, "flaky", Some(Duration::ZERO)).await.expect("send nack");
    let o = next_outcome(&mut work).await;
    assert!(o.ok && o.kind == "nack", "{o:?}");
    let again = next_delivery(&mut work).await;
    assert_eq!(payload(&again), "nack");
    assert_eq!(again.job.as_ref().expect("job").attempt, 2);
    settler.ack(&again).await.expect("send ack");
    assert!(next_outcome(&mut work).await.ok);

    let d = next_delivery(&mut work).await;
    assert_eq!(payload(&d), "dead");
    settler.dead_letter(&d, "cannot ever work").await.expect("send dead");
    assert!(next_outcome(&mut work).await.ok);
    let dead = c
        .jobs()
        .get_job(pb::GetJobRequest { queue: "q".into(), job_id: ids[3].clone() })
        .await
        .expect("dead job kept")
        .into_inner();
    assert_eq!(pb::JobState::try_from(dead.state), Ok(pb::JobState::Dead));
    assert_eq!(dead.last_error, "cannot ever work");

    // A second ack of a settled lease is refused, on the stream, with the
    // code the unary call would give.
    settler.ack(&d).await.expect("send stale ack");
    let o = next_outcome(&mut work).await;
    assert!(!o.ok && !o.code.is_empty(), "{o:?}");
    let stats = c.admin().get_queue_stats(pb::GetQueueStatsRequest { queue: "q".into() }).await.expect("stats");
    let stats = stats.into_inner();
    assert_eq!((stats.ready, stats.leased, stats.dead), (0, 0, 1), "{stats:?}");
}

#[tokio::test]
async fn the_token_reaches_a_secured_broker_and_a_missing_one_is_refused() {
    let files = tempfile::tempdir().expect("temp dir");
    let auth = files.path().join("auth.toml");
    std::fs::write(
        &auth,
        "[[tokens]]\nname = \"ops\"\ntoken = \"ops-token-0123456789\"\nrole = \"admin\"\nqueues = [\"*\"]\ntenants = [\"*\"]\n",
    )
    .expect("write auth file");
    let s = TestServer::start_with(|c| c.auth_file = Some(auth)).await;
    let addr = format!("http://{}", s.addr);
    let with =
        Client::connect(&ClientConfig { token: Some("ops-token-0123456789".into()), ..ClientConfig::new(&addr) })
            .await
            .expect("connect");
    with.create_queue("secured").await.expect("the admin token may create queues");
    let without = Client::connect(&ClientConfig::new(&addr)).await.expect("connect");
    let e = without.create_queue("other").await.expect_err("no token");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
}

#[tokio::test]
async fn connecting_waits_for_a_broker_that_is_still_starting() {
    // Reserve a port, then start the broker on it only after the client
    // has begun retrying.
    let addr = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    let config = ClientConfig { retry_connect_for: Some(BOUND), ..ClientConfig::new(format!("http://{addr}")) };
    let connecting = tokio::spawn(async move { Client::connect(&config).await });
    let dir = tempfile::tempdir().expect("temp dir");
    let s = TestServer::start_at(dir.path(), addr).await;
    let c = tokio::time::timeout(BOUND, connecting).await.expect("in time").expect("task").expect("connected");
    c.create_queue("late").await.expect("usable");
    drop(s);

    // Without retries, a missing broker is reported at once, by address.
    let e = Client::connect(&ClientConfig::new("http://127.0.0.1:1")).await.err().expect("nothing listens on port 1");
    assert!(matches!(e, ClientError::Unreachable { .. }) && e.to_string().contains("127.0.0.1:1"), "{e}");
}
