//! The job lifecycle against a real server: enqueue, lease, ack, nack,
//! retries, dead letters, redrive, delays, priorities, cancel, leases.

mod common;

use common::*;
use fairway::pb;
use std::time::{Duration, Instant};
use tonic::Code;

fn state(j: &pb::Job) -> pb::JobState {
    pb::JobState::try_from(j.state).unwrap()
}

async fn get(s: &TestServer, queue: &str, id: &str) -> Result<pb::Job, tonic::Status> {
    s.jobs().get_job(pb::GetJobRequest { queue: queue.into(), job_id: id.into() }).await.map(|r| r.into_inner())
}

#[tokio::test]
async fn whole_lifecycle_enqueue_lease_ack() {
    let s = TestServer::start().await;
    s.create_queue("emails", Default::default()).await;
    let mut req = job("emails", "", "", "hello");
    req.headers.insert("trace".into(), "abc".into());
    let r = s.enqueue(req).await;
    assert!(!r.deduplicated);
    assert_eq!(r.job_id.len(), 16);

    let j = get(&s, "emails", &r.job_id).await.unwrap();
    assert_eq!(state(&j), pb::JobState::Ready);
    assert_eq!((j.tenant.as_str(), j.environment.as_str()), ("default", "default"));
    assert_eq!(j.max_attempts, 10, "queue default applies");
    assert_eq!(j.headers["trace"], "abc");

    let d = s.lease("emails", 1, Duration::from_secs(5), None).await;
    assert_eq!(d.len(), 1);
    assert_eq!(payload_of(&d[0]), "hello");
    let leased = d[0].job.as_ref().unwrap();
    assert_eq!(leased.attempt, 1);
    assert_eq!(state(leased), pb::JobState::Leased);
    assert_eq!(d[0].lease_id.len(), 32);
    assert_eq!(state(&get(&s, "emails", &r.job_id).await.unwrap()), pb::JobState::Leased);
    let st = s.stats("emails").await;
    assert_eq!((st.ready, st.leased), (0, 1));

    s.ack("emails", &d[0]).await.unwrap();
    let err = get(&s, "emails", &r.job_id).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let st = s.stats("emails").await;
    assert_eq!((st.ready, st.leased, st.enqueued_total, st.acked_total), (0, 0, 1, 1));
    // A second ack of the same lease is refused (fencing), not silently accepted.
    assert_eq!(s.ack("emails", &d[0]).await.unwrap_err().code(), Code::FailedPrecondition);
    s.stop().await;
}

