//! Cancel: an operator removes a job that is not leased (scheduled, ready
//! or dead); it leaves the broker as if acked. A leased job is refused: it
//! ends with its worker's ack or nack, or when its lease expires.

use crate::broker::engine::Engine;
use crate::broker::{reply_after, Reply};
use crate::error::{BrokerError, Result};
use crate::model::JobId;

impl Engine {
    pub(in crate::broker) fn cancel(&mut self, queue: String, job: JobId, reply: Reply<bool>) {
        let result = self.cancel_stored(&queue, job);
        match result {
            Ok(()) => self.w.after(reply_after(reply, true)),
            Err(e) => {
                if e.poisons_batch() {
                    self.w.poison(e.clone());
                }
                let _ = reply.send(Err(e));
            }
        }
    }

    fn cancel_stored(&mut self, queue: &str, job: JobId) -> Result<()> {
        let q = self.queue_mut(queue)?;
        if let Some(l) = q.leases().get(&job) {
            return Err(BrokerError::FailedPrecondition(format!(
                "job {job} is leased by worker {:?} until its lease expires at {}ms since epoch; \
                 it can be cancelled once it is nacked or its lease ends",
                l.worker_id, l.expires_at
            )));
        }
        let rec = self
            .w
            .read_job(queue, job)?
            .ok_or_else(|| BrokerError::JobNotFound { queue: queue.to_string(), job: job.to_string() })?;
        self.leave_index(queue, job, &rec)?;
        tracing::info!(queue, tenant = %rec.tenant, environment = %rec.environment, job_id = %job, "job cancelled");
        self.finish(queue, job, &rec)
    }
}
