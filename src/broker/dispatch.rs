//! Handing ready jobs to workers: Work streams (consumers with a prefetch
//! window) and unary long-polls (waiters), fairly across queues, tenants and
//! environments.
//!
//! Dispatch runs right after a commit, so the ready index it reads is exactly
//! what memory believes; the leases it creates are committed before any
//! delivery leaves the broker.

use super::engine::Engine;
use super::lifecycle::Grant;
use super::{view, LeaseSpec, Reply, StreamTx, Subscription, TenantFilter};
use crate::conn_limits::RESPONSE_SOFT_LIMIT;
use crate::error::Result;
use crate::model::{duration_millis, JobId, Millis};
use crate::partition::window::Window;
use crate::pb;
use crate::scheduler::QueueRotation;
use crate::storage::keys::{self, ReadyPos};
use crate::storage::Store;
use prost::Message;
use std::sync::Arc;

/// A Work stream.
pub(super) struct Consumer {
    /// Its queues, each name shared with the leases it holds there.
    pub queues: Vec<Arc<str>>,
    /// Shared with its leases, so a lease copies no string.
    pub worker_id: Arc<str>,
    /// Its `Subscribe.worker_version`: a queue where that version is
    /// quarantined delivers nothing to it.
    pub worker_version: Arc<str>,
    /// Prefetch window: most unsettled deliveries at once.
    pub max_in_flight: u32,
    /// Its slots, shared by every partition that serves it: a slot is
    /// taken before a lease and given back when the lease ends.
    pub window: Arc<Window>,
    /// It left a free slot to partition `.0`, behind in the split, when
    /// that partition had finished `.1` dispatch turns. Once it has
    /// finished another (it had its chance), this partition takes the
    /// slot: a partition behind that cannot use it (its jobs are for
    /// tenants the worker does not take) delays the stream by one of its
    /// turns, never stops it.
    pub deferred: Option<(usize, u64)>,
    /// Lease length the worker asked for, if any.
    pub lease_ms: Option<u64>,
    pub tx: StreamTx,
    /// Its current leases in this partition (job -> queue; job ids are
    /// unique in a partition), returned to ready when it leaves.
    pub leases: crate::model::FastMap<JobId, Arc<str>>,
    /// Weighted turn order over `queues`.
    pub rotation: QueueRotation,
    /// Tenants whose jobs it may receive (its token's); `None` = all.
    pub tenants: TenantFilter,
    /// It sent `drain` (it is stopping): it gets no more deliveries, while
    /// its settles and releases still apply.
    pub draining: bool,
    /// When it subscribed, for the operators' list of workers.
    pub connected_at: Millis,
}

/// Most leases listed per worker by `ListWorkers`.
pub(super) const WORKER_LEASES_SHOWN: usize = 100;

/// A unary `Lease` call waiting for jobs.
pub(super) struct Waiter {
    /// Its queues, each name shared with the leases it takes there.
    pub queues: Vec<Arc<str>>,
    /// The call's `max_jobs`, shared by every partition that serves it, and
    /// closed once the call is answered.
    pub window: Arc<Window>,
    /// This partition's share of the response's size.
    pub byte_budget: usize,
    pub lease_ms: Option<u64>,
    pub worker_id: Arc<str>,
    /// As [`Consumer::worker_version`].
    pub worker_version: Arc<str>,
    pub deadline: Millis,
    pub reply: Option<Reply<Vec<pb::Delivery>>>,
    /// Leased for it this turn, sent once committed.
    pub got: Vec<pb::Delivery>,
    /// Encoded size of `got`: the batch stops growing at
    /// [`RESPONSE_SOFT_LIMIT`] so the response always fits one message.
    pub got_bytes: usize,
    pub leases: Vec<(Arc<str>, JobId)>,
    pub rotation: QueueRotation,
    /// Tenants whose jobs it may receive (its token's); `None` = all.
    pub tenants: TenantFilter,
}

/// A delivery for a Work stream, held until its lease is committed.
pub(super) struct Outgoing {
    pub consumer: u64,
    pub queue: Arc<str>,
    pub job: JobId,
    pub delivery: pb::Delivery,
}

#[derive(Clone, Copy)]
enum Target {
    Consumer(u64),
    Waiter(usize),
}

