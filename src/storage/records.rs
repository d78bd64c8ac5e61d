//! What RocksDB values hold, as prost messages (compact, and fields can be
//! added without a migration).

/// A stored job. Written at enqueue and rewritten only when the job changes
/// state outside a lease (nack, expiry, dead-letter, redrive), so leasing and
/// acking never copy the payload.
#[derive(Clone, PartialEq, prost::Message)]
pub struct JobRecord {
    #[prost(string, tag = "1")]
    pub tenant: String,
    #[prost(string, tag = "2")]
    pub environment: String,
    #[prost(bytes = "bytes", tag = "3")]
    pub payload: bytes::Bytes,
    #[prost(map = "string, string", tag = "4")]
    pub headers: std::collections::HashMap<String, String>,
    #[prost(int32, tag = "5")]
    pub priority: i32,
    /// `StoredState` as u32: scheduled, ready or dead (leases live in `L`).
    #[prost(uint32, tag = "6")]
    pub state: u32,
    /// Deliveries made so far, not counting a lease in progress.
    #[prost(uint32, tag = "7")]
    pub attempt: u32,
    #[prost(uint32, tag = "8")]
    pub max_attempts: u32,
    #[prost(string, tag = "9")]
    pub last_error: String,
    #[prost(uint64, tag = "10")]
    pub created_at_ms: u64,
    #[prost(uint64, tag = "11")]
    pub run_at_ms: u64,
    #[prost(string, tag = "12")]
    pub dedup_key: String,
    /// 0 = the queue default.
    #[prost(uint64, tag = "13")]
    pub lease_duration_ms: u64,
    /// W3C trace context handed to every worker of the job, so its spans
    /// join the producer's trace. Empty for untraced jobs and for records
    /// written before tracing existed.
    #[prost(string, tag = "14")]
    pub traceparent: String,
}

/// The state stored in `JobRecord.state`.
pub mod stored_state {
    pub const SCHEDULED: u32 = 1;
    pub const READY: u32 = 2;
    pub const DEAD: u32 = 4;
}

/// A lease in progress; its existence is what makes a job "leased".
#[derive(Clone, PartialEq, prost::Message)]
pub struct LeaseRecord {
    #[prost(bytes = "vec", tag = "1")]
    pub lease_id: Vec<u8>,
    #[prost(uint64, tag = "2")]
    pub expires_at_ms: u64,
    /// This delivery's attempt number (1 on the first).
    #[prost(uint32, tag = "3")]
    pub attempt: u32,
    #[prost(string, tag = "4")]
    pub worker_id: String,
    /// Used again when the worker extends without naming a duration.
    #[prost(uint64, tag = "5")]
    pub duration_ms: u64,
    /// The leasing worker's version, so the circuit breaker can still
    /// judge (and fence) this lease after a restart.
    #[prost(string, tag = "6")]
    pub worker_version: String,
    /// When the lease began (extends keep it): shown in GetJob and the
    /// list of workers. 0 in records written before it was kept.
    #[prost(uint64, tag = "7")]
    pub leased_at_ms: u64,
}

impl LeaseRecord {
    /// When the lease began; for records older than that field, the start
    /// of its last extension.
    pub fn leased_at(&self) -> u64 {
        if self.leased_at_ms > 0 {
            self.leased_at_ms
        } else {
            self.expires_at_ms.saturating_sub(self.duration_ms)
        }
    }
}

/// Where a scheduled job goes when it becomes ready, so promotion needs no
/// read of the job itself.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GroupRef {
    #[prost(string, tag = "1")]
    pub tenant: String,
    #[prost(string, tag = "2")]
    pub environment: String,
    #[prost(int32, tag = "3")]
    pub priority: i32,
}

/// Per-queue counters, written in the same batch as the change they count.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct QueueCounters {
    #[prost(uint64, tag = "1")]
    pub scheduled: u64,
    #[prost(uint64, tag = "2")]
    pub dead: u64,
    #[prost(uint64, tag = "3")]
    pub enqueued_total: u64,
    #[prost(uint64, tag = "4")]
    pub acked_total: u64,
    #[prost(uint64, tag = "5")]
    pub nacked_total: u64,
    #[prost(uint64, tag = "6")]
    pub expired_total: u64,
    #[prost(uint64, tag = "7")]
    pub deduplicated_total: u64,
    #[prost(uint64, tag = "8")]
    pub dead_lettered_total: u64,
    #[prost(uint64, tag = "9")]
    pub leased_total: u64,
    /// Worker versions quarantined by the circuit breaker.
    #[prost(uint64, tag = "10")]
    pub quarantines_total: u64,
    /// Deliveries given back unstarted (Release): not attempts.
    #[prost(uint64, tag = "11")]
    pub released_total: u64,
}

