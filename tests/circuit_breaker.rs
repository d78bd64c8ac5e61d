//! The worker-version circuit breaker (bad deploy protection), end to end:
//! a failing version is quarantined while a healthy one finishes its jobs
//! with their attempts intact; the alert, health, metrics, the admin RPC and
//! the CLI; no quarantine when every version fails; and a quarantine that
//! survives a restart.

mod common;

use common::*;
use fairway::pb;
use fairway::pb::work_request::Request as Req;
use fairway::pb::work_response::Response as Resp;
use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const WAIT: Duration = Duration::from_secs(10);
const KIND: &str = "bad_worker_version";

/// Alerts other than the breaker's off; a small breaker (50% of at least
/// 10 of the last 20) so the tests need few jobs. More attempts than the
/// window holds, so no job is dead-lettered before the breaker can trip:
/// a nacked job goes back to the front of its group, and the order in
/// which a busy broker takes nacks in may give one job most of a bad
/// version's failures (with 5 attempts, one job took 5 of the 10 and was
/// dead-lettered, so only 5 attempts could be given back).
fn config() -> pb::QueueConfig {
    pb::QueueConfig {
        alert_oldest_ready_age: Some(dur(Duration::ZERO)),
        alert_backlog: Some(0),
        alert_stalled_after: Some(dur(Duration::ZERO)),
        alert_unattended_after: Some(dur(Duration::ZERO)),
        alert_dead_letter_window: Some(dur(Duration::ZERO)),
        breaker_failure_percent: Some(50),
        breaker_min_deliveries: Some(10),
        breaker_window: Some(20),
        max_attempts: 25,
        ..Default::default()
    }
}

async fn lease_as(s: &TestServer, version: &str, max: u32, wait: Duration) -> Vec<pb::Delivery> {
    let req = pb::LeaseRequest {
        queues: vec!["q".into()],
        max_jobs: max,
        wait: Some(dur(wait)),
        worker_id: format!("worker-{version}"),
        worker_version: version.into(),
        ..Default::default()
    };
    s.workers().lease(req).await.expect("lease").into_inner().deliveries
}

/// Nacks for an immediate retry (no backoff), as a crashing build would.
async fn nack(s: &TestServer, d: &pb::Delivery) -> Result<(), tonic::Status> {
    let req = pb::NackRequest {
        queue: "q".into(),
        job_id: d.job.as_ref().expect("job").id.clone(),
        lease_id: d.lease_id.clone(),
        error: "boom".into(),
        retry_after: Some(dur(Duration::ZERO)),
        dead: false,
    };
    s.workers().nack(req).await.map(|_| ())
}

async fn enqueue_n(s: &TestServer, n: usize, tag: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(s.enqueue(job("q", "t", "e", &format!("{tag}-{i}"))).await.job_id);
    }
    ids
}

/// Leases as `version` and acks until `n` jobs are acked; returns their ids.
async fn ack_n(s: &TestServer, version: &str, n: usize) -> Vec<String> {
    let mut acked = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while acked.len() < n {
        assert!(tokio::time::Instant::now() < deadline, "{version} acked only {} of {n}", acked.len());
        for d in lease_as(s, version, 10, Duration::from_millis(500)).await {
            s.ack("q", &d).await.expect("ack");
            acked.push(d.job.expect("job").id);
        }
    }
    acked
}

async fn get_job(s: &TestServer, id: &str) -> pb::Job {
    let req = pb::GetJobRequest { queue: "q".into(), job_id: id.into() };
    s.jobs().get_job(req).await.expect("get job").into_inner()
}

async fn queue_health(s: &TestServer) -> Option<ServingStatus> {
    let req = HealthCheckRequest { service: "fairway.queue.q".into() };
    let r = HealthClient::new(s.channel.clone()).check(req).await.ok()?;
    ServingStatus::try_from(r.into_inner().status).ok()
}

fn quarantined(st: &pb::QueueStats) -> Vec<&str> {
    st.quarantined_versions.iter().map(|q| q.worker_version.as_str()).collect()
}

