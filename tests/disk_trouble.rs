//! Disk trouble with the real binary on filesystems the test mounts (it runs
//! as root on Linux): a data dir that fills up, and one whose filesystem
//! turns read-only under the broker. Each time: a refusal a person can act
//! on, nothing stored is lost or corrupted, and the documented recovery
//! works. Mounting is required: without root these tests fail loudly.

mod common;
#[path = "common/process.rs"]
mod process;

use fairway::pb;
use process::{count_states, scan_all, BrokerProcess};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tonic::Code;

const SERVING: i32 = 1;
const NOT_SERVING: i32 = 2;

fn sh(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}\nthese tests mount filesystems and must run as root on Linux",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A filesystem mounted on a temp dir for one test; unmounted on drop.
struct Mount {
    dir: tempfile::TempDir,
    /// The backing image of a loop mount.
    image: Option<PathBuf>,
}

impl Mount {
    fn tmpfs(size_mib: u32) -> Mount {
        let dir = tempfile::tempdir().unwrap();
        sh(Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"]).arg(dir.path()));
        Mount { dir, image: None }
    }

    /// A fresh ext4 image, loop-mounted with `errors=remount-ro`.
    fn ext4(size_mib: u32) -> Mount {
        let dir = tempfile::tempdir().unwrap();
        let image = std::env::temp_dir().join(format!("fairway-disk-{}.img", std::process::id()));
        let f = std::fs::File::create(&image).unwrap();
        f.set_len(u64::from(size_mib) << 20).unwrap();
        sh(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image));
        let m = Mount { dir, image: Some(image) };
        m.mount_image();
        m
    }

    fn mount_image(&self) {
        let image = self.image.as_ref().expect("a loop mount");
        sh(Command::new("mount").args(["-o", "loop,errors=remount-ro"]).arg(image).arg(self.dir.path()));
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Makes ext4 hit an error on the mounted filesystem: with
    /// `errors=remount-ro` it turns read-only at once, under open files —
    /// what a failing disk does.
    fn fail_to_read_only(&self) {
        let out = Command::new("findmnt").args(["-n", "-o", "SOURCE"]).arg(self.path()).output().unwrap();
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let name = Path::new(&dev).file_name().expect("device name").to_string_lossy().to_string();
        std::fs::write(format!("/sys/fs/ext4/{name}/trigger_fs_error"), "1").expect("trigger an ext4 error");
    }

    /// Unmounts, repairs and mounts the image again (what an operator does
    /// after an ext4 error, with the broker stopped).
    fn repair(&self) {
        sh(Command::new("umount").arg(self.path()));
        let image = self.image.as_ref().expect("a loop mount");
        // e2fsck exits 1 when it fixed something: that is fine here.
        let status = Command::new("e2fsck").args(["-f", "-y"]).arg(image).output().unwrap().status;
        assert!(matches!(status.code(), Some(0) | Some(1)), "e2fsck: {status:?}");
        self.mount_image();
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
        if let Some(image) = &self.image {
            let _ = std::fs::remove_file(image);
        }
    }
}

async fn create_queue(b: &BrokerProcess) {
    let mut admin = pb::admin_service_client::AdminServiceClient::new(b.channel.clone());
    admin.create_queue(pb::CreateQueueRequest { name: "q".into(), config: None }).await.expect("create queue");
}

async fn enqueue(b: &BrokerProcess, payload: Vec<u8>) -> Result<String, tonic::Status> {
    let mut jobs = pb::job_service_client::JobServiceClient::new(b.channel.clone());
    let req =
        pb::EnqueueRequest { queue: "q".into(), tenant: "t".into(), payload: payload.into(), ..Default::default() };
    Ok(jobs.enqueue(req).await?.into_inner().job_id)
}

/// Enqueues `n` small jobs and leases a few of them (so every state the
/// test checks has something in it); returns id -> payload.
async fn store_some(b: &BrokerProcess, n: usize) -> HashMap<String, Vec<u8>> {
    let mut stored = HashMap::new();
    for i in 0..n {
        let payload = format!("before-{i}").into_bytes();
        stored.insert(enqueue(b, payload.clone()).await.expect("enqueue before the fault"), payload);
    }
    let mut w = pb::worker_service_client::WorkerServiceClient::new(b.channel.clone());
    let lease = pb::LeaseRequest {
        queues: vec!["q".into()],
        max_jobs: 3,
        lease_duration: Some(common::dur(Duration::from_secs(600))),
        ..Default::default()
    };
    assert_eq!(w.lease(lease).await.expect("lease").into_inner().deliveries.len(), 3);
    stored
}

/// Every job in `expect` reads back with its payload, and the counters
/// agree with a full scan.
async fn assert_intact(b: &BrokerProcess, expect: &HashMap<String, Vec<u8>>) {
    let mut jobs = pb::job_service_client::JobServiceClient::new(b.channel.clone());
    for (id, payload) in expect {
        let j = jobs
            .get_job(pb::GetJobRequest { queue: "q".into(), job_id: id.clone() })
            .await
            .unwrap_or_else(|e| panic!("job {id} lost: {e}"))
            .into_inner();
        assert_eq!(&j.payload.to_vec(), payload, "job {id} corrupted");
    }
    let all = scan_all(&b.channel, "q").await;
    let mut admin = pb::admin_service_client::AdminServiceClient::new(b.channel.clone());
    let s = admin.get_queue_stats(pb::GetQueueStatsRequest { queue: "q".into() }).await.unwrap().into_inner();
    assert_eq!(count_states(&all), (s.scheduled, s.ready, s.leased, s.dead), "counters agree with a scan");
    assert_eq!(all.len(), expect.len(), "no job appeared that was not acknowledged");
}

async fn wait_health(b: &BrokerProcess, want: i32, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if b.health().await.ok() == Some(want) {
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "health not {want} within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Fills the filesystem with a ballast file until it is full.
fn fill(path: &Path) -> u64 {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0xa5u8; 1 << 20];
    let mut written = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
            Err(e) => panic!("writing the ballast: {e}"),
        }
    }
    written
}

