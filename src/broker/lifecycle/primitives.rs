//! The few moves every transition is made of. Each one changes memory and
//! stages its writes (index keys, the job record, counters) in the pending
//! batch together, so the two never disagree after a commit or a crash; a
//! transition combines them and writes no key or counter of its own.

use crate::broker::engine::Engine;
use crate::broker::queue_state::{ActiveLease, QueueState};
use crate::error::{BrokerError, Result};
use crate::model::{duration_millis, JobId, JobState, Millis, QueueConfig};
use crate::storage::keys::{self, ReadyPos};
use crate::storage::records::{stored_state, GroupRef, JobRecord, LeaseRecord};
use prost::Message;
use std::time::Duration;

/// Where a job goes when its lease ends without an ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::broker) enum Next {
    /// Ready again at once.
    Ready,
    /// Ready after this long (backoff, or the worker's retry_after).
    After(Duration),
    /// To the dead letters.
    Dead,
}

/// Events a queue counts (its `*_total` counters): each transition tallies
/// its own, the primitives keep the state counts (ready, scheduled, dead).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::broker) enum Tally {
    Enqueued,
    Deduplicated,
    Leased,
    Acked,
    Nacked,
    Expired,
    Released,
}

/// The attempts a job may make: its own limit, else its queue's.
pub(in crate::broker) fn effective_max_attempts(rec: &JobRecord, cfg: &QueueConfig) -> u32 {
    if rec.max_attempts == 0 {
        cfg.max_attempts
    } else {
        rec.max_attempts
    }
}

/// What a lease becomes when it ends after attempt `attempt` without an
/// ack: dead when out of attempts (or the worker said so), else ready after
/// `retry_after` (none: the queue's backoff for that attempt).
pub(in crate::broker) fn after_failure(
    attempt: u32,
    max_attempts: u32,
    dead: bool,
    retry_after: Option<Duration>,
    cfg: &QueueConfig,
) -> Next {
    if dead || attempt >= max_attempts {
        return Next::Dead;
    }
    match retry_after {
        Some(d) if d.is_zero() => Next::Ready,
        Some(d) => Next::After(d),
        None => Next::After(cfg.backoff(attempt)),
    }
}

/// A lease as it is stored (the `L` key).
pub(in crate::broker) fn lease_record(l: &ActiveLease) -> LeaseRecord {
    LeaseRecord {
        lease_id: l.lease_id.0.to_vec(),
        expires_at_ms: l.expires_at,
        attempt: l.attempt,
        worker_id: l.worker_id.to_string(),
        duration_ms: l.duration_ms,
        worker_version: l.worker_version.to_string(),
        leased_at_ms: l.leased_at,
    }
}

impl QueueState {
    /// Counts one event of this queue.
    pub(in crate::broker) fn tally(&mut self, event: Tally) {
        let c = &mut self.counters;
        let n = match event {
            Tally::Enqueued => &mut c.enqueued_total,
            Tally::Deduplicated => &mut c.deduplicated_total,
            Tally::Leased => &mut c.leased_total,
            Tally::Acked => &mut c.acked_total,
            Tally::Nacked => &mut c.nacked_total,
            Tally::Expired => &mut c.expired_total,
            Tally::Released => &mut c.released_total,
        };
        *n += 1;
        self.totals_dirty = true;
    }
}

// `to_ready`, `from_schedule`, ...: the names say where a job goes or
// comes from (the lifecycle's words), not conversions of the engine.
#[allow(clippy::wrong_self_convention)]
impl Engine {
    pub(in crate::broker) fn queue_mut(&mut self, name: &str) -> Result<&mut QueueState> {
        self.queues.get_mut(name).ok_or_else(|| BrokerError::QueueNotFound(name.to_string()))
    }

    /// Counts one event of `queue`.
    pub(in crate::broker) fn tally(&mut self, queue: &str, event: Tally) -> Result<()> {
        self.queue_mut(queue)?.tally(event);
        Ok(())
    }

    /// The job joins its group's ready index, ready since `ready_at` (its
    /// place in the group is its priority, then its id).
    pub(in crate::broker) fn to_ready(
        &mut self,
        queue: &str,
        id: JobId,
        rec: &JobRecord,
        ready_at: Millis,
    ) -> Result<()> {
        self.to_ready_in(queue, id, (&rec.tenant, &rec.environment, rec.priority), ready_at)
    }

