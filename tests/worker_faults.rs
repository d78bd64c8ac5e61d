//! Workers that misbehave: disconnect mid-job, hang, ack twice, ack after
//! their lease expired, or talk on a Work stream before `subscribe`. Each
//! gets the behaviour docs/semantics.md documents, and the
//! job is then processed exactly once successfully by a well-behaved worker.

mod common;

use common::*;
use fairway::pb;
use fairway::pb::work_request::Request as WorkMsg;
use fairway::pb::work_response::Response as WorkResp;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tonic::{Code, Streaming};

/// One Work stream, driven by hand.
struct Work {
    tx: mpsc::Sender<pb::WorkRequest>,
    rx: Streaming<pb::WorkResponse>,
}

impl Work {
    async fn subscribe(channel: tonic::transport::Channel, queue: &str, worker: &str) -> Work {
        Work::subscribe_with(channel, queue, worker, 1).await
    }

    async fn subscribe_with(channel: tonic::transport::Channel, queue: &str, worker: &str, window: u32) -> Work {
        let (tx, rx) = mpsc::channel(16);
        let sub = pb::Subscribe {
            queues: vec![queue.into()],
            worker_id: worker.into(),
            max_in_flight: window,
            ..Default::default()
        };
        tx.send(pb::WorkRequest { request: Some(WorkMsg::Subscribe(sub)) }).await.unwrap();
        let mut client = pb::worker_service_client::WorkerServiceClient::new(channel);
        let rx = client.work(tokio_stream::wrappers::ReceiverStream::new(rx)).await.expect("work").into_inner();
        Work { tx, rx }
    }

    async fn next(&mut self, within: Duration) -> Option<WorkResp> {
        match tokio::time::timeout(within, self.rx.message()).await {
            Err(_) => None,
            Ok(m) => Some(m.expect("stream ok").expect("stream open").response.expect("response")),
        }
    }

    async fn delivery(&mut self, within: Duration) -> pb::Delivery {
        match self.next(within).await {
            Some(WorkResp::Delivery(d)) => d,
            other => panic!("expected a delivery within {within:?}, got {other:?}"),
        }
    }

    async fn send(&self, msg: WorkMsg) {
        self.tx.send(pb::WorkRequest { request: Some(msg) }).await.unwrap();
    }

    async fn outcome(&mut self) -> pb::Outcome {
        match self.next(Duration::from_secs(10)).await {
            Some(WorkResp::Outcome(o)) => o,
            other => panic!("expected an outcome, got {other:?}"),
        }
    }

    async fn ack(&mut self, d: &pb::Delivery) -> pb::Outcome {
        self.send(WorkMsg::Ack(ack_req(d))).await;
        self.outcome().await
    }
}

fn ack_req(d: &pb::Delivery) -> pb::AckRequest {
    let j = d.job.as_ref().expect("job");
    pb::AckRequest { queue: j.queue.clone(), job_id: j.id.clone(), lease_id: d.lease_id.clone() }
}

async fn queue_with_lease(s: &TestServer, lease: Duration) {
    s.create_queue("q", pb::QueueConfig { default_lease_duration: Some(dur(lease)), ..Default::default() }).await;
}

