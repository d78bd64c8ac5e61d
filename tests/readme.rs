//! The README's walk-through, run as written. Every ```sh block marked with
//! a `<!-- readme-test -->` line is taken in order from README.md, then from
//! its continuation docs/first-hour.md, and run by one bash (so shell variables carry from block to block), from the
//! checkout's root, against a live broker. The broker's address stands in
//! for the README's `127.0.0.1:50051` (and is in `FAIRWAY_ADDR` and
//! `FAIRWAY_GRPC`, the defaults the CLI and the example workers read), and
//! `fairway` on the PATH is the binary under test. A command that fails, or
//! a block the README no longer marks, fails the test, so the document
//! cannot drift from what the broker does.

mod common;

use common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The walk-through's two parts, in the order a reader follows them.
const WALKTHROUGH: [&str; 2] = [include_str!("../README.md"), include_str!("../docs/first-hour.md")];
const MARKER: &str = "<!-- readme-test -->";

/// The marked ```sh blocks of `readme`, in order.
fn marked_blocks(readme: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut lines = readme.lines();
    while let Some(line) = lines.next() {
        if line.trim() != MARKER {
            continue;
        }
        let fence = lines.next().unwrap_or_default();
        assert_eq!(fence.trim(), "```sh", "a {MARKER} line must be followed by a ```sh block, not {fence:?}");
        let body: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
        blocks.push(body.join("\n"));
    }
    blocks
}

#[test]
fn marked_blocks_are_found_in_order() {
    let md = "intro\n<!-- readme-test -->\n```sh\necho one\necho two\n```\n```sh\nnot marked\n```\n<!-- readme-test -->\n```sh\necho three\n```\n";
    assert_eq!(marked_blocks(md), ["echo one\necho two", "echo three"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_walkthrough_runs_as_written() {
    let s = TestServer::start().await;
    let blocks: Vec<String> = WALKTHROUGH.into_iter().flat_map(marked_blocks).collect();
    let script = blocks.join("\n");
    // What the walk-through must go on showing a newcomer.
    for needed in [
        "fairway.v1.WorkerService/Lease",
        "fairway.v1.WorkerService/Ack",
        "fairway queue create reports --max-attempts 3",
        "fairway jobs get reports",
        "fairway dead list reports",
        "fairway dead redrive reports \"$DEAD\"",
        "fairway jobs cancel",
        "fairway queue purge",
        "fairway dead delete",
        "fairway workers",
        "examples/python/worker.py",
        "examples/node/worker.js",
        "kill -TERM",
    ] {
        assert!(script.contains(needed), "the README's tested blocks no longer run {needed:?}");
    }
    let script = script.replace("127.0.0.1:50051", &s.addr.to_string());
    let bin = Path::new(env!("CARGO_BIN_EXE_fairway")).parent().expect("bin dir").to_path_buf();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(format!("set -euo pipefail\nset -x\n{script}"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("PATH", path)
        .env("FAIRWAY_ADDR", format!("http://{}", s.addr))
        .env("FAIRWAY_GRPC", s.addr.to_string())
        .env("PS4", "+ README: ")
        .stdin(Stdio::null());
    let out = tokio::time::timeout(Duration::from_secs(180), tokio::task::spawn_blocking(move || cmd.output()))
        .await
        .expect("the walk-through finishes within 3 minutes")
        .expect("join")
        .expect("run bash");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "the README's commands failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );

    // And they did what the README says they do.
    assert!(stdout.contains("(deduplicated)"), "{stdout}");
    assert!(stdout.contains("moved dead letter") && stdout.contains("back to ready"), "{stdout}");
    assert!(stderr.contains("connected to") && stderr.contains("dead-lettered job"), "worker logs:\n{stderr}");
    let st = s.stats("emails").await;
    assert_eq!((st.acked_total, st.ready, st.leased, st.dead), (2, 0, 0, 0), "{st:?}");
    let queues = s.admin().list_queues(fairway::pb::ListQueuesRequest {}).await.expect("list").into_inner().queues;
    assert_eq!(queues.iter().map(|q| q.name.as_str()).collect::<Vec<_>>(), ["emails"], "reports deleted at the end");
    s.stop().await;
}