impl Engine {
    pub(super) fn subscribe(&mut self, id: u64, sub: Subscription, tx: StreamTx, window: Arc<Window>) {
        tracing::info!(consumer = id, worker_id = %sub.worker_id, worker_version = %sub.worker_version,
            queues = ?sub.queues, max_in_flight = sub.max_in_flight, "worker subscribed");
        let rotation = QueueRotation::new(sub.queues.len());
        self.consumers.insert(
            id,
            Consumer {
                queues: sub.queues.into_iter().map(Arc::from).collect(),
                worker_id: Arc::from(sub.worker_id),
                worker_version: Arc::from(sub.worker_version),
                max_in_flight: sub.max_in_flight.max(1),
                window,
                deferred: None,
                lease_ms: sub.lease_duration.map(duration_millis),
                tx,
                leases: Default::default(),
                rotation,
                tenants: sub.tenants,
                draining: false,
                connected_at: self.now,
            },
        );
    }

    /// A Work stream asks for no more deliveries. The answer, an Outcome of
    /// kind "drain", goes out in request order (after settles of this turn
    /// that wait for the commit), and no delivery follows it: dispatch
    /// skips the stream from now on.
    pub(super) fn drain(&mut self, id: u64, done: tokio::sync::oneshot::Sender<()>) {
        if let Some(c) = self.consumers.get_mut(&id).filter(|c| !c.draining) {
            c.draining = true;
            tracing::info!(consumer = id, worker_id = %c.worker_id, held = c.leases.len(), partition = self.me,
                "worker draining: no more deliveries to it");
        }
        let answer = move || {
            let _ = done.send(());
        };
        if self.w.has_waiting() {
            self.w.after(Box::new(move |_| answer()));
        } else {
            answer();
        }
    }

    /// The Work streams connected now (to `queue`, or to any), longest
    /// connected first, each with the jobs it holds.
    #[cfg(test)]
    pub(super) fn list_workers(&self, queue: Option<&str>) -> Vec<pb::WorkerInfo> {
        self.workers(queue).into_iter().map(|(_, w)| w).collect()
    }