/// The job was processed exactly once successfully: one ack counted, and
/// the job is gone.
async fn assert_done_once(s: &TestServer, id: &str) {
    let stats = s.stats("q").await;
    assert_eq!(stats.acked_total, 1, "exactly one successful ack: {stats:?}");
    assert_eq!((stats.ready, stats.scheduled, stats.leased, stats.dead), (0, 0, 0, 0));
    let err = s.jobs().get_job(pb::GetJobRequest { queue: "q".into(), job_id: id.into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "an acked job is deleted");
}

#[tokio::test]
async fn a_worker_that_disconnects_mid_job_gives_it_back_at_once() {
    let s = TestServer::start().await;
    // A long lease: only the disconnect can bring the job back quickly.
    queue_with_lease(&s, Duration::from_secs(120)).await;
    let id = s.enqueue(job("q", "t", "e", "x")).await.job_id;

    // The faulty worker has a connection of its own and drops it mid-job.
    let channel = s.fresh_channel().await;
    let mut faulty = Work::subscribe(channel.clone(), "q", "faulty").await;
    let d1 = faulty.delivery(Duration::from_secs(5)).await;
    assert_eq!(d1.job.as_ref().unwrap().attempt, 1);
    let mut good = Work::subscribe(s.channel.clone(), "q", "good").await;
    let dropped = Instant::now();
    drop(faulty);
    drop(channel);

    let d2 = good.delivery(Duration::from_secs(5)).await;
    assert!(dropped.elapsed() < Duration::from_secs(5), "back well before the 120s lease: {:?}", dropped.elapsed());
    let j = d2.job.as_ref().unwrap();
    assert_eq!((j.id.as_str(), j.attempt), (id.as_str(), 2), "the disconnect counted as an attempt");
    assert!(j.last_error.contains("worker disconnected"), "{}", j.last_error);
    let o = good.ack(&d2).await;
    assert!(o.ok, "{o:?}");
    // The vanished worker's lease is dead: its ack is fenced.
    let late = s.workers().ack(ack_req(&d1)).await.unwrap_err();
    assert_eq!(late.code(), Code::FailedPrecondition);
    assert_done_once(&s, &id).await;
    s.stop().await;
}

#[tokio::test]
async fn a_hung_worker_loses_the_job_when_its_lease_expires_and_is_fenced_after() {
    let s = TestServer::start().await;
    let lease = Duration::from_millis(1500);
    queue_with_lease(&s, lease).await;
    let id = s.enqueue(job("q", "t", "e", "x")).await.job_id;

    // The hung worker leases and never comes back in time.
    let hung = s.lease("q", 1, Duration::from_secs(5), None).await;
    let leased_at = Instant::now();
    assert_eq!(hung.len(), 1);
    let mut good = Work::subscribe(s.channel.clone(), "q", "good").await;
    // While the lease holds, nobody else gets the job.
    let early = good.next(lease - Duration::from_millis(300)).await;
    assert!(early.is_none(), "delivered twice while the lease held: {early:?}");
    // Then it expires and comes back within a second.
    let d = good.delivery(Duration::from_secs(5)).await;
    let back = leased_at.elapsed();
    // (`leased_at` is taken a little after the lease began.)
    let soonest = lease - Duration::from_millis(200);
    assert!(back >= soonest && back < lease + Duration::from_secs(2), "redelivered after {back:?}");
    let j = d.job.as_ref().unwrap();
    assert_eq!((j.id.as_str(), j.attempt), (id.as_str(), 2));
    assert!(j.last_error.contains("expired"), "{}", j.last_error);

    // The hung worker wakes up: every settle with its stale lease is fenced,
    // and none of them disturbs the new holder.
    let mut w = s.workers();
    let e = w.ack(ack_req(&hung[0])).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("not leased under lease"), "{}", e.message());
    let nack = pb::NackRequest {
        queue: "q".into(),
        job_id: id.clone(),
        lease_id: hung[0].lease_id.clone(),
        ..Default::default()
    };
    assert_eq!(w.nack(nack).await.unwrap_err().code(), Code::FailedPrecondition);
    let extend = pb::ExtendLeaseRequest {
        queue: "q".into(),
        job_id: id.clone(),
        lease_id: hung[0].lease_id.clone(),
        lease_duration: None,
    };
    assert_eq!(w.extend_lease(extend).await.unwrap_err().code(), Code::FailedPrecondition);
    let o = good.ack(&d).await;
    assert!(o.ok, "{o:?}");
    assert_eq!(s.stats("q").await.expired_total, 1);
    assert_done_once(&s, &id).await;
    s.stop().await;
}

