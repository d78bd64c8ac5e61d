//! The fuzz targets of `fairway::fuzz` on stable Rust: every committed
//! corpus input, then seeded random mutations of them, in every test run.
//!
//! Longer runs: `FAIRWAY_FUZZ_SECS=600` (per target), `FAIRWAY_FUZZ_SEED`
//! (a different seed explores different inputs), `FAIRWAY_FUZZ_ITERS`. A
//! failing input is written under the test tmp dir and printed as hex.
//! `FAIRWAY_FUZZ_WRITE_CORPUS=1` rewrites the seed corpus in `fuzz/corpus/`.

use fairway::fuzz::{Target, TARGETS};
use fairway::pb;
use fairway::storage::{keys, records};
use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const DEFAULT_ITERS: u64 = 100_000;
const DEFAULT_SEED: u64 = 0x6661_6972_7761_7921;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target)
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// The committed corpus of a target, in file-name order.
fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = corpus_dir(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e} (FAIRWAY_FUZZ_WRITE_CORPUS=1 writes it)", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .collect();
    files.sort();
    files.iter().map(|f| std::fs::read(f).expect("corpus file")).collect()
}

/// Runs `target` on `input`; a panic fails the test with the input saved.
fn run_one(name: &str, target: fn(&[u8]), input: &[u8]) {
    if std::panic::catch_unwind(AssertUnwindSafe(|| target(input))).is_err() {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-artifacts").join(name);
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join(format!("crash-{:016x}", fxhash(input)));
        let _ = std::fs::write(&path, input);
        panic!(
            "fuzz target {name} failed on input {} (saved to {}; rerun with `cargo fuzz run {name} {}` or \
             add it to fuzz/corpus/{name}/)",
            hex::encode(input),
            path.display(),
            path.display()
        );
    }
}

fn fxhash(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| (h ^ u64::from(x)).wrapping_mul(0x100_0000_01b3))
}

/// Bytes protobuf decoders and key parsers find interesting.
const MAGIC: &[u8] = &[0, 1, 0x7f, 0x80, 0xff, 0xfe, 0x08, 0x0a, 0x12, 0x1a, 0x22];

/// One mutation of `input`, sometimes spliced with `other`.
fn mutate(rng: &mut StdRng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        let len = out.len();
        match rng.random_range(0..9) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                out[i] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.random_range(0..len);
                out[i] = if rng.random_bool(0.5) { MAGIC[rng.random_range(0..MAGIC.len())] } else { rng.random() };
            }
            2 => {
                let at = rng.random_range(0..=len);
                let n = rng.random_range(1..=16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                out.splice(at..at, bytes);
            }
            3 if len > 0 => {
                let a = rng.random_range(0..len);
                let b = rng.random_range(a..=len.min(a + 32));
                out.drain(a..b);
            }
            4 if len > 0 => {
                let a = rng.random_range(0..len);
                let b = rng.random_range(a..=len);
                let copy = out[a..b].to_vec();
                let at = rng.random_range(0..=len);
                out.splice(at..at, copy);
            }
            5 if !other.is_empty() => {
                let cut = rng.random_range(0..=len);
                let from = rng.random_range(0..other.len());
                out.truncate(cut);
                out.extend_from_slice(&other[from..]);
            }
            6 if len > 0 => out.truncate(rng.random_range(0..len)),
            7 => {
                // A protobuf field: any tag and wire type, then a length or
                // varint that may lie about what follows.
                let key = rng.random_range(0u8..=0x7f);
                out.push(key);
                out.push(if rng.random_bool(0.3) { 0xff } else { rng.random_range(0..40) });
            }
            _ => {
                let n = rng.random_range(0..64);
                out = (0..n).map(|_| rng.random()).collect();
            }
        }
    }
    out
}

