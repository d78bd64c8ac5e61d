//! The terminal client (`fairway queue|enqueue|health`) against a live broker.

mod common;

use common::*;
use std::process::{Command, Output};

async fn fairway(addr: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fairway"));
    cmd.arg("--addr").arg(format!("http://{addr}")).args(args);
    tokio::task::spawn_blocking(move || cmd.output()).await.unwrap().expect("run fairway")
}

fn stdout(o: &Output) -> String {
    assert!(o.status.success(), "failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).to_string()
}

#[tokio::test]
async fn cli_creates_enqueues_inspects_and_deletes() {
    let s = TestServer::start().await;
    let addr = s.addr.to_string();
    let out = stdout(&fairway(&addr, &["queue", "create", "emails", "--max-attempts", "5", "--lease", "1m"]).await);
    assert!(out.contains("emails") && out.contains("max_attempts=5") && out.contains("lease=60s"), "{out}");

    let id = stdout(
        &fairway(
            &addr,
            &[
                "enqueue",
                "emails",
                "--tenant",
                "acme",
                "--env",
                "prod",
                "--payload",
                "hi",
                "--priority",
                "-2",
                "--header",
                "k=v",
            ],
        )
        .await,
    );
    let id = id.trim();
    assert_eq!(id.len(), 16, "{id}");
    let dup = stdout(&fairway(&addr, &["enqueue", "emails", "--dedup-key", "x", "--payload", "a"]).await);
    let dup2 = stdout(&fairway(&addr, &["enqueue", "emails", "--dedup-key", "x", "--payload", "a"]).await);
    assert!(dup2.contains("(deduplicated)") && dup2.starts_with(dup.trim()), "{dup} / {dup2}");
    stdout(&fairway(&addr, &["enqueue", "emails", "--delay", "1h", "--payload", "later"]).await);

    let stats = stdout(&fairway(&addr, &["queue", "stats", "emails"]).await);
    assert!(stats.contains("ready 2") && stats.contains("scheduled 1") && stats.contains("deduplicated 1"), "{stats}");
    assert!(stats.contains("acme") && stats.contains("prod"), "{stats}");

    let p = stdout(
        &fairway(
            &addr,
            &[
                "tenant",
                "set-policy",
                "emails",
                "acme",
                "--weight",
                "4",
                "--max-in-flight",
                "2",
                "--enqueue-rate",
                "50",
            ],
        )
        .await,
    );
    assert!(p.contains("weight=4") && p.contains("max_in_flight=2") && p.contains("enqueue_rate=50"), "{p}");
    let p =
        stdout(&fairway(&addr, &["tenant", "set-policy", "emails", "acme", "--env", "prod", "--weight", "3"]).await);
    assert!(p.contains("prod=3") && p.contains("weight=4"), "{p}");
    let stats = stdout(&fairway(&addr, &["queue", "stats", "emails"]).await);
    assert!(stats.contains("POLICY") && stats.contains("prod=3"), "{stats}");

    let paused = stdout(&fairway(&addr, &["queue", "pause", "emails"]).await);
    assert!(paused.contains("paused=true"), "{paused}");
    let resumed = stdout(&fairway(&addr, &["queue", "resume", "emails"]).await);
    assert!(resumed.contains("paused=false"), "{resumed}");
    assert!(stdout(&fairway(&addr, &["queue", "list"]).await).contains("emails"));
    assert_eq!(stdout(&fairway(&addr, &["health"]).await).trim(), "SERVING");

    let again = fairway(&addr, &["queue", "create", "emails"]).await;
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("AlreadyExists"));
    let refused = fairway(&addr, &["queue", "delete", "emails"]).await;
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("force"), "{}", String::from_utf8_lossy(&refused.stderr));
    stdout(&fairway(&addr, &["queue", "delete", "emails", "--force"]).await);
    s.stop().await;

    // With the broker gone, health fails with a message a person can act on.
    let down = fairway(&addr, &["health"]).await;
    assert!(!down.status.success());
    assert!(String::from_utf8_lossy(&down.stderr).contains("cannot reach the broker"));
}

/// The benchmark runs end to end at a small size and prints sane figures
/// (a smoke test, not a timed test).
#[tokio::test]
async fn bench_smoke_prints_every_scenario() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fairway"));
    cmd.args(["bench", "--jobs", "400", "--restart-jobs", "300", "--concurrency", "8"])
        .args([
            "--flood-jobs",
            "3000",
            "--trickle-secs",
            "1",
            "--fair-jobs",
            "700",
            "--many-tenants",
            "2000",
            "--data-dir",
        ])
        .arg(tmp.path());
    let out = tokio::task::spawn_blocking(move || cmd.output()).await.unwrap().unwrap();
    let text = stdout(&out);
    for row in [
        "unary Enqueue",
        "EnqueueBatch of 100",
        "end to end",
        "to serving",
        "expired lease to redelivery",
        "fdatasync/s",
        "flood: tenant a",
        "Jain's index",
        "hung tenant",
        "active tenants",
    ] {
        assert!(text.contains(row), "{row} missing from:\n{text}");
    }
    // Every throughput figure of the main table is a positive number.
    let main_table = text.lines().take_while(|l| !l.is_empty());
    for line in main_table.filter(|l| l.starts_with("| ") && !l.starts_with("| scenario")) {
        let jobs_per_s: f64 = line.split('|').nth(3).unwrap().trim().parse().unwrap();
        assert!(jobs_per_s > 0.0, "{line}");
    }
}
