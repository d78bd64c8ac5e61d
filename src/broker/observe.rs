//! What the broker watches about each queue: latency histograms, when work
//! last moved, and the built-in alerts. Owned by the writer thread, which
//! already sees every lease and ack, so watching costs a few integer
//! updates per job and no locks. Read through snapshots (metrics, stats,
//! health).

use crate::model::{AlertConfig, Millis};
use std::collections::BTreeMap;
use std::time::Duration;

/// Upper bounds (ms) of the job latency buckets: from "immediate" to "half
/// an hour", the range in which a job queue's latencies matter.
pub const JOB_LATENCY_MS: &[u64] =
    &[1, 2, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 300_000, 1_800_000];

/// Upper bounds (µs) of the commit (write + fsync) latency buckets.
pub const COMMIT_LATENCY_US: &[u64] = &[100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 1_000_000];

/// A cumulative-on-read histogram with fixed bounds (Prometheus style).
#[derive(Debug, Clone)]
pub struct Histogram {
    /// Bucket upper bounds, in this histogram's unit.
    pub bounds: &'static [u64],
    /// Observations per bucket (not cumulative); the last is +Inf.
    pub counts: Vec<u64>,
    /// Sum of all observations, in this histogram's unit.
    pub sum: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [u64]) -> Histogram {
        Histogram { bounds, counts: vec![0; bounds.len() + 1], sum: 0 }
    }

    pub fn observe(&mut self, v: u64) {
        let i = self.bounds.partition_point(|b| *b < v);
        self.counts[i] += 1;
        self.sum = self.sum.saturating_add(v);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// The built-in alert kinds, in the order they are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AlertKind {
    Stalled,
    Unattended,
    Aging,
    Backlog,
    DeadLettering,
    /// A worker version is quarantined by the circuit breaker. Raised and
    /// cleared by the engine when it quarantines or lifts, not by a rule.
    BadWorkerVersion,
}

impl AlertKind {
    pub const ALL: [AlertKind; 6] = [
        AlertKind::Stalled,
        AlertKind::Unattended,
        AlertKind::Aging,
        AlertKind::Backlog,
        AlertKind::DeadLettering,
        AlertKind::BadWorkerVersion,
    ];
    /// The kinds [`QueueObs::evaluate`] decides from a reading.
    const RULES: [AlertKind; 5] =
        [AlertKind::Stalled, AlertKind::Unattended, AlertKind::Aging, AlertKind::Backlog, AlertKind::DeadLettering];

    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::Stalled => "stalled",
            AlertKind::Unattended => "unattended",
            AlertKind::Aging => "aging",
            AlertKind::Backlog => "backlog",
            AlertKind::DeadLettering => "dead_lettering",
            AlertKind::BadWorkerVersion => "bad_worker_version",
        }
    }
}

/// An alert in force.
#[derive(Debug, Clone, PartialEq)]
pub struct ActiveAlert {
    pub since: Millis,
    /// The figures at the moment it fired, for people.
    pub message: String,
}

/// What the alert rules look at, gathered by the engine.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueueReading {
    pub now: Millis,
    pub ready: u64,
    pub paused: bool,
    /// Work streams and waiting long-polls on the queue.
    pub workers: usize,
    /// When the oldest ready job became ready, if any is known.
    pub oldest_ready_at: Option<Millis>,
}

/// A change in a queue's alerts.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertChange {
    pub kind: AlertKind,
    /// True when the alert starts, false when it clears.
    pub active: bool,
    pub message: String,
}

/// Per-queue observations.
#[derive(Debug, Clone)]
pub struct QueueObs {
    /// Ready (or, for delayed jobs, due) to leased.
    pub delivery: Histogram,
    /// Leased to acked.
    pub ack: Histogram,
    /// Last lease, ack or nack.
    pub last_progress: Millis,
    /// Last moment a worker was connected or asked for work.
    pub last_worker_seen: Millis,
    /// Since when the queue has had ready jobs (while unpaused): stalled
    /// and unattended count from here, so a queue idle for hours doesn't
    /// alert the moment one job arrives.
    pub ready_since: Option<Millis>,
    /// Last dead-lettering.
    pub last_dead_at: Option<Millis>,
    pub active: BTreeMap<AlertKind, ActiveAlert>,
}

impl QueueObs {
    pub fn new(now: Millis) -> QueueObs {
        QueueObs {
            delivery: Histogram::new(JOB_LATENCY_MS),
            ack: Histogram::new(JOB_LATENCY_MS),
            last_progress: now,
            last_worker_seen: now,
            ready_since: None,
            last_dead_at: None,
            active: BTreeMap::new(),
        }
    }

