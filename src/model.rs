//! Domain types and their validation, independent of gRPC and of storage.

use crate::error::BrokerError;
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Name used when a request leaves tenant or environment empty.
pub const DEFAULT_SCOPE: &str = "default";
/// Longest lease a worker may ask for: every lease must expire, and a day is
/// far past any job a lease is meant to cover.
pub const MAX_LEASE: Duration = Duration::from_secs(24 * 3600);
// The request limits live together in `limits`; these names stay here for
// the code that has always found them in the model.
use crate::limits::{check_headers, check_len, preview, MAX_NAME_BYTES};
pub use crate::limits::{MAX_BATCH, MAX_DEDUP_KEY, MAX_ERROR_BYTES, MAX_HEADER_BYTES, MAX_PAYLOAD_LIMIT};

/// Milliseconds since the Unix epoch: the broker's one clock unit.
pub type Millis = u64;

pub fn now_millis() -> Millis {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

pub fn duration_millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Checks a queue, tenant or environment name against `[a-z0-9][a-z0-9._-]{0,127}`.
pub fn validate_name(kind: &str, name: &str) -> Result<(), BrokerError> {
    let bytes = name.as_bytes();
    if bytes.len() > MAX_NAME_BYTES {
        return Err(BrokerError::InvalidArgument(format!(
            "{kind} name is {} bytes; the limit is {MAX_NAME_BYTES} (name starts {})",
            bytes.len(),
            preview(name)
        )));
    }
    let ok = !bytes.is_empty()
        && matches!(bytes[0], b'a'..=b'z' | b'0'..=b'9')
        && bytes.iter().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(BrokerError::InvalidArgument(format!(
            "{kind} name {} is invalid: use 1-{MAX_NAME_BYTES} characters from a-z, 0-9, '.', '_', '-', starting with a letter or digit",
            preview(name)
        )))
    }
}

/// Returns the tenant/environment to use: empty means [`DEFAULT_SCOPE`].
pub fn scope_or_default(kind: &str, value: &str) -> Result<String, BrokerError> {
    if value.is_empty() {
        return Ok(DEFAULT_SCOPE.to_string());
    }
    validate_name(kind, value)?;
    Ok(value.to_string())
}

/// A job id: a broker-wide monotonic number, shown as 16 hex digits so ids
/// sort like their creation order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(pub u64);

impl JobId {
    pub fn parse(s: &str) -> Result<JobId, BrokerError> {
        let malformed = || {
            BrokerError::InvalidArgument(format!(
                "job_id {} is malformed: job ids are 16 hex digits as returned by Enqueue",
                preview(s)
            ))
        };
        // from_str_radix alone would also take a leading '+'.
        if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(malformed());
        }
        u64::from_str_radix(s, 16).map(JobId).map_err(|_| malformed())
    }
}

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// An unguessable lease token (128 random bits), shown as 32 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseId(pub [u8; 16]);

impl LeaseId {
    pub fn random() -> LeaseId {
        LeaseId(rand::random())
    }

    pub fn parse(s: &str) -> Result<LeaseId, BrokerError> {
        let mut out = [0u8; 16];
        match hex::decode_to_slice(s, &mut out) {
            Ok(()) => Ok(LeaseId(out)),
            Err(_) => Err(BrokerError::InvalidArgument(format!(
                "lease_id {} is malformed: lease ids are the 32 hex digits of a Delivery",
                preview(s)
            ))),
        }
    }

