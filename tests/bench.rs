//! The bench (`fairway-bench`, the crate in `bench/`) against this
//! package's broker binary: a smoke run at small sizes, not a timed test.

use clap::{CommandFactory, Parser};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    bench: fairway_bench::BenchArgs,
}

/// The benchmark runs end to end at a small size and prints sane figures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_smoke_prints_every_scenario() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    let args = Cli::parse_from([
        "fairway-bench",
        "--broker-bin",
        env!("CARGO_BIN_EXE_fairway"),
        "--jobs",
        "400",
        "--concurrency",
        "8",
        "--backlog-sizes",
        "100,500",
        "--backlog-probes",
        "20",
        "--tombstone-jobs",
        "300",
        "--flood-jobs",
        "3000",
        "--trickle-secs",
        "1",
        "--fair-jobs",
        "700",
        "--many-tenants",
        "2000",
        "--data-dir",
        dir,
    ])
    .bench;
    let mut out = Vec::new();
    fairway_bench::run(args, &mut out).await.expect("the bench runs");
    let text = String::from_utf8(out).expect("utf-8");
    for row in [
        "unary Enqueue",
        "EnqueueStream, one stream",
        "paced end to end",
        "EnqueueBatch of 100",
        "end to end",
        "| 500 |",
        "serving in",
        "on a fresh queue",
        "expired lease to redelivery",
        "fdatasync/s",
        "flood: tenant a",
        "Jain's index",
        "hung tenant",
        "active tenants",
    ] {
        assert!(text.contains(row), "{row} missing from:\n{text}");
    }
    // The peer comparison starts servers: only with --peers.
    assert!(!text.contains("Peers ("), "{text}");
    // Every throughput figure of the main table is a positive number.
    let main_table = text.lines().take_while(|l| !l.is_empty());
    for line in main_table.filter(|l| l.starts_with("| ") && !l.starts_with("| scenario")) {
        let jobs_per_s: f64 = line.split('|').nth(3).unwrap().trim().parse().unwrap();
        assert!(jobs_per_s > 0.0, "{line}");
    }
}

/// The peer comparison (NATS JetStream, RabbitMQ) is behind a flag that the
/// help lists; its run needs the servers, so it is not run here. So are the
/// flags that pick the broker build and its settings, for side-by-side runs.
#[test]
fn bench_help_lists_the_peer_comparison_and_the_broker_choice() {
    let text = Cli::command().render_long_help().to_string();
    for flag in ["--peers", "--peer-messages", "--peer-secs", "--broker-bin", "--broker-arg"] {
        assert!(text.contains(flag), "{flag} missing from:\n{text}");
    }
}

/// A broker binary that is not there is named in the error.
#[tokio::test]
async fn a_missing_broker_binary_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let args = Cli::parse_from([
        "fairway-bench",
        "--broker-bin",
        "/nonexistent/fairway",
        "--scenarios",
        "unary",
        "--data-dir",
        tmp.path().to_str().unwrap(),
    ])
    .bench;
    let err = fairway_bench::run(args, &mut Vec::new()).await.expect_err("no broker");
    assert!(err.to_string().contains("/nonexistent/fairway"), "{err}");
}