    /// [`to_ready`](Self::to_ready) for a job known by its group and
    /// priority only (promotion reads the schedule, not the jobs).
    pub(in crate::broker) fn to_ready_in(
        &mut self,
        queue: &str,
        id: JobId,
        (tenant, env, priority): (&str, &str, i32),
        ready_at: Millis,
    ) -> Result<()> {
        let pos: ReadyPos = (keys::inv_priority(priority), id.0);
        self.w.put(queue, &keys::ready(tenant, env, pos), &ready_at.to_be_bytes());
        self.queue_mut(queue)?.add_ready(tenant, env, pos, ready_at);
        Ok(())
    }

    /// The next job of group (`tenant`, `env`) in lease order leaves the
    /// ready index: its id and since when it was ready. `None` when the
    /// group's count promised a job its index does not have (the count is
    /// repaired: pick again).
    pub(in crate::broker) fn from_ready(
        &mut self,
        queue: &str,
        tenant: &str,
        env: &str,
    ) -> Result<Option<(JobId, Millis)>> {
        let store = self.w.store.clone();
        let q = self.queue_mut(queue)?;
        let g = q.group_mut(tenant, env);
        if g.needs_refill() {
            let (loaded, complete) = crate::broker::dispatch::scan_ready(
                &store,
                queue,
                tenant,
                env,
                g.cursor,
                crate::broker::queue_state::REFILL,
            )?;
            g.refilled(loaded, complete);
        }
        let Some((pos, ready_at)) = g.pop() else {
            // The counter promised jobs the index doesn't have: trust the index.
            tracing::error!(
                queue,
                tenant,
                environment = env,
                ready = g.ready,
                "ready counter out of step with the index; repairing"
            );
            g.ready = 0;
            g.exhausted = true;
            q.mark_group(tenant, env);
            return Ok(None);
        };
        q.mark_group(tenant, env);
        self.w.delete(queue, &keys::ready(tenant, env, pos));
        Ok(Some((JobId(pos.1), ready_at)))
    }

    /// The job waits in the schedule until `run_at` (a delay or a backoff).
    pub(in crate::broker) fn to_scheduled(
        &mut self,
        queue: &str,
        id: JobId,
        rec: &JobRecord,
        run_at: Millis,
    ) -> Result<()> {
        let gref =
            GroupRef { tenant: rec.tenant.clone(), environment: rec.environment.clone(), priority: rec.priority };
        self.w.put(queue, &keys::scheduled(run_at, id), &gref.encode_to_vec());
        let q = self.queue_mut(queue)?;
        q.counters.scheduled += 1;
        q.totals_dirty = true;
        q.next_due = Some(q.next_due.map_or(run_at, |d| d.min(run_at)));
        q.staged_due = Some(q.staged_due.map_or(run_at, |d| d.min(run_at)));
        // If the clock stepped back, promotion must look before its cursor.
        q.scheduled_cursor = q.scheduled_cursor.min(run_at);
        Ok(())
    }

    /// The schedule entry `key` (of a job now due) leaves the schedule.
    pub(in crate::broker) fn from_schedule(&mut self, queue: &str, key: &[u8]) -> Result<()> {
        self.w.delete(queue, key);
        let q = self.queue_mut(queue)?;
        q.counters.scheduled = q.counters.scheduled.saturating_sub(1);
        q.totals_dirty = true;
        Ok(())
    }

    /// The job joins the dead letters (and the queue's dead-letter alert
    /// hears of it).
    pub(in crate::broker) fn to_dead(&mut self, queue: &str, id: JobId, rec: &JobRecord) -> Result<()> {
        self.w.put(queue, &keys::dead(&rec.tenant, &rec.environment, id), &[]);
        let now = self.now;
        let q = self.queue_mut(queue)?;
        q.counters.dead += 1;
        q.counters.dead_lettered_total += 1;
        let started = q.obs.dead_lettered(&q.config.alerts, now);
        q.totals_dirty = true;
        q.alerts_dirty = true;
        if let Some(c) = started {
            tracing::warn!(queue, alert = c.kind.as_str(), "queue alert started: {}", c.message);
        }
        tracing::warn!(queue, tenant = %rec.tenant, environment = %rec.environment, job_id = %id,
            attempt = rec.attempt, last_error = %rec.last_error, "job dead-lettered");
        Ok(())
    }