    /// Compares in constant time so a guesser learns nothing from timing.
    pub fn matches(&self, other: &LeaseId) -> bool {
        self.0.iter().zip(other.0.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

impl std::fmt::Display for LeaseId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// A queue's settings, with the defaults the contract names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    pub default_lease: Duration,
    pub max_attempts: u32,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Zero: a dedup key is held only while its job is live.
    pub dedup_window: Duration,
    pub max_payload_bytes: u32,
    /// Share of multi-queue workers relative to their other queues.
    pub weight: u32,
    /// Most jobs of the queue leased at once; 0 = no limit.
    pub max_in_flight: u32,
    /// Default per-tenant in-flight limit; 0 = no limit.
    pub tenant_max_in_flight: u32,
    /// When the built-in alerts fire.
    pub alerts: AlertConfig,
    /// When a worker version is quarantined as a bad deploy.
    pub breaker: BreakerConfig,
}

/// The worker-version circuit breaker of a queue (see
/// `broker::version_breaker` for the rule). On by default: a bad deploy
/// burning every job's retries is the failure nobody configures for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Failure rate (nacks and lease expiries, %) at which a version trips;
    /// 0 turns the breaker off.
    pub failure_percent: u32,
    /// Outcomes a version (and its baseline) needs before it is judged, so
    /// a couple of unlucky jobs never quarantine anyone.
    pub min_deliveries: u32,
    /// Outcomes remembered per version (the sliding window).
    pub window: u32,
    /// A healthy version serves as the baseline only while its newest
    /// outcome is at most this old (zero = no limit). Without it, a version
    /// that was healthy last week would let today's outage of a downstream
    /// quarantine the version that happens to be running.
    pub baseline_max_age: Duration,
}

/// Default [`BreakerConfig::baseline_max_age`]: long enough for a slow
/// queue's rollout to gather evidence against the new version, short enough
/// that last week's version is no baseline for today.
pub const DEFAULT_BASELINE_MAX_AGE: Duration = Duration::from_secs(3600);

/// Largest breaker window: 16 bytes per outcome per version stays small.
pub const MAX_BREAKER_WINDOW: u32 = 1000;

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_percent: 50,
            min_deliveries: 20,
            window: 100,
            baseline_max_age: DEFAULT_BASELINE_MAX_AGE,
        }
    }
}

impl BreakerConfig {
    pub fn enabled(&self) -> bool {
        self.failure_percent > 0
    }

    pub fn validate(&self) -> Result<(), BrokerError> {
        let bad = |m: String| Err(BrokerError::InvalidArgument(m));
        if self.failure_percent > 100 {
            return bad(format!(
                "breaker_failure_percent is {}; use 1..=100, or 0 to turn the breaker off",
                self.failure_percent
            ));
        }
        if self.window == 0 || self.window > MAX_BREAKER_WINDOW {
            return bad(format!("breaker_window is {}; use 1..={MAX_BREAKER_WINDOW}", self.window));
        }
        if !self.baseline_max_age.is_zero() && self.baseline_max_age < Duration::from_millis(1) {
            return bad(format!(
                "breaker_baseline_max_age is {:?}; use at least 1ms, or 0 for no limit",
                self.baseline_max_age
            ));
        }
        if self.min_deliveries == 0 || self.min_deliveries > self.window {
            return bad(format!(
                "breaker_min_deliveries is {}; use 1..=breaker_window ({})",
                self.min_deliveries, self.window
            ));
        }
        Ok(())
    }
}

/// Thresholds of a queue's built-in alerts; zero turns one off. On by
/// default: an alert nobody configured is the one that never pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlertConfig {
    /// "aging": the oldest ready job has waited this long.
    pub oldest_ready_age: Duration,
    /// "backlog": at least this many ready jobs.
    pub backlog: u64,
    /// "stalled": ready jobs and no lease, ack or nack for this long.
    pub stalled_after: Duration,
    /// "unattended": ready jobs and no worker connected for this long.
    pub unattended_after: Duration,
    /// "dead_lettering": a job was dead-lettered this recently.
    pub dead_letter_window: Duration,
}

impl Default for AlertConfig {
    fn default() -> Self {
        AlertConfig {
            oldest_ready_age: Duration::from_secs(15 * 60),
            backlog: 0,
            stalled_after: Duration::from_secs(5 * 60),
            unattended_after: Duration::from_secs(5 * 60),
            dead_letter_window: Duration::from_secs(15 * 60),
        }
    }
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            default_lease: Duration::from_secs(30),
            max_attempts: 10,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(3600),
            dedup_window: Duration::ZERO,
            max_payload_bytes: 1024 * 1024,
            weight: 1,
            max_in_flight: 0,
            tenant_max_in_flight: 0,
            alerts: AlertConfig::default(),
            breaker: BreakerConfig::default(),
        }
    }
}

impl QueueConfig {
    pub fn validate(&self) -> Result<(), BrokerError> {
        let bad = |m: String| Err(BrokerError::InvalidArgument(m));
        if self.default_lease.is_zero() || self.default_lease > MAX_LEASE {
            return bad(format!("default_lease_duration must be between 1ms and {}s", MAX_LEASE.as_secs()));
        }
        if self.max_attempts == 0 {
            return bad("max_attempts must be at least 1".into());
        }
        if self.backoff_initial.is_zero() {
            return bad("backoff_initial must be positive".into());
        }
        if self.backoff_max < self.backoff_initial {
            return bad("backoff_max must be at least backoff_initial".into());
        }
        if self.weight == 0 || self.weight > crate::scheduler::MAX_WEIGHT {
            return bad(format!(
                "weight is {}; it must be between 1 and {}",
                self.weight,
                crate::scheduler::MAX_WEIGHT
            ));
        }
        if self.max_payload_bytes == 0 || self.max_payload_bytes > MAX_PAYLOAD_LIMIT {
            return bad(format!(
                "max_payload_bytes is {}; it must be between 1 and {MAX_PAYLOAD_LIMIT}",
                self.max_payload_bytes
            ));
        }
        self.breaker.validate()
    }