#[tokio::test]
async fn an_ack_after_the_lease_expired_is_fenced_and_the_job_stays_ready() {
    let s = TestServer::start().await;
    queue_with_lease(&s, Duration::from_millis(300)).await;
    let id = s.enqueue(job("q", "t", "e", "x")).await.job_id;
    let mut slow = Work::subscribe(s.fresh_channel().await, "q", "slow").await;
    let d = slow.delivery(Duration::from_secs(5)).await;
    // Paused, the queue leases nothing more: the expired job stays ready
    // instead of going straight back to the slow worker's free slot.
    s.admin().pause_queue(pb::PauseQueueRequest { queue: "q".into() }).await.unwrap();
    // The lease runs out while the slow worker works.
    eventually(Duration::from_secs(5), || {
        let s = &s;
        async move { (s.stats("q").await.expired_total == 1).then_some(()) }
    })
    .await;
    // On the stream the late ack is answered, not dropped: an Outcome with
    // the code the unary call would have returned.
    let o = slow.ack(&d).await;
    assert!(!o.ok);
    assert_eq!((o.kind.as_str(), o.code.as_str(), o.job_id.as_str()), ("ack", "FAILED_PRECONDITION", id.as_str()));
    assert!(o.error.contains("the lease expired"), "{}", o.error);
    // The same over a unary call; the job is untouched by both.
    assert_eq!(s.workers().ack(ack_req(&d)).await.unwrap_err().code(), Code::FailedPrecondition);
    let j = s.jobs().get_job(pb::GetJobRequest { queue: "q".into(), job_id: id.clone() }).await.unwrap().into_inner();
    assert_eq!((j.state, j.attempt), (pb::JobState::Ready as i32, 1), "{j:?}");
    assert_eq!(s.stats("q").await.acked_total, 0);

    // A well-behaved worker then does the job once.
    drop(slow);
    s.admin().resume_queue(pb::ResumeQueueRequest { queue: "q".into() }).await.unwrap();
    let d2 = s.lease("q", 1, Duration::from_secs(5), Some(Duration::from_secs(60))).await;
    assert_eq!(d2[0].job.as_ref().unwrap().attempt, 2);
    assert_ne!(d2[0].lease_id, d.lease_id);
    s.ack("q", &d2[0]).await.expect("the new holder acks");
    assert_done_once(&s, &id).await;
    s.stop().await;
}

#[tokio::test]
async fn a_double_ack_is_fenced_and_counts_once() {
    let s = TestServer::start().await;
    queue_with_lease(&s, Duration::from_secs(60)).await;
    let streamed = s.enqueue(job("q", "t", "e", "stream")).await.job_id;
    let mut w = Work::subscribe(s.channel.clone(), "q", "twice").await;
    let d = w.delivery(Duration::from_secs(5)).await;
    assert_eq!(d.job.as_ref().unwrap().id, streamed);
    // Both acks sent before reading either answer, as a buggy worker would.
    w.send(WorkMsg::Ack(ack_req(&d))).await;
    w.send(WorkMsg::Ack(ack_req(&d))).await;
    let first = w.outcome().await;
    let second = w.outcome().await;
    assert!(first.ok, "{first:?}");
    assert!(!second.ok);
    assert_eq!((second.kind.as_str(), second.code.as_str()), ("ack", "FAILED_PRECONDITION"));
    assert!(second.error.contains("already settled"), "{}", second.error);
    assert_done_once(&s, &streamed).await;
    drop(w);

    // The same over unary calls.
    let unary = s.enqueue(job("q", "t", "e", "unary")).await.job_id;
    let d = s.lease("q", 1, Duration::from_secs(5), None).await;
    assert_eq!(d[0].job.as_ref().unwrap().id, unary);
    s.ack("q", &d[0]).await.expect("first ack");
    assert_eq!(s.ack("q", &d[0]).await.unwrap_err().code(), Code::FailedPrecondition);
    let stats = s.stats("q").await;
    assert_eq!(stats.acked_total, 2, "one ack per job: {stats:?}");
    s.stop().await;
}

#[tokio::test]
async fn messages_before_subscribe_are_refused_precisely() {
    let s = TestServer::start().await;
    queue_with_lease(&s, Duration::from_secs(60)).await;
    let id = s.enqueue(job("q", "t", "e", "x")).await.job_id;
    let mut client = s.workers();

    // An ack as the first message (naming the real job: it must not settle it).
    let ack = pb::AckRequest { queue: "q".into(), job_id: id.clone(), lease_id: "00".repeat(16) };
    let first = [pb::WorkRequest { request: Some(WorkMsg::Ack(ack)) }];
    let e = client.work(tokio_stream::iter(first)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("first message on a Work stream must be `subscribe`"), "{}", e.message());
    // A nack, an extend, and a message with nothing set: the same.
    let nack = WorkMsg::Nack(pb::NackRequest { queue: "q".into(), job_id: id.clone(), ..Default::default() });
    let extend =
        WorkMsg::Extend(pb::ExtendLeaseRequest { queue: "q".into(), job_id: id.clone(), ..Default::default() });
    for first in [Some(nack), Some(extend), None] {
        let e = client.work(tokio_stream::iter([pb::WorkRequest { request: first }])).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    }
    // A stream closed before any message.
    let e = client.work(tokio_stream::iter(Vec::<pb::WorkRequest>::new())).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("closed before its first message"), "{}", e.message());
    let stats = s.stats("q").await;
    assert_eq!((stats.ready, stats.leased, stats.leased_total, stats.connected_workers), (1, 0, 0, 0), "{stats:?}");

    // A second subscribe on a subscribed stream is answered on the stream,
    // which goes on working.
    let mut w = Work::subscribe(s.channel.clone(), "q", "good").await;
    let d = w.delivery(Duration::from_secs(5)).await;
    w.send(WorkMsg::Subscribe(pb::Subscribe { queues: vec!["q".into()], ..Default::default() })).await;
    let o = w.outcome().await;
    assert!(!o.ok);
    assert_eq!((o.kind.as_str(), o.code.as_str()), ("subscribe", "FAILED_PRECONDITION"));
    assert!(o.error.contains("already subscribed"), "{}", o.error);
    assert!(w.ack(&d).await.ok);
    assert_done_once(&s, &id).await;
    s.stop().await;
}