    /// [`list_workers`](Self::list_workers), each with its stream's id (the
    /// broker merges the partitions' views of one stream by it).
    pub(super) fn workers(&self, queue: Option<&str>) -> Vec<(u64, pb::WorkerInfo)> {
        let mut out: Vec<(Millis, u64, pb::WorkerInfo)> = self
            .consumers
            .iter()
            .filter(|(_, c)| queue.is_none_or(|q| c.queues.iter().any(|n| &**n == q)))
            .map(|(id, c)| {
                let mut held: Vec<(Millis, pb::WorkerLease)> = c
                    .leases
                    .iter()
                    .filter_map(|(job, q)| {
                        let l = self.queues.get(&**q)?.leases().get(job)?;
                        Some((l.leased_at, view::worker_lease(q, *job, l)))
                    })
                    .collect();
                held.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.job_id.cmp(&b.1.job_id)));
                held.truncate(WORKER_LEASES_SHOWN);
                let info = pb::WorkerInfo {
                    worker_id: c.worker_id.to_string(),
                    worker_version: c.worker_version.to_string(),
                    queues: c.queues.iter().map(|q| q.to_string()).collect(),
                    in_flight: c.leases.len() as u32,
                    max_in_flight: c.max_in_flight,
                    connected_at: Some(view::timestamp(c.connected_at)),
                    draining: c.draining,
                    leases: held.into_iter().map(|(_, l)| l).collect(),
                };
                (c.connected_at, *id, info)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.2.worker_id.cmp(&b.2.worker_id)));
        out.into_iter().map(|(_, id, w)| (id, w)).collect()
    }

    /// A Work stream ended: its leases go back to ready now (each delivery
    /// counted as an attempt). While the broker shuts down they stay,
    /// detached: the stream ended because another partition stopped, not
    /// because the worker left.
    pub(super) fn unsubscribe(&mut self, id: u64, why: &str) {
        let Some(c) = self.consumers.remove(&id) else { return };
        if self.shared.is_stopping() {
            tracing::info!(consumer = id, worker_id = %c.worker_id, kept = c.leases.len(), "stream ended by shutdown; its leases stay");
            self.detach_leases(c.leases);
            return;
        }
        tracing::info!(consumer = id, worker_id = %c.worker_id, returned = c.leases.len(), "worker left: {why}");
        self.disconnect(c.leases, why);
    }

    pub(super) fn add_waiter(&mut self, spec: LeaseSpec, window: Arc<Window>, reply: Reply<Vec<pb::Delivery>>) {
        // A worker polling without waiting is attended to, too.
        for name in &spec.queues {
            if let Some(q) = self.queues.get_mut(name) {
                q.obs.last_worker_seen = self.now;
            }
        }
        let rotation = QueueRotation::new(spec.queues.len());
        self.waiters.push(Waiter {
            queues: spec.queues.into_iter().map(Arc::from).collect(),
            window,
            byte_budget: RESPONSE_SOFT_LIMIT / self.shared.partitions,
            lease_ms: spec.lease_duration.map(duration_millis),
            worker_id: Arc::from(spec.worker_id),
            worker_version: Arc::from(spec.worker_version),
            deadline: self.now.saturating_add(duration_millis(spec.wait)),
            reply: Some(reply),
            got: Vec::new(),
            got_bytes: 0,
            leases: Vec::new(),
            rotation,
            tenants: spec.tenants,
        });
    }

    /// Leases ready jobs to every worker with room, one job per worker per
    /// round so workers share the backlog evenly.
    pub(super) fn dispatch(&mut self) {
        self.post_demand();
        if self.queues.values().any(|q| q.has_ready()) {
            self.dispatch_ready();
            self.post_demand();
        }
        if self.shared.partitions > 1 {
            // This partition had its chance at every free slot: a partition
            // that left one to it may now take it, and is woken to.
            self.shared.turn_done(self.me);
            for c in self.consumers.values().filter(|c| c.window.has_room()) {
                self.shared.wake(self.me, c.window.take_wanting());
            }
        }
    }

    /// Leases for every stream and long-poll with a free slot, until none
    /// gets more.
    fn dispatch_ready(&mut self) {
        loop {
            let mut progress = false;
            let consumers: Vec<u64> =
                self.consumers.iter().filter(|(_, c)| !c.draining && self.has_slot(c)).map(|(id, _)| *id).collect();
            for id in consumers {
                progress |= self.lease_for(Target::Consumer(id));
            }
            for i in 0..self.waiters.len() {
                let w = &self.waiters[i];
                if w.reply.is_some() && w.window.has_room() && w.got_bytes < w.byte_budget {
                    progress |= self.lease_for(Target::Waiter(i));
                }
            }
            if !progress || self.w.is_poisoned() {
                break;
            }
        }
    }

    /// With several partitions: tells the split how much this partition
    /// wants of each queue (the weights of its tenants in the rotation).
    pub(super) fn post_demand(&self) {
        if self.shared.partitions == 1 {
            return;
        }
        for q in self.queues.values() {
            let demand = if q.has_ready() { q.scheduler.active_weight().max(1) } else { 0 };
            q.shares.set_demand(self.me, demand);
        }
    }

    /// Whether stream `c` has a free slot. When it has none while this
    /// partition has work for it, the partition asks to be woken when one
    /// frees (and looks again, so a slot freed meanwhile is not missed).
    fn has_slot(&self, c: &Consumer) -> bool {
        if c.window.has_room() {
            return true;
        }
        if !c.queues.iter().any(|q| self.queues.get(&**q).is_some_and(|q| q.has_ready())) {
            return false;
        }
        c.window.want(self.me);
        c.window.has_room()
    }

    /// Leases one job for `target` from the next of its queues (weighted by
    /// queue weight) that has ready work. True when a job was leased.
    fn lease_for(&mut self, target: Target) -> bool {
        let window = match target {
            Target::Consumer(id) => match self.consumers.get(&id) {
                Some(c) => c.window.clone(),
                None => return false,
            },
            Target::Waiter(i) => self.waiters[i].window.clone(),
        };
        if !window.try_take() {
            return false;
        }
        let leased = self.lease_in_slot(target);
        if !leased {
            window.give_back();
            self.shared.wake(self.me, window.take_wanting());
        }
        leased
    }

    /// [`lease_for`](Self::lease_for), once a slot of the target is held.
    fn lease_in_slot(&mut self, target: Target) -> bool {
        let order = match target {
            Target::Consumer(id) => match self.consumers.get(&id) {
                Some(c) => c.rotation.order(),
                None => return false,
            },
            Target::Waiter(i) => self.waiters[i].rotation.order(),
        };
        for idx in order {
            let (queue, version): (&str, _) = match target {
                Target::Consumer(id) => {
                    let c = &self.consumers[&id];
                    (&c.queues[idx], &c.worker_version)
                }
                Target::Waiter(i) => {
                    let w = &self.waiters[i];
                    (&w.queues[idx], &w.worker_version)
                }
            };
            // A quarantined version stays connected but gets nothing here.
            let open = |q: &&super::queue_state::QueueState| q.has_ready() && !q.is_quarantined(version);
            let Some(weight) = self.queues.get(queue).filter(open).map(|q| q.config.weight) else {
                continue;
            };

            let queue: Arc<str> = match target {
                Target::Consumer(id) => self.consumers[&id].queues[idx].clone(),
                Target::Waiter(i) => self.waiters[i].queues[idx].clone(),
            };
            if !self.split_allows(target, &queue) {
                continue;
            }
            let (lease_ms, worker_id, worker_version, consumer, tenants) = match target {
                Target::Consumer(id) => {
                    let c = &self.consumers[&id];
                    (c.lease_ms, c.worker_id.clone(), c.worker_version.clone(), Some(id), c.tenants.clone())
                }
                Target::Waiter(i) => {
                    let w = &self.waiters[i];
                    (w.lease_ms, w.worker_id.clone(), w.worker_version.clone(), None, w.tenants.clone())
                }
            };
            let grant = Grant {
                lease_ms,
                worker_id: &worker_id,
                worker_version: &worker_version,
                consumer,
                tenants: tenants.as_deref(),
            };
            match self.lease_next(&queue, &grant) {
                Ok(Some((job, delivery))) => {
                    if let Some(q) = self.queues.get(&*queue) {
                        q.shares.charge(self.me);
                    }
                    match target {
                        Target::Consumer(id) => {
                            if let Some(c) = self.consumers.get_mut(&id) {
                                c.leases.insert(job, queue.clone());
                                c.rotation.charge(idx, weight);
                            }
                            self.outbox.push(Outgoing { consumer: id, queue, job, delivery });
                        }
                        Target::Waiter(i) => {
                            let w = &mut self.waiters[i];
                            w.got_bytes += delivery.encoded_len();
                            w.got.push(delivery);
                            w.leases.push((queue, job));
                            w.rotation.charge(idx, weight);
                        }
                    }
                    return true;
                }
                Ok(None) => continue,
                Err(e) => {
                    self.w.poison(e);
                    return false;
                }
            }
        }
        false
    }

    /// With several partitions: whether this one may use the target's free
    /// slot for `queue` now, or should leave it to the partition furthest
    /// behind in the queue's split (woken for it). A stream leaves the
    /// slot until that partition has finished a dispatch turn (it had its
    /// chance at the slot); then this partition takes it, so a partition
    /// behind that cannot use the slot (its jobs are for other tenants than
    /// the worker's) delays the stream by one of its turns, never stops it.
    fn split_allows(&mut self, target: Target, queue: &str) -> bool {
        if self.shared.partitions == 1 {
            return true;
        }
        let Some(q) = self.queues.get(queue) else { return false };
        let (deferred, window) = match target {
            Target::Consumer(id) => match self.consumers.get_mut(&id) {
                Some(c) => (&mut c.deferred, c.window.clone()),
                None => return false,
            },
            // A unary call is answered once: it takes what it finds.
            Target::Waiter(_) => return true,
        };
        let behind = match q.shares.may_take(self.me, crate::partition::queue_shares::slack(window.max())) {
            true => None,
            false => q.shares.behind().filter(|p| *p != self.me),
        };
        let Some(behind) = behind else {
            *deferred = None;
            return true;
        };
        let turns = self.shared.turns(behind);
        match *deferred {
            Some((p, at)) if p == behind && turns > at => {
                *deferred = None;
                return true;
            }
            // Already left to it (and it was woken): wait for its turn.
            Some((p, _)) if p == behind => window.want(self.me),
            _ => {
                *deferred = Some((behind, turns));
                window.want(self.me);
                self.shared.send_to(behind, super::Command::Wake);
            }
        }
        false
    }

    /// After a successful commit: send Work stream deliveries. A stream that
    /// is gone gives its leases back.
    pub(super) fn deliver_committed(&mut self) {
        let mut gone = Vec::new();
        for o in std::mem::take(&mut self.outbox) {
            let sent = self.consumers.get(&o.consumer).is_some_and(|c| {
                c.tx.send(Ok(pb::WorkResponse { response: Some(pb::work_response::Response::Delivery(o.delivery)) }))
                    .is_ok()
            });
            if !sent {
                let (tenant, env) = self
                    .queues
                    .get(&*o.queue)
                    .and_then(|q| q.leases().get(&o.job))
                    .map(|l| (l.record.tenant.clone(), l.record.environment.clone()))
                    .unwrap_or_default();
                tracing::debug!(queue = %o.queue, tenant = %tenant, environment = %env, job_id = %o.job,
                    "delivery not sent: worker stream closed");
                // Nobody received it: revert the lease without an attempt.
                self.undeliver(&o.queue, o.job);
                gone.push(o.consumer);
            }
        }
        gone.dedup();
        for id in gone {
            self.unsubscribe(id, "worker stream closed");
        }
    }

    pub(super) fn drop_uncommitted_deliveries(&mut self) {
        self.outbox.clear();
        for w in &mut self.waiters {
            w.got.clear();
            w.got_bytes = 0;
            w.leases.clear();
        }
    }

    /// Answers long-polls that got jobs or ran out of time. Jobs leased for a
    /// caller that hung up go straight back to ready, without an attempt.
    pub(super) fn finish_waiters(&mut self) {
        let now = self.now;
        let mut undelivered = Vec::new();
        let mut keep = Vec::with_capacity(self.waiters.len());
        for mut w in std::mem::take(&mut self.waiters) {
            let closed = w.reply.as_ref().is_none_or(|r| r.is_closed());
            // Another partition answered the call: answer what this one has.
            if w.got.is_empty() && w.deadline > now && !closed && !w.window.is_closed() {
                keep.push(w);
                continue;
            }
            let got = std::mem::take(&mut w.got);
            let delivered = match w.reply.take() {
                Some(reply) => reply.send(Ok(got)).is_ok(),
                None => false,
            };
            if !delivered {
                undelivered.extend(w.leases);
            }
        }
        self.waiters = keep;
        for (queue, job) in undelivered {
            self.undeliver(&queue, job);
        }
    }
}