/// Waits until `version` is quarantined (or not), and checks the alert in
/// stats, health and `/metrics` agree.
async fn expect_quarantine(s: &TestServer, version: &str, on: bool) -> pb::QueueStats {
    let st = eventually(WAIT, || async {
        let st = s.stats("q").await;
        (quarantined(&st).contains(&version) == on).then_some(st)
    })
    .await;
    let alert = st.alerts.iter().find(|a| a.kind == KIND);
    assert_eq!(alert.is_some(), on, "{:?}", st.alerts);
    if let Some(a) = alert {
        assert!(a.message.contains(&format!("{version:?}")) && a.message.contains("failed"), "{}", a.message);
    }
    let want = if on { ServingStatus::NotServing } else { ServingStatus::Serving };
    eventually(WAIT, || async { (queue_health(s).await == Some(want)).then_some(()) }).await;
    let (_, body) = http(s.http_addr, "GET", "/metrics").await;
    let alert_series = format!("fairway_queue_alert{{queue=\"q\",kind=\"{KIND}\"}}");
    assert_eq!(metric(&body, &alert_series), Some(if on { 1.0 } else { 0.0 }));
    let gauge = format!("fairway_worker_version_quarantined{{queue=\"q\",version=\"{version}\"}}");
    assert_eq!(metric(&body, &gauge), on.then_some(1.0), "{gauge}");
    st
}

struct Stream {
    tx: mpsc::Sender<pb::WorkRequest>,
    rx: tonic::Streaming<pb::WorkResponse>,
}

impl Stream {
    async fn subscribe(s: &TestServer, version: &str, max_in_flight: u32) -> Stream {
        let (tx, rx) = mpsc::channel(64);
        let sub = pb::Subscribe {
            queues: vec!["q".into()],
            worker_id: format!("stream-{version}"),
            worker_version: version.into(),
            max_in_flight,
            lease_duration: None,
        };
        tx.send(pb::WorkRequest { request: Some(Req::Subscribe(sub)) }).await.expect("send");
        let rx = s.workers().work(ReceiverStream::new(rx)).await.expect("work").into_inner();
        Stream { tx, rx }
    }

    /// The next message, or `None` after `quiet` without one.
    async fn next(&mut self, quiet: Duration) -> Option<Resp> {
        let msg = tokio::time::timeout(quiet, self.rx.next()).await.ok()?;
        Some(msg.expect("stream open").expect("not an error").response.expect("response"))
    }

    async fn send(&self, r: Req) {
        self.tx.send(pb::WorkRequest { request: Some(r) }).await.expect("send");
    }

