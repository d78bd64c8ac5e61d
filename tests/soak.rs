//! Soak: the mixed workload of `fairway_bench::soak` (several tenants, one
//! with a weight; plain, delayed and dedup jobs; nack -> retry; jobs that
//! exhaust their attempts into the dead letters) against the real binary,
//! with the broker's RSS and open files and the enqueue and lease latencies
//! sampled every second. No sample may trend upward, and at the end every
//! job is accounted for.
//!
//! CI runs it for 30 s (`FAIRWAY_SOAK_SECS` changes that). The long run is
//! the bench's: scripts/bench --scenarios soak --soak-secs 1800

#[path = "common/process.rs"]
mod process;

use fairway::client::{Client, ClientConfig};
use process::BrokerProcess;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mixed_workload_holds_steady_and_accounts_for_every_job() {
    let secs: u64 = std::env::var("FAIRWAY_SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(30);
    let tmp = tempfile::tempdir().unwrap();
    let b = BrokerProcess::spawn(tmp.path()).await;
    b.wait_serving().await;
    let client = Client::connect(&ClientConfig::new(format!("http://{}", b.addr))).await.expect("connect");
    let report = fairway_bench::soak::run(&client, b.pid(), Duration::from_secs(secs)).await.expect("soak ran");
    println!("{}", report.summary());
    let fails = report.check();
    assert!(fails.is_empty(), "soak failed: {}", fails.join("; "));
}