    /// Delay before retry number `attempt` (1-based): exponential from
    /// `backoff_initial`, capped at `backoff_max`, with "equal jitter" (half
    /// fixed, half random) so a burst of failures does not retry in lockstep.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(40);
        let base = self.backoff_initial.saturating_mul(1u32 << exp.min(31)).min(self.backoff_max);
        let half = base / 2;
        let jitter_ms = duration_millis(half);
        // checked_add: a half past u64::MAX ms (clamped) must not wrap to a
        // zero divisor.
        let extra = match jitter_ms.checked_add(1) {
            None => rand::random::<u64>(),
            Some(span) => rand::random::<u64>() % span,
        };
        half + Duration::from_millis(extra)
    }
}

/// How one tenant is treated inside one queue (`SetTenantPolicy`).
#[derive(Debug, Clone, PartialEq)]
pub struct TenantPolicy {
    /// Share relative to the queue's other tenants.
    pub weight: u32,
    /// Most jobs leased at once; 0 = the queue's `tenant_max_in_flight`.
    pub max_in_flight: u32,
    /// Sustained enqueues per second; 0 = unlimited.
    pub enqueue_rate: f64,
    /// Largest burst; 0 = max(1, enqueue_rate).
    pub enqueue_burst: u32,
    /// Weights of environments inside the tenant (absent = 1).
    pub env_weights: std::collections::BTreeMap<String, u32>,
}

impl Default for TenantPolicy {
    fn default() -> Self {
        TenantPolicy {
            weight: 1,
            max_in_flight: 0,
            enqueue_rate: 0.0,
            enqueue_burst: 0,
            env_weights: Default::default(),
        }
    }
}

impl TenantPolicy {
    /// True when it changes nothing, so it need not be stored.
    pub fn is_default(&self) -> bool {
        *self == TenantPolicy::default()
    }

    pub fn validate_weight(weight: u32) -> Result<u32, BrokerError> {
        match weight {
            0 => Ok(1),
            w if w <= crate::scheduler::MAX_WEIGHT => Ok(w),
            w => Err(BrokerError::InvalidArgument(format!(
                "weight {w} is out of range: use 1..={}",
                crate::scheduler::MAX_WEIGHT
            ))),
        }
    }

    pub fn validate_rate(rate: f64) -> Result<f64, BrokerError> {
        if rate.is_finite() && rate >= 0.0 {
            Ok(rate)
        } else {
            Err(BrokerError::InvalidArgument("enqueue_rate must be a finite number >= 0".into()))
        }
    }
}

/// A validated job, ready for the writer.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub queue: String,
    pub tenant: String,
    pub environment: String,
    pub payload: bytes::Bytes,
    pub headers: HashMap<String, String>,
    pub priority: i32,
    /// When it may first run; `None` = at once.
    pub run_at: Option<Millis>,
    pub dedup_key: String,
    /// 0 = queue default.
    pub max_attempts: u32,
    /// `None` = queue default.
    pub lease_duration: Option<Duration>,
    /// W3C trace context stored with the job for its workers (already
    /// validated; empty = untraced).
    pub traceparent: String,
}

/// The state a job is in, as the contract names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobState {
    Scheduled,
    Ready,
    Leased,
    Dead,
}

impl JobState {
    /// The state's name in messages and docs.
    pub fn name(self) -> &'static str {
        match self {
            JobState::Scheduled => "scheduled",
            JobState::Ready => "ready",
            JobState::Leased => "leased",
            JobState::Dead => "dead",
        }
    }
}

/// Checks the parts of a job that don't depend on its queue's settings.
pub fn validate_job_shape(job: &NewJob) -> Result<(), BrokerError> {
    check_len("dedup_key", &job.dedup_key, MAX_DEDUP_KEY)?;
    check_headers(&job.headers)?;
    if let Some(d) = job.lease_duration {
        validate_lease_duration(d)?;
    }
    Ok(())
}

