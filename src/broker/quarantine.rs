//! The engine's side of the worker-version circuit breaker: feeding each
//! delivery's outcome to the queue's [`VersionBreaker`], quarantining a
//! version that trips, and lifting a quarantine on an admin's word.
//!
//! Quarantining a version, in one write batch:
//! - its in-flight leases in the queue go back to ready with the job record
//!   untouched, so their attempt count is what it was before the bad
//!   version leased them (a lease only becomes an attempt in the record when
//!   it ends in nack or expiry). The lease keys are deleted, so a late ack,
//!   nack or extend with such a lease id gets FAILED_PRECONDITION like any
//!   stale lease, and the job is never processed twice on our account;
//! - the attempts its failures in the window spent are given back to the
//!   jobs still waiting (ready or scheduled): those failures were the bad
//!   build's, not the jobs'. Jobs already dead-lettered stay dead (redrive
//!   them); a job leased by another version keeps its current lease;
//! - the quarantine is stored in the queue's meta (it survives a restart),
//!   and the `bad_worker_version` alert is raised.
//!
//! [`VersionBreaker`]: super::version_breaker::VersionBreaker

use super::engine::Engine;
use super::observe::AlertKind;
use super::queue_state::QueueState;
use super::reply_after;
use super::version_breaker::Trip;
use super::{view, Reply};
use crate::error::{BrokerError, Result};
use crate::model::{JobId, Millis};
use crate::pb;
use crate::storage::records::QuarantineRecord;
use std::sync::Arc;

impl Engine {
    /// Counts the outcome of a delivery made to `version` (ack: success;
    /// nack, expiry: failure) and quarantines the version if it trips.
    pub(super) fn note_outcome(&mut self, queue: &str, version: &Arc<str>, job: JobId, failed: bool) {
        let Some(q) = self.queues.get_mut(queue) else { return };
        let cfg = q.config.breaker;
        let (quarantine, generation) = (&q.quarantine, q.generation);
        let now = self.now;
        // A version another partition fenced is quarantined already: its
        // quarantine is on its way here, and it never serves as a baseline.
        let fences = q.breaker.fences();
        let stopped = |v: &str| super::queue_state::version_stopped(quarantine, fences.as_deref(), generation, v);
        let trip = q.breaker.record(&cfg, (version, job, failed), now, stopped);
        if let Some(trip) = trip {
            if let Err(e) = self.quarantine(queue, version, trip) {
                self.w.poison(e);
            }
        }
    }

    fn quarantine(&mut self, queue: &str, version: &str, trip: Trip) -> Result<()> {
        let returned = self.return_version_leases(queue, version)?;
        let mut refunded = 0u32;
        for &(job, n) in &trip.refunds {
            refunded += self.refund(queue, job, n)?;
        }
        let now = self.now;
        let q = self.queue_mut(queue)?;
        let rec = QuarantineRecord {
            worker_version: version.to_string(),
            since_ms: now,
            failures: trip.failures,
            deliveries: trip.deliveries,
            baseline_version: trip.baseline_version,
            baseline_failures: trip.baseline_failures,
            baseline_deliveries: trip.baseline_deliveries,
            returned_leases: returned,
            refunded_attempts: refunded,
        };
        tracing::warn!(queue, worker_version = version, failures = rec.failures, deliveries = rec.deliveries,
            baseline_version = %rec.baseline_version, baseline_failures = rec.baseline_failures,
            baseline_deliveries = rec.baseline_deliveries, returned_leases = rec.returned_leases,
            refunded_attempts = refunded, "worker version quarantined by the circuit breaker");
        q.quarantine.insert(version.to_string(), rec.clone());
        // The other partitions stop delivering to it now, before this
        // outcome is answered; the quarantine reaches them through partition 0.
        q.breaker.fence(&Arc::from(version), q.generation);
        // Its old failures were refunded; after a lift it starts afresh.
        q.breaker.reset(version);
        q.counters.quarantines_total += 1;
        q.totals_dirty = true;
        sync_alert(q, now);
        self.stage_meta(queue);
        self.publish_health();
        self.share_quarantine(queue, &rec);
        Ok(())
    }

    pub(super) fn lift_quarantine(
        &mut self,
        queue: String,
        version: String,
        reply: Reply<pb::WorkerVersionQuarantine>,
    ) {
        let now = self.now;
        let q = or_reply!(self.queue_mut(&queue), reply);
        let Some(rec) = q.quarantine.remove(&version) else {
            let listed: Vec<&str> = q.quarantine.keys().map(String::as_str).collect();
            let _ = reply.send(Err(BrokerError::NotFound(format!(
                "worker version {version:?} is not quarantined in queue {queue:?} (quarantined there: {}); \
                 see `fairway queue quarantine list {queue}`",
                if listed.is_empty() { "none".to_string() } else { format!("{listed:?}") }
            ))));
            return;
        };
        q.breaker.reset(&version);
        q.breaker.unfence(&version);
        sync_alert(q, now);
        tracing::warn!(queue = %queue, worker_version = %version, "worker version quarantine lifted");
        self.stage_meta(&queue);
        self.publish_health();
        self.w.after(reply_after(reply, view::quarantine(&rec)));
    }
}

/// Raises, updates or clears the queue's `bad_worker_version` alert to
/// match its quarantines.
pub(super) fn sync_alert(q: &mut QueueState, now: Millis) {
    let message = (!q.quarantine.is_empty()).then(|| {
        let b = q.config.breaker;
        let each: Vec<String> = q
            .quarantine
            .values()
            .map(|r| {
                format!(
                    "worker version {:?} quarantined: {} of its last {} deliveries failed ({}%) while {:?} failed {} \
                     of {}; {} leases returned, {} attempts refunded",
                    r.worker_version,
                    r.failures,
                    r.deliveries,
                    percent(r.failures, r.deliveries),
                    r.baseline_version,
                    r.baseline_failures,
                    r.baseline_deliveries,
                    r.returned_leases,
                    r.refunded_attempts
                )
            })
            .collect();
        format!(
            "{} (breaker_failure_percent {}, breaker_min_deliveries {}); lift with `fairway queue quarantine lift {} \
             VERSION`",
            each.join("; "),
            b.failure_percent,
            b.min_deliveries,
            q.name
        )
    });
    if let Some(c) = q.obs.set(AlertKind::BadWorkerVersion, now, message) {
        if c.active {
            tracing::warn!(queue = %q.name, alert = c.kind.as_str(), "queue alert started: {}", c.message);
        } else {
            tracing::warn!(queue = %q.name, alert = c.kind.as_str(), "queue alert ended");
        }
    }
}

fn percent(part: u32, whole: u32) -> u64 {
    (u64::from(part) * 100).checked_div(u64::from(whole)).unwrap_or(0)
}