/// A queue's definition, in the metadata column family.
#[derive(Clone, PartialEq, prost::Message)]
pub struct QueueMeta {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(uint64, tag = "2")]
    pub default_lease_ms: u64,
    #[prost(uint32, tag = "3")]
    pub max_attempts: u32,
    #[prost(uint64, tag = "4")]
    pub backoff_initial_ms: u64,
    #[prost(uint64, tag = "5")]
    pub backoff_max_ms: u64,
    #[prost(uint64, tag = "6")]
    pub dedup_window_ms: u64,
    #[prost(uint32, tag = "7")]
    pub max_payload_bytes: u32,
    #[prost(bool, tag = "8")]
    pub paused: bool,
    /// Distinguishes a re-created queue from the one dropped before it.
    #[prost(uint64, tag = "9")]
    pub generation: u64,
    /// 0 reads as 1 (definitions written before weights existed).
    #[prost(uint32, tag = "10")]
    pub weight: u32,
    #[prost(uint32, tag = "11")]
    pub max_in_flight: u32,
    #[prost(uint32, tag = "12")]
    pub tenant_max_in_flight: u32,
    /// Alert thresholds; absent (definitions written before alerts
    /// existed) = the default, 0 = off.
    #[prost(uint64, optional, tag = "13")]
    pub alert_oldest_ready_age_ms: Option<u64>,
    #[prost(uint64, optional, tag = "14")]
    pub alert_backlog: Option<u64>,
    #[prost(uint64, optional, tag = "15")]
    pub alert_stalled_after_ms: Option<u64>,
    #[prost(uint64, optional, tag = "16")]
    pub alert_unattended_after_ms: Option<u64>,
    #[prost(uint64, optional, tag = "17")]
    pub alert_dead_letter_window_ms: Option<u64>,
    /// Circuit breaker settings; absent (older definitions) = the default.
    #[prost(uint32, optional, tag = "18")]
    pub breaker_failure_percent: Option<u32>,
    #[prost(uint32, optional, tag = "19")]
    pub breaker_min_deliveries: Option<u32>,
    #[prost(uint32, optional, tag = "20")]
    pub breaker_window: Option<u32>,
    /// Worker versions quarantined in this queue: kept with the queue's
    /// definition so a restart doesn't let a bad deploy loose again.
    #[prost(message, repeated, tag = "21")]
    pub quarantines: Vec<QuarantineRecord>,
    /// How recent a baseline's newest outcome must be; absent (older
    /// definitions) = the default, 0 = no limit.
    #[prost(uint64, optional, tag = "22")]
    pub breaker_baseline_max_age_ms: Option<u64>,
}

/// The circuit-breaker window of one worker version, saved about once a
/// second while it changes so a restart keeps the baselines that tell a bad
/// deploy from an outage.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BreakerWindowRecord {
    /// Jobs of the outcomes held, oldest first.
    #[prost(fixed64, repeated, tag = "1")]
    pub jobs: Vec<u64>,
    /// One byte per outcome, in the same order: 1 = failed.
    #[prost(bytes = "vec", tag = "2")]
    pub failed: Vec<u8>,
    /// Wall-clock time of the newest outcome: how old the window is as a
    /// baseline.
    #[prost(uint64, tag = "3")]
    pub last_at_ms: u64,
}

/// One quarantined worker version and why (the figures at the time).
#[derive(Clone, PartialEq, prost::Message)]
pub struct QuarantineRecord {
    #[prost(string, tag = "1")]
    pub worker_version: String,
    #[prost(uint64, tag = "2")]
    pub since_ms: u64,
    #[prost(uint32, tag = "3")]
    pub failures: u32,
    #[prost(uint32, tag = "4")]
    pub deliveries: u32,
    #[prost(string, tag = "5")]
    pub baseline_version: String,
    #[prost(uint32, tag = "6")]
    pub baseline_failures: u32,
    #[prost(uint32, tag = "7")]
    pub baseline_deliveries: u32,
    #[prost(uint32, tag = "8")]
    pub returned_leases: u32,
    #[prost(uint32, tag = "9")]
    pub refunded_attempts: u32,
}

