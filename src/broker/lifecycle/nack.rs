//! Nack: the attempt failed. The job backs off (the queue's backoff, or the
//! worker's `retry_after`; zero means ready at once), or goes to the dead
//! letters when the worker says so or it was its last attempt.

use super::primitives::{after_failure, effective_max_attempts, Tally};
use crate::broker::engine::Engine;
use crate::broker::SettleOutcome;
use crate::error::{BrokerError, Result};
use crate::model::{JobId, MAX_ERROR_BYTES};
use std::time::Duration;

impl Engine {
    /// Nacks the job of a lease the caller holds (checked by `settle`).
    pub(in crate::broker) fn nack(
        &mut self,
        queue: &str,
        job: JobId,
        error: String,
        retry_after: Option<Duration>,
        dead: bool,
    ) -> Result<SettleOutcome> {
        let now = self.now;
        let q = self.queue_mut(queue)?;
        let l = q.leases().get(&job).ok_or_else(|| BrokerError::Internal(format!("lease of job {job} vanished")))?;
        let next = after_failure(l.attempt, effective_max_attempts(&l.record, &q.config), dead, retry_after, &q.config);
        let error = truncate_error(error);
        let version = l.worker_version.clone();
        tracing::info!(queue, tenant = %l.record.tenant, environment = %l.record.environment, job_id = %job,
            attempt = l.attempt, error = %error, next = ?next, "job nacked");
        q.obs.last_progress = now;
        q.tally(Tally::Nacked);
        let (state, run_at) = self.end_attempt(queue, job, error, next)?;
        self.note_outcome(queue, &version, job, true);
        Ok(SettleOutcome::Nacked { state, run_at })
    }
}

/// The error kept in the job record: at most [`MAX_ERROR_BYTES`], cut at a
/// character boundary.
fn truncate_error(mut s: String) -> String {
    if s.len() > MAX_ERROR_BYTES {
        let mut cut = MAX_ERROR_BYTES;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn errors_are_cut_at_a_character_boundary() {
        let s = "é".repeat(super::MAX_ERROR_BYTES);
        let cut = super::truncate_error(s);
        assert!(cut.len() <= super::MAX_ERROR_BYTES && cut.len() >= super::MAX_ERROR_BYTES - 1);
        assert!(cut.chars().all(|c| c == 'é'));
        assert_eq!(super::truncate_error("short".into()), "short");
    }
}
