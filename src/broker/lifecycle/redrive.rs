//! Redrive: a dead letter is ready again, with its attempts starting
//! afresh. One job by id (answered after the commit), or many by the
//! chunked task in `tasks.rs`, which calls [`redrive_one`](Engine::redrive_one)
//! for each entry of the dead-letter index.

use crate::broker::engine::Engine;
use crate::broker::{reply_after, Reply};
use crate::error::{BrokerError, Result};
use crate::model::{JobId, JobState};
use crate::storage::records::stored_state;

impl Engine {
    /// Redrives one dead job, answered after the commit; any other state is
    /// refused, naming it.
    pub(in crate::broker) fn redrive_job(&mut self, queue: &str, id: JobId, reply: Reply<u64>) {
        let rec = or_reply!(self.w.read_job(queue, id), reply);
        let state = or_reply!(rec.as_ref().map(|r| self.state_of_stored(queue, id, r)).transpose(), reply);
        match state {
            None => {
                let _ = reply.send(Err(BrokerError::JobNotFound { queue: queue.to_string(), job: id.to_string() }));
            }
            Some(JobState::Dead) => match self.redrive_one(queue, id) {
                Ok(_) => {
                    tracing::info!(queue, job_id = %id, "dead letter redriven");
                    self.w.after(reply_after(reply, 1));
                }
                Err(e) => {
                    self.w.poison(e.clone());
                    let _ = reply.send(Err(e));
                }
            },
            Some(other) => {
                let _ = reply.send(Err(BrokerError::NotFound(format!(
                    "job {id} in queue {queue:?} is not a dead letter (it is {}); only dead jobs can be redriven",
                    other.name()
                ))));
            }
        }
    }

    /// Moves a dead job to ready with no attempts spent; false when the job
    /// is gone or no longer dead.
    pub(in crate::broker) fn redrive_one(&mut self, queue: &str, id: JobId) -> Result<bool> {
        let Some(mut rec) = self.w.read_job(queue, id)? else { return Ok(false) };
        if rec.state != stored_state::DEAD {
            return Ok(false);
        }
        self.from_dead(queue, id, &rec)?;
        rec.state = stored_state::READY;
        rec.attempt = 0;
        rec.run_at_ms = self.now;
        let now = self.now;
        self.to_ready(queue, id, &rec, now)?;
        self.w.put_job(queue, id, &rec);
        Ok(true)
    }
}