    async fn nack(&self, d: &pb::Delivery) {
        self.send(Req::Nack(pb::NackRequest {
            queue: "q".into(),
            job_id: d.job.as_ref().expect("job").id.clone(),
            lease_id: d.lease_id.clone(),
            error: "v2 crashes".into(),
            retry_after: Some(dur(Duration::ZERO)),
            dead: false,
        }))
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_version_is_quarantined_and_a_good_one_finishes_its_jobs() {
    let s = TestServer::start().await;
    s.create_queue("q", config()).await;
    // v1 has been doing fine: 20 acks are the queue's healthy history.
    enqueue_n(&s, 20, "history").await;
    ack_n(&s, "v1", 20).await;
    let jobs = enqueue_n(&s, 30, "work").await;

    // The rollout: a v2 worker nacks everything it gets, but sits on its
    // first delivery (a lease in flight when the quarantine comes).
    let mut v2 = Stream::subscribe(&s, "v2", 4).await;
    let mut held: Option<pb::Delivery> = None;
    let mut received = 0;
    loop {
        match v2.next(Duration::from_millis(200)).await {
            Some(Resp::Delivery(d)) => {
                received += 1;
                if held.is_none() {
                    held = Some(d);
                } else {
                    v2.nack(&d).await;
                }
            }
            Some(Resp::Outcome(_)) => {}
            None => {
                if !s.stats("q").await.quarantined_versions.is_empty() {
                    break;
                }
            }
        }
        assert!(received < 200, "v2 was never quarantined");
    }
    let st = expect_quarantine(&s, "v2", true).await;
    let q = &st.quarantined_versions[0];
    assert_eq!((q.failures, q.deliveries), (10, 10), "{q:?}");
    assert_eq!((q.baseline_version.as_str(), q.baseline_failures, q.baseline_deliveries), ("v1", 0, 20));
    assert!(q.returned_leases >= 1, "the held lease went back: {q:?}");
    assert_eq!(q.refunded_attempts, 10, "{q:?}");
    assert_eq!(st.quarantines_total, 1);

    // Nothing was spent: every job is ready again with its attempts as
    // before v2, and none reached the dead letters.
    for id in &jobs {
        let j = get_job(&s, id).await;
        assert_eq!(j.attempt, 0, "job {id} kept an attempt of the quarantined version");
        assert_eq!(j.state, pb::JobState::Ready as i32, "job {id}");
    }
    assert_eq!((st.dead, st.dead_lettered_total, st.leased), (0, 0, 0));

    // The lease v2 still holds is fenced: its late ack is refused, on the
    // stream and as a unary call.
    let held = held.expect("v2 held a delivery");
    let job = held.job.as_ref().expect("job");
    v2.send(Req::Ack(pb::AckRequest { queue: "q".into(), job_id: job.id.clone(), lease_id: held.lease_id.clone() }))
        .await;
    let outcome = loop {
        match v2.next(WAIT).await.expect("an outcome for the late ack") {
            Resp::Outcome(o) if o.kind == "ack" => break o,
            Resp::Outcome(_) => {}
            Resp::Delivery(d) => panic!("a quarantined version got a delivery: {d:?}"),
        }
    };
    assert!(!outcome.ok && outcome.code == "FAILED_PRECONDITION", "{outcome:?}");
    assert_eq!(s.ack("q", &held).await.unwrap_err().code(), Code::FailedPrecondition);
    // Drain what v2 was sent before the quarantine (stale nack outcomes).
    while let Some(m) = v2.next(Duration::from_millis(300)).await {
        assert!(matches!(m, Resp::Outcome(_)), "a quarantined version got a delivery: {m:?}");
    }

    // v3 finishes every job exactly once, first attempt each, while v2
    // stays connected with free slots and gets nothing.
    let mut seen = HashSet::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while seen.len() < jobs.len() {
        assert!(tokio::time::Instant::now() < deadline, "v3 finished {} of {}", seen.len(), jobs.len());
        for d in lease_as(&s, "v3", 10, Duration::from_millis(500)).await {
            let j = d.job.as_ref().expect("job");
            assert_eq!(j.attempt, 1, "job {} redelivered with spent attempts", j.id);
            assert!(seen.insert(j.id.clone()), "job {} delivered twice", j.id);
            s.ack("q", &d).await.expect("ack");
        }
    }
    assert_eq!(seen, jobs.iter().cloned().collect::<HashSet<_>>());
    assert!(v2.next(Duration::from_millis(200)).await.is_none(), "v2 stays fenced");
    let st = s.stats("q").await;
    assert_eq!((st.ready, st.leased, st.dead, st.acked_total), (0, 0, 0, 50));
    assert_eq!(st.connected_workers, 1, "v2 is still connected");

    // The CLI lists the quarantine and lifts it; the alert clears and v2
    // receives jobs again.
    let cli = |args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fairway"));
        cmd.arg("--addr").arg(format!("http://{}", s.addr)).args(args);
        cmd
    };
    let listed = run(cli(&["queue", "quarantine", "list", "q"])).await;
    assert!(listed.contains("\"v2\": 10 of 10") && listed.contains("quarantined"), "{listed}");
    let detail = run(cli(&["stats", "q"])).await;
    assert!(detail.contains(KIND) && detail.contains("quarantined worker versions"), "{detail}");
    run(cli(&["queue", "quarantine", "lift", "q", "v2"])).await;
    expect_quarantine(&s, "v2", false).await;
    let mut again = cli(&["queue", "quarantine", "lift", "q", "v2"]);
    let out = tokio::task::spawn_blocking(move || again.output()).await.expect("join").expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("not quarantined"), "{err}");
    let fresh = enqueue_n(&s, 1, "after-lift").await;
    let d = loop {
        match v2.next(WAIT).await.expect("v2 gets work after the lift") {
            Resp::Delivery(d) => break d,
            Resp::Outcome(_) => {}
        }
    };
    assert_eq!(d.job.as_ref().expect("job").id, fresh[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_version_fails_nobody_is_quarantined() {
    let s = TestServer::start().await;
    s.create_queue("q", config()).await;
    enqueue_n(&s, 20, "history").await;
    ack_n(&s, "v1", 10).await;
    // A downstream outage: v1 starts failing too (10 of its last 20), and
    // then v2, deployed meanwhile, fails everything.
    let mut failed = 0;
    while failed < 10 {
        for d in lease_as(&s, "v1", 10 - failed, Duration::from_millis(500)).await {
            nack(&s, &d).await.expect("nack");
            failed += 1;
        }
    }
    let mut failed = 0;
    while failed < 30 {
        for d in lease_as(&s, "v2", 5, Duration::from_millis(500)).await {
            nack(&s, &d).await.expect("nack");
            failed += 1;
        }
    }
    let st = s.stats("q").await;
    assert!(st.quarantined_versions.is_empty(), "{:?}", st.quarantined_versions);
    assert!(st.alerts.iter().all(|a| a.kind != KIND), "{:?}", st.alerts);
    let figures: Vec<_> =
        st.worker_versions.iter().map(|v| (v.worker_version.as_str(), v.deliveries, v.failures)).collect();
    assert_eq!(figures, vec![("v1", 20, 10), ("v2", 20, 20)], "the windows hold the last 20");
    // Work goes on for everyone.
    assert!(!lease_as(&s, "v2", 1, WAIT).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quarantine_survives_a_restart_and_the_admin_rpc_lifts_it() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let s = TestServer::start_in(tmp.path()).await;
    s.create_queue("q", config()).await;
    enqueue_n(&s, 10, "history").await;
    ack_n(&s, "v1", 10).await;
    let jobs = enqueue_n(&s, 12, "work").await;
    let leased = lease_as(&s, "v2", 12, WAIT).await;
    assert_eq!(leased.len(), 12);
    for (i, d) in leased.iter().enumerate() {
        let r = nack(&s, d).await;
        // The tenth failure trips the breaker; the two leases still held
        // went back to ready then, so their nacks are stale.
        if i < 10 {
            r.expect("nack");
        } else {
            assert_eq!(r.unwrap_err().code(), Code::FailedPrecondition, "lease {i} is fenced");
        }
    }
    let q = expect_quarantine(&s, "v2", true).await.quarantined_versions[0].clone();
    assert_eq!((q.failures, q.deliveries, q.returned_leases, q.refunded_attempts), (10, 10, 2, 10));
    for id in &jobs {
        assert_eq!(get_job(&s, id).await.attempt, 0, "job {id}");
    }

    s.stop().await;
    let s = TestServer::start_in(tmp.path()).await;
    let st = expect_quarantine(&s, "v2", true).await;
    assert_eq!(st.quarantined_versions[0], q, "kept as it was");
    assert!(lease_as(&s, "v2", 1, Duration::from_millis(300)).await.is_empty(), "still fenced");
    assert_eq!(s.stats("q").await.ready, 12);
    // Only in "q": the same version still gets the jobs of its other queues.
    s.create_queue("other", config()).await;
    let other = s.enqueue(job("other", "t", "e", "elsewhere")).await.job_id;
    let both = pb::LeaseRequest {
        queues: vec!["q".into(), "other".into()],
        max_jobs: 5,
        wait: Some(dur(WAIT)),
        worker_version: "v2".into(),
        ..Default::default()
    };
    let got = s.workers().lease(both).await.expect("lease").into_inner().deliveries;
    let ids: Vec<_> = got.iter().map(|d| d.job.as_ref().expect("job").id.clone()).collect();
    assert_eq!(ids, vec![other], "v2 gets only the other queue's job");

    let mut admin = s.admin();
    let lift =
        |queue: &str, version: &str| pb::LiftQuarantineRequest { queue: queue.into(), worker_version: version.into() };
    let e = admin.lift_quarantine(lift("nope", "v2")).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = admin.lift_quarantine(lift("q", "v9")).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains("\"v9\" is not quarantined") && e.message().contains("[\"v2\"]"), "{}", e.message());
    let e = admin.lift_quarantine(lift("q", "")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let lifted = admin.lift_quarantine(lift("q", "v2")).await.expect("lift").into_inner().lifted;
    assert_eq!(lifted, Some(q));
    expect_quarantine(&s, "v2", false).await;
    assert_eq!(lease_as(&s, "v2", 12, WAIT).await.len(), 12, "v2 gets work again");
}

#[tokio::test]
async fn breaker_settings_are_validated_and_updatable() {
    let s = TestServer::start().await;
    let mut admin = s.admin();
    let create = |config: pb::QueueConfig| pb::CreateQueueRequest { name: "q".into(), config: Some(config) };
    let bad = pb::QueueConfig { breaker_failure_percent: Some(101), ..Default::default() };
    let e = admin.create_queue(create(bad)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("breaker_failure_percent"), "{}", e.message());
    let q = admin.create_queue(create(Default::default())).await.expect("create").into_inner();
    let c = q.config.expect("config");
    assert_eq!(
        (c.breaker_failure_percent, c.breaker_min_deliveries, c.breaker_window, c.breaker_baseline_max_age),
        (Some(50), Some(20), Some(100), Some(dur(Duration::from_secs(3600))))
    );
    let update = |config: pb::QueueConfig| pb::UpdateQueueRequest { queue: "q".into(), config: Some(config) };
    let e = admin
        .update_queue(update(pb::QueueConfig { breaker_min_deliveries: Some(0), ..Default::default() }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("breaker_min_deliveries"), "{}", e.message());
    let e = admin
        .update_queue(update(pb::QueueConfig { breaker_window: Some(10), ..Default::default() }))
        .await
        .unwrap_err();
    assert!(e.message().contains("breaker_min_deliveries is 20"), "min must fit the window: {}", e.message());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fairway"));
    cmd.arg("--addr").arg(format!("http://{}", s.addr));
    cmd.args(["queue", "update", "q", "--breaker-failure-percent", "0", "--breaker-baseline-max-age", "10m"]);
    let out = run(cmd).await;
    assert!(out.contains("breaker=off"), "{out}");
    let c = admin.get_queue(pb::GetQueueRequest { queue: "q".into() }).await.expect("get").into_inner().config;
    let c = c.expect("config");
    assert_eq!((c.breaker_failure_percent, c.breaker_baseline_max_age), (Some(0), Some(dur(Duration::from_secs(600)))));
}

fn version<'a>(st: &'a pb::QueueStats, v: &str) -> Option<&'a pb::WorkerVersionStats> {
    st.worker_versions.iter().find(|w| w.worker_version == v)
}

/// Leases `n` jobs as `version` and nacks each (none may be fenced).
async fn fail_n(s: &TestServer, version: &str, n: usize) {
    let leased = lease_as(s, version, n as u32, WAIT).await;
    assert_eq!(leased.len(), n);
    for d in &leased {
        nack(s, d).await.expect("nack");
    }
}

/// The broker restarting (say, along with the deploy that brings the bad
/// version) must not cost the breaker its baseline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_baseline_survives_a_restart() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let s = TestServer::start_in(tmp.path()).await;
    s.create_queue("q", config()).await;
    enqueue_n(&s, 10, "history").await;
    ack_n(&s, "v1", 10).await;
    s.stop().await;

    let s = TestServer::start_in(tmp.path()).await;
    let st = s.stats("q").await;
    let v1 = version(&st, "v1").expect("v1's window is back from disk");
    assert_eq!((v1.deliveries, v1.failures, v1.quarantined), (10, 0, false));
    enqueue_n(&s, 10, "work").await;
    fail_n(&s, "v2", 10).await;
    let st = expect_quarantine(&s, "v2", true).await;
    let q = &st.quarantined_versions[0];
    assert_eq!((q.baseline_version.as_str(), q.baseline_deliveries, q.failures), ("v1", 10, 10));
    s.stop().await;
}

/// A healthy window older than `breaker_baseline_max_age` is no baseline:
/// what ran fine an hour ago says nothing about a failure now, which may be
/// a downstream outage that any version would hit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_baseline_quarantines_nobody() {
    let s = TestServer::start().await;
    let short = pb::QueueConfig { breaker_baseline_max_age: Some(dur(Duration::from_millis(500))), ..config() };
    s.create_queue("q", short).await;
    enqueue_n(&s, 10, "history").await;
    ack_n(&s, "v1", 10).await;
    // What is awaited here is time itself: v1's newest outcome growing
    // older than the limit.
    tokio::time::sleep(Duration::from_millis(600)).await;
    enqueue_n(&s, 11, "work").await;
    fail_n(&s, "v2", 10).await;
    let st = s.stats("q").await;
    assert!(quarantined(&st).is_empty(), "{:?}", st.quarantined_versions);
    let v2 = version(&st, "v2").expect("v2 tracked");
    assert_eq!((v2.deliveries, v2.failures), (10, 10));
    assert!(!st.alerts.iter().any(|a| a.kind == KIND), "{:?}", st.alerts);

    // The same evidence with the limit off: v1 is a baseline again, and
    // v2's next failure trips it.
    let update = pb::UpdateQueueRequest {
        queue: "q".into(),
        config: Some(pb::QueueConfig { breaker_baseline_max_age: Some(dur(Duration::ZERO)), ..Default::default() }),
    };
    s.admin().update_queue(update).await.expect("update");
    fail_n(&s, "v2", 1).await;
    expect_quarantine(&s, "v2", true).await;
    s.stop().await;
}
