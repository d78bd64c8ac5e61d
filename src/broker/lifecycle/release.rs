//! Release: a lease that was no attempt ends, and the job is ready again
//! at its old place in its group. Either its worker gave it back unstarted
//! (Release, e.g. while draining for a graceful stop), or its delivery
//! never reached anyone (the stream or call was gone when it was sent).

use super::primitives::Tally;
use crate::broker::engine::Engine;
use crate::broker::SettleOutcome;
use crate::error::Result;
use crate::model::JobId;

impl Engine {
    /// Releases the job of a lease the caller holds (checked by `settle`).
    pub(in crate::broker) fn release(&mut self, queue: &str, job: JobId) -> Result<SettleOutcome> {
        let l = self.give_back(queue, job)?;
        tracing::debug!(queue, tenant = %l.record.tenant, environment = %l.record.environment, job_id = %job,
            worker_id = %l.worker_id, "job released unstarted");
        self.tally(queue, Tally::Released)?;
        Ok(SettleOutcome::Released)
    }

    /// Reverts a lease whose delivery never reached anyone (if it is still
    /// there: the queue may be gone).
    pub(in crate::broker) fn undeliver(&mut self, queue: &str, job: JobId) {
        if !self.queues.get(queue).is_some_and(|q| q.leases().contains(&job)) {
            return;
        }
        if let Err(e) = self.give_back(queue, job) {
            self.w.poison(e);
        }
    }
}
