//! Work streams (prefetch window, outcomes, disconnects), fair scheduling
//! across tenants and environments, dedup scopes, and bad input.

mod common;

use common::*;
use fairway::pb;
use fairway::pb::work_request::Request as Req;
use fairway::pb::work_response::Response as Resp;
use std::collections::HashSet;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::Code;

struct Worker {
    tx: mpsc::Sender<pb::WorkRequest>,
    rx: tonic::Streaming<pb::WorkResponse>,
}

impl Worker {
    async fn subscribe(s: &TestServer, queues: &[&str], max_in_flight: u32) -> Worker {
        let (tx, rx) = mpsc::channel(64);
        tx.send(pb::WorkRequest {
            request: Some(Req::Subscribe(pb::Subscribe {
                queues: queues.iter().map(|q| q.to_string()).collect(),
                worker_id: "w1".into(),
                worker_version: "1.0".into(),
                max_in_flight,
                lease_duration: None,
            })),
        })
        .await
        .unwrap();
        let rx = s.workers().work(ReceiverStream::new(rx)).await.expect("work").into_inner();
        Worker { tx, rx }
    }

    async fn next(&mut self) -> Resp {
        let msg = tokio::time::timeout(Duration::from_secs(5), self.rx.next())
            .await
            .expect("a message within 5s")
            .expect("stream open")
            .expect("not an error");
        msg.response.expect("response")
    }

    async fn delivery(&mut self) -> pb::Delivery {
        match self.next().await {
            Resp::Delivery(d) => d,
            other => panic!("expected a delivery, got {other:?}"),
        }
    }

    async fn outcome(&mut self) -> pb::Outcome {
        match self.next().await {
            Resp::Outcome(o) => o,
            other => panic!("expected an outcome, got {other:?}"),
        }
    }

    async fn send(&self, r: Req) {
        self.tx.send(pb::WorkRequest { request: Some(r) }).await.unwrap();
    }

    async fn ack(&self, queue: &str, d: &pb::Delivery) {
        let job = d.job.as_ref().unwrap();
        self.send(Req::Ack(pb::AckRequest {
            queue: queue.into(),
            job_id: job.id.clone(),
            lease_id: d.lease_id.clone(),
        }))
        .await;
    }
}

#[tokio::test]
async fn work_stream_respects_the_prefetch_window_and_answers_every_ack() {
    let s = TestServer::start().await;
    s.create_queue("q", Default::default()).await;
    for i in 0..5 {
        s.enqueue(job("q", "t", "e", &i.to_string())).await;
    }
    let mut w = Worker::subscribe(&s, &["q"], 2).await;
    let d1 = w.delivery().await;
    let d2 = w.delivery().await;
    // The window is full: nothing more arrives until a slot frees.
    assert!(tokio::time::timeout(Duration::from_millis(200), w.rx.next()).await.is_err());
    assert_eq!(s.stats("q").await.leased, 2);
    assert_eq!(s.stats("q").await.connected_workers, 1);
    w.ack("q", &d1).await;
    let mut got_outcome = false;
    let mut got_delivery = false;
    for _ in 0..2 {
        match w.next().await {
            Resp::Outcome(o) => {
                assert!(o.ok, "{o:?}");
                assert_eq!(o.job_id, d1.job.as_ref().unwrap().id);
                assert_eq!(o.kind, "ack");
                got_outcome = true;
            }
            Resp::Delivery(_) => got_delivery = true,
        }
    }
    assert!(got_outcome && got_delivery);
    // A stale ack on the stream gets a failed outcome, not a broken stream.
    w.ack("q", &d1).await;
    let o = w.outcome().await;
    assert!(!o.ok);
    assert_eq!(o.code, "FAILED_PRECONDITION");
    // Extend answers with the new expiry.
    let job = d2.job.as_ref().unwrap();
    w.send(Req::Extend(pb::ExtendLeaseRequest {
        queue: "q".into(),
        job_id: job.id.clone(),
        lease_id: d2.lease_id.clone(),
        lease_duration: Some(dur(Duration::from_secs(120))),
    }))
    .await;
    let o = w.outcome().await;
    assert!(o.ok && o.lease_expires_at.is_some(), "{o:?}");
    drop(w);
}