    /// Applies the rules to a reading; returns what started or cleared.
    pub fn evaluate(&mut self, cfg: &AlertConfig, r: &QueueReading) -> Vec<AlertChange> {
        if r.workers > 0 {
            self.last_worker_seen = r.now;
        }
        if r.ready == 0 || r.paused {
            self.ready_since = None;
        } else if self.ready_since.is_none() {
            self.ready_since = Some(r.now);
        }
        let mut changes = Vec::new();
        for kind in AlertKind::RULES {
            let firing = self.rule(kind, cfg, r);
            match (firing, self.active.contains_key(&kind)) {
                (Some(message), false) => {
                    self.active.insert(kind, ActiveAlert { since: r.now, message: message.clone() });
                    changes.push(AlertChange { kind, active: true, message });
                }
                (None, true) => {
                    self.active.remove(&kind);
                    changes.push(AlertChange { kind, active: false, message: format!("{} cleared", kind.as_str()) });
                }
                _ => {}
            }
        }
        changes
    }

    /// Raises (with `message`), updates or clears (`None`) an alert the
    /// engine decides itself; returns the change, if it started or ended.
    pub fn set(&mut self, kind: AlertKind, now: Millis, message: Option<String>) -> Option<AlertChange> {
        match (message, self.active.get_mut(&kind)) {
            (Some(message), Some(a)) => {
                a.message = message;
                None
            }
            (Some(message), None) => {
                self.active.insert(kind, ActiveAlert { since: now, message: message.clone() });
                Some(AlertChange { kind, active: true, message })
            }
            (None, Some(_)) => {
                self.active.remove(&kind);
                Some(AlertChange { kind, active: false, message: format!("{} cleared", kind.as_str()) })
            }
            (None, None) => None,
        }
    }

    /// `Some(message)` while the rule `kind` holds.
    fn rule(&self, kind: AlertKind, cfg: &AlertConfig, r: &QueueReading) -> Option<String> {
        let over = |since: Millis, limit: Duration| {
            let waited = r.now.saturating_sub(since);
            (!limit.is_zero() && waited >= limit.as_millis() as u64).then_some(waited)
        };
        match kind {
            AlertKind::Stalled => {
                let since = self.ready_since?.max(self.last_progress);
                let waited = over(since, cfg.stalled_after)?;
                Some(format!(
                    "{} ready jobs and no lease, ack or nack for {} (alert_stalled_after {})",
                    r.ready,
                    human(waited),
                    human_d(cfg.stalled_after)
                ))
            }
            AlertKind::Unattended => {
                if r.workers > 0 {
                    return None;
                }
                let since = self.ready_since?.max(self.last_worker_seen);
                let waited = over(since, cfg.unattended_after)?;
                Some(format!(
                    "{} ready jobs and no worker connected for {} (alert_unattended_after {})",
                    r.ready,
                    human(waited),
                    human_d(cfg.unattended_after)
                ))
            }
            AlertKind::Aging => {
                if r.ready == 0 {
                    return None;
                }
                let age = over(r.oldest_ready_at?, cfg.oldest_ready_age)?;
                Some(format!(
                    "the oldest ready job has waited {} (alert_oldest_ready_age {})",
                    human(age),
                    human_d(cfg.oldest_ready_age)
                ))
            }
            AlertKind::Backlog => (cfg.backlog > 0 && r.ready >= cfg.backlog)
                .then(|| format!("{} ready jobs (alert_backlog {})", r.ready, cfg.backlog)),
            AlertKind::DeadLettering => {
                let last = self.last_dead_at?;
                let window = cfg.dead_letter_window.as_millis() as u64;
                (window > 0 && r.now.saturating_sub(last) < window).then(|| {
                    format!(
                        "a job was dead-lettered {} ago (alert_dead_letter_window {})",
                        human(r.now.saturating_sub(last)),
                        human_d(cfg.dead_letter_window)
                    )
                })
            }
            // Not a rule over the reading: see `set`.
            AlertKind::BadWorkerVersion => None,
        }
    }
}

fn human(ms: u64) -> String {
    human_d(Duration::from_millis(ms))
}

