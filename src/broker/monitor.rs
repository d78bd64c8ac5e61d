//! The engine's side of observation: evaluating alerts twice a second,
//! publishing queue health, and answering metrics snapshots. Everything is
//! read from memory the writer already keeps; nothing here scans jobs.

use super::engine::Engine;
use super::observe::{AlertKind, Histogram, Percentiles, QueueReading, COMMIT_LATENCY_US};
use crate::model::Millis;
use crate::storage::records::QueueCounters;
use std::collections::BTreeMap;

/// How often alerts are evaluated: the delay before one fires or clears.
pub const ALERT_INTERVAL_MS: Millis = 500;
/// Most groups whose first ready job is read from disk per evaluation, so
/// the first evaluation after a restart with 100k groups can't stall a turn.
const PEEK_BUDGET: usize = 1000;
/// How often the oldest job waiting behind a group's heads is read again.
const TAIL_RECHECK_MS: Millis = 5_000;
/// Tenants per queue given their own metric series; the rest are summed
/// into `other`, so 100k tenants don't explode the series count.
pub const TOP_TENANTS: usize = 20;

/// Queue name -> healthy (no alert active), for `fairway.queue.<name>`.
pub type HealthMap = BTreeMap<String, bool>;

/// Write-path figures of the writer thread.
#[derive(Debug, Clone)]
pub struct WriterMetrics {
    /// Batches committed (each one WAL write, synced in strict mode).
    pub commits: u64,
    /// Key writes committed.
    pub writes: u64,
    /// Write + fsync latency of each commit, µs.
    pub commit_us: Histogram,
    /// Commits that failed (disk full, I/O errors).
    pub failed_commits: u64,
    /// WAL fsyncs: synced commits plus catch-up syncs of relaxed writes.
    pub syncs: u64,
    /// Leases that found their job's record in memory, and those that read
    /// it from disk: whether the record cache's budget fits the backlog.
    pub record_cache_hits: u64,
    pub record_cache_misses: u64,
    /// Bytes the record cache holds now.
    pub record_cache_bytes: u64,
}

impl Default for WriterMetrics {
    fn default() -> Self {
        WriterMetrics {
            commits: 0,
            writes: 0,
            commit_us: Histogram::new(COMMIT_LATENCY_US),
            failed_commits: 0,
            syncs: 0,
            record_cache_hits: 0,
            record_cache_misses: 0,
            record_cache_bytes: 0,
        }
    }
}

/// One tenant's load in a queue (`other` sums the tenants not listed).
#[derive(Debug, Clone, PartialEq)]
pub struct TenantLoad {
    pub tenant: String,
    pub ready: u64,
    pub leased: u64,
}

/// An alert in force, with its message as of the snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct ShownAlert {
    pub kind: AlertKind,
    pub since: Millis,
    pub message: String,
}

/// A queue's figures at one moment.
#[derive(Debug, Clone)]
pub struct QueueMetrics {
    pub name: String,
    pub paused: bool,
    pub ready: u64,
    pub scheduled: u64,
    pub leased: u64,
    pub dead: u64,
    pub oldest_ready_age_ms: Option<u64>,
    pub counters: QueueCounters,
    /// Work streams subscribed to the queue.
    pub workers: u32,
    pub delivery: Histogram,
    pub ack: Histogram,
    /// Percentiles of the last deliveries and acks, as measured (ms).
    pub delivery_recent: Option<Percentiles>,
    pub ack_recent: Option<Percentiles>,
    pub alerts: Vec<ShownAlert>,
    /// The [`TOP_TENANTS`] largest by ready + leased, then `other`.
    pub tenants: Vec<TenantLoad>,
    /// Worker versions quarantined by the circuit breaker.
    pub quarantined: Vec<String>,
}

/// Everything `/metrics` shows that lives in the writer.
#[derive(Debug, Clone)]
pub struct MetricsSnapshot {
    pub queues: Vec<QueueMetrics>,
    pub writer: WriterMetrics,
}

