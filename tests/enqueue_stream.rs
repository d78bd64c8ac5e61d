//! `EnqueueStream`: many jobs in flight on one stream, answered in request
//! order; a refused job gets its error in place and the stream goes on.

mod common;

use common::*;
use fairway::pb;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_come_in_request_order_and_errors_stay_in_place() {
    let s = TestServer::start().await;
    s.create_queue("st", pb::QueueConfig { max_payload_bytes: 64, ..Default::default() }).await;
    let mut reqs = Vec::new();
    for i in 0..1000 {
        let mut r = job("st", &format!("t{}", i % 7), "prod", &format!("{i}"));
        match i {
            100 => r.queue = "missing".into(),
            200 => r.payload = vec![b'x'; 65].into(),
            300 => r.tenant = "bad tenant!".into(),
            400 | 401 => {
                r.tenant = "dedup".into();
                r.dedup_key = "same".into();
            }
            _ => {}
        }
        reqs.push(r);
    }
    let out = s.jobs().enqueue_stream(tokio_stream::iter(reqs.clone())).await.expect("stream").into_inner();
    let answers: Vec<pb::EnqueueResponse> =
        tokio_stream::StreamExt::collect::<Vec<_>>(out).await.into_iter().map(|r| r.expect("response")).collect();
    assert_eq!(answers.len(), 1000, "one answer per request");
    assert_eq!(answers[100].code, "NOT_FOUND");
    assert!(answers[100].error.contains("missing"), "{}", answers[100].error);
    assert_eq!(answers[200].code, "INVALID_ARGUMENT");
    assert!(answers[200].error.contains("max_payload_bytes"), "{}", answers[200].error);
    assert_eq!(answers[300].code, "INVALID_ARGUMENT");
    assert!(answers[401].deduplicated && answers[401].job_id == answers[400].job_id);
    let failed = [100, 200, 300];
    for (i, a) in answers.iter().enumerate() {
        if failed.contains(&i) {
            assert!(a.job_id.is_empty());
            continue;
        }
        assert!(a.error.is_empty() && a.code.is_empty(), "#{i}: {a:?}");
        // In order: each answer names the job made from its own request.
        let j = s
            .jobs()
            .get_job(pb::GetJobRequest { queue: "st".into(), job_id: a.job_id.clone() })
            .await
            .expect("stored")
            .into_inner();
        assert_eq!(String::from_utf8_lossy(&j.payload), if i == 401 { "400".to_string() } else { i.to_string() });
    }
    let st = s.stats("st").await;
    assert_eq!(st.ready, 1000 - 3 - 1, "every accepted job stored once");
    assert_eq!(st.deduplicated_total, 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_keeps_a_window_of_jobs_in_flight() {
    let s = TestServer::start().await;
    s.create_queue("win", Default::default()).await;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let mut out =
        s.jobs().enqueue_stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await.expect("stream").into_inner();
    // Keep 64 unconfirmed: send ahead, read answers as they come.
    let producer = tokio::spawn(async move {
        for i in 0..5000 {
            tx.send(job("win", "t", "", &i.to_string())).await.expect("send");
        }
    });
    let mut ids = std::collections::HashSet::new();
    while let Some(r) =
        tokio::time::timeout(Duration::from_secs(20), out.message()).await.expect("in time").expect("ok")
    {
        assert!(r.error.is_empty(), "{r:?}");
        assert!(ids.insert(r.job_id));
    }
    producer.await.expect("producer");
    assert_eq!(ids.len(), 5000);
    assert_eq!(s.stats("win").await.ready, 5000);
    s.stop().await;
}