pub fn validate_lease_duration(d: Duration) -> Result<(), BrokerError> {
    if d.is_zero() || d > MAX_LEASE {
        return Err(BrokerError::InvalidArgument(format!(
            "lease_duration must be between 1ms and {}s",
            MAX_LEASE.as_secs()
        )));
    }
    Ok(())
}

/// The hash map of the writer's hot paths: foldhash is several times faster
/// than std's SipHash on short keys, and its per-process random seed keeps
/// tenant names chosen by clients from steering collisions.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
/// The set counterpart of [`FastMap`].
pub type FastSet<T> = std::collections::HashSet<T, foldhash::fast::RandomState>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_contract_pattern() {
        for good in ["a", "0", "emails", "tenant-1.prod_x", &"a".repeat(128)] {
            assert!(validate_name("queue", good).is_ok(), "{good}");
        }
        for bad in ["", "-a", ".a", "A", "a b", "a/b", "é", &"a".repeat(129)] {
            assert!(validate_name("queue", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn empty_scope_means_default() {
        assert_eq!(scope_or_default("tenant", "").unwrap(), "default");
        assert_eq!(scope_or_default("tenant", "acme").unwrap(), "acme");
        assert!(scope_or_default("tenant", "ACME").is_err());
    }

    #[test]
    fn ids_round_trip_and_reject_garbage() {
        let id = JobId(0xabc);
        assert_eq!(id.to_string(), "0000000000000abc");
        assert_eq!(JobId::parse(&id.to_string()).unwrap(), id);
        assert!(JobId::parse("xyz").is_err());
        assert!(JobId::parse("zzzzzzzzzzzzzzzz").is_err());
        let lease = LeaseId::random();
        assert!(LeaseId::parse(&lease.to_string()).unwrap().matches(&lease));
        assert!(!LeaseId::random().matches(&lease));
        assert!(LeaseId::parse("not-a-lease").is_err());
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let c = QueueConfig {
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(10),
            ..QueueConfig::default()
        };
        for attempt in 1..50 {
            let base = Duration::from_secs(1u64 << (attempt - 1).min(20)).min(c.backoff_max);
            let d = c.backoff(attempt);
            assert!(d >= base / 2 && d <= base, "attempt {attempt}: {d:?} vs {base:?}");
        }
    }

    #[test]
    fn queue_config_defaults_match_the_contract() {
        let c = QueueConfig::default();
        assert_eq!(c.default_lease, Duration::from_secs(30));
        assert_eq!(c.max_attempts, 10);
        assert_eq!(c.backoff_initial, Duration::from_secs(1));
        assert_eq!(c.backoff_max, Duration::from_secs(3600));
        assert_eq!(c.dedup_window, Duration::ZERO);
        assert_eq!(c.max_payload_bytes, 1 << 20);
        assert_eq!(
            c.breaker,
            BreakerConfig {
                failure_percent: 50,
                min_deliveries: 20,
                window: 100,
                baseline_max_age: Duration::from_secs(3600)
            }
        );
        assert!(c.validate().is_ok());
    }

    #[test]
    fn breaker_settings_are_checked() {
        let with = |b: BreakerConfig| QueueConfig { breaker: b, ..QueueConfig::default() }.validate();
        let d = BreakerConfig::default();
        assert!(with(BreakerConfig { failure_percent: 0, ..d }).is_ok(), "0 = off");
        assert!(with(BreakerConfig { failure_percent: 100, ..d }).is_ok());
        let e = with(BreakerConfig { failure_percent: 101, ..d }).unwrap_err();
        assert!(e.to_string().contains("breaker_failure_percent"), "{e}");
        assert!(with(BreakerConfig { window: 0, ..d }).is_err());
        assert!(with(BreakerConfig { window: MAX_BREAKER_WINDOW + 1, ..d }).is_err());
        let e = with(BreakerConfig { min_deliveries: 101, ..d }).unwrap_err();
        assert!(e.to_string().contains("breaker_min_deliveries"), "{e}");
        assert!(with(BreakerConfig { min_deliveries: 0, ..d }).is_err());
        let e = with(BreakerConfig { baseline_max_age: Duration::from_micros(500), ..d }).unwrap_err();
        assert!(e.to_string().contains("breaker_baseline_max_age"), "{e}");
        assert!(with(BreakerConfig { baseline_max_age: Duration::ZERO, ..d }).is_ok(), "0 = no limit");
    }
}
