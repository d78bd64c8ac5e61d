//! Return from quarantine: when the circuit breaker quarantines a worker
//! version (in this partition, or adopted from another), its leases come
//! back to ready as no attempt (the record still holds the attempts made
//! before), and the attempts its failures spent on jobs still waiting are
//! given back. Dead letters stay dead (redrive them). The decision itself
//! is the breaker's (`quarantine.rs`, `version_breaker.rs`).

use crate::broker::engine::Engine;
use crate::error::Result;
use crate::model::JobId;
use crate::storage::records::stored_state;

impl Engine {
    /// Gives back every lease of `version` in `queue`; returns how many.
    pub(in crate::broker) fn return_version_leases(&mut self, queue: &str, version: &str) -> Result<u32> {
        let q = self.queue_mut(queue)?;
        let mut held: Vec<JobId> =
            q.leases().iter().filter(|(_, l)| &*l.worker_version == version).map(|(id, _)| *id).collect();
        held.sort();
        for &job in &held {
            self.give_back(queue, job)?;
        }
        Ok(held.len() as u32)
    }

    /// Gives back up to `n` attempts to a job the quarantined version
    /// failed, if it is still waiting (ready or scheduled). Returns how
    /// many were given back.
    pub(in crate::broker) fn refund(&mut self, queue: &str, job: JobId, n: u32) -> Result<u32> {
        if self.queue_mut(queue)?.leases().contains(&job) {
            return Ok(0);
        }
        let Some(mut rec) = self.w.read_job(queue, job)? else { return Ok(0) };
        if rec.state == stored_state::DEAD {
            return Ok(0);
        }
        let back = n.min(rec.attempt);
        if back > 0 {
            rec.attempt -= back;
            self.w.put_job(queue, job, &rec);
        }
        Ok(back)
    }
}