#[tokio::test]
async fn a_full_disk_refuses_enqueues_keeps_what_is_stored_and_recovers_when_space_returns() {
    let started = Instant::now();
    // RocksDB resumes writes once as much is free as one memtable (64 MiB);
    // each partition's RocksDB reserves about as much for its WAL.
    let mnt = Mount::tmpfs(256 * partitions());
    let data = mnt.path().join("data");
    let b = BrokerProcess::spawn(&data).await;
    b.wait_serving().await;
    create_queue(&b).await;
    let mut stored = store_some(&b, 50).await;

    let ballast = mnt.path().join("ballast");
    let filled = fill(&ballast);
    // What RocksDB had already reserved for its WAL takes some enqueues;
    // then the refusal.
    let big = vec![7u8; 256 << 10];
    let mut refusal = None;
    for i in 0..2000 {
        let mut payload = big.clone();
        payload[..8].copy_from_slice(&(i as u64).to_be_bytes());
        match enqueue(&b, payload.clone()).await {
            Ok(id) => {
                stored.insert(id, payload);
            }
            Err(e) => {
                refusal = Some(e);
                break;
            }
        }
    }
    let e = refusal.expect("a full disk refuses enqueues");
    println!("ballast {} MiB; refused after {} jobs: {:?} {}", filled >> 20, stored.len(), e.code(), e.message());
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("disk is full") && e.message().contains("No space left on device"), "{e:?}");
    assert!(e.message().contains("Free space"), "says what to do: {}", e.message());
    // Still refused (not a one-off), health says so, and reads still work.
    assert_eq!(enqueue(&b, b"small".to_vec()).await.unwrap_err().code(), Code::ResourceExhausted);
    wait_health(&b, NOT_SERVING, Duration::from_secs(5)).await;
    assert_intact(&b, &stored).await;

    // Space returns: the broker resumes by itself.
    std::fs::remove_file(&ballast).unwrap();
    let took = wait_health(&b, SERVING, Duration::from_secs(30)).await;
    println!("serving again {took:?} after the ballast was removed");
    let id = enqueue(&b, b"after".to_vec()).await.expect("enqueue after space returned");
    stored.insert(id, b"after".to_vec());
    assert_intact(&b, &stored).await;

    // And everything survives a crash right after.
    drop(b);
    let b = BrokerProcess::spawn(&data).await;
    b.wait_serving().await;
    assert_intact(&b, &stored).await;
    drop(b);
    println!("disk-full test took {:?}", started.elapsed());
}

#[tokio::test]
async fn a_data_dir_gone_read_only_refuses_writes_until_a_restart_and_loses_nothing() {
    let started = Instant::now();
    let mnt = Mount::ext4(128 * partitions());
    let data = mnt.path().join("data");
    let mut b = BrokerProcess::spawn(&data).await;
    b.wait_serving().await;
    create_queue(&b).await;
    let stored = store_some(&b, 50).await;

    mnt.fail_to_read_only();
    let e = enqueue(&b, b"while read-only".to_vec()).await.expect_err("a read-only data dir refuses enqueues");
    println!("read-only refusal: {:?} {}", e.code(), e.message());
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("cannot write to its data dir") && e.message().contains("Read-only"), "{e:?}");
    assert!(e.message().contains("restart the broker"), "says what to do: {}", e.message());
    wait_health(&b, NOT_SERVING, Duration::from_secs(5)).await;
    // Reads keep working.
    assert_intact(&b, &stored).await;
    // RocksDB stops writes for good after such an error: still refused.
    assert_eq!(enqueue(&b, b"again".to_vec()).await.unwrap_err().code(), Code::Unavailable);

    // The documented recovery: stop the broker, repair the filesystem,
    // start it again.
    b.kill9();
    drop(b);
    mnt.repair();
    let b = BrokerProcess::spawn(&data).await;
    b.wait_serving().await;
    assert_intact(&b, &stored).await;
    let mut after = stored.clone();
    after.insert(enqueue(&b, b"after".to_vec()).await.expect("enqueue after the restart"), b"after".to_vec());
    assert_intact(&b, &after).await;
    drop(b);
    println!("read-only test took {:?}", started.elapsed());
}

#[tokio::test]
async fn a_read_only_data_dir_is_refused_at_start_with_a_clear_message() {
    let mnt = Mount::tmpfs(16);
    sh(Command::new("mount").args(["-o", "remount,ro"]).arg(mnt.path()));
    let data = mnt.path().join("data");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_fairway"))
            .args(["serve", "--listen", "127.0.0.1:0", "--metrics-listen", "off", "--data-dir"])
            .arg(&data)
            .env("RUST_LOG", "warn")
            .output()
            .expect("run the broker")
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("cannot create data dir") && stderr.contains("Read-only file system"), "{stderr}");
}

/// Partitions of the brokers these tests start (`FAIRWAY_TEST_PARTITIONS`,
/// else the default of a new data dir, one per core): each partition's
/// RocksDB needs room of its own.
fn partitions() -> u32 {
    common::test_partitions().unwrap_or_else(fairway::config::machine_partitions)
}
