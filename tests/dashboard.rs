//! The web dashboard in a real browser: headless Chromium (driven over the
//! DevTools protocol by tests/dashboard_check.py) loads the pages against a
//! live broker, the figures shown are checked against gRPC stats, the
//! redrive button is clicked, and screenshots are saved.

mod common;

use common::*;
use fairway::pb;
use std::process::Command;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_live_figures_and_redrives_in_chromium() {
    let s = TestServer::start().await;
    let cfg = pb::QueueConfig {
        alert_dead_letter_window: Some(dur(Duration::from_secs(600))),
        alert_unattended_after: Some(dur(Duration::ZERO)),
        alert_stalled_after: Some(dur(Duration::ZERO)),
        ..Default::default()
    };
    s.create_queue("web", cfg).await;
    for (tenant, env, n) in [("acme", "prod", 5), ("acme", "staging", 2), ("globex", "prod", 4)] {
        for i in 0..n {
            s.enqueue(job("web", tenant, env, &format!("{tenant}-{env}-{i}"))).await;
        }
    }
    // Lease 5: dead-letter 2 with errors, keep 3 in flight.
    let leased = s.lease("web", 5, Duration::from_secs(5), Some(Duration::from_secs(300))).await;
    assert_eq!(leased.len(), 5);
    for (i, d) in leased.iter().take(2).enumerate() {
        let j = d.job.as_ref().expect("job");
        s.workers()
            .nack(pb::NackRequest {
                queue: "web".into(),
                job_id: j.id.clone(),
                lease_id: d.lease_id.clone(),
                error: format!("smtp <timeout> #{i}"),
                dead: true,
                ..Default::default()
            })
            .await
            .expect("nack");
    }
    let before = s.stats("web").await;
    assert_eq!((before.ready, before.leased, before.dead), (6, 3, 2));
    // The dead-lettering alert is on before the page loads.
    eventually(Duration::from_secs(10), || async {
        s.stats("web").await.alerts.iter().any(|a| a.kind == "dead_lettering").then_some(())
    })
    .await;

    let shot = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let mut cmd = Command::new(python());
    cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/dashboard_check.py"))
        .arg(format!("http://{}", s.http_addr))
        .arg("web")
        .arg(&shot);
    let out = run(cmd).await;
    let seen: serde_json::Value = serde_json::from_str(out.trim()).expect("json from the browser");

    let o = &seen["overview"];
    assert_eq!((o["ready"].as_str(), o["leased"].as_str(), o["dead"].as_str()), (Some("6"), Some("3"), Some("2")));
    assert!(o["status"].as_str().unwrap_or("").contains("dead_lettering"), "{o}");

    let q = &seen["queue"];
    assert_eq!(q["ready"], "6");
    assert_eq!(q["leased"], "3");
    assert_eq!(q["dead"], "2");
    assert_eq!(q["enqueued_total"], "11");
    assert_eq!(q["dead_lettered_total"], "2");
    assert_eq!(q["alerts"], serde_json::json!(["dead_lettering"]));
    assert_eq!(q["has_redrive_button"], true);
    // Per tenant and environment: what the broker says, shown as is.
    let groups = q["groups"].as_array().expect("groups");
    for g in &before.groups {
        let shown = groups
            .iter()
            .find(|x| x["tenant"] == g.tenant.as_str() && x["environment"] == g.environment.as_str())
            .unwrap_or_else(|| panic!("group {}/{} not shown: {groups:?}", g.tenant, g.environment));
        assert_eq!(shown["ready"], g.ready.to_string());
        assert_eq!(shown["leased"], g.leased.to_string());
    }
    assert_eq!(groups.len(), before.groups.len());
    // Dead letters with their last errors, HTML-escaped and shown as text.
    let dead = q["dead_jobs"].as_array().expect("dead jobs");
    assert_eq!(dead.len(), 2);
    assert!(dead.iter().all(|d| d["error"].as_str().unwrap_or("").starts_with("smtp <timeout> #")), "{dead:?}");

    // After the click: the page says what moved, and the broker agrees.
    let after = &seen["after_redrive"];
    assert_eq!(after["flash"], "Redrove 2 dead-lettered jobs back to ready.");
    assert_eq!(after["dead"], "0");
    assert_eq!(after["ready"], "8");
    let st = s.stats("web").await;
    assert_eq!((st.ready, st.dead, st.leased), (8, 0, 3));

    let png = std::fs::read(&shot).expect("screenshot saved");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "a real screenshot, {} bytes", png.len());
    s.stop().await;
}