/// The corpus, then mutations until the iteration or time budget is spent.
fn smoke((name, target): Target) {
    let seeds = corpus(name);
    assert!(!seeds.is_empty(), "fuzz/corpus/{name} is empty");
    for s in &seeds {
        run_one(name, target, s);
    }
    let secs = env_u64("FAIRWAY_FUZZ_SECS");
    let iters = env_u64("FAIRWAY_FUZZ_ITERS").unwrap_or(if secs.is_some() { u64::MAX } else { DEFAULT_ITERS });
    let deadline = Instant::now() + Duration::from_secs(secs.unwrap_or(3600));
    let seed = env_u64("FAIRWAY_FUZZ_SEED").unwrap_or(DEFAULT_SEED) ^ fxhash(name.as_bytes());
    let mut rng = StdRng::seed_from_u64(seed);
    // Mutants that came out well-formed enough to keep are mutated again,
    // so mutations stack up past one step from a seed.
    let mut pool = seeds.clone();
    let mut done = 0u64;
    while done < iters && (!done.is_multiple_of(1024) || Instant::now() < deadline) {
        let input = &pool[rng.random_range(0..pool.len())];
        let other = &pool[rng.random_range(0..pool.len())];
        let m = mutate(&mut rng, input, other);
        run_one(name, target, &m);
        if pool.len() < 4096 && rng.random_ratio(1, 8) {
            pool.push(m);
        }
        done += 1;
    }
    eprintln!("fuzz {name}: {} corpus inputs and {done} mutants passed (seed {seed:#x})", seeds.len());
}

#[test]
fn records_target_survives_corpus_and_mutants() {
    smoke(target("records"));
}

#[test]
fn keys_target_survives_corpus_and_mutants() {
    smoke(target("keys"));
}

#[test]
fn requests_target_survives_corpus_and_mutants() {
    smoke(target("requests"));
}

fn target(name: &str) -> Target {
    *TARGETS.iter().find(|(n, _)| *n == name).expect("target")
}

/// The committed corpus holds every seed below: regenerate it after a
/// record or request gains a field.
#[test]
fn committed_corpus_holds_the_seeds() {
    for (name, seeds) in seeds() {
        let dir = corpus_dir(name);
        if std::env::var_os("FAIRWAY_FUZZ_WRITE_CORPUS").is_some() {
            std::fs::create_dir_all(&dir).expect("corpus dir");
            for (i, s) in seeds.iter().enumerate() {
                std::fs::write(dir.join(format!("seed-{i:03}")), s).expect("write seed");
            }
        }
        let have = corpus(name);
        for (i, s) in seeds.iter().enumerate() {
            assert!(have.contains(s), "fuzz/corpus/{name} lacks seed {i}: run with FAIRWAY_FUZZ_WRITE_CORPUS=1");
        }
    }
}

fn seeds() -> Vec<(&'static str, Vec<Vec<u8>>)> {
    vec![("records", record_seeds()), ("keys", key_seeds()), ("requests", request_seeds())]
}

