//! What the broker watches about each queue: latency histograms, when work
//! last moved, and the built-in alerts. Owned by the writer thread, which
//! already sees every lease and ack, so watching costs a few integer
//! updates per job and no locks. Read through snapshots (metrics, stats,
//! health).

use crate::model::{AlertConfig, Millis};
use crate::storage::records::{AlertRecord, AlertStateRecord};
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

/// Observations kept whole per latency, to quote percentiles as measured.
pub const RECENT: usize = 1024;

/// The last [`RECENT`] observations, oldest overwritten first: a histogram
/// only bounds a percentile by its buckets ("p99 ≤ 5 min"); these give the
/// values themselves for the recent past. A store per observation.
#[derive(Debug, Clone, Default)]
pub struct Recent {
    values: Vec<u64>,
    /// Where the next observation goes once full.
    next: usize,
}

/// Percentiles of [`Recent`] observations (nearest rank).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Percentiles {
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
    /// Observations they are taken over (at most [`RECENT`]).
    pub count: usize,
}

impl Recent {
    pub fn push(&mut self, v: u64) {
        if self.values.len() < RECENT {
            self.values.push(v);
        } else {
            self.values[self.next] = v;
        }
        self.next = (self.next + 1) % RECENT;
    }

    pub fn percentiles(&self) -> Option<Percentiles> {
        if self.values.is_empty() {
            return None;
        }
        let mut v = self.values.clone();
        v.sort_unstable();
        let rank = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Some(Percentiles { p50: rank(0.5), p99: rank(0.99), max: v[v.len() - 1], count: v.len() })
    }
}

/// A latency, as a histogram since start (for Prometheus) and as its
/// recent values (for people).
#[derive(Debug, Clone)]
pub struct Latency {
    pub hist: Histogram,
    pub recent: Recent,
}

impl Latency {
    pub fn new(bounds: &'static [u64]) -> Latency {
        Latency { hist: Histogram::new(bounds), recent: Recent::default() }
    }