#[tokio::test]
async fn acks_sent_together_are_each_applied_and_answered() {
    let s = TestServer::start().await;
    s.create_queue("q", pb::QueueConfig::default()).await;
    for i in 0..6 {
        s.enqueue(job("q", "t", "", &format!("j{i}"))).await;
    }
    let mut w = Work::subscribe_with(s.channel.clone(), "q", "batcher", 6).await;
    let mut ds = Vec::new();
    for _ in 0..6 {
        ds.push(w.delivery(Duration::from_secs(5)).await);
    }
    // Six acks in one message: one with a lease that is not this
    // delivery's, one with a job id that does not parse. Each is judged
    // alone; the others are applied.
    let mut acks: Vec<pb::AckRequest> = ds.iter().map(ack_req).collect();
    acks[2].lease_id = "0".repeat(32);
    acks[4].job_id = "not-an-id".into();
    let sent: Vec<String> = acks.iter().map(|a| a.job_id.clone()).collect();
    w.send(WorkMsg::Acks(pb::AckBatch { acks })).await;
    let mut outcomes = Vec::new();
    for _ in 0..6 {
        outcomes.push(w.outcome().await);
    }
    assert!(outcomes.iter().all(|o| o.kind == "ack"), "{outcomes:?}");
    let mut answered: Vec<String> = outcomes.iter().map(|o| o.job_id.clone()).collect();
    answered.sort();
    let mut want = sent.clone();
    want.sort();
    assert_eq!(answered, want, "one outcome per ack");
    let failed: Vec<&pb::Outcome> = outcomes.iter().filter(|o| !o.ok).collect();
    assert_eq!(failed.len(), 2, "{outcomes:?}");
    assert!(failed.iter().any(|o| o.job_id == "not-an-id" && o.code == "INVALID_ARGUMENT"), "{failed:?}");
    assert!(failed.iter().any(|o| o.job_id == sent[2]), "{failed:?}");
    let stats = s.stats("q").await;
    assert_eq!((stats.acked_total, stats.leased), (4, 2), "{stats:?}");

    // A batch of none or of too many is refused whole, on the stream, which
    // goes on working.
    w.send(WorkMsg::Acks(pb::AckBatch { acks: vec![] })).await;
    let o = w.outcome().await;
    assert_eq!((o.kind.as_str(), o.code.as_str(), o.ok), ("acks", "INVALID_ARGUMENT", false), "{o:?}");
    let too_many = vec![ack_req(&ds[2]); fairway::limits::MAX_ACKS_PER_MESSAGE + 1];
    w.send(WorkMsg::Acks(pb::AckBatch { acks: too_many })).await;
    let o = w.outcome().await;
    assert_eq!((o.kind.as_str(), o.code.as_str()), ("acks", "INVALID_ARGUMENT"), "{o:?}");
    assert!(o.error.contains("none applied"), "{}", o.error);
    assert_eq!(s.stats("q").await.acked_total, 4, "nothing of a refused batch applied");
    w.send(WorkMsg::Acks(pb::AckBatch { acks: vec![ack_req(&ds[2]), ack_req(&ds[4])] })).await;
    assert!(w.outcome().await.ok && w.outcome().await.ok);
    let stats = s.stats("q").await;
    assert_eq!((stats.acked_total, stats.leased, stats.ready), (6, 0, 0), "{stats:?}");
    s.stop().await;
}