fn record_seeds() -> Vec<Vec<u8>> {
    let job = records::JobRecord {
        tenant: "acme".into(),
        environment: "prod".into(),
        payload: bytes::Bytes::from_static(b"{\"to\":\"a@example.com\"}"),
        headers: [("content-type".to_string(), "application/json".to_string())].into(),
        priority: 5,
        state: records::stored_state::READY,
        attempt: 2,
        max_attempts: 10,
        last_error: "smtp timeout".into(),
        created_at_ms: 1_700_000_000_000,
        run_at_ms: 1_700_000_001_000,
        dedup_key: "order-42".into(),
        lease_duration_ms: 30_000,
        traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
    };
    let minimal = records::JobRecord {
        tenant: "default".into(),
        environment: "default".into(),
        state: records::stored_state::SCHEDULED,
        ..job.clone()
    };
    let lease = records::LeaseRecord {
        lease_id: vec![7; 16],
        expires_at_ms: 1_700_000_030_000,
        attempt: 1,
        worker_id: "worker-1".into(),
        duration_ms: 30_000,
        worker_version: "v2".into(),
        leased_at_ms: 1_700_000_000_000,
    };
    let group = records::GroupRef { tenant: "acme".into(), environment: "prod".into(), priority: -3 };
    let counters = records::QueueCounters {
        scheduled: 1,
        dead: 2,
        enqueued_total: 100,
        acked_total: 90,
        nacked_total: 5,
        expired_total: 1,
        deduplicated_total: 3,
        dead_lettered_total: 2,
        leased_total: 97,
        quarantines_total: 1,
        released_total: 4,
    };
    let meta = records::QueueMeta {
        name: "emails".into(),
        default_lease_ms: 30_000,
        max_attempts: 10,
        backoff_initial_ms: 1000,
        backoff_max_ms: 3_600_000,
        dedup_window_ms: 0,
        max_payload_bytes: 1 << 20,
        paused: false,
        generation: 3,
        weight: 2,
        max_in_flight: 100,
        tenant_max_in_flight: 10,
        alert_oldest_ready_age_ms: Some(900_000),
        alert_backlog: Some(0),
        alert_stalled_after_ms: Some(300_000),
        alert_unattended_after_ms: None,
        alert_dead_letter_window_ms: Some(900_000),
        breaker_failure_percent: Some(50),
        breaker_min_deliveries: None,
        breaker_window: Some(100),
        breaker_baseline_max_age_ms: Some(3_600_000),
        quarantines: vec![records::QuarantineRecord {
            worker_version: "v2".into(),
            since_ms: 1_700_000_000_000,
            failures: 20,
            deliveries: 20,
            baseline_version: "v1".into(),
            baseline_failures: 0,
            baseline_deliveries: 100,
            returned_leases: 4,
            refunded_attempts: 20,
        }],
    };
    let policy = records::TenantPolicyRecord {
        tenant: "acme".into(),
        weight: 4,
        max_in_flight: 8,
        enqueue_rate: 50.5,
        enqueue_burst: 100,
        env_weights: [("prod".to_string(), 3u32)].into(),
    };
    vec![
        job.encode_to_vec(),
        minimal.encode_to_vec(),
        lease.encode_to_vec(),
        group.encode_to_vec(),
        counters.encode_to_vec(),
        meta.encode_to_vec(),
        records::QueueMeta { backoff_max_ms: u64::MAX, backoff_initial_ms: u64::MAX, ..meta }.encode_to_vec(),
        policy.encode_to_vec(),
        records::BreakerWindowRecord {
            jobs: vec![1, 2, u64::MAX],
            failed: vec![0, 1, 1],
            last_at_ms: 1_700_000_000_000,
        }
        .encode_to_vec(),
        records::AlertStateRecord {
            ready_since_ms: Some(1_700_000_000_000),
            last_progress_ms: 1_700_000_010_000,
            last_worker_seen_ms: 1_700_000_020_000,
            last_dead_at_ms: Some(1_700_000_030_000),
            active: vec![
                records::AlertRecord {
                    kind: "dead_lettering".into(),
                    since_ms: 1_700_000_030_500,
                    ready: 0,
                    at_ms: 1_700_000_030_000,
                },
                records::AlertRecord {
                    kind: "stalled".into(),
                    since_ms: 1_700_000_040_000,
                    ready: 12,
                    at_ms: 1_700_000_010_000,
                },
            ],
        }
        .encode_to_vec(),
        Vec::new(),
    ]
}

fn key_seeds() -> Vec<Vec<u8>> {
    use fairway::model::JobId;
    vec![
        keys::job(JobId(42)).to_vec(),
        keys::lease(JobId(u64::MAX)).to_vec(),
        keys::ready("acme", "prod", (keys::inv_priority(5), 42)),
        keys::ready("a", "b", (keys::inv_priority(i32::MIN), 0)),
        keys::scheduled(1_700_000_000_000, JobId(7)).to_vec(),
        keys::dead("tenant-1.x_y", "staging", JobId(9)),
        keys::dedup("acme", "prod", "order-42"),
        keys::breaker_window("2.4.1"),
        keys::dedup_value(JobId(42), 1_700_000_000_000).to_vec(),
        keys::group_count("acme", "prod"),
        keys::TOTALS_KEY.to_vec(),
        keys::ALERTS_KEY.to_vec(),
        // Structured inputs: name lengths and bytes, priorities, ids.
        (0u8..96).collect(),
        vec![0xff; 40],
    ]
}

