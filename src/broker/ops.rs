//! Job state transitions applied by the engine: enqueue, settle (ack, nack,
//! extend), cancel, expiry, promotion of scheduled jobs, dead letters. Each
//! one changes memory and stages its writes in the pending batch; callers
//! are answered after the batch commits. Queue administration is in
//! `admin`, redrive and purge in `tasks`.

use super::engine::{first_scheduled, AfterCommit, Engine};
use super::queue_state::{ActiveLease, QueueState};
use super::{view, EnqueueOutcome, Reply, SettleAction, SettleOutcome, SettleReply};
use crate::error::{BrokerError, Result};
use crate::model::{duration_millis, JobId, JobState, LeaseId, Millis, NewJob, QueueConfig, MAX_ERROR_BYTES};
use crate::storage::keys::{self, ReadyPos};
use crate::storage::records::{stored_state, GroupRef, JobRecord, LeaseRecord};
use prost::Message;
use std::time::Duration;

/// Most scheduled jobs promoted per queue per turn.
const PROMOTE_CHUNK: usize = 10_000;

/// Where a job goes when its lease ends without an ack.
#[derive(Debug)]
enum Next {
    Ready,
    After(Duration),
    Dead,
}

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

pub(super) fn effective_max_attempts(rec: &JobRecord, cfg: &QueueConfig) -> u32 {
    if rec.max_attempts == 0 {
        cfg.max_attempts
    } else {
        rec.max_attempts
    }
}

/// Answers after the commit: with `value` if it succeeded.
pub(super) fn reply_after<T: Send + 'static>(reply: Reply<T>, value: T) -> AfterCommit {
    Box::new(move |err| {
        let _ = reply.send(match err {
            None => Ok(value),
            Some(e) => Err(e.clone()),
        });
    })
}

impl Engine {
    /// A storage failure part way through an operation may leave some of
    /// its writes staged: the batch must not commit half of it.
    fn poison_if_storage<T>(&mut self, result: &Result<T>) {
        if let Err(e) = result {
            if e.is_storage() {
                self.w.poison(e.clone());
            }
        }
    }

    pub(super) fn queue_mut(&mut self, name: &str) -> Result<&mut QueueState> {
        self.queues.get_mut(name).ok_or_else(|| BrokerError::QueueNotFound(name.to_string()))
    }

    // ------------------------------------------------------------- enqueue