#[tokio::test]
async fn expired_leases_are_redelivered_and_stale_leases_are_fenced() {
    let s = TestServer::start().await;
    s.create_queue("q", Default::default()).await;
    let id = s.enqueue(job("q", "t", "e", "x")).await.job_id;
    let first = s.lease("q", 1, Duration::from_secs(5), Some(Duration::from_millis(200))).await;
    assert_eq!(first.len(), 1);
    let started = Instant::now();
    // Long-poll: returns once the lease has expired and the job is ready again.
    let second = s.lease("q", 1, Duration::from_secs(5), Some(Duration::from_secs(30))).await;
    assert_eq!(second.len(), 1, "redelivered after expiry");
    assert!(started.elapsed() < Duration::from_millis(1500), "within a second of expiry: {:?}", started.elapsed());
    let j = second[0].job.as_ref().unwrap();
    assert_eq!((j.id.as_str(), j.attempt), (id.as_str(), 2));
    assert!(j.last_error.contains("lease expired"), "{}", j.last_error);
    assert_ne!(first[0].lease_id, second[0].lease_id);

    // The first worker wakes up late: its ack, nack and extend are all refused.
    let err = s.ack("q", &first[0]).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("not leased under lease"), "{}", err.message());
    let nack = s
        .workers()
        .nack(pb::NackRequest {
            queue: "q".into(),
            job_id: id.clone(),
            lease_id: first[0].lease_id.clone(),
            ..Default::default()
        })
        .await;
    assert_eq!(nack.unwrap_err().code(), Code::FailedPrecondition);
    let ext = s
        .workers()
        .extend_lease(pb::ExtendLeaseRequest {
            queue: "q".into(),
            job_id: id.clone(),
            lease_id: first[0].lease_id.clone(),
            lease_duration: None,
        })
        .await;
    assert_eq!(ext.unwrap_err().code(), Code::FailedPrecondition);

    // The current holder extends and acks.
    let ext = s
        .workers()
        .extend_lease(pb::ExtendLeaseRequest {
            queue: "q".into(),
            job_id: id.clone(),
            lease_id: second[0].lease_id.clone(),
            lease_duration: Some(dur(Duration::from_secs(60))),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(ext.lease_expires_at.unwrap().seconds > second[0].lease_expires_at.unwrap().seconds);
    s.ack("q", &second[0]).await.unwrap();
    assert_eq!(s.stats("q").await.expired_total, 1);
    s.stop().await;
}

#[tokio::test]
async fn nack_backs_off_then_dead_letters_then_redrives() {
    let s = TestServer::start().await;
    s.create_queue(
        "q",
        pb::QueueConfig {
            max_attempts: 3,
            backoff_initial: Some(dur(Duration::from_millis(20))),
            backoff_max: Some(dur(Duration::from_millis(40))),
            ..Default::default()
        },
    )
    .await;
    let id = s.enqueue(job("q", "t", "e", "x")).await.job_id;
    for attempt in 1..=3u32 {
        let d = s.lease("q", 1, Duration::from_secs(5), None).await;
        assert_eq!(d.len(), 1, "attempt {attempt} delivered after backoff");
        assert_eq!(d[0].job.as_ref().unwrap().attempt, attempt);
        let r = s
            .workers()
            .nack(pb::NackRequest {
                queue: "q".into(),
                job_id: id.clone(),
                lease_id: d[0].lease_id.clone(),
                error: format!("boom {attempt}"),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let expect = if attempt < 3 { pb::JobState::Scheduled } else { pb::JobState::Dead };
        assert_eq!(pb::JobState::try_from(r.state).unwrap(), expect);
        if attempt < 3 {
            assert_eq!(state(&get(&s, "q", &id).await.unwrap()), pb::JobState::Scheduled);
        }
    }
    let dead = get(&s, "q", &id).await.unwrap();
    assert_eq!(state(&dead), pb::JobState::Dead);
    assert_eq!(dead.last_error, "boom 3");
    assert_eq!(dead.attempt, 3);
    let st = s.stats("q").await;
    assert_eq!((st.dead, st.nacked_total, st.dead_lettered_total), (1, 3, 1));
    assert!(s.lease("q", 1, Duration::ZERO, None).await.is_empty(), "dead jobs are not delivered");

    // Dead letters show up in ListJobs, and redrive brings them back.
    let listed = s
        .admin()
        .list_jobs(pb::ListJobsRequest { queue: "q".into(), state: pb::JobState::Dead as i32, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.jobs.len(), 1);
    let r = s
        .admin()
        .redrive_dead_letters(pb::RedriveDeadLettersRequest { queue: "q".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.redriven, 1);
    let d = s.lease("q", 1, Duration::from_secs(5), None).await;
    assert_eq!(d[0].job.as_ref().unwrap().attempt, 1, "redrive gives a fresh attempt budget");
    assert_eq!(d[0].job.as_ref().unwrap().last_error, "boom 3", "the last error is kept");

    // dead: true dead-letters at once, whatever attempts remain.
    let r = s
        .workers()
        .nack(pb::NackRequest {
            queue: "q".into(),
            job_id: id.clone(),
            lease_id: d[0].lease_id.clone(),
            error: "poison".into(),
            dead: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pb::JobState::try_from(r.state).unwrap(), pb::JobState::Dead);
    s.stop().await;
}

#[tokio::test]
async fn nack_with_retry_after_and_zero_retries_now() {
    let s = TestServer::start().await;
    s.create_queue("q", Default::default()).await;
    let id = s.enqueue(job("q", "t", "e", "x")).await.job_id;
    let d = s.lease("q", 1, Duration::from_secs(5), None).await;
    let r = s
        .workers()
        .nack(pb::NackRequest {
            queue: "q".into(),
            job_id: id.clone(),
            lease_id: d[0].lease_id.clone(),
            retry_after: Some(dur(Duration::ZERO)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pb::JobState::try_from(r.state).unwrap(), pb::JobState::Ready);
    let d = s.lease("q", 1, Duration::ZERO, None).await;
    assert_eq!(d.len(), 1, "ready again at once");
    let before = Instant::now();
    s.workers()
        .nack(pb::NackRequest {
            queue: "q".into(),
            job_id: id.clone(),
            lease_id: d[0].lease_id.clone(),
            retry_after: Some(dur(Duration::from_millis(300))),
            ..Default::default()
        })
        .await
        .unwrap();
    let d = s.lease("q", 1, Duration::from_secs(5), None).await;
    assert_eq!(d.len(), 1);
    assert!(before.elapsed() >= Duration::from_millis(300));
    s.stop().await;
}

#[tokio::test]
async fn delayed_jobs_run_at_their_time() {
    let s = TestServer::start().await;
    s.create_queue("q", Default::default()).await;
    let mut req = job("q", "t", "e", "later");
    req.schedule = Some(pb::enqueue_request::Schedule::Delay(dur(Duration::from_millis(400))));
    let started = Instant::now();
    let id = s.enqueue(req).await.job_id;
    assert_eq!(state(&get(&s, "q", &id).await.unwrap()), pb::JobState::Scheduled);
    assert_eq!(s.stats("q").await.scheduled, 1);
    assert!(s.lease("q", 1, Duration::ZERO, None).await.is_empty(), "not before its time");
    let d = s.lease("q", 1, Duration::from_secs(5), None).await;
    assert_eq!(d.len(), 1);
    let waited = started.elapsed();
    // run_at is kept in whole milliseconds (truncated), so up to 1 ms early.
    assert!(waited >= Duration::from_millis(399) && waited < Duration::from_millis(1600), "{waited:?}");

    // run_at in the past is ready at once.
    let mut req = job("q", "t", "e", "past");
    req.schedule = Some(pb::enqueue_request::Schedule::RunAt(prost_types::Timestamp { seconds: 1, nanos: 0 }));
    s.enqueue(req).await;
    assert_eq!(s.lease("q", 1, Duration::ZERO, None).await.len(), 1);
    s.stop().await;
}

#[tokio::test]
async fn priority_orders_jobs_within_a_group() {
    let s = TestServer::start().await;
    s.create_queue("q", Default::default()).await;
    for (p, name) in [(0, "low"), (10, "high"), (5, "mid"), (-3, "lowest"), (10, "high2")] {
        let mut r = job("q", "t", "e", name);
        r.priority = p;
        s.enqueue(r).await;
    }
    let d = s.lease("q", 5, Duration::ZERO, None).await;
    let order: Vec<_> = d.iter().map(payload_of).collect();
    assert_eq!(order, ["high", "high2", "mid", "low", "lowest"]);
    s.stop().await;
}

#[tokio::test]
async fn cancel_removes_waiting_jobs_but_not_leased_ones() {
    let s = TestServer::start().await;
    s.create_queue("q", Default::default()).await;
    let ready = s.enqueue(job("q", "t", "e", "a")).await.job_id;
    let mut delayed = job("q", "t", "e", "b");
    delayed.schedule = Some(pb::enqueue_request::Schedule::Delay(dur(Duration::from_secs(3600))));
    let delayed = s.enqueue(delayed).await.job_id;
    let cancel = |id: String| {
        let mut c = s.jobs();
        async move { c.cancel_job(pb::CancelJobRequest { queue: "q".into(), job_id: id }).await }
    };
    assert!(cancel(ready.clone()).await.unwrap().into_inner().cancelled);
    assert!(cancel(delayed.clone()).await.unwrap().into_inner().cancelled);
    assert_eq!(cancel(ready.clone()).await.unwrap_err().code(), Code::NotFound);
    let st = s.stats("q").await;
    assert_eq!((st.ready, st.scheduled), (0, 0));

    let leased = s.enqueue(job("q", "t", "e", "c")).await.job_id;
    let d = s.lease("q", 1, Duration::ZERO, None).await;
    let err = cancel(leased.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    s.ack("q", &d[0]).await.unwrap();
    s.stop().await;
}

#[tokio::test]
async fn paused_queues_keep_accepting_but_stop_delivering() {
    let s = TestServer::start().await;
    s.create_queue("q", Default::default()).await;
    let q = s.admin().pause_queue(pb::PauseQueueRequest { queue: "q".into() }).await.unwrap().into_inner();
    assert!(q.paused);
    s.enqueue(job("q", "t", "e", "x")).await;
    assert!(s.lease("q", 1, Duration::from_millis(100), None).await.is_empty());
    s.admin().resume_queue(pb::ResumeQueueRequest { queue: "q".into() }).await.unwrap();
    assert_eq!(s.lease("q", 1, Duration::from_secs(5), None).await.len(), 1);
    s.stop().await;
}

#[tokio::test]
async fn queue_admin_create_update_list_delete_purge() {
    let s = TestServer::start().await;
    let mut admin = s.admin();
    let q = admin.create_queue(pb::CreateQueueRequest { name: "a".into(), config: None }).await.unwrap().into_inner();
    let c = q.config.unwrap();
    assert_eq!((c.max_attempts, c.default_lease_duration.unwrap().seconds, c.max_payload_bytes), (10, 30, 1 << 20));
    assert_eq!(c.backoff_max.unwrap().seconds, 3600);
    let err = admin.create_queue(pb::CreateQueueRequest { name: "a".into(), config: None }).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    let q = admin
        .update_queue(pb::UpdateQueueRequest {
            queue: "a".into(),
            config: Some(pb::QueueConfig { max_attempts: 4, ..Default::default() }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(q.config.as_ref().unwrap().max_attempts, 4);
    assert_eq!(q.config.unwrap().default_lease_duration.unwrap().seconds, 30, "unset fields keep their value");
    admin.create_queue(pb::CreateQueueRequest { name: "b".into(), config: None }).await.unwrap();
    let names: Vec<_> = admin
        .list_queues(pb::ListQueuesRequest {})
        .await
        .unwrap()
        .into_inner()
        .queues
        .into_iter()
        .map(|q| q.name)
        .collect();
    assert_eq!(names, ["a", "b"]);

    for i in 0..5 {
        s.enqueue(job("a", "t", "e", &i.to_string())).await;
    }
    let err = admin.delete_queue(pb::DeleteQueueRequest { queue: "a".into(), force: false }).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("5 jobs"), "{}", err.message());
    let purged = admin
        .purge_queue(pb::PurgeQueueRequest {
            queue: "a".into(),
            state: pb::JobState::Ready as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .purged;
    assert_eq!(purged, 5);
    assert_eq!(s.stats("a").await.ready, 0);
    assert!(
        admin
            .delete_queue(pb::DeleteQueueRequest { queue: "a".into(), force: false })
            .await
            .unwrap()
            .into_inner()
            .deleted
    );
    s.enqueue(job("b", "t", "e", "x")).await;
    assert!(
        admin
            .delete_queue(pb::DeleteQueueRequest { queue: "b".into(), force: true })
            .await
            .unwrap()
            .into_inner()
            .deleted
    );
    assert_eq!(admin.get_queue(pb::GetQueueRequest { queue: "b".into() }).await.unwrap_err().code(), Code::NotFound);
    // A re-created queue starts empty.
    admin.create_queue(pb::CreateQueueRequest { name: "b".into(), config: None }).await.unwrap();
    assert_eq!(s.stats("b").await.ready, 0);
    s.stop().await;
}

#[tokio::test]
async fn list_jobs_pages_through_a_queue() {
    let s = TestServer::start().await;
    s.create_queue("q", Default::default()).await;
    let mut ids = Vec::new();
    for i in 0..25 {
        let tenant = if i % 2 == 0 { "even" } else { "odd" };
        ids.push(s.enqueue(job("q", tenant, "e", &i.to_string())).await.job_id);
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = s
            .admin()
            .list_jobs(pb::ListJobsRequest {
                queue: "q".into(),
                page_size: 10,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.jobs.len() <= 10);
        seen.extend(page.jobs.into_iter().map(|j| j.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, ids, "every job once, in id order");
    let odd = s
        .admin()
        .list_jobs(pb::ListJobsRequest {
            queue: "q".into(),
            state: pb::JobState::Ready as i32,
            tenant: "odd".into(),
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(odd.jobs.len(), 12);
    assert!(odd.jobs.iter().all(|j| j.tenant == "odd"));
    s.stop().await;
}

/// Retries (nack with backoff) racing with delayed jobs coming due: every job
/// must still be delivered until acked, none stranded in the scheduled index.
#[tokio::test]
async fn retries_and_delays_racing_never_strand_a_job() {
    let s = TestServer::start().await;
    s.create_queue(
        "q",
        pb::QueueConfig {
            backoff_initial: Some(dur(Duration::from_millis(5))),
            backoff_max: Some(dur(Duration::from_millis(40))),
            ..Default::default()
        },
    )
    .await;
    let total = 300;
    let jobs = (0..total)
        .map(|i| {
            let mut r = job("q", &format!("t{}", i % 7), "e", &i.to_string());
            r.schedule = Some(pb::enqueue_request::Schedule::Delay(dur(Duration::from_millis((i % 30) * 10))));
            r
        })
        .collect();
    s.jobs().enqueue_batch(pb::EnqueueBatchRequest { jobs }).await.unwrap();
    let mut acked = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked < total {
        assert!(Instant::now() < deadline, "only {acked} of {total} jobs completed: {:?}", s.stats("q").await);
        for d in s.lease("q", 16, Duration::from_millis(500), None).await {
            let j = d.job.as_ref().unwrap();
            if j.attempt < 3 {
                // Alternate explicit retry_after and the queue's backoff.
                let retry_after = (j.attempt == 1).then(|| dur(Duration::from_millis(15)));
                s.workers()
                    .nack(pb::NackRequest {
                        queue: "q".into(),
                        job_id: j.id.clone(),
                        lease_id: d.lease_id.clone(),
                        retry_after,
                        ..Default::default()
                    })
                    .await
                    .unwrap();
            } else {
                s.ack("q", &d).await.unwrap();
                acked += 1;
            }
        }
    }
    let st = s.stats("q").await;
    assert_eq!((st.ready, st.scheduled, st.leased, st.dead), (0, 0, 0, 0));
    assert_eq!((st.acked_total, st.nacked_total), (total, total * 2));
    s.stop().await;
}