    /// The job leaves the dead letters.
    pub(in crate::broker) fn from_dead(&mut self, queue: &str, job: JobId, rec: &JobRecord) -> Result<()> {
        self.w.delete(queue, &keys::dead(&rec.tenant, &rec.environment, job));
        let q = self.queue_mut(queue)?;
        q.counters.dead = q.counters.dead.saturating_sub(1);
        q.totals_dirty = true;
        Ok(())
    }

    /// The state of a stored job (as this batch leaves it).
    pub(in crate::broker) fn state_of_stored(&self, queue: &str, job: JobId, rec: &JobRecord) -> Result<JobState> {
        let leased = self.queues.get(queue).is_some_and(|q| q.leases().contains(&job));
        let in_schedule =
            rec.state == stored_state::SCHEDULED && self.w.get(queue, &keys::scheduled(rec.run_at_ms, job))?.is_some();
        Ok(super::state_of(rec, leased, in_schedule))
    }

    /// Takes a job that is not leased out of whichever index holds it
    /// (ready, schedule or dead letters), with that index's count.
    pub(in crate::broker) fn leave_index(&mut self, queue: &str, job: JobId, rec: &JobRecord) -> Result<JobState> {
        let state = self.state_of_stored(queue, job, rec)?;
        match state {
            JobState::Dead => self.from_dead(queue, job, rec)?,
            JobState::Scheduled => self.from_schedule(queue, &keys::scheduled(rec.run_at_ms, job))?,
            JobState::Leased => {
                return Err(BrokerError::Internal(format!("job {job} is leased: it has no index to leave")));
            }
            JobState::Ready => {
                let pos = (keys::inv_priority(rec.priority), job.0);
                self.w.delete(queue, &keys::ready(&rec.tenant, &rec.environment, pos));
                let q = self.queue_mut(queue)?;
                q.group_mut(&rec.tenant, &rec.environment).remove_ready(pos);
                q.mark_group(&rec.tenant, &rec.environment);
            }
        }
        Ok(state)
    }

    /// The job holding dedup key `key` of (`tenant`, `env`) in `queue`, if
    /// that job is live or its hold after it ended has not run out.
    pub(in crate::broker) fn dedup_holder(
        &self,
        queue: &str,
        tenant: &str,
        env: &str,
        key: &str,
    ) -> Result<Option<JobId>> {
        if key.is_empty() {
            return Ok(None);
        }
        let holder = self.w.get(queue, &keys::dedup(tenant, env, key))?.and_then(|v| keys::parse_dedup_value(&v));
        Ok(holder.filter(|(_, hold_until)| *hold_until == 0 || *hold_until > self.now).map(|(id, _)| id))
    }

    /// New job `id` holds its dedup key (if it has one) while it lives.
    pub(in crate::broker) fn hold_dedup(&mut self, queue: &str, id: JobId, rec: &JobRecord) {
        if !rec.dedup_key.is_empty() {
            self.w.put(queue, &keys::dedup(&rec.tenant, &rec.environment, &rec.dedup_key), &keys::dedup_value(id, 0));
        }
    }

    /// The job leaves the broker (ack, cancel, purge): its record goes, and
    /// its dedup key is released, or held for the queue's dedup window.
    pub(in crate::broker) fn finish(&mut self, queue: &str, id: JobId, rec: &JobRecord) -> Result<()> {
        self.w.delete(queue, &keys::job(id));
        if rec.dedup_key.is_empty() {
            return Ok(());
        }
        let dk = keys::dedup(&rec.tenant, &rec.environment, &rec.dedup_key);
        // Only release the key if this job still holds it.
        let holder = self.w.get(queue, &dk)?.and_then(|v| keys::parse_dedup_value(&v));
        if holder.map(|(h, _)| h) != Some(id) {
            return Ok(());
        }
        let window = duration_millis(self.queue_mut(queue)?.config.dedup_window);
        if window == 0 {
            self.w.delete(queue, &dk);
        } else {
            self.w.put(queue, &dk, &keys::dedup_value(id, self.now.saturating_add(window)));
        }
        Ok(())
    }

    /// A lease begins: stored (so it survives a restart) and held in
    /// memory with its counts.
    pub(in crate::broker) fn begin_lease(&mut self, queue: &str, id: JobId, lease: ActiveLease) -> Result<()> {
        self.w.put(queue, &keys::lease(id), &lease_record(&lease).encode_to_vec());
        self.queue_mut(queue)?.begin_lease(id, lease);
        Ok(())
    }