    pub(super) fn enqueue(&mut self, jobs: Vec<NewJob>, batch: bool, reply: Reply<Vec<EnqueueOutcome>>) {
        match self.stage_enqueue(jobs, batch) {
            Ok(out) => self.w.after(reply_after(reply, out)),
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    /// Stages jobs, all or none: validates all before writing any, so a bad
    /// item writes nothing, and a failure part way poisons the batch.
    pub(super) fn stage_enqueue(&mut self, jobs: Vec<NewJob>, batch: bool) -> Result<Vec<EnqueueOutcome>> {
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
        let dedup_key = if job.dedup_key.is_empty() {
            None
        } else {
            Some(keys::dedup(&job.tenant, &job.environment, &job.dedup_key))
        };
        if let Some(dk) = &dedup_key {
            if let Some(v) = self.w.get(&job.queue, dk)? {
                if let Some((id, expires)) = keys::parse_dedup_value(&v) {
                    if expires == 0 || expires > now {
                        tracing::debug!(queue = %job.queue, tenant = %job.tenant, environment = %job.environment,
                            job_id = %id, dedup_key = %job.dedup_key, "enqueue deduplicated onto a live job");
                        let q = self.queue_mut(&job.queue)?;
                        q.counters.deduplicated_total += 1;
                        q.totals_dirty = true;
                        return Ok(EnqueueOutcome { id, deduplicated: true });
                    }
                }
            }
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
            self.stage_scheduled(&queue, id, &rec, run_at)?;
        } else {
            self.stage_ready(&queue, id, &rec, now)?;
        }
        if let Some(dk) = dedup_key {
            self.w.put(&queue, &dk, &keys::dedup_value(id, 0));
        }
        tracing::debug!(queue = %queue, tenant = %rec.tenant, environment = %rec.environment, job_id = %id,
            scheduled, "job enqueued");
        self.w.put_new_job(&queue, id, rec);
        let q = self.queue_mut(&queue)?;
        q.counters.enqueued_total += 1;
        q.totals_dirty = true;
        Ok(EnqueueOutcome { id, deduplicated: false })
    }

    /// Puts a job in its group's ready index.
    pub(super) fn stage_ready(&mut self, queue: &str, id: JobId, rec: &JobRecord, ready_at: Millis) -> Result<()> {
        let pos: ReadyPos = (keys::inv_priority(rec.priority), id.0);
        self.w.put(queue, &keys::ready(&rec.tenant, &rec.environment, pos), &ready_at.to_be_bytes());
        self.queue_mut(queue)?.add_ready(&rec.tenant, &rec.environment, pos, ready_at);
        Ok(())
    }

    fn stage_scheduled(&mut self, queue: &str, id: JobId, rec: &JobRecord, run_at: Millis) -> Result<()> {
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

    fn stage_dead(&mut self, queue: &str, id: JobId, rec: &JobRecord) -> Result<()> {
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

    /// A job leaves the broker (ack, cancel, purge): release its dedup key,
    /// or hold it for the queue's dedup window.
    pub(super) fn end_job(&mut self, queue: &str, id: JobId, rec: &JobRecord) -> Result<()> {
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

    // -------------------------------------------------------------- settle

    pub(super) fn settle(
        &mut self,
        queue: String,
        job: JobId,
        lease: LeaseId,
        action: SettleAction,
        reply: SettleReply,
    ) {
        // Losing a settle in an OS crash only brings the job back: at least once.
        self.w.relaxed = true;
        let result = self.settle_inner(&queue, job, lease, &action);
        self.w.relaxed = false;
        self.poison_if_storage(&result);
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

    fn settle_inner(
        &mut self,
        queue: &str,
        job: JobId,
        lease: LeaseId,
        action: &SettleAction,
    ) -> Result<SettleOutcome> {
        let now = self.now;
        let q = self.queue_mut(queue)?;
        let held = q.leases.get(&job).is_some_and(|l| l.lease_id.matches(&lease));
        if !held {
            return Err(BrokerError::LeaseNotHeld(format!(
                "job {job} in queue {queue:?} is not leased under lease {lease}: the lease expired, the job was \
                 already settled, or the lease id is wrong. Only the current lease holder may {} it.",
                action.kind()
            )));
        }
        match action {
            SettleAction::Ack => {
                let l = self.take_lease(queue, job)?;
                self.end_job(queue, job, &l.record)?;
                self.note_outcome(queue, &l.worker_version, job, false);
                tracing::debug!(queue, tenant = %l.record.tenant, environment = %l.record.environment, job_id = %job,
                    attempt = l.attempt, "job acked");
                let q = self.queue_mut(queue)?;
                q.obs.ack.observe(now.saturating_sub(l.leased_at));
                q.obs.last_progress = now;
                q.counters.acked_total += 1;
                q.totals_dirty = true;
                Ok(SettleOutcome::Acked)
            }
            SettleAction::Nack { error, retry_after, dead } => {
                let max = effective_max_attempts(&q.leases[&job].record, &q.config);
                let attempt = q.leases[&job].attempt;
                let next = if *dead || attempt >= max {
                    Next::Dead
                } else {
                    match retry_after {
                        Some(d) if d.is_zero() => Next::Ready,
                        Some(d) => Next::After(*d),
                        None => Next::After(q.config.backoff(attempt)),
                    }
                };
                let rec = &q.leases[&job].record;
                tracing::info!(queue, tenant = %rec.tenant, environment = %rec.environment, job_id = %job, attempt,
                    error = %truncate_error(error.clone()), next = ?next, "job nacked");
                q.counters.nacked_total += 1;
                q.obs.last_progress = now;
                q.totals_dirty = true;
                let version = q.leases[&job].worker_version.clone();
                let (state, run_at) = self.return_leased(queue, job, truncate_error(error.clone()), next)?;
                self.note_outcome(queue, &version, job, true);
                Ok(SettleOutcome::Nacked { state, run_at })
            }
            SettleAction::Extend { duration } => {
                let l = q.leases.get_mut(&job).ok_or_else(|| BrokerError::Storage("lease vanished".into()))?;
                let dur = duration.map(duration_millis).unwrap_or(l.duration_ms);
                let old = l.expires_at;
                l.expires_at = now.saturating_add(dur);
                l.duration_ms = dur;
                let expires = l.expires_at;
                let rec = lease_record(l);
                q.lease_expiry.remove(&(old, job));
                q.lease_expiry.insert((expires, job));
                self.w.put(queue, &keys::lease(job), &rec.encode_to_vec());
                Ok(SettleOutcome::Extended { expires_at: expires })
            }
            SettleAction::Release => {
                let l = self.give_back(queue, job)?;
                tracing::debug!(queue, tenant = %l.record.tenant, environment = %l.record.environment, job_id = %job,
                    worker_id = %l.worker_id, "job released unstarted");
                let q = self.queue_mut(queue)?;
                q.counters.released_total += 1;
                q.totals_dirty = true;
                Ok(SettleOutcome::Released)
            }
        }
    }

    /// Ends a lease that was no attempt: the worker gave the job back
    /// unstarted, its delivery never reached anyone, or its worker version
    /// was quarantined. The job record still holds the attempts made before
    /// this lease (a lease becomes an attempt in the record only when it
    /// ends in a nack or an expiry), so the job goes back to ready at its
    /// place in its group, ready since it first was.
    pub(super) fn give_back(&mut self, queue: &str, job: JobId) -> Result<ActiveLease> {
        let l = self.take_lease(queue, job)?;
        let ready_at = l.record.run_at_ms.min(self.now);
        self.stage_ready(queue, job, &l.record, ready_at)?;
        Ok(l)
    }

    /// Removes a lease from memory and disk, freeing its worker's slot.
    pub(super) fn take_lease(&mut self, queue: &str, job: JobId) -> Result<ActiveLease> {
        let q = self.queue_mut(queue)?;
        let l = q.leases.remove(&job).ok_or_else(|| BrokerError::Storage("lease vanished".into()))?;
        q.shares.leases_ended(1);
        let queue_wanting = q.shares.take_wanting();
        q.lease_expiry.remove(&(l.expires_at, job));
        let (t, e) = (l.record.tenant.clone(), l.record.environment.clone());
        q.lease_ended(&t, &e);
        self.w.delete(queue, &keys::lease(job));
        if let Some(c) = l.consumer.and_then(|c| self.consumers.get_mut(&c)) {
            c.in_flight = c.in_flight.saturating_sub(1);
            c.leases.remove(&(queue.to_string(), job));
            self.w.freed_slots.push(c.window.clone());
        }
        self.shared.wake(self.me, queue_wanting);
        Ok(l)
    }

    /// Ends a lease without an ack: the attempt counts, and the job goes to
    /// ready, back off, or to the dead letters.
    fn return_leased(
        &mut self,
        queue: &str,
        job: JobId,
        error: String,
        next: Next,
    ) -> Result<(JobState, Option<Millis>)> {
        let l = self.take_lease(queue, job)?;
        let mut rec = l.record;
        rec.attempt = l.attempt;
        rec.last_error = error;
        let now = self.now;
        let outcome = match next {
            Next::Dead => {
                rec.state = stored_state::DEAD;
                self.stage_dead(queue, job, &rec)?;
                (JobState::Dead, None)
            }
            Next::Ready => {
                rec.state = stored_state::READY;
                rec.run_at_ms = now;
                self.stage_ready(queue, job, &rec, now)?;
                (JobState::Ready, Some(now))
            }
            Next::After(d) => {
                let run_at = now.saturating_add(duration_millis(d).max(1));
                rec.state = stored_state::SCHEDULED;
                rec.run_at_ms = run_at;
                self.stage_scheduled(queue, job, &rec, run_at)?;
                (JobState::Scheduled, Some(run_at))
            }
        };
        self.w.put_job(queue, job, &rec);
        Ok(outcome)
    }

    /// Expiry and disconnects: back to ready at once unless out of attempts.
    pub(super) fn release_lease(&mut self, queue: &str, job: JobId, why: &str) {
        let Some(q) = self.queues.get(queue) else { return };
        let Some(l) = q.leases.get(&job) else { return };
        let max = effective_max_attempts(&l.record, &q.config);
        let next = if l.attempt >= max { Next::Dead } else { Next::Ready };
        let error = format!("{why} (attempt {}, worker {:?})", l.attempt, l.worker_id);
        tracing::info!(queue, job_id = %job, tenant = %l.record.tenant, environment = %l.record.environment, "{why}");
        if let Err(e) = self.return_leased(queue, job, error, next) {
            self.w.poison(e);
        }
    }

    // -------------------------------------------------------------- cancel

    pub(super) fn cancel(&mut self, queue: String, job: JobId, reply: Reply<bool>) {
        let result = self.cancel_inner(&queue, job);
        self.poison_if_storage(&result);
        match result {
            Ok(()) => self.w.after(reply_after(reply, true)),
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    fn cancel_inner(&mut self, queue: &str, job: JobId) -> Result<()> {
        let q = self.queue_mut(queue)?;
        if let Some(l) = q.leases.get(&job) {
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
        self.remove_stored(queue, job, &rec)?;
        tracing::info!(queue, tenant = %rec.tenant, environment = %rec.environment, job_id = %job, "job cancelled");
        self.end_job(queue, job, &rec)
    }

    /// Takes a non-leased job out of whichever index holds it.
    pub(super) fn remove_stored(&mut self, queue: &str, job: JobId, rec: &JobRecord) -> Result<()> {
        let skey = keys::scheduled(rec.run_at_ms, job);
        let state = match rec.state {
            stored_state::DEAD => JobState::Dead,
            stored_state::SCHEDULED if self.w.get(queue, &skey)?.is_some() => JobState::Scheduled,
            _ => JobState::Ready,
        };
        match state {
            JobState::Dead => {
                self.w.delete(queue, &keys::dead(&rec.tenant, &rec.environment, job));
                let q = self.queue_mut(queue)?;
                q.counters.dead = q.counters.dead.saturating_sub(1);
                q.totals_dirty = true;
            }
            JobState::Scheduled => {
                self.w.delete(queue, &skey);
                let q = self.queue_mut(queue)?;
                q.counters.scheduled = q.counters.scheduled.saturating_sub(1);
                q.totals_dirty = true;
            }
            _ => {
                let pos = (keys::inv_priority(rec.priority), job.0);
                self.w.delete(queue, &keys::ready(&rec.tenant, &rec.environment, pos));
                let q = self.queue_mut(queue)?;
                q.group_mut(&rec.tenant, &rec.environment).remove_ready(pos);
                q.mark_group(&rec.tenant, &rec.environment);
            }
        }
        Ok(())
    }

    // -------------------------------------------------------------- timers

    /// Promotes due scheduled jobs and expires leases.
    pub(super) fn run_timers(&mut self) {
        let now = self.now;
        let names: Vec<String> = self.queues.keys().cloned().collect();
        for name in names {
            let Some(q) = self.queues.get(&name) else { continue };
            let expired: Vec<JobId> = q.lease_expiry.iter().take_while(|(t, _)| *t <= now).map(|(_, id)| *id).collect();
            let due = q.next_due.is_some_and(|t| t <= now);
            for id in expired {
                // Gone already when quarantining its version returned it.
                let Some(q) = self.queues.get_mut(&name) else { break };
                let Some(version) = q.leases.get(&id).map(|l| l.worker_version.clone()) else { continue };
                q.counters.expired_total += 1;
                q.totals_dirty = true;
                self.release_lease(&name, id, "lease expired");
                self.note_outcome(&name, &version, id, true);
            }
            if due {
                if let Err(e) = self.promote(&name) {
                    self.w.poison(e);
                }
            }
        }
    }

    fn promote(&mut self, queue: &str) -> Result<()> {
        let now = self.now;
        let start = self.queue_mut(queue)?.scheduled_cursor;
        let store = self.w.store.clone();
        let due = store.scan(
            queue,
            &keys::scheduled(start, JobId(0)),
            &keys::scheduled(now.saturating_add(1), JobId(0)),
            PROMOTE_CHUNK,
        )?;
        let complete = !due.more;
        let mut last_run_at = start;
        for (k, v) in due.entries {
            let Some((run_at, id)) = keys::scheduled_parts(&k) else { continue };
            // Skip keys this batch already removed (e.g. cancelled this turn).
            if self.w.deletes(queue, &k) {
                continue;
            }
            let g = GroupRef::decode(&*v).map_err(|e| BrokerError::Storage(format!("corrupt schedule entry: {e}")))?;
            self.w.delete(queue, &k);
            let pos = (keys::inv_priority(g.priority), id.0);
            self.w.put(queue, &keys::ready(&g.tenant, &g.environment, pos), &run_at.to_be_bytes());
            let q = self.queue_mut(queue)?;
            q.add_ready(&g.tenant, &g.environment, pos, run_at);
            q.counters.scheduled = q.counters.scheduled.saturating_sub(1);
            q.totals_dirty = true;
            last_run_at = run_at;
        }
        let q = self.queue_mut(queue)?;
        if complete {
            q.scheduled_cursor = now.saturating_add(1);
            let on_disk = first_scheduled(&store, queue, q.scheduled_cursor)?;
            q.next_due = match (on_disk, q.staged_due) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        } else {
            // Resume at the same run_at next turn, after this batch commits.
            q.scheduled_cursor = last_run_at;
            q.next_due = Some(last_run_at);
        }
        Ok(())
    }

    // ------------------------------------------------------------ shutdown

    pub(super) fn begin_shutdown(&mut self, done: tokio::sync::oneshot::Sender<()>) {
        tracing::info!("writer draining for shutdown");
        for w in self.waiters.drain(..) {
            if let Some(reply) = w.reply {
                let _ = reply.send(Err(BrokerError::ShuttingDown));
            }
        }
        // Work streams end, but their leases stay: workers that reconnect to
        // the restarted broker can still ack with their lease ids.
        for (_, c) in std::mem::take(&mut self.consumers) {
            let _ = c.tx.send(Err(tonic::Status::unavailable("broker shutting down; reconnect to continue")));
            self.detach_leases(c.leases);
        }
        self.stopping = Some(done);
    }
}

pub(super) fn lease_record(l: &ActiveLease) -> LeaseRecord {
    LeaseRecord {
        lease_id: l.lease_id.0.to_vec(),
        expires_at_ms: l.expires_at,
        attempt: l.attempt,
        worker_id: l.worker_id.clone(),
        duration_ms: l.duration_ms,
        worker_version: l.worker_version.to_string(),
        leased_at_ms: l.leased_at,
    }
}
