//! Every request and connection limit against a live broker: the refusal
//! carries the right code and a message naming the field, the limit and the
//! value seen, and the broker keeps serving afterwards.

mod common;

use common::*;
use fairway::conn_limits::{MAX_HEADER_LIST_BYTES, MAX_MESSAGE};
use fairway::limits::*;
use fairway::pb;
use std::time::{Duration, Instant};
use tokio_stream::StreamExt;
use tonic::Code;

/// Asserts `r` was refused with `code` and a message holding every part.
fn refused<T: std::fmt::Debug>(what: &str, r: Result<T, tonic::Status>, code: Code, parts: &[&str]) {
    let s = r.expect_err(what);
    assert_eq!(s.code(), code, "{what}: {}", s.message());
    for p in parts {
        assert!(s.message().contains(p), "{what}: message {:?} lacks {p:?}", s.message());
    }
    assert!(s.message().len() <= 1024, "{what}: message of {} bytes", s.message().len());
}

fn long(n: usize) -> String {
    "a".repeat(n)
}

#[tokio::test]
async fn job_shape_limits_name_the_field_the_limit_and_the_value() {
    let s = TestServer::start().await;
    s.create_queue("q", pb::QueueConfig { max_payload_bytes: 1024, ..Default::default() }).await;
    let mut jobs = s.jobs();
    let base = || job("q", "", "", "x");

    let over = pb::EnqueueRequest { payload: vec![0u8; 1025].into(), ..base() };
    refused(
        "payload",
        jobs.enqueue(over).await,
        Code::InvalidArgument,
        &["payload is 1025 bytes", "at most 1024", "max_payload_bytes"],
    );
    let at = pb::EnqueueRequest { payload: vec![0u8; 1024].into(), ..base() };
    jobs.enqueue(at).await.expect("a payload at the limit is stored");

    let headers = (0..=MAX_HEADERS).map(|i| (format!("h{i}"), "v".to_string())).collect();
    refused(
        "header count",
        jobs.enqueue(pb::EnqueueRequest { headers, ..base() }).await,
        Code::InvalidArgument,
        &["headers has 129 entries", "the limit is 128"],
    );
    let headers = [("big".to_string(), "v".repeat(MAX_HEADER_BYTES))].into();
    refused(
        "header bytes",
        jobs.enqueue(pb::EnqueueRequest { headers, ..base() }).await,
        Code::InvalidArgument,
        &["headers total 65539 bytes", "the limit is 65536"],
    );
    refused(
        "dedup key",
        jobs.enqueue(pb::EnqueueRequest { dedup_key: long(MAX_DEDUP_KEY + 1), ..base() }).await,
        Code::InvalidArgument,
        &["dedup_key is 257 bytes", "the limit is 256", "(value starts \"aaaa"],
    );
    for (field, req) in [
        ("queue", pb::EnqueueRequest { queue: long(129), ..base() }),
        ("tenant", pb::EnqueueRequest { tenant: long(129), ..base() }),
        ("environment", pb::EnqueueRequest { environment: long(129), ..base() }),
    ] {
        refused(
            field,
            jobs.enqueue(req).await,
            Code::InvalidArgument,
            &[&format!("{field} name is 129 bytes"), "the limit is 128"],
        );
    }
    // A huge bad value is echoed only in part.
    refused(
        "queue of a megabyte",
        jobs.enqueue(pb::EnqueueRequest { queue: long(1 << 20), ..base() }).await,
        Code::InvalidArgument,
        &["queue name is 1048576 bytes", "(1048576 bytes)"],
    );
    refused(
        "job id of a megabyte",
        jobs.get_job(pb::GetJobRequest { queue: "q".into(), job_id: long(1 << 20) }).await,
        Code::InvalidArgument,
        &["job_id", "is malformed", "(1048576 bytes)"],
    );
    let far = prost_types::Duration { seconds: MAX_DURATION_SECS + 1, nanos: 0 };
    refused(
        "delay",
        jobs.enqueue(pb::EnqueueRequest { schedule: Some(pb::enqueue_request::Schedule::Delay(far)), ..base() }).await,
        Code::InvalidArgument,
        &["delay is 315576000001s", "the limit is 315576000000s"],
    );

    let batch = pb::EnqueueBatchRequest { jobs: vec![base(); MAX_BATCH + 1] };
    refused("batch", jobs.enqueue_batch(batch).await, Code::InvalidArgument, &["10001 jobs", "the limit is 10000"]);
    let mut bad_item = vec![base(); 3];
    bad_item[2].dedup_key = long(300);
    refused(
        "batch item",
        jobs.enqueue_batch(pb::EnqueueBatchRequest { jobs: bad_item }).await,
        Code::InvalidArgument,
        &["jobs[2]: dedup_key is 300 bytes"],
    );

    let stats = s.stats("q").await;
    assert_eq!(stats.ready, 1, "only the job at the limit was stored");
    s.assert_serving().await;
    s.stop().await;
}

