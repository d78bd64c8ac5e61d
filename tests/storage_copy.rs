//! The storage boundary: every change the broker makes goes through one
//! typed batch, so a second copy of its storage that applies the same
//! batches, in order, holds the same state. Here a seeded workload (every
//! kind of transition and administration, lease expiries, injected commit
//! failures, restarts) runs on a broker whose commits are tapped; the
//! batches are encoded to bytes, decoded and applied to a follower copy;
//! after every restart and at the end both copies must be identical.

use fairway::broker::{Broker, GroupScope, LeaseSpec, Redrive, SettleAction};
use fairway::model::{JobId, JobState, LeaseId, NewJob, QueueConfig, TenantPolicy};
use fairway::storage::batch::Batch;
use fairway::storage::{CommitTap, Durability, Store};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const QUEUES: [&str; 2] = ["a", "b"];

fn job(rng: &mut StdRng, queue: &str) -> NewJob {
    let now = fairway::model::now_millis();
    NewJob {
        queue: queue.into(),
        tenant: format!("t{}", rng.random_range(0..3)),
        environment: ["prod", "dev"][rng.random_range(0..2)].into(),
        payload: bytes::Bytes::from(vec![b'x'; rng.random_range(1..200)]),
        headers: Default::default(),
        priority: rng.random_range(-1..2),
        run_at: rng.random_bool(0.2).then(|| now + rng.random_range(1..80)),
        dedup_key: if rng.random_bool(0.2) { format!("k{}", rng.random_range(0..4)) } else { String::new() },
        max_attempts: 0,
        lease_duration: None,
        traceparent: String::new(),
    }
}

fn config() -> QueueConfig {
    QueueConfig { max_attempts: 2, ..QueueConfig::default() }
}

async fn start(dir: &Path, tap: &CommitTap) -> Broker {
    let (broker, recovery) = Broker::start_with_tap(dir, Durability::Relaxed, tap.clone()).expect("open");
    recovery.await.expect("recovered").expect("recovery ok");
    broker
}

/// One round of `ops` random operations.
async fn round(b: &Broker, rng: &mut StdRng, ops: usize) {
    for q in QUEUES {
        if b.get_queue(q).await.is_err() {
            b.create_queue(q.into(), config()).await.expect("create");
        }
    }
    let mut ids: Vec<(String, JobId)> = Vec::new();
    for i in 0..ops {
        let q = QUEUES[rng.random_range(0..2)];
        match rng.random_range(0..100) {
            0..=34 => {
                let n = rng.random_range(1..5);
                let jobs = (0..n).map(|_| job(rng, q)).collect();
                if let Ok(out) = b.enqueue(jobs, rng.random_bool(0.5)).await {
                    ids.extend(out.into_iter().map(|o| (q.to_string(), o.id)));
                }
            }
            35..=69 => {
                let spec = LeaseSpec {
                    queues: vec![q.into()],
                    max_jobs: rng.random_range(1..4),
                    wait: Duration::ZERO,
                    lease_duration: Some(Duration::from_millis(rng.random_range(20..200))),
                    worker_id: "w".into(),
                    worker_version: format!("v{}", rng.random_range(0..2)),
                    tenants: None,
                };
                for d in b.lease(spec).await.unwrap_or_default() {
                    let job = d.job.expect("job");
                    let (id, lease) = (JobId::parse(&job.id).unwrap(), LeaseId::parse(&d.lease_id).unwrap());
                    let action = match rng.random_range(0..6) {
                        0 | 1 => SettleAction::Ack,
                        2 => {
                            SettleAction::Nack { error: "boom".into(), retry_after: Some(Duration::ZERO), dead: false }
                        }
                        3 => SettleAction::Nack { error: "fatal".into(), retry_after: None, dead: true },
                        4 => SettleAction::Extend { duration: Some(Duration::from_millis(50)) },
                        _ => SettleAction::Release,
                    };
                    // Some leases are left to expire.
                    if rng.random_bool(0.85) {
                        let _ = b.settle(q.into(), id, lease, action).await;
                    }
                }
            }
            70..=76 => {
                if let Some((q, id)) = ids.get(rng.random_range(0..ids.len().max(1))).cloned() {
                    let _ = b.cancel(q, id).await;
                }
            }
            77..=80 => {
                let policy = TenantPolicy {
                    weight: rng.random_range(1..4),
                    max_in_flight: rng.random_range(0..3),
                    ..Default::default()
                };
                let env = rng.random_bool(0.3).then(|| "prod".to_string());
                let _ = b.set_tenant_policy(q.into(), "t1".into(), env, policy).await;
            }
            81..=84 => {
                let _ = b.set_paused(q.into(), rng.random_bool(0.5)).await;
            }
            85..=88 => {
                let _ = b.redrive(q.into(), Redrive::Matching { scope: GroupScope::default(), limit: 0 }).await;
            }
            89..=90 => {
                let state = [None, Some(JobState::Ready), Some(JobState::Dead), Some(JobState::Scheduled)]
                    [rng.random_range(0..4)];
                let _ = b.purge(q.into(), state, GroupScope::default()).await;
            }
            91..=92 => {
                // Deleted with its jobs, then made again: a fresh column family.
                if b.delete_queue(q.into(), true).await.is_ok() {
                    ids.retain(|(iq, _)| iq != q);
                    b.create_queue(q.into(), config()).await.expect("recreate");
                }
            }
            93..=94 => {
                // A commit refused as by a failing disk: the writer reloads
                // its state from disk, and nothing of that batch lands.
                b.store().fail_next_commits(1);
                let _ = b.enqueue(vec![job(rng, q)], false).await;
            }
            _ => {
                let _ = b.set_paused(q.into(), false).await;
            }
        }
        if i % 40 == 0 {
            // Let leases expire and delayed jobs come due.
            tokio::time::sleep(Duration::from_millis(rng.random_range(10..120))).await;
        }
    }
}