impl Engine {
    /// Evaluates every queue's alerts when due, logs the changes and
    /// publishes health.
    pub(super) fn check_alerts(&mut self) {
        if self.now < self.next_alert_check {
            return;
        }
        self.next_alert_check = self.now + ALERT_INTERVAL_MS;
        let names: Vec<String> = self.queues.keys().cloned().collect();
        let mut budget = PEEK_BUDGET;
        for name in names {
            let ready = self.queues.get(&name).map_or(0, |q| q.ready_total());
            let ready_everywhere = match self.queues.get(&name) {
                Some(q) if self.shared.partitions > 1 => q.shares.post_ready(self.me, ready),
                _ => ready,
            };
            let reading = QueueReading {
                now: self.now,
                ready,
                ready_everywhere,
                paused: self.queues.get(&name).is_some_and(|q| q.paused),
                workers: self.workers_on(&name),
                oldest_ready_at: self.oldest_ready_at(&name, &mut budget),
            };
            let Some(q) = self.queues.get_mut(&name) else { continue };
            let changes = q.obs.evaluate(&q.config.alerts, &reading);
            q.alerts_dirty |= q.obs.save_due();
            for c in changes {
                if c.active {
                    tracing::warn!(queue = %name, alert = c.kind.as_str(), "queue alert started: {}", c.message);
                } else {
                    tracing::warn!(queue = %name, alert = c.kind.as_str(), "queue alert ended");
                }
            }
        }
        self.publish_health();
    }

    /// Sends queue health to the gRPC health service when it changed.
    pub(super) fn publish_health(&self) {
        let map: HealthMap = self.queues.iter().map(|(n, q)| (n.clone(), q.obs.active.is_empty())).collect();
        self.shared.post_health(self.me, map);
    }

    /// Work streams plus waiting long-polls on `queue`.
    fn workers_on(&self, queue: &str) -> usize {
        self.streams_on(queue) + self.waiters.iter().filter(|w| w.queues.iter().any(|n| &**n == queue)).count()
    }

    pub(super) fn streams_on(&self, queue: &str) -> usize {
        self.consumers.values().filter(|c| c.queues.iter().any(|n| &**n == queue)).count()
    }

    /// When the longest-waiting ready job of any group, of any priority,
    /// became ready: the oldest of each group's heads (read from disk for a
    /// group not loaded since the restart) and of the jobs waiting on disk
    /// behind them (lower priorities included; re-read at most every
    /// [`TAIL_RECHECK_MS`] or when the group's cursor moves). Disk reads are
    /// limited to `budget` in all; groups past it wait for a later call.
    pub(super) fn oldest_ready_at(&mut self, queue: &str, budget: &mut usize) -> Option<Millis> {
        let store = self.w.store.clone();
        let staged = self.w.staged();
        let now = self.now;
        let q = self.queues.get_mut(queue)?;
        let mut oldest: Option<Millis> = None;
        let mut consider = |at: Millis| oldest = Some(oldest.map_or(at, |o: Millis| o.min(at)));
        for (t, envs) in q.groups.iter_mut() {
            for (e, g) in envs.iter_mut() {
                if g.ready == 0 {
                    continue;
                }
                let mut peeked = None;
                if g.needs_refill() && *budget > 0 {
                    *budget -= 1;
                    match super::dispatch::scan_ready(&store, queue, t, e, g.cursor, 1) {
                        // The disk is the whole truth only when nothing is
                        // staged: a ready key in the pending batch (a job
                        // enqueued or returned this turn) is not on disk yet,
                        // and a refill would move the cursor past it, or mark
                        // the group exhausted without it, so it would never
                        // be leased. Then this is a peek that changes nothing.
                        Ok((loaded, complete)) if staged == 0 => g.refilled(loaded, complete),
                        Ok((loaded, _)) => peeked = loaded.first().map(|(_, at)| *at),
                        Err(err) => tracing::warn!(queue, error = %err, "reading a group's first ready job failed"),
                    }
                }
                if let Some(h) = g.heads.values().min().copied().or(peeked) {
                    consider(h);
                }
                if g.exhausted {
                    continue;
                }
                let stale = g.tail_oldest.is_none_or(|(_, at)| now.saturating_sub(at) >= TAIL_RECHECK_MS);
                if stale && *budget > 0 {
                    match super::dispatch::oldest_in_tail(&store, queue, t, e, g.cursor) {
                        Ok((tail, seeks)) => {
                            *budget = budget.saturating_sub(seeks);
                            g.tail_oldest = Some((tail, now));
                        }
                        Err(err) => tracing::warn!(queue, error = %err, "reading a group's waiting jobs failed"),
                    }
                }
                if let Some((Some(at), _)) = g.tail_oldest {
                    consider(at);
                }
            }
        }
        oldest
    }