fn human_d(d: Duration) -> String {
    // Whole seconds read better in an alert than humantime's milliseconds.
    let d = if d >= Duration::from_secs(1) { Duration::from_secs(d.as_secs()) } else { d };
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> AlertConfig {
        AlertConfig {
            oldest_ready_age: Duration::from_secs(60),
            backlog: 100,
            stalled_after: Duration::from_secs(10),
            unattended_after: Duration::from_secs(20),
            dead_letter_window: Duration::from_secs(30),
        }
    }

    fn reading(now: Millis, ready: u64, workers: usize) -> QueueReading {
        QueueReading { now, ready, paused: false, workers, oldest_ready_at: Some(now) }
    }

    fn kinds(c: &[AlertChange]) -> Vec<(AlertKind, bool)> {
        c.iter().map(|c| (c.kind, c.active)).collect()
    }

    #[test]
    fn histogram_buckets_by_upper_bound() {
        let mut h = Histogram::new(JOB_LATENCY_MS);
        for v in [0, 1, 2, 3, 2_000_000] {
            h.observe(v);
        }
        assert_eq!(h.counts[0], 2, "0 and 1 are <= 1");
        assert_eq!(h.counts[1], 1);
        assert_eq!(h.counts[2], 1, "3 is <= 5");
        assert_eq!(*h.counts.last().unwrap(), 1, "+Inf");
        assert_eq!(h.count(), 5);
    }

    #[test]
    fn a_long_idle_queue_does_not_stall_the_moment_a_job_arrives() {
        let mut o = QueueObs::new(0);
        assert!(o.evaluate(&cfg(), &reading(3_600_000, 0, 1)).is_empty());
        let t = 3_600_000 + 1_000;
        assert!(o.evaluate(&cfg(), &reading(t, 5, 1)).is_empty());
        let c = o.evaluate(&cfg(), &reading(t + 10_000, 5, 1));
        assert_eq!(kinds(&c), vec![(AlertKind::Stalled, true)]);
        assert!(c[0].message.contains("5 ready jobs"), "{}", c[0].message);
        // A lease is progress: it clears.
        o.last_progress = t + 10_500;
        assert_eq!(kinds(&o.evaluate(&cfg(), &reading(t + 11_000, 5, 1))), vec![(AlertKind::Stalled, false)]);
    }

    #[test]
    fn unattended_needs_no_worker_for_the_whole_grace() {
        let mut o = QueueObs::new(0);
        o.last_progress = u64::MAX / 2; // keep "stalled" out of this test
        o.evaluate(&cfg(), &reading(1_000, 3, 0));
        assert!(o.evaluate(&cfg(), &reading(20_999, 3, 0)).is_empty());
        assert_eq!(kinds(&o.evaluate(&cfg(), &reading(21_000, 3, 0))), vec![(AlertKind::Unattended, true)]);
        assert_eq!(kinds(&o.evaluate(&cfg(), &reading(21_500, 3, 1))), vec![(AlertKind::Unattended, false)]);
    }

    #[test]
    fn paused_queues_neither_stall_nor_go_unattended() {
        let mut o = QueueObs::new(0);
        let mut r = reading(1_000_000, 3, 0);
        r.paused = true;
        r.oldest_ready_at = None;
        o.evaluate(&cfg(), &r);
        r.now += 1_000_000;
        assert!(o.evaluate(&cfg(), &r).is_empty());
    }

    #[test]
    fn aging_backlog_and_dead_lettering_fire_and_clear() {
        let mut o = QueueObs::new(0);
        o.last_progress = u64::MAX / 2;
        let mut r = reading(100_000, 150, 1);
        r.oldest_ready_at = Some(100_000 - 60_000);
        o.last_dead_at = Some(95_000);
        let c = o.evaluate(&cfg(), &r);
        assert_eq!(
            kinds(&c),
            vec![(AlertKind::Aging, true), (AlertKind::Backlog, true), (AlertKind::DeadLettering, true)]
        );
        assert!(c[0].message.contains("1m"), "{}", c[0].message);
        r.now = 125_000;
        r.ready = 99;
        r.oldest_ready_at = Some(120_000);
        let c = o.evaluate(&cfg(), &r);
        assert_eq!(
            kinds(&c),
            vec![(AlertKind::Aging, false), (AlertKind::Backlog, false), (AlertKind::DeadLettering, false)]
        );
        assert!(o.active.is_empty());
    }

    #[test]
    fn engine_set_alerts_survive_evaluation_and_clear_when_told() {
        let mut o = QueueObs::new(0);
        o.last_progress = u64::MAX / 2;
        let c = o.set(AlertKind::BadWorkerVersion, 5, Some("v2 quarantined".into())).unwrap();
        assert!(c.active);
        assert!(o.set(AlertKind::BadWorkerVersion, 6, Some("v2 and v3".into())).is_none(), "an update");
        assert!(o.evaluate(&cfg(), &reading(1_000, 0, 1)).is_empty(), "rules leave it alone");
        assert_eq!(o.active[&AlertKind::BadWorkerVersion].since, 5);
        assert_eq!(o.active[&AlertKind::BadWorkerVersion].message, "v2 and v3");
        assert!(!o.set(AlertKind::BadWorkerVersion, 7, None).unwrap().active);
        assert!(o.active.is_empty());
    }

    #[test]
    fn zero_thresholds_turn_rules_off() {
        let off = AlertConfig {
            oldest_ready_age: Duration::ZERO,
            backlog: 0,
            stalled_after: Duration::ZERO,
            unattended_after: Duration::ZERO,
            dead_letter_window: Duration::ZERO,
        };
        let mut o = QueueObs::new(0);
        o.last_dead_at = Some(0);
        o.evaluate(&off, &reading(1, 1_000_000, 0));
        let mut r = reading(10_000_000, 1_000_000, 0);
        r.oldest_ready_at = Some(0);
        assert!(o.evaluate(&off, &r).is_empty());
    }
}
