//! Ack: the job is done and leaves the broker; its dedup key is released
//! or held for the queue's dedup window.

use super::primitives::Tally;
use crate::broker::engine::Engine;
use crate::broker::SettleOutcome;
use crate::error::Result;
use crate::model::JobId;

impl Engine {
    /// Acks the job of a lease the caller holds (checked by `settle`).
    pub(in crate::broker) fn ack(&mut self, queue: &str, job: JobId) -> Result<SettleOutcome> {
        let l = self.end_lease(queue, job)?;
        self.finish(queue, job, &l.record)?;
        self.note_outcome(queue, &l.worker_version, job, false);
        tracing::debug!(queue, tenant = %l.record.tenant, environment = %l.record.environment, job_id = %job,
            attempt = l.attempt, "job acked");
        let now = self.now;
        let q = self.queue_mut(queue)?;
        q.obs.ack.observe(now.saturating_sub(l.leased_at));
        q.obs.last_progress = now;
        q.tally(Tally::Acked);
        Ok(SettleOutcome::Acked)
    }
}