/// Applies the batches not yet applied to the follower, then compares.
fn catch_up_and_compare(batches: &Mutex<Vec<Vec<u8>>>, applied: &mut usize, leader_dir: &Path, follower_dir: &Path) {
    let leader_dir = fairway::broker::partition_store_dir(leader_dir, None).expect("layout");
    let leader = Store::open(&leader_dir, Durability::Relaxed).expect("open leader copy");
    let follower = Store::open(follower_dir, Durability::Relaxed).expect("open follower copy");
    let batches = batches.lock().unwrap();
    for bytes in &batches[*applied..] {
        let batch = Batch::decode(bytes).expect("a batch decodes");
        follower.commit(&batch, false).expect("the follower applies it");
    }
    *applied = batches.len();
    let (l, f) = (leader.dump().unwrap(), follower.dump().unwrap());
    assert!(l.len() > 10, "the workload stored something: {} entries", l.len());
    if l != f {
        let only_l: Vec<_> = l.iter().filter(|e| !f.contains(e)).take(5).collect();
        let only_f: Vec<_> = f.iter().filter(|e| !l.contains(e)).take(5).collect();
        panic!("copies differ after {} batches: leader only {only_l:?}, follower only {only_f:?}", batches.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_that_applies_every_committed_batch_is_identical() {
    let seed: u64 = std::env::var("FAIRWAY_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(20261203);
    let mut rng = StdRng::seed_from_u64(seed);
    let (leader_dir, follower_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let batches: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let seen = batches.clone();
    let tap: CommitTap = Arc::new(move |b: &Batch| seen.lock().unwrap().push(b.encode()));
    let mut applied = 0;
    for r in 0..4 {
        let broker = start(leader_dir.path(), &tap).await;
        round(&broker, &mut rng, 250).await;
        broker.shutdown().await;
        drop(broker);
        catch_up_and_compare(&batches, &mut applied, leader_dir.path(), follower_dir.path());
        eprintln!("seed {seed}: round {r} ok, {applied} batches applied");
    }
}