/// Most priority levels of one group's tail [`oldest_in_tail`] visits.
pub(super) const TAIL_LEVELS: usize = 64;
/// Jobs read at the front of each priority level: a job nacked and promoted
/// again keeps its place (its id) with a fresh ready time, so the oldest of
/// a level can sit a few places behind its first job.
const TAIL_PER_LEVEL: usize = 8;

/// The oldest ready time among a group's jobs on disk after `cursor`: for
/// each priority level there (at most [`TAIL_LEVELS`], each one seek), the
/// first [`TAIL_PER_LEVEL`] jobs. Returns it and the seeks made.
pub(super) fn oldest_in_tail(
    store: &Store,
    queue: &str,
    tenant: &str,
    env: &str,
    cursor: Option<ReadyPos>,
) -> Result<(Option<Millis>, usize)> {
    let prefix = keys::group_prefix(keys::READY, tenant, env);
    let end = keys::prefix_end(&prefix);
    let mut start = match cursor {
        Some(c) => keys::successor(&keys::ready(tenant, env, c)),
        None => prefix.clone(),
    };
    let (mut oldest, mut seeks): (Option<Millis>, usize) = (None, 0);
    while seeks < TAIL_LEVELS {
        seeks += 1;
        let scan = store.scan(queue, &start, &end, TAIL_PER_LEVEL)?;
        let Some(level) = scan.entries.first().and_then(|(k, _)| keys::ready_pos(k)).map(|p| p.0) else { break };
        for (k, v) in &scan.entries {
            if keys::ready_pos(k).is_some_and(|p| p.0 == level) {
                let at = v.as_slice().try_into().map(u64::from_be_bytes).unwrap_or(0);
                oldest = Some(oldest.map_or(at, |o: Millis| o.min(at)));
            }
        }
        let Some(next) = level.checked_add(1) else { break };
        start = keys::ready(tenant, env, (next, 0));
    }
    Ok((oldest, seeks))
}

/// Up to `limit` ready entries of a group after `cursor`, in lease order;
/// the flag is true when the scan reached the end of the group.
pub(super) fn scan_ready(
    store: &Store,
    queue: &str,
    tenant: &str,
    env: &str,
    cursor: Option<ReadyPos>,
    limit: usize,
) -> Result<(Vec<(ReadyPos, Millis)>, bool)> {
    let prefix = keys::group_prefix(keys::READY, tenant, env);
    let start = match cursor {
        Some(c) => keys::successor(&keys::ready(tenant, env, c)),
        None => prefix.clone(),
    };
    let scan = store.scan(queue, &start, &keys::prefix_end(&prefix), limit)?;
    let out = scan
        .entries
        .into_iter()
        .filter_map(|(k, v)| {
            let pos = keys::ready_pos(&k)?;
            Some((pos, v.as_slice().try_into().map(u64::from_be_bytes).unwrap_or(0)))
        })
        .collect();
    Ok((out, !scan.more))
}
