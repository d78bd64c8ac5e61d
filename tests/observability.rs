//! `/metrics` after a scripted workload, and every built-in alert kind
//! firing and clearing: in `GetQueueStats`, in `/metrics` and through
//! `grpc.health.v1` as `fairway.queue.<name>`.

mod common;
#[path = "common/process.rs"]
mod process;

use common::{dur, eventually, http, job, metric, TestServer};
use fairway::pb;
use std::time::Duration;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const WAIT: Duration = Duration::from_secs(10);

/// Alerts off unless a test turns one on.
fn quiet() -> pb::QueueConfig {
    pb::QueueConfig {
        alert_oldest_ready_age: Some(dur(Duration::ZERO)),
        alert_backlog: Some(0),
        alert_stalled_after: Some(dur(Duration::ZERO)),
        alert_unattended_after: Some(dur(Duration::ZERO)),
        alert_dead_letter_window: Some(dur(Duration::ZERO)),
        ..Default::default()
    }
}

async fn queue_health(s: &TestServer, queue: &str) -> Option<ServingStatus> {
    let r = HealthClient::new(s.channel.clone())
        .check(HealthCheckRequest { service: format!("fairway.queue.{queue}") })
        .await
        .ok()?;
    ServingStatus::try_from(r.into_inner().status).ok()
}

fn alert_kinds(s: &pb::QueueStats) -> Vec<String> {
    s.alerts.iter().map(|a| a.kind.clone()).collect()
}

