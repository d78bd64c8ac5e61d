//! The data dir's layout with the real binary: a data dir made by the
//! previous release (format 1: one RocksDB at the top; the fixture was
//! written by the release before partitions, with a ready, a scheduled, a
//! leased and a dead job and a tenant policy) opens, is moved into
//! `p0000/` once, and loses nothing; a data dir refuses another number of
//! partitions than it holds.

#[path = "common/process.rs"]
mod process;

use fairway::pb;
use process::{scan_all, BrokerProcess};
use std::path::Path;
use std::process::Command;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/format1-data-dir.tar.gz");

fn unpack(into: &Path) -> std::path::PathBuf {
    let status = Command::new("tar").arg("xzf").arg(FIXTURE).arg("-C").arg(into).status().expect("run tar");
    assert!(status.success(), "tar failed");
    into.join("data")
}

async fn check_contents(b: &BrokerProcess) {
    let jobs = scan_all(&b.channel, "legacy").await;
    let by_id = |id: &str| jobs.iter().find(|j| j.id == id).unwrap_or_else(|| panic!("job {id} missing: {jobs:?}"));
    assert_eq!(jobs.len(), 5, "{jobs:?}");
    let ready = by_id("0000000000000002");
    assert_eq!(
        (ready.payload.as_ref(), ready.tenant.as_str(), ready.environment.as_str(), ready.priority),
        (&b"ready one"[..], "acme", "prod", 5)
    );
    assert_eq!(by_id("0000000000000003").payload.as_ref(), b"ready two");
    // Delayed an hour and leased for an hour when the fixture was made:
    // scheduled and leased then, due and expired (one attempt spent) since.
    assert_eq!(by_id("0000000000000004").dedup_key, "order-42");
    assert!(by_id("0000000000000005").attempt >= 1);
    let dead = by_id("0000000000000006");
    assert_eq!((dead.state(), dead.last_error.as_str()), (pb::JobState::Dead, "smtp refused"));
    let mut admin = pb::admin_service_client::AdminServiceClient::new(b.channel.clone());
    let st = admin.get_queue_stats(pb::GetQueueStatsRequest { queue: "legacy".into() }).await.unwrap().into_inner();
    assert_eq!((st.enqueued_total, st.dead, st.dead_lettered_total), (5, 1, 1), "{st:?}");
    assert_eq!(st.ready + st.scheduled + st.leased + st.dead, 5, "{st:?}");
    let q = admin.get_queue(pb::GetQueueRequest { queue: "legacy".into() }).await.unwrap().into_inner();
    assert_eq!(q.config.expect("config").max_attempts, 3);
    let acme = st.tenant_policies.iter().find(|p| p.tenant == "acme").expect("acme's policy");
    assert_eq!((acme.weight, acme.max_in_flight), (3, 10));
    // And new ids go on after the old ones.
    let mut jobs_api = pb::job_service_client::JobServiceClient::new(b.channel.clone());
    let req = pb::EnqueueRequest {
        queue: "legacy".into(),
        tenant: "acme".into(),
        payload: b"new".to_vec().into(),
        ..Default::default()
    };
    let id = jobs_api.enqueue(req).await.unwrap().into_inner().job_id;
    assert!(id.as_str() > "0000000000000006", "{id}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_of_the_previous_release_is_moved_into_partition_0_and_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let data = unpack(tmp.path());
    assert!(data.join("CURRENT").is_file(), "the fixture is format 1");

    // Asked for more partitions than it holds: refused, untouched.
    let out = Command::new(env!("CARGO_BIN_EXE_fairway"))
        .args(["serve", "--listen", "127.0.0.1:0", "--metrics-listen", "off", "--partitions", "4", "--data-dir"])
        .arg(&data)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("holds 1 partition") && stderr.contains("asked for 4") && stderr.contains("--partitions 1"),
        "{stderr}"
    );
    assert!(data.join("CURRENT").is_file() && !data.join("LAYOUT").exists(), "a refusal moves nothing");

    let b = BrokerProcess::spawn(&data).await;
    b.wait_serving().await;
    assert!(data.join("LAYOUT").is_file() && data.join("p0000/CURRENT").is_file() && !data.join("CURRENT").exists());
    check_contents(&b).await;
    b.signal("-TERM");
    assert!(b.wait_exit(std::time::Duration::from_secs(20)).await.success());

    // Opened again: already moved, still whole.
    let b = BrokerProcess::spawn(&data).await;
    b.wait_serving().await;
    let jobs = scan_all(&b.channel, "legacy").await;
    assert_eq!(jobs.len(), 6, "the five of the fixture and the one enqueued since");
}

#[tokio::test]
async fn a_new_data_dir_records_its_partitions_and_refuses_another_count() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d");
    let b = BrokerProcess::spawn_at(&data, "127.0.0.1:0", &["--partitions", "1"]).await;
    b.wait_serving().await;
    drop(b);
    let layout = std::fs::read_to_string(data.join("LAYOUT")).expect("LAYOUT written");
    assert!(layout.contains("partitions = 1"), "{layout}");
    let out = Command::new(env!("CARGO_BIN_EXE_fairway"))
        .args(["serve", "--listen", "127.0.0.1:0", "--metrics-listen", "off", "--data-dir"])
        .arg(&data)
        .env("FAIRWAY_PARTITIONS", "2")
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("holds 1 partition") && stderr.contains("asked for 2"),
        "{stderr}"
    );
}