    pub(super) fn metrics(&mut self) -> MetricsSnapshot {
        let names: Vec<String> = self.queues.keys().cloned().collect();
        let mut budget = PEEK_BUDGET;
        let mut queues = Vec::with_capacity(names.len());
        for name in names {
            let oldest = self.oldest_ready_at(&name, &mut budget);
            let workers = self.streams_on(&name) as u32;
            let Some(q) = self.queues.get(&name) else { continue };
            queues.push(QueueMetrics {
                name: name.clone(),
                paused: q.paused,
                ready: q.ready_total(),
                scheduled: q.counters.scheduled,
                leased: q.leases().len() as u64,
                dead: q.counters.dead,
                oldest_ready_age_ms: oldest.map(|o| self.now.saturating_sub(o)),
                counters: q.counters,
                workers,
                delivery: q.obs.delivery.hist.clone(),
                ack: q.obs.ack.hist.clone(),
                delivery_recent: q.obs.delivery.recent.percentiles(),
                ack_recent: q.obs.ack.recent.percentiles(),
                alerts: q
                    .obs
                    .active
                    .iter()
                    .map(|(k, a)| ShownAlert {
                        kind: *k,
                        since: a.since,
                        message: a.message(*k, &q.config.alerts, self.now),
                    })
                    .collect(),
                tenants: top_tenants(q),
                quarantined: q.quarantine.keys().cloned().collect(),
            });
        }
        queues.sort_by(|a, b| a.name.cmp(&b.name));
        let mut writer = self.writer_metrics.clone();
        let rc = &self.w.records;
        (writer.record_cache_hits, writer.record_cache_misses) = (rc.hits, rc.misses);
        writer.record_cache_bytes = rc.bytes() as u64;
        MetricsSnapshot { queues, writer }
    }
}

/// The largest tenants by ready + leased, then everyone else as `other`.
fn top_tenants(q: &super::queue_state::QueueState) -> Vec<TenantLoad> {
    let mut all: Vec<TenantLoad> = q
        .groups
        .iter()
        .map(|(t, envs)| TenantLoad {
            tenant: t.clone(),
            ready: envs.values().map(|g| g.ready).sum(),
            leased: envs.values().map(|g| g.leased).sum(),
        })
        .filter(|l| l.ready + l.leased > 0)
        .collect();
    let by_load = |a: &TenantLoad, b: &TenantLoad| (b.ready + b.leased).cmp(&(a.ready + a.leased));
    let mut other = None;
    if all.len() > TOP_TENANTS {
        all.select_nth_unstable_by(TOP_TENANTS, by_load);
        let rest = all.split_off(TOP_TENANTS);
        other = Some(TenantLoad {
            tenant: "other".into(),
            ready: rest.iter().map(|l| l.ready).sum(),
            leased: rest.iter().map(|l| l.leased).sum(),
        });
    }
    all.sort_by(|a, b| by_load(a, b).then(a.tenant.cmp(&b.tenant)));
    all.extend(other);
    all
}
