//! Structured logs: with `--log-format json` every line is a JSON object,
//! and every line about a job names its queue, tenant, environment and id.

mod common;

use common::*;
use fairway::pb;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_lines_about_jobs_carry_queue_tenant_environment_and_id() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log_path = dir.path().join("broker.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_fairway"))
        .args(["serve", "--listen", "127.0.0.1:0", "--metrics-listen", "off", "--log-format", "json", "--data-dir"])
        .arg(dir.path().join("data"))
        .env("RUST_LOG", "fairway=debug")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("spawn fairway");
    let stdout = child.stdout.take().expect("stdout");
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read stdout");
        line
    })
    .await
    .expect("join");
    let addr = line.trim().strip_prefix("fairway listening on ").expect("address line").to_string();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).expect("endpoint").connect_lazy();
    let admin = || pb::admin_service_client::AdminServiceClient::new(channel.clone());
    let jobs = || pb::job_service_client::JobServiceClient::new(channel.clone());
    let workers = || pb::worker_service_client::WorkerServiceClient::new(channel.clone());

    admin().create_queue(pb::CreateQueueRequest { name: "logs".into(), config: None }).await.expect("create");
    let mut ids = Vec::new();
    for (tenant, env) in [("acme", "prod"), ("globex", "dev"), ("acme", "dev")] {
        ids.push(jobs().enqueue(job("logs", tenant, env, "x")).await.expect("enqueue").into_inner().job_id);
    }
    // Cancel the last, ack one, dead-letter one.
    jobs().cancel_job(pb::CancelJobRequest { queue: "logs".into(), job_id: ids[2].clone() }).await.expect("cancel");
    let leased = workers()
        .lease(pb::LeaseRequest { queues: vec!["logs".into()], max_jobs: 2, ..Default::default() })
        .await
        .expect("lease")
        .into_inner()
        .deliveries;
    assert_eq!(leased.len(), 2);
    let (a, b) = (&leased[0], &leased[1]);
    let ja = a.job.as_ref().expect("job");
    workers()
        .ack(pb::AckRequest { queue: "logs".into(), job_id: ja.id.clone(), lease_id: a.lease_id.clone() })
        .await
        .expect("ack");
    let jb = b.job.as_ref().expect("job");
    let nack = pb::NackRequest {
        queue: "logs".into(),
        job_id: jb.id.clone(),
        lease_id: b.lease_id.clone(),
        error: "boom".into(),
        dead: true,
        ..Default::default()
    };
    workers().nack(nack).await.expect("nack");

    // A graceful stop flushes everything to the log.
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait()).await.expect("join").expect("wait");
    assert!(exit.success(), "clean exit after SIGTERM: {exit:?}");

    let text = std::fs::read_to_string(&log_path).expect("read log");
    let mut about_jobs = Vec::new();
    for line in text.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string() && v["message"].is_string(), "{line}");
        if v.get("job_id").is_some() {
            for field in ["queue", "tenant", "environment"] {
                assert!(v[field].is_string(), "{field} missing from a line about a job: {line}");
            }
            about_jobs.push((
                v["message"].as_str().unwrap_or("").to_string(),
                v["job_id"].as_str().unwrap_or("").to_string(),
            ));
        }
    }
    for msg in ["job enqueued", "job cancelled", "job leased", "job acked", "job nacked", "job dead-lettered"] {
        assert!(about_jobs.iter().any(|(m, _)| m == msg), "no {msg:?} line in:\n{text}");
    }
    assert!(about_jobs.iter().any(|(m, id)| m == "job cancelled" && *id == ids[2]));
    assert!(about_jobs.iter().any(|(m, id)| m == "job acked" && *id == ja.id));
    assert!(about_jobs.iter().any(|(m, id)| m == "job dead-lettered" && *id == jb.id));
}

/// Starts the binary on `listen` with no auth file; returns its log once
/// it has finished starting (the line that says it serves).
async fn startup_log(listen: &str) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let log_path = dir.path().join("broker.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_fairway"))
        .args(["serve", "--listen", listen, "--metrics-listen", "off", "--log-format", "json", "--data-dir"])
        .arg(dir.path().join("data"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn fairway");
    let text = eventually(std::time::Duration::from_secs(30), || async {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        text.contains("recovery done: serving").then_some(text)
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    text
}

#[tokio::test]
async fn an_open_broker_reachable_beyond_loopback_warns_loudly_at_start() {
    let exposed = startup_log("0.0.0.0:0").await;
    let warning = exposed.lines().find(|l| l.contains("NO AUTHENTICATION")).expect("a warning about no auth file");
    assert!(warning.contains("\"WARN\"") && warning.contains("--auth-file"), "{warning}");
    let local = startup_log("127.0.0.1:0").await;
    assert!(!local.contains("NO AUTHENTICATION"), "loopback only: no warning\n{local}");
}
