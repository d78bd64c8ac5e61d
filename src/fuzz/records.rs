//! Target `records`: every stored record type decoded from arbitrary bytes
//! (as after disk corruption or a bad migration), re-encoded, and read the
//! way the broker reads it.

use crate::broker::queue_state::{config_from_meta, meta_from_config};
use crate::broker::version_breaker::VersionBreaker;
use crate::broker::view;
use crate::model::BreakerConfig;
use crate::model::{JobId, JobState};
use crate::storage::records::{
    AlertStateRecord, BreakerWindowRecord, GroupRef, JobRecord, LeaseRecord, QueueCounters, QueueMeta,
    TenantPolicyRecord,
};
use prost::Message;

pub fn fuzz_one(data: &[u8]) {
    if let Some(job) = round_trip::<JobRecord>(data) {
        read_job(&job);
    }
    round_trip::<LeaseRecord>(data);
    round_trip::<GroupRef>(data);
    round_trip::<QueueCounters>(data);
    round_trip::<TenantPolicyRecord>(data);
    if let Some(window) = round_trip::<BreakerWindowRecord>(data) {
        read_window(&window);
    }
    if let Some(meta) = round_trip::<QueueMeta>(data) {
        read_queue(&meta);
    }
    if let Some(alerts) = round_trip::<AlertStateRecord>(data) {
        read_alerts(&alerts);
    }
}

/// Stored alert state as the broker restores it at start: whatever it
/// holds, the alerts come back with messages that render, and saving them
/// again keeps the alerts in force.
fn read_alerts(rec: &AlertStateRecord) {
    use crate::broker::observe::QueueObs;
    let mut obs = QueueObs::restore(rec, 1_000);
    let cfg = crate::model::AlertConfig::default();
    for (kind, a) in &obs.active {
        let _ = a.message(*kind, &cfg, u64::MAX);
    }
    let kinds: Vec<_> = obs.active.keys().copied().collect();
    let again = QueueObs::restore(&obs.take_record(), 2_000);
    assert_eq!(again.active.keys().copied().collect::<Vec<_>>(), kinds, "alerts in force survive a second restart");
}

/// Decodes `data` as `M`; whatever decodes re-encodes to bytes that decode
/// to the same encoding (compared as bytes: an f64 field may hold NaN).
fn round_trip<M: Message + Default>(data: &[u8]) -> Option<M> {
    let rec = M::decode(data).ok()?;
    let once = rec.encode_to_vec();
    let again = M::decode(once.as_slice()).expect("a re-encoded record must decode");
    assert_eq!(again.encode_to_vec(), once, "re-encoding must be stable");
    Some(rec)
}

/// A stored job as GetJob, ListJobs and deliveries show it.
fn read_job(rec: &JobRecord) {
    for st in [JobState::Scheduled, JobState::Ready, JobState::Leased, JobState::Dead] {
        let job = view::job("q", JobId(u64::from(rec.attempt)), rec, st, rec.attempt, rec.max_attempts, None);
        assert_eq!(job.payload, rec.payload);
        assert_eq!(job.headers, rec.headers);
        let _ = job.encode_to_vec();
    }
}

/// A stored queue definition as the broker loads it at start: its config
/// survives a store and load unchanged, and retry delays never panic.
fn read_queue(meta: &QueueMeta) {
    let config = config_from_meta(meta);
    let stored = meta_from_config(&meta.name, &config, meta.paused, meta.generation);
    assert_eq!(config_from_meta(&stored), config, "a loaded queue config must store and load unchanged");
    for attempt in [0, 1, 2, 31, 32, 33, 64, u32::MAX] {
        let d = config.backoff(attempt);
        assert!(d <= config.backoff_max, "retry delay {d:?} past backoff_max");
    }
    let _ = view::queue(&meta.name, &config, meta.paused).encode_to_vec();
}

/// A stored breaker window as the broker restores it at start: it never
/// holds more than the window size, and saving it again keeps the newest.
fn read_window(rec: &BreakerWindowRecord) {
    let cfg = BreakerConfig { window: 8, min_deliveries: 1, ..BreakerConfig::default() };
    let mut b = VersionBreaker::default();
    b.restore(&cfg, "v", rec);
    let Some(w) = b.window("v") else {
        assert_ne!(rec.jobs.len(), rec.failed.len(), "a well-formed window is restored");
        return;
    };
    assert!(w.deliveries() as usize == rec.jobs.len().min(8) && w.failures() <= w.deliveries());
    let (saves, _) = b.take_changes(0);
    assert!(saves.is_empty(), "a restored window is not a change");
}