fn request_seeds() -> Vec<Vec<u8>> {
    let d = |s: i64| prost_types::Duration { seconds: s, nanos: 0 };
    let job = pb::EnqueueRequest {
        queue: "emails".into(),
        tenant: "acme".into(),
        environment: "prod".into(),
        payload: bytes::Bytes::from_static(b"hello"),
        headers: [("k".to_string(), "v".to_string())].into(),
        priority: 3,
        schedule: Some(pb::enqueue_request::Schedule::Delay(d(5))),
        dedup_key: "order-1".into(),
        max_attempts: 3,
        lease_duration: Some(d(60)),
        traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
    };
    let run_at = pb::EnqueueRequest {
        schedule: Some(pb::enqueue_request::Schedule::RunAt(prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 0,
        })),
        ..job.clone()
    };
    let subscribe = |max_in_flight| pb::WorkRequest {
        request: Some(pb::work_request::Request::Subscribe(pb::Subscribe {
            queues: vec!["emails".into(), "sms".into()],
            worker_id: "w1".into(),
            worker_version: "1.2.3".into(),
            max_in_flight,
            lease_duration: Some(d(30)),
        })),
    };
    let nack = pb::WorkRequest {
        request: Some(pb::work_request::Request::Nack(pb::NackRequest {
            queue: "emails".into(),
            job_id: "000000000000002a".into(),
            lease_id: "0123456789abcdef0123456789abcdef".into(),
            error: "boom".into(),
            retry_after: Some(d(1)),
            dead: false,
        })),
    };
    let config = pb::QueueConfig {
        default_lease_duration: Some(d(30)),
        max_attempts: 5,
        backoff_initial: Some(d(1)),
        backoff_max: Some(d(600)),
        dedup_window: Some(d(60)),
        max_payload_bytes: 4096,
        weight: 2,
        max_in_flight: Some(10),
        tenant_max_in_flight: Some(2),
        alert_oldest_ready_age: Some(d(60)),
        alert_backlog: Some(1000),
        alert_stalled_after: Some(d(60)),
        alert_unattended_after: Some(d(60)),
        alert_dead_letter_window: Some(d(60)),
        breaker_failure_percent: Some(50),
        breaker_min_deliveries: Some(20),
        breaker_window: Some(100),
        breaker_baseline_max_age: Some(d(3600)),
    };
    let huge = pb::QueueConfig { backoff_initial: Some(d(i64::MAX)), backoff_max: Some(d(i64::MAX)), ..config };
    vec![
        job.encode_to_vec(),
        run_at.encode_to_vec(),
        pb::EnqueueBatchRequest { jobs: vec![job.clone(), pb::EnqueueRequest::default()] }.encode_to_vec(),
        subscribe(16).encode_to_vec(),
        subscribe(limits_in_flight() + 1).encode_to_vec(),
        nack.encode_to_vec(),
        pb::WorkRequest {
            request: Some(pb::work_request::Request::Release(pb::ReleaseRequest {
                queue: "emails".into(),
                job_id: "000000000000002a".into(),
                lease_id: "0123456789abcdef0123456789abcdef".into(),
            })),
        }
        .encode_to_vec(),
        pb::WorkRequest { request: Some(pb::work_request::Request::Drain(pb::Drain {})) }.encode_to_vec(),
        pb::LeaseRequest {
            queues: vec!["emails".into()],
            max_jobs: 10,
            wait: Some(d(5)),
            lease_duration: Some(d(30)),
            worker_id: "w1".into(),
            worker_version: "v1".into(),
        }
        .encode_to_vec(),
        pb::ListJobsRequest {
            queue: "emails".into(),
            state: pb::JobState::Ready as i32,
            tenant: "acme".into(),
            environment: "prod".into(),
            page_size: 10,
            page_token: hex::encode(keys::ready("acme", "prod", (1, 2))),
        }
        .encode_to_vec(),
        pb::CreateQueueRequest { name: "emails".into(), config: Some(config) }.encode_to_vec(),
        pb::CreateQueueRequest { name: "emails".into(), config: Some(huge) }.encode_to_vec(),
        pb::SetTenantPolicyRequest {
            queue: "emails".into(),
            tenant: "acme".into(),
            weight: 3,
            max_in_flight: 4,
            enqueue_rate: 10.0,
            enqueue_burst: 20,
            environment: "prod".into(),
        }
        .encode_to_vec(),
        pb::GetJobRequest { queue: "emails".into(), job_id: "000000000000002A".into() }.encode_to_vec(),
        Vec::new(),
    ]
}

fn limits_in_flight() -> u32 {
    fairway::limits::MAX_IN_FLIGHT
}