#[tokio::test]
async fn a_closed_stream_returns_its_leases_at_once() {
    let s = TestServer::start().await;
    s.create_queue("q", Default::default()).await;
    for i in 0..3 {
        s.enqueue(job("q", "t", "e", &i.to_string())).await;
    }
    let mut w = Worker::subscribe(&s, &["q"], 3).await;
    let mut held = HashSet::new();
    for _ in 0..3 {
        held.insert(w.delivery().await.job.unwrap().id);
    }
    drop(w);
    // Leases last 30s by default: getting the jobs now proves they were returned.
    let d = s.lease("q", 3, Duration::from_secs(5), None).await;
    let d = if d.len() < 3 {
        let mut d = d;
        d.extend(s.lease("q", 3, Duration::from_secs(5), None).await);
        d
    } else {
        d
    };
    let back: HashSet<_> = d.iter().map(|d| d.job.as_ref().unwrap().id.clone()).collect();
    assert_eq!(back, held);
    assert!(d.iter().all(|d| d.job.as_ref().unwrap().attempt == 2), "the interrupted delivery counted");
    s.stop().await;
}

#[tokio::test]
async fn first_message_must_be_subscribe() {
    let s = TestServer::start().await;
    let (tx, rx) = mpsc::channel(4);
    tx.send(pb::WorkRequest { request: Some(Req::Ack(pb::AckRequest::default())) }).await.unwrap();
    let err = s.workers().work(ReceiverStream::new(rx)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("subscribe"));
    // Subscribing to a missing queue is NOT_FOUND.
    let (tx, rx) = mpsc::channel(4);
    tx.send(pb::WorkRequest {
        request: Some(Req::Subscribe(pb::Subscribe {
            queues: vec!["nope".into()],
            max_in_flight: 1,
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    assert_eq!(s.workers().work(ReceiverStream::new(rx)).await.unwrap_err().code(), Code::NotFound);
    s.stop().await;
}

#[tokio::test]
async fn a_flooding_tenant_does_not_delay_another() {
    let s = TestServer::start().await;
    s.create_queue("q", Default::default()).await;
    for chunk in 0..5 {
        let jobs = (0..1000).map(|i| job("q", "flood", "prod", &format!("f{chunk}-{i}"))).collect();
        s.jobs().enqueue_batch(pb::EnqueueBatchRequest { jobs }).await.unwrap();
    }
    let small = s.enqueue(job("q", "small", "prod", "mine")).await.job_id;
    let first: Vec<_> = s.lease("q", 2, Duration::ZERO, None).await;
    let ids: Vec<_> = first.iter().map(|d| d.job.as_ref().unwrap().id.clone()).collect();
    assert!(ids.contains(&small), "the small tenant's job is among the next deliveries: {ids:?}");
    s.stop().await;
}

#[tokio::test]
async fn tenants_then_environments_take_turns() {
    let s = TestServer::start().await;
    s.create_queue("q", Default::default()).await;
    let mut jobs = Vec::new();
    for i in 0..20 {
        jobs.push(job("q", "a", "prod", &format!("a-prod-{i}")));
        jobs.push(job("q", "a", "staging", &format!("a-staging-{i}")));
        jobs.push(job("q", "b", "prod", &format!("b-prod-{i}")));
    }
    s.jobs().enqueue_batch(pb::EnqueueBatchRequest { jobs }).await.unwrap();
    let d = s.lease("q", 20, Duration::ZERO, None).await;
    let a = d.iter().filter(|d| d.job.as_ref().unwrap().tenant == "a").count();
    assert_eq!(a, 10, "two tenants split evenly even though one has two environments");
    let a_staging = d.iter().filter(|d| payload_of(d).starts_with("a-staging")).count();
    assert_eq!(a_staging, 5, "environments alternate inside a tenant");
    let st = s.stats("q").await;
    assert_eq!(st.groups.len(), 3);
    assert_eq!(st.ready, 40);
    s.stop().await;
}

#[tokio::test]
async fn dedup_is_scoped_to_queue_tenant_and_environment() {
    let s = TestServer::start().await;
    s.create_queue("q", Default::default()).await;
    s.create_queue("other", Default::default()).await;
    let with_key = |q: &str, t: &str, e: &str| {
        let mut r = job(q, t, e, "x");
        r.dedup_key = "order-42".into();
        r
    };
    let a = s.enqueue(with_key("q", "t1", "prod")).await;
    let again = s.enqueue(with_key("q", "t1", "prod")).await;
    assert!(again.deduplicated);
    assert_eq!(again.job_id, a.job_id);
    for (q, t, e) in [("q", "t1", "staging"), ("q", "t2", "prod"), ("other", "t1", "prod")] {
        let r = s.enqueue(with_key(q, t, e)).await;
        assert!(!r.deduplicated, "{q}/{t}/{e} is another scope");
        assert_ne!(r.job_id, a.job_id);
    }
    assert_eq!(s.stats("q").await.deduplicated_total, 1);
    // Inside one batch, a repeated key dedups to the batch's own first job.
    let batch = vec![with_key("q", "t3", "prod"), with_key("q", "t3", "prod")];
    let r = s.jobs().enqueue_batch(pb::EnqueueBatchRequest { jobs: batch }).await.unwrap().into_inner().results;
    assert!(!r[0].deduplicated && r[1].deduplicated);
    assert_eq!(r[0].job_id, r[1].job_id);
    assert_eq!(s.stats("q").await.deduplicated_total, 2);

    // Once the job is acked (window 0) the key is free again.
    let d = s.lease("q", 5, Duration::ZERO, None).await;
    let mine = d.iter().find(|d| d.job.as_ref().unwrap().id == a.job_id).unwrap();
    s.ack("q", mine).await.unwrap();
    let fresh = s.enqueue(with_key("q", "t1", "prod")).await;
    assert!(!fresh.deduplicated);
    assert_ne!(fresh.job_id, a.job_id);
    s.stop().await;
}

#[tokio::test]
async fn dedup_window_holds_the_key_after_the_job_ends() {
    let s = TestServer::start().await;
    s.create_queue("q", pb::QueueConfig { dedup_window: Some(dur(Duration::from_secs(3600))), ..Default::default() })
        .await;
    let mut r = job("q", "t", "e", "x");
    r.dedup_key = "k".into();
    let first = s.enqueue(r.clone()).await;
    let d = s.lease("q", 1, Duration::ZERO, None).await;
    s.ack("q", &d[0]).await.unwrap();
    let again = s.enqueue(r).await;
    assert!(again.deduplicated);
    assert_eq!(again.job_id, first.job_id);
    s.stop().await;
}

#[tokio::test]
async fn concurrent_dedup_across_environments_creates_exactly_one_job_each() {
    let s = TestServer::start().await;
    s.create_queue("q", Default::default()).await;
    // Background leasing and acking keeps the broker busy with other work.
    for i in 0..200 {
        s.enqueue(job("q", "other", "e", &i.to_string())).await;
    }
    let busy = spawn_busy_worker(s.channel.clone(), "q", "other", 200);
    let envs = ["prod", "staging", "dev", "preview"];
    let mut tasks = Vec::new();
    for i in 0..100 {
        let env = envs[i % envs.len()];
        let mut c = s.jobs();
        tasks.push(tokio::spawn(async move {
            let mut r = job("q", "acme", env, "sync");
            r.dedup_key = "bulk-sync".into();
            let r = c.enqueue(r).await.unwrap().into_inner();
            (env, r.job_id, r.deduplicated)
        }));
    }
    let mut per_env: std::collections::HashMap<&str, HashSet<String>> = Default::default();
    let mut created = 0;
    for t in tasks {
        let (env, id, dedup) = t.await.unwrap();
        per_env.entry(env).or_default().insert(id);
        if !dedup {
            created += 1;
        }
    }
    busy.await.unwrap();
    assert_eq!(created, 4, "exactly one job per environment");
    for env in envs {
        assert_eq!(per_env[env].len(), 1, "{env} got one job id");
    }
    let all: HashSet<_> = per_env.values().flatten().collect();
    assert_eq!(all.len(), 4, "environments never share a job");
    let st = s.stats("q").await;
    assert_eq!(st.deduplicated_total, 96, "every dedup hit is counted");
    s.stop().await;
}

#[tokio::test]
async fn bad_input_gets_precise_statuses_and_stores_nothing() {
    let s = TestServer::start().await;
    s.create_queue("q", pb::QueueConfig { max_payload_bytes: 1024, ..Default::default() }).await;
    let keep = s.enqueue(job("q", "t", "e", "keep me")).await.job_id;
    let mut jobs = s.jobs();
    let code = |r: Result<tonic::Response<pb::EnqueueResponse>, tonic::Status>| r.unwrap_err();

    let e = code(jobs.enqueue(job("missing", "t", "e", "x")).await);
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains("CreateQueue"), "{}", e.message());
    for (q, t, env) in [("Bad Queue", "t", "e"), ("q", "UPPER", "e"), ("q", "t", "sp ace"), ("q", "-x", "e")] {
        let e = code(jobs.enqueue(job(q, t, env, "x")).await);
        assert_eq!(e.code(), Code::InvalidArgument, "{q}/{t}/{env}");
    }
    let big = "x".repeat(2048);
    let e = code(jobs.enqueue(job("q", "t", "e", &big)).await);
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("max_payload_bytes"), "{}", e.message());

    // A batch with one bad item writes nothing and names the item.
    let batch = vec![job("q", "t", "e", "1"), job("q", "t", "e", "2"), job("q", "BAD", "e", "3")];
    let e = jobs.enqueue_batch(pb::EnqueueBatchRequest { jobs: batch }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("jobs[2]"), "{}", e.message());
    let batch = vec![job("q", "t", "e", "1"), job("nope", "t", "e", "2")];
    let e = jobs.enqueue_batch(pb::EnqueueBatchRequest { jobs: batch }).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().starts_with("jobs[1]"), "{}", e.message());
    assert_eq!(s.stats("q").await.enqueued_total, 1, "nothing from the failed batches was stored");

    let mut w = s.workers();
    let e = w
        .ack(pb::AckRequest { queue: "q".into(), job_id: keep.clone(), lease_id: "garbage".into() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e =
        w.ack(pb::AckRequest { queue: "q".into(), job_id: "zz".into(), lease_id: "0".repeat(32) }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e =
        w.ack(pb::AckRequest { queue: "q".into(), job_id: keep.clone(), lease_id: "0".repeat(32) }).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "well-formed but wrong lease");
    let e = w.lease(pb::LeaseRequest { queues: vec![], ..Default::default() }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = w
        .lease(pb::LeaseRequest {
            queues: vec!["q".into()],
            lease_duration: Some(dur(Duration::from_secs(7 * 24 * 3600))),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "every lease must expire in bounded time");
    let e = s
        .admin()
        .create_queue(pb::CreateQueueRequest {
            name: "x".into(),
            config: Some(pb::QueueConfig { max_payload_bytes: u32::MAX, ..Default::default() }),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = s
        .admin()
        .list_jobs(pb::ListJobsRequest { queue: "q".into(), page_token: "not-hex".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // The broker still serves, and the stored job is intact.
    let d = s.lease("q", 1, Duration::ZERO, None).await;
    assert_eq!(payload_of(&d[0]), "keep me");
    s.ack("q", &d[0]).await.unwrap();
    s.stop().await;
}