#[tokio::test]
async fn worker_and_admin_limits_are_refused_with_the_value_seen() {
    let s = TestServer::start().await;
    s.create_queue("q", pb::QueueConfig::default()).await;
    let mut workers = s.workers();
    let lease = |r: pb::LeaseRequest| pb::LeaseRequest { queues: vec!["q".into()], ..r };

    refused(
        "max_jobs",
        workers.lease(lease(pb::LeaseRequest { max_jobs: MAX_IN_FLIGHT + 1, ..Default::default() })).await,
        Code::InvalidArgument,
        &["max_jobs is 10001; the limit is 10000"],
    );
    refused(
        "worker_id",
        workers.lease(lease(pb::LeaseRequest { worker_id: long(MAX_WORKER_ID_BYTES + 1), ..Default::default() })).await,
        Code::InvalidArgument,
        &["worker_id is 257 bytes; the limit is 256"],
    );
    refused(
        "queue count",
        workers
            .lease(pb::LeaseRequest {
                queues: (0..=MAX_WORKER_QUEUES).map(|i| format!("q{i}")).collect(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        &["queues has 101 entries; the limit is 100"],
    );
    refused(
        "wait",
        workers.lease(lease(pb::LeaseRequest { wait: Some(dur(MAX_WAIT * 2)), ..Default::default() })).await,
        Code::InvalidArgument,
        &["wait is 600s; the limit is 300s"],
    );

    let subscribe = |sub: pb::Subscribe| {
        let first = pb::WorkRequest { request: Some(pb::work_request::Request::Subscribe(sub)) };
        tokio_stream::iter(vec![first]).chain(tokio_stream::pending())
    };
    let sub = |s: pb::Subscribe| pb::Subscribe { queues: vec!["q".into()], ..s };
    refused(
        "max_in_flight",
        workers.work(subscribe(sub(pb::Subscribe { max_in_flight: MAX_IN_FLIGHT + 1, ..Default::default() }))).await,
        Code::InvalidArgument,
        &["max_in_flight is 10001; the limit is 10000"],
    );
    refused(
        "worker_version",
        workers
            .work(subscribe(sub(pb::Subscribe {
                worker_version: long(MAX_WORKER_VERSION_BYTES + 1),
                ..Default::default()
            })))
            .await,
        Code::InvalidArgument,
        &["worker_version is 129 bytes; the limit is 128"],
    );

    let mut admin = s.admin();
    refused(
        "max_payload_bytes",
        admin
            .create_queue(pb::CreateQueueRequest {
                name: "big".into(),
                config: Some(pb::QueueConfig { max_payload_bytes: MAX_PAYLOAD_LIMIT + 1, ..Default::default() }),
            })
            .await,
        Code::InvalidArgument,
        &["max_payload_bytes is 33554433", "between 1 and 33554432"],
    );
    refused(
        "page_token",
        admin
            .list_jobs(pb::ListJobsRequest {
                queue: "q".into(),
                page_token: long(MAX_PAGE_TOKEN + 1),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        &["page_token is 2049 bytes; the limit is 2048"],
    );
    s.assert_serving().await;
    s.stop().await;
}

#[tokio::test]
async fn a_message_over_the_wire_limit_is_refused_before_it_is_decoded() {
    let s = TestServer::start().await;
    s.create_queue("q", pb::QueueConfig::default()).await;
    let big = pb::EnqueueRequest { payload: vec![7u8; MAX_MESSAGE + 1].into(), ..job("q", "", "", "") };
    let r = s.jobs().enqueue(big).await;
    let st = r.expect_err("an oversized message");
    assert!(matches!(st.code(), Code::OutOfRange | Code::ResourceExhausted), "{:?}: {}", st.code(), st.message());
    assert!(st.message().contains(&MAX_MESSAGE.to_string()), "{}", st.message());
    // Named: the queue's own payload limit, not only the wire's.
    let want = "queue \"q\" accepts payloads of at most 1048576 bytes (1.0 MiB, QueueConfig.max_payload_bytes";
    assert!(st.message().contains(want), "{}", st.message());
    s.enqueue(job("q", "", "", "small")).await;
    s.assert_serving().await;
    s.stop().await;
}

#[tokio::test]
async fn oversized_request_metadata_is_refused_and_the_connection_recovers() {
    let s = TestServer::start().await;
    s.create_queue("q", pb::QueueConfig::default()).await;
    let mut req = tonic::Request::new(pb::GetQueueRequest { queue: "q".into() });
    let value = "v".repeat(MAX_HEADER_LIST_BYTES as usize + 1024);
    req.metadata_mut().insert("x-padding", value.parse().expect("ascii"));
    let mut admin = s.admin();
    let st = admin.get_queue(req).await.expect_err("a header list over the limit");
    // HTTP/2 answers 431 before any gRPC code runs; tonic maps that status.
    assert_eq!(st.code(), Code::Unknown, "{}", st.message());
    assert!(st.message().contains("431"), "{}", st.message());
    // The same connection and a new one both go on.
    eventually(Duration::from_secs(5), || {
        let mut admin = s.admin();
        async move { admin.get_queue(pb::GetQueueRequest { queue: "q".into() }).await.ok() }
    })
    .await;
    s.assert_serving().await;
    s.stop().await;
}

#[tokio::test]
async fn streams_per_connection_are_capped_and_calls_past_the_cap_wait() {
    let s = TestServer::start_with(|c| c.limits.max_streams_per_connection = 8).await;
    s.create_queue("q", pb::QueueConfig::default()).await;
    let channel = s.fresh_channel().await;
    // Eight Work streams that hold their calls open (no subscribe yet).
    let mut held = Vec::new();
    for _ in 0..8 {
        let mut w = pb::worker_service_client::WorkerServiceClient::new(channel.clone());
        held.push(tokio::spawn(async move { w.work(tokio_stream::pending::<pb::WorkRequest>()).await }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut admin = pb::admin_service_client::AdminServiceClient::new(channel.clone());
    let ninth =
        tokio::time::timeout(Duration::from_millis(700), admin.get_queue(pb::GetQueueRequest { queue: "q".into() }));
    assert!(ninth.await.is_err(), "a ninth call on a connection capped at 8 streams must wait");
    // Other connections are not affected.
    s.assert_serving().await;
    // One stream ends: the waiting call goes through.
    held.pop().expect("held").abort();
    let mut admin = pb::admin_service_client::AdminServiceClient::new(channel.clone());
    tokio::time::timeout(Duration::from_secs(5), admin.get_queue(pb::GetQueueRequest { queue: "q".into() }))
        .await
        .expect("the call runs once a stream frees")
        .expect("get_queue");
    for h in held {
        h.abort();
    }
    s.stop().await;
}

#[tokio::test]
async fn the_default_stream_cap_is_advertised_to_clients() {
    let s = TestServer::start().await;
    let tcp = tokio::net::TcpStream::connect(s.addr).await.expect("connect");
    let (client, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(conn);
    let mut client = client.ready().await.expect("ready");
    // A request makes sure the server's SETTINGS have arrived.
    let req = http::Request::post(format!("http://{}/grpc.health.v1.Health/Check", s.addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request");
    let (resp, mut body) = client.send_request(req, false).expect("send");
    body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true).expect("body");
    resp.await.expect("response");
    assert_eq!(client.current_max_send_streams(), fairway::conn_limits::DEFAULT_MAX_STREAMS_PER_CONNECTION as usize);
    s.stop().await;
}

#[tokio::test]
async fn calls_that_overrun_the_request_timeout_end_with_deadline_exceeded() {
    let s = TestServer::start_with(|c| c.limits.request_timeout = Duration::from_secs(1)).await;
    s.create_queue("q", pb::QueueConfig::default()).await;
    // A Work stream that never subscribes holds nothing past the timeout.
    let started = Instant::now();
    let r = s.workers().work(tokio_stream::pending::<pb::WorkRequest>()).await;
    refused("idle work stream", r, Code::DeadlineExceeded, &["WorkerService/Work", "--request-timeout", "1s"]);
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    // A long-poll may wait past it (its wait is added)...
    let started = Instant::now();
    let none = s.lease("q", 1, Duration::from_millis(1500), None).await;
    assert!(none.is_empty() && started.elapsed() >= Duration::from_millis(1400));
    // ...and a subscribed stream lives on past it.
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let first = pb::Subscribe { queues: vec!["q".into()], max_in_flight: 1, ..Default::default() };
    tx.send(pb::WorkRequest { request: Some(pb::work_request::Request::Subscribe(first)) }).expect("send");
    let mut stream =
        s.workers().work(tokio_stream::wrappers::UnboundedReceiverStream::new(rx)).await.expect("work").into_inner();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.enqueue(job("q", "", "", "late")).await;
    let got = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("delivery")
        .expect("item")
        .expect("ok");
    assert!(matches!(got.response, Some(pb::work_response::Response::Delivery(_))));
    drop(tx);
    s.assert_serving().await;
    s.stop().await;
}

#[tokio::test]
async fn a_worker_that_never_reads_its_outcomes_is_pushed_back() {
    let s = TestServer::start().await;
    s.create_queue("q", pb::QueueConfig::default()).await;
    const SENT: usize = 200_000;
    let produced = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = produced.clone();
    let first = pb::WorkRequest {
        request: Some(pb::work_request::Request::Subscribe(pb::Subscribe {
            queues: vec!["q".into()],
            max_in_flight: 1,
            ..Default::default()
        })),
    };
    // Malformed acks: each is answered at once with an error outcome.
    let acks = (0..SENT).map(move |i| {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        pb::WorkRequest {
            request: Some(pb::work_request::Request::Ack(pb::AckRequest {
                queue: "q".into(),
                job_id: format!("bad-{i}"),
                lease_id: "x".repeat(64),
            })),
        }
    });
    // Kept open after the acks: closing the request side ends the stream.
    let requests = tokio_stream::iter(std::iter::once(first).chain(acks)).chain(tokio_stream::pending());
    let mut stream = s.workers().work(requests).await.expect("work").into_inner();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let absorbed = produced.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("a client that does not read got {absorbed} of {SENT} acks in before the broker pushed back");
    assert!(absorbed < SENT / 2, "the broker read {absorbed} acks whose outcomes nobody read");
    // Reading drains it all, in order, and the stream still works.
    let mut outcomes = 0;
    while outcomes < SENT {
        let item = tokio::time::timeout(Duration::from_secs(20), stream.next()).await.expect("outcome in time");
        match item.expect("stream open").expect("ok").response {
            Some(pb::work_response::Response::Outcome(o)) => {
                assert_eq!(o.job_id, format!("bad-{outcomes}"));
                assert_eq!(o.code, "INVALID_ARGUMENT");
                outcomes += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    s.enqueue(job("q", "", "", "after")).await;
    let got = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("delivery")
        .expect("item")
        .expect("ok");
    assert!(matches!(got.response, Some(pb::work_response::Response::Delivery(_))));
    s.assert_serving().await;
    s.stop().await;
}

/// Big payloads: a `ListJobs` page or a `Lease` batch counted only in jobs
/// would build a response over the 64 MiB message limit (tonic could not
/// send it, and a leased batch that is never sent burns every job's attempt).
/// Both stop growing at `RESPONSE_SOFT_LIMIT` instead.
#[tokio::test]
async fn responses_of_big_jobs_are_cut_by_size_and_stay_under_the_message_limit() {
    use fairway::conn_limits::RESPONSE_SOFT_LIMIT;
    use prost::Message;
    let s = TestServer::start().await;
    const BIG: usize = 12 << 20;
    const N: usize = 6;
    s.create_queue("big", pb::QueueConfig { max_payload_bytes: BIG as u32, ..Default::default() }).await;
    let mut jobs = s.jobs().max_encoding_message_size(MAX_MESSAGE);
    for i in 0..N {
        let mut payload = vec![i as u8; BIG];
        payload[0] = b'0' + i as u8;
        jobs.enqueue(pb::EnqueueRequest { payload: payload.into(), ..job("big", "t", "e", "") }).await.unwrap();
    }
    // Every page is answered (none fails with OUT_OF_RANGE), is cut by size
    // and not by page_size, and together the pages list each job once.
    let mut admin = s.admin().max_decoding_message_size(MAX_MESSAGE);
    let (mut seen, mut token, mut pages) = (std::collections::HashSet::new(), String::new(), 0);
    loop {
        let req = pb::ListJobsRequest { queue: "big".into(), page_size: 1000, page_token: token, ..Default::default() };
        let page = admin.list_jobs(req).await.expect("a page of big jobs").into_inner();
        pages += 1;
        assert!(page.encoded_len() < MAX_MESSAGE, "page of {} bytes", page.encoded_len());
        assert!(page.jobs.len() < N || pages > 1, "one page of {} jobs", page.jobs.len());
        for j in &page.jobs {
            assert_eq!(j.payload.len(), BIG);
            assert!(seen.insert(j.id.clone()), "job {} listed twice", j.id);
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen.len(), N);
    assert!(pages >= N * BIG / (RESPONSE_SOFT_LIMIT + BIG), "{pages} pages");

    // A unary lease of all of them gets a batch under the limit; the rest
    // stay ready for the next call, and no attempt is spent on a batch that
    // could not be sent.
    let mut workers = s.workers().max_decoding_message_size(MAX_MESSAGE);
    let mut leased = std::collections::HashSet::new();
    while leased.len() < N {
        let req = pb::LeaseRequest { queues: vec!["big".into()], max_jobs: N as u32, ..Default::default() };
        let r = workers.lease(req).await.expect("a lease of big jobs").into_inner();
        assert!(!r.deliveries.is_empty(), "ready jobs remain, so a lease gets one");
        assert!(
            r.deliveries.len() < N && r.encoded_len() < MAX_MESSAGE,
            "{} jobs, {} bytes",
            r.deliveries.len(),
            r.encoded_len()
        );
        for d in &r.deliveries {
            let j = d.job.as_ref().unwrap();
            assert_eq!(j.attempt, 1, "each job leased once: {}", j.id);
            assert!(leased.insert(j.id.clone()));
            s.ack("big", d).await.unwrap();
        }
    }
    let st = s.stats("big").await;
    assert_eq!((st.acked_total, st.ready, st.leased), (N as u64, 0, 0));
    s.stop().await;
}
