//! The operator console in a real browser: headless Chromium (driven over
//! the DevTools protocol by tests/dashboard_check.py) loads the pages
//! against a live broker and clicks the buttons as a person would. The
//! figures shown are checked against the broker's own, and what each
//! button did is checked on the broker afterwards.

mod common;

use common::*;
use fairway::client::{Client, ClientConfig};
use fairway::pb;
use serde_json::Value;
use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

/// Dead-letters `d` with `error`.
async fn dead_letter(s: &TestServer, d: &pb::Delivery, error: &str) {
    let j = d.job.as_ref().expect("job");
    let nack = pb::NackRequest {
        queue: j.queue.clone(),
        job_id: j.id.clone(),
        lease_id: d.lease_id.clone(),
        error: error.into(),
        dead: true,
        ..Default::default()
    };
    s.workers().nack(nack).await.expect("nack");
}

fn field<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_else(|| panic!("{key} missing from {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_live_figures_and_its_buttons_work_in_chromium() {
    let s = TestServer::start().await;
    let cfg = pb::QueueConfig {
        alert_dead_letter_window: Some(dur(Duration::from_secs(600))),
        alert_unattended_after: Some(dur(Duration::ZERO)),
        alert_stalled_after: Some(dur(Duration::ZERO)),
        tenant_max_in_flight: Some(8),
        ..Default::default()
    };
    s.create_queue("web", cfg).await;
    let policy = pb::SetTenantPolicyRequest {
        queue: "web".into(),
        tenant: "acme".into(),
        weight: 3,
        max_in_flight: 10,
        enqueue_rate: 500.0,
        ..Default::default()
    };
    s.admin().set_tenant_policy(policy).await.expect("policy");
    let env_weight = pb::SetTenantPolicyRequest {
        queue: "web".into(),
        tenant: "acme".into(),
        environment: "prod".into(),
        weight: 2,
        ..Default::default()
    };
    s.admin().set_tenant_policy(env_weight).await.expect("env weight");
    for (tenant, env, n) in [("acme", "prod", 5), ("acme", "staging", 2), ("globex", "prod", 4)] {
        for i in 0..n {
            let mut j = job("web", tenant, env, &format!("{tenant}-{env}-{i} <b>"));
            j.headers.insert("x-request".into(), format!("r-{i}"));
            s.enqueue(j).await;
        }
    }
    let later = pb::EnqueueRequest {
        schedule: Some(pb::enqueue_request::Schedule::Delay(dur(Duration::from_secs(3600)))),
        ..job("web", "acme", "prod", "later")
    };
    let delayed = s.enqueue(later).await.job_id;
    // Two done, for the processed history.
    for d in s.lease("web", 2, Duration::from_secs(5), None).await {
        s.ack("web", &d).await.expect("ack");
    }
    // Of five more: three dead letters, one retrying in an hour, one held.
    let leased = s.lease("web", 5, Duration::from_secs(5), Some(Duration::from_secs(300))).await;
    assert_eq!(leased.len(), 5);
    let mut dead_jobs = HashMap::new();
    for (i, d) in leased.iter().take(3).enumerate() {
        let j = d.job.clone().expect("job");
        dead_letter(&s, d, &format!("smtp <timeout> #{i}")).await;
        dead_jobs.insert(j.id.clone(), j);
    }
    let retry = &leased[3];
    let rj = retry.job.as_ref().expect("job");
    let nack = pb::NackRequest {
        queue: "web".into(),
        job_id: rj.id.clone(),
        lease_id: retry.lease_id.clone(),
        error: "busy, later".into(),
        retry_after: Some(dur(Duration::from_secs(3600))),
        ..Default::default()
    };
    s.workers().nack(nack).await.expect("nack");
    // A worker on a Work stream, holding one job.
    let client = Client::connect(&ClientConfig::new(format!("http://{}", s.addr))).await.expect("client");
    let sub = pb::Subscribe {
        queues: vec!["web".into()],
        worker_id: "console-worker".into(),
        worker_version: "9.9.9".into(),
        max_in_flight: 1,
        lease_duration: Some(dur(Duration::from_secs(300))),
    };
    let mut work = client.work(sub).await.expect("work stream");
    let held = work.next_delivery().await.expect("stream").expect("a delivery");
    let held_id = held.job.as_ref().expect("job").id.clone();
    // A second queue whose two dead letters get deleted all at once.
    s.create_queue("trash", Default::default()).await;
    for p in ["t1", "t2"] {
        s.enqueue(job("trash", "acme", "", p)).await;
    }
    for d in s.lease("trash", 2, Duration::from_secs(5), None).await {
        dead_letter(&s, &d, "broken").await;
    }

    let before = s.stats("web").await;
    assert_eq!((before.ready, before.scheduled, before.leased, before.dead), (3, 2, 2, 3), "{before:?}");
    eventually(Duration::from_secs(10), || async {
        s.stats("web").await.alerts.iter().any(|a| a.kind == "dead_lettering").then_some(())
    })
    .await;
    // The history samples every 2 s: wait until it has seen the acks and nacks.
    eventually(Duration::from_secs(20), || async {
        let (_, page) = http(s.http_addr, "GET", "/queues/web").await;
        let n = |f: &str| page.split(&format!("data-field={f}>")).nth(1)?.split('<').next()?.parse::<u64>().ok();
        (n("processed_hour")? >= 2 && n("failed_hour")? >= 4).then_some(())
    })
    .await;

    let shots = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console");
    let mut cmd = Command::new(python());
    cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/dashboard_check.py"))
        .arg(format!("http://{}", s.http_addr))
        .args(["web", "trash"])
        .arg(&shots);
    let out = run(cmd).await;
    let seen: Value = serde_json::from_str(out.trim()).expect("json from the browser");

    let o = &seen["overview"];
    assert_eq!((field(o, "ready"), field(o, "leased"), field(o, "dead")), ("3", "2", "3"), "{o}");
    assert!(field(o, "status").contains("dead_lettering"), "{o}");

    let q = &seen["queue"];
    assert_eq!((field(q, "ready"), field(q, "scheduled"), field(q, "leased"), field(q, "dead")), ("3", "2", "2", "3"));
    assert_eq!(q["enqueued_total"], "12");
    assert_eq!(q["acked_total"], "2");
    assert_eq!(q["alerts"], serde_json::json!(["dead_lettering"]));
    assert!(q["alert_messages"][0].as_str().unwrap_or("").contains("ago (alert_dead_letter_window 10m)"), "{q}");
    assert!(q["has_redrive_button"].as_bool().unwrap() && q["has_pause_button"].as_bool().unwrap());
    // Per tenant and environment: what the broker says, with each tenant's limits.
    let groups = q["groups"].as_array().expect("groups");
    for g in &before.groups {
        let shown = groups
            .iter()
            .find(|x| x["tenant"] == g.tenant.as_str() && x["environment"] == g.environment.as_str())
            .unwrap_or_else(|| panic!("group {}/{} not shown: {groups:?}", g.tenant, g.environment));
        assert_eq!(shown["ready"], g.ready.to_string());
        assert_eq!(shown["leased"], g.leased.to_string());
    }
    let row = |t: &str, e: &str| groups.iter().find(|x| x["tenant"] == t && x["environment"] == e).cloned();
    let acme = row("acme", "prod").expect("acme/prod");
    assert_eq!(
        (field(&acme, "weight"), field(&acme, "cap"), field(&acme, "rate")),
        ("3 (env 2)", "10", "500/s, burst 500")
    );
    let globex = row("globex", "prod").expect("globex/prod");
    assert_eq!(
        (field(&globex, "weight"), field(&globex, "cap"), field(&globex, "rate")),
        ("1", "8 (queue default)", "unlimited")
    );
    // Delayed and retrying jobs with their next run.
    let sched = q["scheduled_jobs"].as_array().expect("scheduled");
    assert_eq!(sched.len(), 2, "{sched:?}");
    let by_id = |id: &str| sched.iter().find(|j| j["id"] == id).cloned().expect("listed");
    assert_eq!(by_id(&delayed)["kind"], "delayed");
    let r = by_id(&rj.id);
    assert_eq!((field(&r, "kind"), field(&r, "error")), ("retrying", "busy, later"));
    assert!(
        sched.iter().all(|j| field(j, "next_run").starts_with("in 59m") || field(j, "next_run").starts_with("in 1h")),
        "{sched:?}"
    );
    // Latency as measured, the hour chart with its axes, the sparkline's scale.
    let latency = q["latency"].as_array().expect("latency");
    assert!(latency.iter().all(|l| l.as_str().is_some_and(|t| t.contains("p99") && !t.contains('≤'))), "{latency:?}");
    assert_eq!(q["chart_y"].as_array().map(|a| a.len()), Some(3));
    assert_eq!(q["chart_x"], serde_json::json!(["-60 min", "-30 min", "now"]));
    assert!(
        field(q, "processed_hour").parse::<u64>().unwrap() >= 2 && field(q, "failed_hour").parse::<u64>().unwrap() >= 4
    );
    assert!(field(q, "spark_scale").contains("ready, last"), "{q}");
    // Dead letters with their last errors, HTML-escaped and shown as text.
    let dead = q["dead_jobs"].as_array().expect("dead jobs");
    assert_eq!(dead.len(), 3);
    assert!(dead.iter().all(|d| field(d, "error").starts_with("smtp <timeout> #")), "{dead:?}");

    // Retry from the row: that one is ready again.
    let retried = field(&dead[0], "id");
    let after = &seen["after_retry"];
    assert_eq!(field(after, "flash"), format!("Job {retried} is ready again, with a fresh attempt budget."));
    assert_eq!((field(after, "dead"), field(after, "ready")), ("2", "4"));
    // The job page of another, then its delete button.
    let page = &seen["dead_job"];
    let shown_id = field(&dead[1], "id");
    let j = &dead_jobs[shown_id];
    assert_eq!((field(page, "state"), field(page, "attempts")), ("dead", "1 of 10"));
    assert!(field(page, "last_error").starts_with("smtp <timeout> #"));
    assert_eq!(field(page, "payload"), String::from_utf8_lossy(&j.payload));
    assert_eq!(page["headers"], serde_json::json!([["x-request", j.headers["x-request"]]]));
    assert!(page["has_retry"].as_bool().unwrap() && page["has_delete"].as_bool().unwrap());
    let after = &seen["after_delete"];
    assert_eq!(field(after, "flash"), format!("Job {shown_id} was deleted."));
    assert_eq!(field(after, "dead"), "1");
    // Pause and resume.
    assert!(field(&seen["paused"], "status").contains("paused") && seen["paused"]["has_resume_button"] == true);
    assert!(field(&seen["paused"], "flash").starts_with("Paused"));
    assert!(seen["resumed"]["has_pause_button"] == true && field(&seen["resumed"], "flash").starts_with("Resumed"));
    // Redrive what is left.
    let after = &seen["after_redrive"];
    assert_eq!(field(after, "flash"), "Redrove 1 dead-lettered job back to ready.");
    assert_eq!(field(after, "dead"), "0");
    // Who is connected, and what they run.
    let workers = seen["workers"]["workers"].as_array().expect("workers");
    assert_eq!(workers.len(), 1, "{workers:?}");
    let w = &workers[0];
    assert_eq!(
        (field(w, "id"), field(w, "version"), field(w, "in_flight"), field(w, "state")),
        ("console-worker", "9.9.9", "1/1", "working")
    );
    assert!(field(w, "connected").starts_with("for "), "{w}");
    assert_eq!(seen["workers"]["running"], serde_json::json!([held_id]));
    let lj = &seen["leased_job"];
    assert_eq!(field(lj, "lease_holder"), "console-worker (version 9.9.9)");
    assert!(field(lj, "lease_expires_at").contains("(in "), "{lj}");
    // Delete all, through the confirmation page.
    assert_eq!(seen["confirm_page"], "2 dead letters");
    let after = &seen["after_delete_all"];
    assert_eq!((field(after, "flash"), field(after, "dead")), ("Deleted 2 dead letters.", "0"));

    // The broker agrees with what the buttons did.
    let st = s.stats("web").await;
    assert_eq!((st.ready, st.dead, st.leased, st.paused), (5, 0, 2, false), "{st:?}");
    let gone = s.jobs().get_job(pb::GetJobRequest { queue: "web".into(), job_id: shown_id.into() }).await.unwrap_err();
    assert_eq!(gone.code(), tonic::Code::NotFound);
    let r = s.jobs().get_job(pb::GetJobRequest { queue: "web".into(), job_id: retried.into() }).await.unwrap();
    assert_eq!((r.get_ref().state(), r.get_ref().attempt), (pb::JobState::Ready, 0));
    assert_eq!(s.stats("trash").await.dead, 0);
    // A cross-site post is refused, and nothing happens.
    let (code, _) = http_with(s.http_addr, "POST", "/queues/web/pause", &[("sec-fetch-site", "cross-site")]).await;
    assert_eq!(code, 403);
    assert!(!s.stats("web").await.paused);

    for name in ["dashboard-overview.png", "dashboard.png", "console-job.png", "console-workers.png"] {
        let png = std::fs::read(shots.join(name)).expect("screenshot saved");
        assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{name}: a real screenshot, {} bytes", png.len());
    }
    drop(work);
    s.stop().await;
}
