//! A worker's word on a lease (ack, nack, extend, release): refused unless
//! the caller holds the job's current lease (fencing), then the transition
//! of that word. Answered after the batch commits; on a Work stream,
//! outcomes go out in request order.

use crate::broker::engine::Engine;
use crate::broker::{reply_after, view, SettleAction, SettleOutcome, SettleReply};
use crate::error::{BrokerError, Result};
use crate::model::{JobId, LeaseId};

impl Engine {
    pub(in crate::broker) fn settle(
        &mut self,
        queue: String,
        job: JobId,
        lease: LeaseId,
        action: SettleAction,
        reply: SettleReply,
    ) {
        // Losing a settle in an OS crash only brings the job back: at least once.
        self.w.relaxed = true;
        let result = self.settle_held(&queue, job, lease, action);
        self.w.relaxed = false;
        if let Err(e) = &result {
            if e.poisons_batch() {
                // Part of it may be staged: none of it may commit.
                self.w.poison(e.clone());
            }
        }
        match reply {
            SettleReply::Unary(tx) => match result {
                Ok(v) => self.w.after(reply_after(tx, v)),
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            },
            SettleReply::Stream { tx, job_id, kind } => {
                let send = move |res: std::result::Result<SettleOutcome, &BrokerError>| {
                    let _ = tx.send(Ok(view::outcome(job_id, kind, res)));
                };
                match result {
                    Ok(v) => self.w.after(Box::new(move |err| match err {
                        None => send(Ok(v)),
                        Some(e) => send(Err(e)),
                    })),
                    // Outcomes go out in request order: a settle earlier in
                    // this turn (maybe of the same job, by a worker that
                    // acked twice) is answered after the commit, so a refusal
                    // waits for it rather than overtaking it.
                    Err(e) if self.w.has_waiting() => self.w.after(Box::new(move |_| send(Err(&e)))),
                    Err(e) => send(Err(&e)),
                }
            }
        }
    }

    fn settle_held(&mut self, queue: &str, job: JobId, lease: LeaseId, action: SettleAction) -> Result<SettleOutcome> {
        let q = self.queue_mut(queue)?;
        let held = q.leases().get(&job).is_some_and(|l| l.lease_id.matches(&lease));
        if !held {
            return Err(BrokerError::LeaseNotHeld(format!(
                "job {job} in queue {queue:?} is not leased under lease {lease}: the lease expired, the job was \
                 already settled, or the lease id is wrong. Only the current lease holder may {} it.",
                action.kind()
            )));
        }
        match action {
            SettleAction::Ack => self.ack(queue, job),
            SettleAction::Nack { error, retry_after, dead } => self.nack(queue, job, error, retry_after, dead),
            SettleAction::Extend { duration } => self.extend(queue, job, duration),
            SettleAction::Release => self.release(queue, job),
        }
    }
}