/// A tenant's policy in one queue, in the metadata column family.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TenantPolicyRecord {
    #[prost(string, tag = "1")]
    pub tenant: String,
    #[prost(uint32, tag = "2")]
    pub weight: u32,
    #[prost(uint32, tag = "3")]
    pub max_in_flight: u32,
    #[prost(double, tag = "4")]
    pub enqueue_rate: f64,
    #[prost(uint32, tag = "5")]
    pub enqueue_burst: u32,
    #[prost(btree_map = "string, uint32", tag = "6")]
    pub env_weights: std::collections::BTreeMap<String, u32>,
}

/// What a queue's alert rules need across a restart (key `A`): saved when
/// an alert starts or ends, a job is dead-lettered, or at most once a
/// second while work moves, so an alert in force before a restart is in
/// force after it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AlertStateRecord {
    /// Since when the queue has had ready jobs (unpaused); absent: none.
    #[prost(uint64, optional, tag = "1")]
    pub ready_since_ms: Option<u64>,
    /// Last lease, ack or nack.
    #[prost(uint64, tag = "2")]
    pub last_progress_ms: u64,
    /// Last moment a worker was connected or asked for work.
    #[prost(uint64, tag = "3")]
    pub last_worker_seen_ms: u64,
    /// Last dead-lettering; absent: none yet.
    #[prost(uint64, optional, tag = "4")]
    pub last_dead_at_ms: Option<u64>,
    /// The rule alerts in force.
    #[prost(message, repeated, tag = "5")]
    pub active: Vec<AlertRecord>,
}

/// One alert in force, with the figures its message is written from.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AlertRecord {
    /// Its kind, as in `QueueAlert.kind`.
    #[prost(string, tag = "1")]
    pub kind: String,
    #[prost(uint64, tag = "2")]
    pub since_ms: u64,
    /// Ready jobs at its last evaluation (stalled, unattended, backlog).
    #[prost(uint64, tag = "3")]
    pub ready: u64,
    /// The moment its message counts from (stalled, unattended: the clock's
    /// start; aging: the oldest ready job's; dead_lettering: the last one).
    #[prost(uint64, tag = "4")]
    pub at_ms: u64,
}

/// An `EnqueueBatch` whose jobs belong to several partitions, as its
/// coordinating partition stores it (Meta key `intent/SEQ`) in the same
/// write as its own part: once that write is in, the batch is decided and
/// the other parts are applied (now, or at the next start) until each is.
/// See `src/broker/batch_intent.rs`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BatchIntentRecord {
    /// The parts of the other partitions.
    #[prost(message, repeated, tag = "1")]
    pub parts: Vec<IntentPart>,
}

/// One other partition's jobs of a cross-partition batch.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IntentPart {
    #[prost(uint32, tag = "1")]
    pub partition: u32,
    #[prost(message, repeated, tag = "2")]
    pub jobs: Vec<IntentJob>,
}

/// A job as the producer sent it (validated), not yet stored by its
/// partition: the fields of `model::NewJob`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IntentJob {
    #[prost(string, tag = "1")]
    pub queue: String,
    #[prost(string, tag = "2")]
    pub tenant: String,
    #[prost(string, tag = "3")]
    pub environment: String,
    #[prost(bytes = "bytes", tag = "4")]
    pub payload: bytes::Bytes,
    #[prost(map = "string, string", tag = "5")]
    pub headers: std::collections::HashMap<String, String>,
    #[prost(int32, tag = "6")]
    pub priority: i32,
    /// Absent: at once (when its partition stores it).
    #[prost(uint64, optional, tag = "7")]
    pub run_at_ms: Option<u64>,
    #[prost(string, tag = "8")]
    pub dedup_key: String,
    #[prost(uint32, tag = "9")]
    pub max_attempts: u32,
    /// Absent: the queue's default.
    #[prost(uint64, optional, tag = "10")]
    pub lease_duration_ms: Option<u64>,
    #[prost(string, tag = "11")]
    pub traceparent: String,
}