/// Waits until `kind` is active (or not) in stats, `/metrics` and health.
async fn expect_alert(s: &TestServer, queue: &str, kind: &str, active: bool) -> pb::QueueStats {
    let stats = eventually(WAIT, || async {
        let st = s.stats(queue).await;
        (alert_kinds(&st).iter().any(|k| k == kind) == active).then_some(st)
    })
    .await;
    let (_, body) = http(s.http_addr, "GET", "/metrics").await;
    let series = format!("fairway_queue_alert{{queue=\"{queue}\",kind=\"{kind}\"}}");
    assert_eq!(metric(&body, &series), Some(if active { 1.0 } else { 0.0 }), "{series}");
    let want = if active || !stats.alerts.is_empty() { ServingStatus::NotServing } else { ServingStatus::Serving };
    eventually(WAIT, || async { (queue_health(s, queue).await == Some(want)).then_some(()) }).await;
    stats
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_a_scripted_workload() {
    let s = TestServer::start().await;
    s.create_queue("m", quiet()).await;
    for i in 0..10 {
        let tenant = if i < 6 { "big" } else { "small" };
        s.enqueue(job("m", tenant, "prod", &format!("job {i}"))).await;
    }
    let mut dup = job("m", "big", "prod", "again");
    dup.dedup_key = "k".into();
    s.enqueue(dup.clone()).await;
    assert!(s.enqueue(dup).await.deduplicated);

    // 11 jobs: lease all, ack 9, dead-letter 1, keep 1 leased.
    let mut got = s.lease("m", 11, Duration::from_secs(5), None).await;
    assert_eq!(got.len(), 11);
    let kept = got.pop().expect("one");
    let dead = got.pop().expect("one");
    for d in &got {
        s.ack("m", d).await.expect("ack");
    }
    let j = dead.job.as_ref().expect("job");
    s.workers()
        .nack(pb::NackRequest {
            queue: "m".into(),
            job_id: j.id.clone(),
            lease_id: dead.lease_id.clone(),
            error: "boom".into(),
            dead: true,
            ..Default::default()
        })
        .await
        .expect("nack");

    let (status, body) = http(s.http_addr, "GET", "/metrics").await;
    assert_eq!(status, 200);
    let m = |series: &str| metric(&body, series).unwrap_or_else(|| panic!("{series} missing from:\n{body}"));
    assert_eq!(m("fairway_jobs_enqueued_total{queue=\"m\"}"), 11.0);
    assert_eq!(m("fairway_jobs_deduplicated_total{queue=\"m\"}"), 1.0);
    assert_eq!(m("fairway_jobs_leased_total{queue=\"m\"}"), 11.0);
    assert_eq!(m("fairway_jobs_acked_total{queue=\"m\"}"), 9.0);
    assert_eq!(m("fairway_jobs_nacked_total{queue=\"m\"}"), 1.0);
    assert_eq!(m("fairway_jobs_dead_lettered_total{queue=\"m\"}"), 1.0);
    assert_eq!(m("fairway_queue_jobs{queue=\"m\",state=\"leased\"}"), 1.0);
    assert_eq!(m("fairway_queue_jobs{queue=\"m\",state=\"dead\"}"), 1.0);
    assert_eq!(m("fairway_queue_jobs{queue=\"m\",state=\"ready\"}"), 0.0);
    assert_eq!(m("fairway_enqueue_to_delivery_seconds_count{queue=\"m\"}"), 11.0);
    assert_eq!(m("fairway_lease_to_ack_seconds_count{queue=\"m\"}"), 9.0);
    assert_eq!(m("fairway_lease_to_ack_seconds_bucket{queue=\"m\",le=\"+Inf\"}"), 9.0);
    // Only tenants with ready or leased jobs get series: the kept job is big's.
    assert_eq!(m("fairway_tenant_jobs{queue=\"m\",tenant=\"big\",state=\"leased\"}"), 1.0);
    assert!(!body.contains("tenant=\"small\""), "idle tenants have no series");
    assert!(m("fairway_commits_total") > 0.0);
    // Enqueues are fsynced; leases and acks ride along or get a catch-up sync.
    assert!(m("fairway_wal_syncs_total") >= 1.0 && m("fairway_wal_syncs_total") <= m("fairway_commits_total"));
    assert_eq!(m("fairway_rocksdb_write_stopped"), 0.0);
    assert!(body.contains("fairway_rocksdb_pending_compaction_bytes{queue=\"m\"}"));
    assert!(body.contains("# TYPE fairway_lease_to_ack_seconds histogram"));
    drop(kept);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_series_stay_bounded() {
    let s = TestServer::start().await;
    s.create_queue("wide", quiet()).await;
    let jobs: Vec<_> = (0..100).map(|t| job("wide", &format!("t{t:03}"), "", "x")).collect();
    s.jobs().enqueue_batch(pb::EnqueueBatchRequest { jobs }).await.expect("batch");
    let (_, body) = http(s.http_addr, "GET", "/metrics").await;
    let series = body.lines().filter(|l| l.starts_with("fairway_tenant_jobs{queue=\"wide\"")).count();
    assert_eq!(series, 21 * 2, "20 tenants + other, ready and leased each");
    assert_eq!(metric(&body, "fairway_tenant_jobs{queue=\"wide\",tenant=\"other\",state=\"ready\"}"), Some(80.0));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unattended_fires_without_workers_and_clears_when_one_connects() {
    let s = TestServer::start().await;
    let cfg = pb::QueueConfig { alert_unattended_after: Some(dur(Duration::from_millis(200))), ..quiet() };
    s.create_queue("u", cfg).await;
    // A new queue's health entry is published by a mirror task: await it.
    eventually(WAIT, || async { (queue_health(&s, "u").await == Some(ServingStatus::Serving)).then_some(()) }).await;
    s.enqueue(job("u", "", "", "x")).await;
    let st = expect_alert(&s, "u", "unattended", true).await;
    let a = &st.alerts[0];
    assert!(a.message.contains("no worker connected"), "{}", a.message);
    assert!(a.since.is_some());

    // A Work stream connects: attended again.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::WorkRequest {
        request: Some(pb::work_request::Request::Subscribe(pb::Subscribe {
            queues: vec!["u".into()],
            worker_id: "w".into(),
            max_in_flight: 1,
            ..Default::default()
        })),
    })
    .await
    .expect("subscribe");
    let mut stream =
        s.workers().work(tokio_stream::wrappers::ReceiverStream::new(rx)).await.expect("work").into_inner();
    let _first = stream.message().await.expect("stream").expect("delivery");
    expect_alert(&s, "u", "unattended", false).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_fires_when_work_stops_moving_and_clears_on_progress() {
    let s = TestServer::start().await;
    let cfg = pb::QueueConfig {
        alert_stalled_after: Some(dur(Duration::from_millis(300))),
        max_in_flight: Some(1),
        ..quiet()
    };
    s.create_queue("st", cfg).await;
    s.enqueue(job("st", "", "", "a")).await;
    s.enqueue(job("st", "", "", "b")).await;
    // The only slot is held by a job nobody finishes: the other waits.
    let held = s.lease("st", 1, Duration::from_secs(5), Some(Duration::from_secs(60))).await;
    assert_eq!(held.len(), 1);
    let st = expect_alert(&s, "st", "stalled", true).await;
    assert!(st.alerts[0].message.contains("1 ready job and"), "{}", st.alerts[0].message);
    // Progress: the ack frees the slot and the waiting job is leased.
    s.ack("st", &held[0]).await.expect("ack");
    assert_eq!(s.lease("st", 1, Duration::from_secs(5), None).await.len(), 1);
    expect_alert(&s, "st", "stalled", false).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aging_and_backlog_fire_and_clear() {
    let s = TestServer::start().await;
    let cfg = pb::QueueConfig {
        alert_oldest_ready_age: Some(dur(Duration::from_millis(300))),
        alert_backlog: Some(3),
        ..quiet()
    };
    s.create_queue("ab", cfg).await;
    for i in 0..3 {
        s.enqueue(job("ab", "", "", &i.to_string())).await;
    }
    expect_alert(&s, "ab", "backlog", true).await;
    let st = expect_alert(&s, "ab", "aging", true).await;
    assert!(st.alerts.iter().any(|a| a.message.contains("oldest ready job has waited")));
    // Leasing one brings the backlog under 3; leasing all ends the aging.
    let one = s.lease("ab", 1, Duration::from_secs(5), None).await;
    assert_eq!(one.len(), 1);
    expect_alert(&s, "ab", "backlog", false).await;
    let rest = s.lease("ab", 2, Duration::from_secs(5), None).await;
    assert_eq!(rest.len(), 2);
    expect_alert(&s, "ab", "aging", false).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_lettering_fires_and_clears_after_its_window() {
    let s = TestServer::start().await;
    let cfg = pb::QueueConfig { alert_dead_letter_window: Some(dur(Duration::from_millis(1500))), ..quiet() };
    s.create_queue("dl", cfg).await;
    s.enqueue(job("dl", "", "", "x")).await;
    let d = s.lease("dl", 1, Duration::from_secs(5), None).await.pop().expect("delivery");
    let j = d.job.as_ref().expect("job");
    s.workers()
        .nack(pb::NackRequest {
            queue: "dl".into(),
            job_id: j.id.clone(),
            lease_id: d.lease_id.clone(),
            error: "poison".into(),
            dead: true,
            ..Default::default()
        })
        .await
        .expect("nack");
    expect_alert(&s, "dl", "dead_lettering", true).await;
    expect_alert(&s, "dl", "dead_lettering", false).await;
    s.stop().await;
}

/// The age in a dead-lettering message, in whole seconds ("…dead-lettered
/// 2s ago…"), or 0 for "…539ms ago…".
fn age_secs(message: &str) -> Option<u64> {
    let age = message.split("dead-lettered ").nth(1)?.split(" ago").next()?;
    if age.ends_with("ms") {
        return Some(0);
    }
    humantime::parse_duration(age).ok().map(|d| d.as_secs())
}

/// Dead-letters the one job of `queue` (leased from `channel`).
async fn dead_letter_one(channel: &tonic::transport::Channel, queue: &str) {
    use fairway::pb::{job_service_client::JobServiceClient, worker_service_client::WorkerServiceClient};
    let mut jobs = JobServiceClient::new(channel.clone());
    jobs.enqueue(job(queue, "acme", "", "poison")).await.expect("enqueue");
    let mut workers = WorkerServiceClient::new(channel.clone());
    let lease =
        pb::LeaseRequest { queues: vec![queue.into()], max_jobs: 1, wait: Some(dur(WAIT)), ..Default::default() };
    let d = workers.lease(lease).await.expect("lease").into_inner().deliveries.pop().expect("a delivery");
    let nack = pb::NackRequest {
        queue: queue.into(),
        job_id: d.job.as_ref().expect("job").id.clone(),
        lease_id: d.lease_id.clone(),
        error: "poison".into(),
        dead: true,
        ..Default::default()
    };
    workers.nack(nack).await.expect("nack");
}

/// An alert's message is written when it is read: its age grows with time
/// (it used to say "539ms ago" for as long as the alert lasted). And what
/// the rule needs is stored: after a graceful restart and after a kill -9
/// the alert is still in force, with the same start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_stay_true_as_time_passes_and_across_restarts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = TestServer::start_in(dir.path()).await;
    let cfg = pb::QueueConfig { alert_dead_letter_window: Some(dur(Duration::from_secs(600))), ..quiet() };
    s.create_queue("dl", cfg).await;
    dead_letter_one(&s.channel, "dl").await;
    let first = expect_alert(&s, "dl", "dead_lettering", true).await;
    let alert = |st: &pb::QueueStats| st.alerts.iter().find(|a| a.kind == "dead_lettering").cloned();
    let since = alert(&first).expect("alert").since;
    // Read again later: the same alert, an older age.
    let later = eventually(WAIT, || async {
        let a = alert(&s.stats("dl").await)?;
        (age_secs(&a.message)? >= 2).then_some(a)
    })
    .await;
    assert_eq!(later.since, since, "the same alert");
    assert!(later.message.contains("(alert_dead_letter_window 10m)"), "{}", later.message);

    // A graceful restart: in force at once, with its start.
    s.stop().await;
    let s = TestServer::start_in(dir.path()).await;
    let back = alert(&s.stats("dl").await).expect("dead_lettering survives a restart");
    assert_eq!(back.since, since);
    assert!(age_secs(&back.message).is_some_and(|a| a >= 2), "{}", back.message);
    assert_eq!(queue_health(&s, "dl").await, Some(ServingStatus::NotServing));
    s.stop().await;

    // A crash right after a dead-lettering: the alert was stored with it.
    let mut p = process::BrokerProcess::spawn(dir.path()).await;
    p.wait_serving().await;
    let mut admin = fairway::pb::admin_service_client::AdminServiceClient::new(p.channel.clone());
    admin.create_queue(pb::CreateQueueRequest { name: "crash".into(), config: Some(cfg) }).await.expect("create");
    dead_letter_one(&p.channel, "crash").await;
    p.kill9();
    let p = process::BrokerProcess::spawn(dir.path()).await;
    p.wait_serving().await;
    let mut admin = fairway::pb::admin_service_client::AdminServiceClient::new(p.channel.clone());
    let st = admin.get_queue_stats(pb::GetQueueStatsRequest { queue: "crash".into() }).await.expect("stats");
    assert!(alert(st.get_ref()).is_some(), "dead_lettering lost in a kill -9: {:?}", st.get_ref().alerts);
    let old = admin.get_queue_stats(pb::GetQueueStatsRequest { queue: "dl".into() }).await.expect("stats");
    assert_eq!(alert(old.get_ref()).map(|a| a.since), Some(since), "and the older one still");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_health_follows_queue_lifecycle() {
    let s = TestServer::start().await;
    assert_eq!(queue_health(&s, "later").await, None, "unknown before it exists");
    s.create_queue("later", quiet()).await;
    eventually(WAIT, || async { (queue_health(&s, "later").await == Some(ServingStatus::Serving)).then_some(()) })
        .await;
    s.admin().delete_queue(pb::DeleteQueueRequest { queue: "later".into(), force: true }).await.expect("delete");
    eventually(WAIT, || async { queue_health(&s, "later").await.is_none().then_some(()) }).await;
    let (status, body) = http(s.http_addr, "GET", "/queues/later").await;
    assert_eq!(status, 404, "{body}");
    s.stop().await;
}