    pub fn observe(&mut self, v: u64) {
        self.hist.observe(v);
        self.recent.push(v);
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

    pub fn parse(s: &str) -> Option<AlertKind> {
        AlertKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// An alert in force.
#[derive(Debug, Clone, PartialEq)]
pub struct ActiveAlert {
    pub since: Millis,
    /// What its message is written from, as of the last evaluation. Times
    /// are kept as moments and turned into ages only when the message is
    /// shown, so "dead-lettered 3s ago" never goes stale.
    pub facts: AlertFacts,
}

/// The figures behind an alert's message.
#[derive(Debug, Clone, PartialEq)]
pub enum AlertFacts {
    /// `stalled`, `unattended`: ready jobs, and the moment the rule's clock
    /// counts from (the last progress, or the last worker seen).
    Waiting { ready: u64, since: Millis },
    /// `aging`: when the oldest ready job became ready.
    Oldest { ready_at: Millis },
    /// `backlog`: ready jobs.
    Ready { ready: u64 },
    /// `dead_lettering`: when the last job was dead-lettered.
    DeadLettered { at: Millis },
    /// Raised by the engine (`bad_worker_version`), with its own text.
    Text(String),
}

impl ActiveAlert {
    /// The alert's message as of `now`, with the threshold it crossed.
    pub fn message(&self, kind: AlertKind, cfg: &AlertConfig, now: Millis) -> String {
        let ago = |t: Millis| human(now.saturating_sub(t));
        match (&self.facts, kind) {
            (AlertFacts::Waiting { ready, since }, AlertKind::Unattended) => format!(
                "{} and no worker connected for {} (alert_unattended_after {})",
                ready_jobs(*ready),
                ago(*since),
                human_d(cfg.unattended_after)
            ),
            (AlertFacts::Waiting { ready, since }, _) => format!(
                "{} and no lease, ack or nack for {} (alert_stalled_after {})",
                ready_jobs(*ready),
                ago(*since),
                human_d(cfg.stalled_after)
            ),
            (AlertFacts::Oldest { ready_at }, _) => format!(
                "the oldest ready job has waited {} (alert_oldest_ready_age {})",
                ago(*ready_at),
                human_d(cfg.oldest_ready_age)
            ),
            (AlertFacts::Ready { ready }, _) => format!("{} (alert_backlog {})", ready_jobs(*ready), cfg.backlog),
            (AlertFacts::DeadLettered { at }, _) => format!(
                "a job was dead-lettered {} ago (alert_dead_letter_window {})",
                ago(*at),
                human_d(cfg.dead_letter_window)
            ),
            (AlertFacts::Text(t), _) => t.clone(),
        }
    }
}

/// "1 ready job", "3 ready jobs".
fn ready_jobs(n: u64) -> String {
    if n == 1 {
        "1 ready job".into()
    } else {
        format!("{n} ready jobs")
    }
}

/// What the alert rules look at, gathered by the engine.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueueReading {
    pub now: Millis,
    /// Ready jobs in this partition.
    pub ready: u64,
    /// Ready jobs in all partitions of the broker: the backlog alert's
    /// threshold is the queue's, not a partition's.
    pub ready_everywhere: u64,
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
    /// Its message at the moment of the change, for the log.
    pub message: String,
}

/// Per-queue observations.
#[derive(Debug, Clone)]
pub struct QueueObs {
    /// Ready (or, for delayed jobs, due) to leased, ms.
    pub delivery: Latency,
    /// Leased to acked, ms.
    pub ack: Latency,
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
    /// What was last saved of this (see [`Self::to_record`]); `None` before
    /// the first save.
    saved: Option<AlertStateRecord>,
}

impl QueueObs {
    pub fn new(now: Millis) -> QueueObs {
        QueueObs {
            delivery: Latency::new(JOB_LATENCY_MS),
            ack: Latency::new(JOB_LATENCY_MS),
            last_progress: now,
            last_worker_seen: now,
            ready_since: None,
            last_dead_at: None,
            active: BTreeMap::new(),
            saved: None,
        }
    }

    /// What the rules need across a restart: when ready jobs began waiting,
    /// the last progress, worker and dead-lettering, and the alerts in
    /// force with their figures. The engine's own alerts are left out: they
    /// follow state that is stored anyway (quarantines).
    pub fn to_record(&self) -> AlertStateRecord {
        AlertStateRecord {
            ready_since_ms: self.ready_since,
            last_progress_ms: self.last_progress,
            last_worker_seen_ms: self.last_worker_seen,
            last_dead_at_ms: self.last_dead_at,
            active: self
                .active
                .iter()
                .filter_map(|(k, a)| {
                    let (ready, at_ms) = match a.facts {
                        AlertFacts::Waiting { ready, since } => (ready, since),
                        AlertFacts::Oldest { ready_at } => (0, ready_at),
                        AlertFacts::Ready { ready } => (ready, 0),
                        AlertFacts::DeadLettered { at } => (0, at),
                        AlertFacts::Text(_) => return None,
                    };
                    Some(AlertRecord { kind: k.as_str().to_string(), since_ms: a.since, ready, at_ms })
                })
                .collect(),
        }
    }

    /// True when what [`Self::to_record`] holds changed enough to be saved
    /// again: an alert started or ended, ready jobs began or stopped
    /// waiting, a job was dead-lettered, or progress or a worker was seen
    /// a second or more after the last save (not on every lease).
    pub fn save_due(&self) -> bool {
        let Some(s) = &self.saved else { return true };
        let moved = |now: Millis, then: Millis| now.saturating_sub(then) >= 1000;
        let kinds = |r: &AlertStateRecord| r.active.iter().map(|a| (a.kind.clone(), a.since_ms)).collect::<Vec<_>>();
        s.ready_since_ms != self.ready_since
            || s.last_dead_at_ms != self.last_dead_at
            || moved(self.last_progress, s.last_progress_ms)
            || moved(self.last_worker_seen, s.last_worker_seen_ms)
            || kinds(s) != kinds(&self.to_record())
    }

    /// The record to save now, remembered as saved.
    pub fn take_record(&mut self) -> AlertStateRecord {
        let rec = self.to_record();
        self.saved = Some(rec.clone());
        rec
    }

    /// State saved before a restart, loaded at `now`. Alerts in force stay
    /// in force with their start time (the first evaluation clears those
    /// whose rule no longer holds). A rule that had not fired keeps its
    /// clock only where the downtime is no excuse: for `stalled` and
    /// `unattended` the clock restarts at start-up, since no worker could
    /// connect or make progress while the broker was down.
    pub fn restore(rec: &AlertStateRecord, now: Millis) -> QueueObs {
        let mut o = QueueObs::new(now);
        o.ready_since = rec.ready_since_ms;
        o.last_dead_at = rec.last_dead_at_ms;
        for a in &rec.active {
            let Some(kind) = AlertKind::parse(&a.kind) else { continue };
            let facts = match kind {
                AlertKind::Stalled | AlertKind::Unattended => AlertFacts::Waiting { ready: a.ready, since: a.at_ms },
                AlertKind::Aging => AlertFacts::Oldest { ready_at: a.at_ms },
                AlertKind::Backlog => AlertFacts::Ready { ready: a.ready },
                AlertKind::DeadLettering => AlertFacts::DeadLettered { at: a.at_ms },
                AlertKind::BadWorkerVersion => continue,
            };
            o.active.insert(kind, ActiveAlert { since: a.since_ms, facts });
        }
        o.last_progress = if o.active.contains_key(&AlertKind::Stalled) {
            rec.last_progress_ms
        } else {
            rec.last_progress_ms.max(now)
        };
        o.last_worker_seen = if o.active.contains_key(&AlertKind::Unattended) {
            rec.last_worker_seen_ms
        } else {
            rec.last_worker_seen_ms.max(now)
        };
        o.saved = Some(rec.clone());
        o
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
            match (firing, self.active.get_mut(&kind)) {
                (Some(facts), Some(a)) => a.facts = facts,
                (Some(facts), None) => {
                    let a = ActiveAlert { since: r.now, facts };
                    let message = a.message(kind, cfg, r.now);
                    self.active.insert(kind, a);
                    changes.push(AlertChange { kind, active: true, message });
                }
                (None, Some(_)) => {
                    self.active.remove(&kind);
                    changes.push(AlertChange { kind, active: false, message: format!("{} cleared", kind.as_str()) });
                }
                (None, None) => {}
            }
        }
        changes
    }

    /// A job was dead-lettered at `now`: the `dead_lettering` alert is in
    /// force from this moment (not from the next evaluation), so it is
    /// stored in the same write as the dead letter itself. Returns the
    /// change when the alert starts.
    pub fn dead_lettered(&mut self, cfg: &AlertConfig, now: Millis) -> Option<AlertChange> {
        self.last_dead_at = Some(now);
        if cfg.dead_letter_window.is_zero() {
            return None;
        }
        let facts = AlertFacts::DeadLettered { at: now };
        match self.active.get_mut(&AlertKind::DeadLettering) {
            Some(a) => {
                a.facts = facts;
                None
            }
            None => {
                let a = ActiveAlert { since: now, facts };
                let message = a.message(AlertKind::DeadLettering, cfg, now);
                self.active.insert(AlertKind::DeadLettering, a);
                Some(AlertChange { kind: AlertKind::DeadLettering, active: true, message })
            }
        }
    }

    /// Raises (with `message`), updates or clears (`None`) an alert the
    /// engine decides itself; returns the change, if it started or ended.
    pub fn set(&mut self, kind: AlertKind, now: Millis, message: Option<String>) -> Option<AlertChange> {
        match (message, self.active.get_mut(&kind)) {
            (Some(message), Some(a)) => {
                a.facts = AlertFacts::Text(message);
                None
            }
            (Some(message), None) => {
                self.active.insert(kind, ActiveAlert { since: now, facts: AlertFacts::Text(message.clone()) });
                Some(AlertChange { kind, active: true, message })
            }
            (None, Some(_)) => {
                self.active.remove(&kind);
                Some(AlertChange { kind, active: false, message: format!("{} cleared", kind.as_str()) })
            }
            (None, None) => None,
        }
    }

    /// The alert's figures while the rule `kind` holds.
    fn rule(&self, kind: AlertKind, cfg: &AlertConfig, r: &QueueReading) -> Option<AlertFacts> {
        let over = |since: Millis, limit: Duration| {
            let waited = r.now.saturating_sub(since);
            !limit.is_zero() && waited >= limit.as_millis() as u64
        };
        match kind {
            AlertKind::Stalled => {
                let since = self.ready_since?.max(self.last_progress);
                over(since, cfg.stalled_after).then_some(AlertFacts::Waiting { ready: r.ready, since })
            }
            AlertKind::Unattended => {
                if r.workers > 0 {
                    return None;
                }
                let since = self.ready_since?.max(self.last_worker_seen);
                over(since, cfg.unattended_after).then_some(AlertFacts::Waiting { ready: r.ready, since })
            }
            AlertKind::Aging => {
                if r.ready == 0 {
                    return None;
                }
                let ready_at = r.oldest_ready_at?;
                over(ready_at, cfg.oldest_ready_age).then_some(AlertFacts::Oldest { ready_at })
            }
            AlertKind::Backlog => {
                let ready = r.ready_everywhere;
                (cfg.backlog > 0 && ready >= cfg.backlog).then_some(AlertFacts::Ready { ready })
            }
            AlertKind::DeadLettering => {
                let at = self.last_dead_at?;
                let window = cfg.dead_letter_window.as_millis() as u64;
                (window > 0 && r.now.saturating_sub(at) < window).then_some(AlertFacts::DeadLettered { at })
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
        QueueReading { now, ready, ready_everywhere: ready, paused: false, workers, oldest_ready_at: Some(now) }
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
    fn recent_percentiles_are_measured_values() {
        let mut r = Recent::default();
        assert_eq!(r.percentiles(), None);
        for v in 1..=100 {
            r.push(v);
        }
        assert_eq!(r.percentiles(), Some(Percentiles { p50: 50, p99: 99, max: 100, count: 100 }));
        // Full: the oldest go first.
        for _ in 0..RECENT {
            r.push(7);
        }
        assert_eq!(r.percentiles(), Some(Percentiles { p50: 7, p99: 7, max: 7, count: RECENT }));
        r.push(4_321);
        assert_eq!(r.percentiles().map(|p| (p.p99, p.max)), Some((7, 4_321)));
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
        r.ready_everywhere = 99;
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
        assert_eq!(o.active[&AlertKind::BadWorkerVersion].facts, AlertFacts::Text("v2 and v3".into()));
        assert!(!o.set(AlertKind::BadWorkerVersion, 7, None).unwrap().active);
        assert!(o.active.is_empty());
    }

    /// An alert's message is written when it is shown: the age it gives is
    /// the age then, not when the alert fired.
    #[test]
    fn messages_give_ages_as_of_when_they_are_shown() {
        let mut o = QueueObs::new(0);
        o.last_progress = u64::MAX / 2;
        o.last_dead_at = Some(100_000);
        o.evaluate(&cfg(), &reading(100_539, 0, 1));
        let a = &o.active[&AlertKind::DeadLettering];
        assert_eq!(a.since, 100_539);
        assert_eq!(
            a.message(AlertKind::DeadLettering, &cfg(), 100_539),
            "a job was dead-lettered 539ms ago (alert_dead_letter_window 30s)"
        );
        assert_eq!(
            a.message(AlertKind::DeadLettering, &cfg(), 125_000),
            "a job was dead-lettered 25s ago (alert_dead_letter_window 30s)"
        );
        let mut r = reading(200_000, 1, 0);
        r.oldest_ready_at = Some(100_000);
        let mut o = QueueObs::new(0);
        o.evaluate(&cfg(), &r);
        let aging = &o.active[&AlertKind::Aging];
        assert_eq!(
            aging.message(AlertKind::Aging, &cfg(), 290_000),
            "the oldest ready job has waited 3m 10s (alert_oldest_ready_age 1m)"
        );
        let one = ActiveAlert { since: 0, facts: AlertFacts::Waiting { ready: 1, since: 0 } };
        assert_eq!(
            one.message(AlertKind::Unattended, &cfg(), 20_000),
            "1 ready job and no worker connected for 20s (alert_unattended_after 20s)"
        );
    }

    /// Saved and restored, the alerts in force come back with their start
    /// and figures; clocks of rules that had not fired restart at start-up.
    #[test]
    fn alert_state_survives_a_restart() {
        let mut o = QueueObs::new(0);
        o.last_progress = 1_000;
        o.last_worker_seen = 1_000;
        o.last_dead_at = Some(50_000);
        o.evaluate(&cfg(), &reading(60_000, 3, 1));
        assert_eq!(o.active.keys().copied().collect::<Vec<_>>(), [AlertKind::DeadLettering]);
        assert!(o.save_due(), "never saved");
        let rec = o.take_record();
        assert!(!o.save_due(), "nothing changed since");
        o.last_progress = rec.last_progress_ms + 500;
        assert!(!o.save_due(), "progress half a second later is not worth a write");
        o.last_progress = rec.last_progress_ms + 1_000;
        assert!(o.save_due());

        // Back 10 s later, inside the 30 s dead-letter window: that alert is
        // still in force with the same start; the stalled clock starts again.
        let mut back = QueueObs::restore(&rec, 70_000);
        assert_eq!(back.active[&AlertKind::DeadLettering].since, 60_000);
        assert_eq!(back.last_dead_at, Some(50_000));
        assert_eq!(back.ready_since, Some(60_000));
        assert_eq!(back.last_progress, 70_000, "the downtime is not a stall");
        assert!(back.evaluate(&cfg(), &reading(70_000, 3, 1)).is_empty(), "still in force, nothing new");
        assert_eq!(back.active[&AlertKind::DeadLettering].since, 60_000);
        let c = back.evaluate(&cfg(), &reading(80_000, 3, 1));
        assert_eq!(kinds(&c), vec![(AlertKind::Stalled, true), (AlertKind::DeadLettering, false)]);
        // An alert in force before the restart keeps its clock.
        let rec = back.take_record();
        let again = QueueObs::restore(&rec, 500_000);
        assert_eq!(again.active[&AlertKind::Stalled].since, 80_000);
        assert_eq!(again.last_progress, 70_000);
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