    /// Stores a lease again after it changed (an extend); returns when it
    /// now expires.
    pub(in crate::broker) fn store_lease(&mut self, queue: &str, job: JobId) -> Result<Millis> {
        let l = self
            .queue_mut(queue)?
            .leases()
            .get(&job)
            .ok_or_else(|| BrokerError::Internal(format!("lease of job {job} vanished")))?;
        let (rec, expires_at) = (lease_record(l), l.expires_at);
        self.w.put(queue, &keys::lease(job), &rec.encode_to_vec());
        Ok(expires_at)
    }

    /// A lease ends, whatever ends it: gone from memory and disk, and its
    /// Work stream's slot freed once the batch has committed.
    pub(in crate::broker) fn end_lease(&mut self, queue: &str, job: JobId) -> Result<ActiveLease> {
        let q = self.queue_mut(queue)?;
        let l = q.end_lease(job).ok_or_else(|| BrokerError::Internal(format!("lease of job {job} vanished")))?;
        let queue_wanting = q.shares.take_wanting();
        self.w.delete(queue, &keys::lease(job));
        if let Some(c) = l.consumer.and_then(|c| self.consumers.get_mut(&c)) {
            c.leases.remove(&job);
            self.w.freed_slots.push(c.window.clone());
        }
        self.shared.wake(self.me, queue_wanting);
        Ok(l)
    }

    /// Ends a lease that was no attempt: the worker gave the job back
    /// unstarted, its delivery never reached anyone, or its worker version
    /// was quarantined. The job record still holds the attempts made before
    /// this lease (a lease becomes an attempt in the record only when it
    /// ends in a nack or an expiry), so the job goes back to ready at its
    /// place in its group, ready since it first was.
    pub(in crate::broker) fn give_back(&mut self, queue: &str, job: JobId) -> Result<ActiveLease> {
        let l = self.end_lease(queue, job)?;
        let ready_at = l.record.run_at_ms.min(self.now);
        self.to_ready(queue, job, &l.record, ready_at)?;
        Ok(l)
    }

    /// Ends a lease without an ack: the attempt counts in the record, with
    /// `error`, and the job goes where `next` says.
    pub(in crate::broker) fn end_attempt(
        &mut self,
        queue: &str,
        job: JobId,
        error: String,
        next: Next,
    ) -> Result<(JobState, Option<Millis>)> {
        let l = self.end_lease(queue, job)?;
        let mut rec = l.record;
        rec.attempt = l.attempt;
        rec.last_error = error;
        let now = self.now;
        let outcome = match next {
            Next::Dead => {
                rec.state = stored_state::DEAD;
                self.to_dead(queue, job, &rec)?;
                (JobState::Dead, None)
            }
            Next::Ready => {
                rec.state = stored_state::READY;
                rec.run_at_ms = now;
                self.to_ready(queue, job, &rec, now)?;
                (JobState::Ready, Some(now))
            }
            Next::After(d) => {
                let run_at = now.saturating_add(duration_millis(d).max(1));
                rec.state = stored_state::SCHEDULED;
                rec.run_at_ms = run_at;
                self.to_scheduled(queue, job, &rec, run_at)?;
                (JobState::Scheduled, Some(run_at))
            }
        };
        self.w.put_job(queue, job, &rec);
        Ok(outcome)
    }

    /// A lease lost without a word from its worker (expiry, disconnect):
    /// an attempt spent, back to ready at once unless out of attempts.
    pub(in crate::broker) fn lose_lease(&mut self, queue: &str, job: JobId, why: &str) -> Result<()> {
        let Some(q) = self.queues.get(queue) else { return Ok(()) };
        let Some(l) = q.leases().get(&job) else { return Ok(()) };
        let next = after_failure(
            l.attempt,
            effective_max_attempts(&l.record, &q.config),
            false,
            Some(Duration::ZERO),
            &q.config,
        );
        let error = format!("{why} (attempt {}, worker {:?})", l.attempt, l.worker_id);
        tracing::info!(queue, job_id = %job, tenant = %l.record.tenant, environment = %l.record.environment, "{why}");
        self.end_attempt(queue, job, error, next).map(|_| ())
    }
}
