//! Enqueue: a new job becomes ready, or scheduled when it runs later; or,
//! when its dedup key is held by a live job, it is that job.

use super::primitives::Tally;
use crate::broker::engine::Engine;
use crate::broker::{reply_after, EnqueueOutcome, Reply};
use crate::error::{BrokerError, Result};
use crate::model::{duration_millis, NewJob};
use crate::storage::records::{stored_state, JobRecord};

impl Engine {
    pub(in crate::broker) fn enqueue(&mut self, jobs: Vec<NewJob>, batch: bool, reply: Reply<Vec<EnqueueOutcome>>) {
        match self.stage_enqueue(jobs, batch) {
            Ok(out) => self.w.after(reply_after(reply, out)),
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    /// Stages jobs, all or none: validates all before writing any, so a bad
    /// item writes nothing, and a failure part way poisons the batch.
    pub(in crate::broker) fn stage_enqueue(&mut self, jobs: Vec<NewJob>, batch: bool) -> Result<Vec<EnqueueOutcome>> {
        for (i, job) in jobs.iter().enumerate() {
            if !self.queues.contains_key(&job.queue) {
                let e = BrokerError::QueueNotFound(job.queue.clone());
                return Err(if batch { e.context(&format!("jobs[{i}]")) } else { e });
            }
        }
        let mut out = Vec::with_capacity(jobs.len());
        for job in jobs {
            match self.enqueue_one(job) {
                Ok(o) => out.push(o),
                Err(e) => {
                    // Part of the batch may be staged: poison it so none commits.
                    self.w.poison(e.clone());
                    return Err(e);
                }
            }
        }
        Ok(out)
    }

    fn enqueue_one(&mut self, job: NewJob) -> Result<EnqueueOutcome> {
        let now = self.now;
        if let Some(id) = self.dedup_holder(&job.queue, &job.tenant, &job.environment, &job.dedup_key)? {
            tracing::debug!(queue = %job.queue, tenant = %job.tenant, environment = %job.environment,
                job_id = %id, dedup_key = %job.dedup_key, "enqueue deduplicated onto a live job");
            self.tally(&job.queue, Tally::Deduplicated)?;
            return Ok(EnqueueOutcome { id, deduplicated: true });
        }
        let id = self.alloc_id();
        let run_at = job.run_at.unwrap_or(now);
        let scheduled = run_at > now;
        let rec = JobRecord {
            tenant: job.tenant,
            environment: job.environment,
            payload: job.payload,
            headers: job.headers,
            priority: job.priority,
            state: if scheduled { stored_state::SCHEDULED } else { stored_state::READY },
            attempt: 0,
            max_attempts: job.max_attempts,
            last_error: String::new(),
            created_at_ms: now,
            run_at_ms: if scheduled { run_at } else { now },
            dedup_key: job.dedup_key,
            lease_duration_ms: job.lease_duration.map(duration_millis).unwrap_or(0),
            traceparent: job.traceparent,
        };
        let queue = job.queue;
        if scheduled {
            self.to_scheduled(&queue, id, &rec, run_at)?;
        } else {
            self.to_ready(&queue, id, &rec, now)?;
        }
        self.hold_dedup(&queue, id, &rec);
        tracing::debug!(queue = %queue, tenant = %rec.tenant, environment = %rec.environment, job_id = %id,
            scheduled, "job enqueued");
        self.w.put_new_job(&queue, id, rec);
        self.tally(&queue, Tally::Enqueued)?;
        Ok(EnqueueOutcome { id, deduplicated: false })
    }
}
