//! Extend: the lease runs longer, from now: by the duration the worker
//! asks for, or by the lease's current length.

use crate::broker::engine::Engine;
use crate::broker::SettleOutcome;
use crate::error::{BrokerError, Result};
use crate::model::{duration_millis, JobId};
use std::time::Duration;

impl Engine {
    /// Extends a lease the caller holds (checked by `settle`).
    pub(in crate::broker) fn extend(
        &mut self,
        queue: &str,
        job: JobId,
        duration: Option<Duration>,
    ) -> Result<SettleOutcome> {
        let now = self.now;
        let q = self.queue_mut(queue)?;
        let vanished = || BrokerError::Internal(format!("lease of job {job} vanished"));
        let dur = duration.map(duration_millis).unwrap_or(q.leases().get(&job).ok_or_else(vanished)?.duration_ms);
        q.extend_lease(job, now.saturating_add(dur), dur).ok_or_else(vanished)?;
        let expires_at = self.store_lease(queue, job)?;
        Ok(SettleOutcome::Extended { expires_at })
    }
}
