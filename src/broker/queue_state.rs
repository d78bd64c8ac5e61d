//! In-memory state of one queue, owned by the writer thread.
//!
//! Nothing here scales with the number of stored jobs: per (tenant, env)
//! group it keeps counters and a bounded buffer of the group's next ready
//! jobs ("heads"), per lease the lease itself. The ready index stays on disk.
//!
//! Heads invariant, per group: every ready key of the group on disk is either
//! in `heads` or sorts after `cursor`; with `exhausted`, every one is in
//! `heads`. Leasing pops heads and refills by scanning the disk strictly after
//! the cursor, so a refill never walks over the tombstones of jobs already
//! leased: lease cost doesn't grow as acked jobs pile up.

use crate::model::{FastMap, FastSet, JobId, LeaseId, Millis, QueueConfig, TenantPolicy};
use crate::scheduler::FairScheduler;
use crate::storage::keys::ReadyPos;
use crate::storage::records::QuarantineRecord;
use crate::storage::records::{JobRecord, QueueCounters, QueueMeta};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// Most heads kept per group; a refill loads up to [`REFILL`].
pub const HEAD_CAP: usize = 1024;
pub const REFILL: usize = 256;

/// One (tenant, environment) group of a queue.
#[derive(Debug)]
pub struct Group {
    /// Ready jobs of this group, on disk (persisted as the `C` counter).
    pub ready: u64,
    /// Jobs of this group under lease now.
    pub leased: u64,
    /// The next ready jobs in lease order, with the time each became ready.
    pub heads: BTreeMap<ReadyPos, Millis>,
    /// Last position loaded from disk; `None` = nothing loaded yet.
    pub cursor: Option<ReadyPos>,
    /// True when `heads` holds every ready job of the group.
    pub exhausted: bool,
    /// The oldest ready time among the jobs on disk after `cursor` (of any
    /// priority), and when it was read: jobs of a lower priority than the
    /// heads wait there however old they are, and the oldest-ready age must
    /// see them. `None` = not read since the cursor last moved.
    pub tail_oldest: Option<(Option<Millis>, Millis)>,
}

impl Group {
    /// A group whose disk holds `ready` jobs not yet loaded.
    pub fn new(ready: u64) -> Group {
        Group { ready, leased: 0, heads: BTreeMap::new(), cursor: None, exhausted: ready == 0, tail_oldest: None }
    }

    /// Records a new ready job at `pos` (its key is being written now).
    pub fn insert_ready(&mut self, pos: ReadyPos, ready_at: Millis) {
        self.ready += 1;
        let behind_cursor = self.cursor.is_some_and(|c| pos <= c);
        if self.exhausted || behind_cursor {
            self.heads.insert(pos, ready_at);
            if self.heads.len() > HEAD_CAP {
                // Forget the last head: it stays on disk after the new cursor.
                self.heads.pop_last();
                self.cursor = self.heads.last_key_value().map(|(k, _)| *k);
                self.exhausted = false;
                self.tail_oldest = None;
            }
        }
    }

    /// True when the heads are empty but the disk may hold more.
    pub fn needs_refill(&self) -> bool {
        self.heads.is_empty() && !self.exhausted && self.ready > 0
    }

    /// Adds what a refill read from disk (positions after the cursor, in
    /// order); `complete` when the scan reached the end of the group.
    pub fn refilled(&mut self, loaded: Vec<(ReadyPos, Millis)>, complete: bool) {
        if let Some((last, _)) = loaded.last() {
            self.cursor = Some(*last);
            self.tail_oldest = None;
        }
        self.heads.extend(loaded);
        self.exhausted = complete;
    }

    /// Takes the next job in lease order from the heads.
    pub fn pop(&mut self) -> Option<(ReadyPos, Millis)> {
        let head = self.heads.pop_first()?;
        self.ready = self.ready.saturating_sub(1);
        Some(head)
    }

    /// Removes a ready job wherever it is (cancel, purge).
    pub fn remove_ready(&mut self, pos: ReadyPos) {
        self.heads.remove(&pos);
        self.ready = self.ready.saturating_sub(1);
        if self.cursor.is_some_and(|c| pos > c) || self.cursor.is_none() {
            // It may have been the tail's oldest.
            self.tail_oldest = None;
        }
    }
}

/// A lease in progress, kept whole so settling it needs no disk read.
#[derive(Debug, Clone)]
pub struct ActiveLease {
    pub lease_id: LeaseId,
    /// When it was leased (lease-to-ack latency).
    pub leased_at: Millis,
    pub expires_at: Millis,
    /// This delivery's attempt number.
    pub attempt: u32,
    pub duration_ms: u64,
    /// Shared with the worker's stream or call, so a lease copies no string.
    pub worker_id: Arc<str>,
    /// The leasing worker's version: its outcome counts in that version's
    /// circuit-breaker window, and quarantining the version returns it.
    /// Shared with the worker's stream, so a lease copies no string.
    pub worker_version: Arc<str>,
    /// The Work stream holding it, whose prefetch slot it takes.
    pub consumer: Option<u64>,
    pub record: JobRecord,
}

/// Everything the writer knows about one queue.
#[derive(Debug)]
pub struct QueueState {
    pub name: String,
    pub config: QueueConfig,
    pub paused: bool,
    /// Bumped on every re-creation, so leftovers of a dropped queue of the
    /// same name are never mistaken for this one's.
    pub generation: u64,
    /// tenant -> env -> group.
    pub groups: FastMap<String, FastMap<String, Group>>,
    pub scheduler: FairScheduler,
    /// Its leases in this partition: changed only through
    /// [`begin_lease`](Self::begin_lease) and [`end_lease`](Self::end_lease),
    /// which keep the group, tenant and queue-wide counts in step.
    leases: super::leases::Leases,
    /// Earliest run_at in the scheduled index; `None` = nothing scheduled.
    pub next_due: Option<Millis>,
    /// Every scheduled key before this run_at has been promoted.
    pub scheduled_cursor: Millis,
    /// Earliest run_at staged in the uncommitted batch: a promotion scan of
    /// committed keys can't see those, so it must not forget them.
    pub staged_due: Option<Millis>,
    pub counters: QueueCounters,
    /// Tenants with a policy (SetTenantPolicy); others use the defaults.
    pub policies: HashMap<String, TenantPolicy>,
    /// Latencies, progress and alerts.
    pub obs: super::observe::QueueObs,
    /// Worker versions quarantined by the circuit breaker, by version;
    /// persisted in the queue's meta.
    pub quarantine: BTreeMap<String, QuarantineRecord>,
    /// Recent outcomes per worker version (memory only: after a restart
    /// the windows refill from new deliveries).
    pub breaker: super::version_breaker::VersionBreaker,
    /// Counters changed since the last commit.
    pub totals_dirty: bool,
    /// What the alert rules need across a restart changed (see
    /// `QueueObs::save_due`): saved with the next commit.
    pub alerts_dirty: bool,
    pub dirty_groups: FastSet<(String, String)>,
    /// What this queue's partitions share: the split between them and the
    /// queue's leases in flight in all of them (counted here as leases
    /// begin and end, and for the ones this state holds when it goes).
    pub shares: Arc<crate::partition::queue_shares::QueueShares>,
}

impl Drop for QueueState {
    fn drop(&mut self) {
        // A dropped queue, or state replaced by a reload from disk, no
        // longer holds its leases (a reload counts them again).
        self.shares.leases_ended(self.leases.len() as u64);
    }
}

impl QueueState {
    pub fn new(
        meta: &QueueMeta,
        counters: QueueCounters,
        shares: Arc<crate::partition::queue_shares::QueueShares>,
        me: usize,
        now: Millis,
    ) -> QueueState {
        QueueState {
            name: meta.name.clone(),
            config: config_from_meta(meta),
            paused: meta.paused,
            generation: meta.generation,
            groups: FastMap::default(),
            scheduler: FairScheduler::new(),
            leases: Default::default(),
            next_due: None,
            scheduled_cursor: 0,
            staged_due: None,
            counters,
            policies: HashMap::new(),
            obs: super::observe::QueueObs::new(now),
            quarantine: meta.quarantines.iter().map(|r| (r.worker_version.clone(), r.clone())).collect(),
            breaker: super::version_breaker::VersionBreaker::on_board(shares.breaker.clone(), me, meta.generation),
            totals_dirty: false,
            alerts_dirty: false,
            dirty_groups: FastSet::default(),
            shares,
        }
    }

    pub fn meta(&self) -> QueueMeta {
        QueueMeta {
            quarantines: self.quarantine.values().cloned().collect(),
            ..meta_from_config(&self.name, &self.config, self.paused, self.generation)
        }
    }

    /// True when leases to `version` are stopped in this queue: quarantined
    /// here, or tripped by another partition whose quarantine is on its
    /// way. O(1) and free while nothing is quarantined (the common case on
    /// the hot path).
    pub fn is_quarantined(&self, version: &str) -> bool {
        version_stopped(&self.quarantine, self.breaker.board(), self.generation, version)
    }

    pub fn group_mut(&mut self, tenant: &str, env: &str) -> &mut Group {
        if !self.groups.contains_key(tenant) {
            self.groups.insert(tenant.to_string(), FastMap::default());
        }
        let envs = self.groups.get_mut(tenant).expect("inserted above");
        if !envs.contains_key(env) {
            envs.insert(env.to_string(), Group::new(0));
        }
        envs.get_mut(env).expect("inserted above")
    }

    pub fn group(&self, tenant: &str, env: &str) -> Option<&Group> {
        self.groups.get(tenant).and_then(|e| e.get(env))
    }

    pub fn mark_group(&mut self, tenant: &str, env: &str) {
        self.dirty_groups.insert((tenant.to_string(), env.to_string()));
    }

    /// A ready job joins its group and the fair rotation.
    pub fn add_ready(&mut self, tenant: &str, env: &str, pos: ReadyPos, ready_at: Millis) {
        self.group_mut(tenant, env).insert_ready(pos, ready_at);
        self.scheduler.activate(tenant, env);
        self.mark_group(tenant, env);
    }

    pub fn ready_total(&self) -> u64 {
        self.groups.values().flat_map(|e| e.values()).map(|g| g.ready).sum()
    }

    pub fn total_jobs(&self) -> u64 {
        self.ready_total() + self.leases.len() as u64 + self.counters.scheduled + self.counters.dead
    }

    /// True when a lease may be possible: not paused, under the queue's
    /// in-flight limit, and some group in the rotation.
    pub fn has_ready(&self) -> bool {
        !self.paused && !self.scheduler.is_empty() && self.has_room()
    }

    /// Under the queue-wide in-flight limit, counted over all partitions.
    pub fn has_room(&self) -> bool {
        self.shares.has_room(self.config.max_in_flight)
    }

    /// The in-flight limit of a tenant, if any: its policy, else the queue's
    /// default.
    pub fn tenant_limit(&self, tenant: &str) -> Option<u64> {
        tenant_limit(&self.policies, &self.config, tenant)
    }

    /// The fair next group to lease from (among `only` these tenants, when
    /// given): one with ready jobs whose tenant is under its in-flight
    /// limit. A tenant at its limit leaves the rotation here and rejoins
    /// when one of its leases ends ([`end_lease`](Self::end_lease)).
    pub fn pick(&mut self, only: Option<&[String]>) -> Option<(String, String)> {
        let (groups, policies, config, leases) = (&self.groups, &self.policies, &self.config, &self.leases);
        let eligible = |t: &str, e: &str| {
            groups.get(t).and_then(|m| m.get(e)).is_some_and(|g| g.ready > 0)
                && tenant_limit(policies, config, t).is_none_or(|limit| leases.of_tenant(t) < limit)
        };
        match only {
            None => self.scheduler.next(eligible),
            Some(only) => self.scheduler.next_among(only, eligible),
        }
    }

    /// The queue's leases in this partition.
    /// See [`Leases::postpone_all`](super::leases::Leases::postpone_all).
    pub fn postpone_leases(&mut self, by_ms: u64) {
        self.leases.postpone_all(by_ms);
    }

    pub fn leases(&self) -> &super::leases::Leases {
        &self.leases
    }

    /// A lease begins: its group counts it (and so does its tenant, for
    /// the in-flight limit). The queue-wide unit was taken before the pick
    /// (`QueueShares::try_lease`) or, at recovery, is counted for all
    /// leases at once.
    pub fn begin_lease(&mut self, job: JobId, lease: ActiveLease) {
        let (t, e) = (lease.record.tenant.clone(), lease.record.environment.clone());
        self.group_mut(&t, &e).leased += 1;
        self.mark_group(&t, &e);
        self.leases.insert(job, lease);
    }

    /// A lease ends, whatever ends it. Its group, its tenant and the
    /// queue's count over all partitions drop by one; a tenant that was at
    /// its in-flight limit left the rotation, and with a slot free again
    /// its groups rejoin.
    pub fn end_lease(&mut self, job: JobId) -> Option<ActiveLease> {
        let lease = self.leases.remove(job)?;
        self.shares.leases_ended(1);
        let (t, e) = (lease.record.tenant.as_str(), lease.record.environment.as_str());
        let g = self.group_mut(t, e);
        g.leased = g.leased.saturating_sub(1);
        self.mark_group(t, e);
        let now = self.leases.of_tenant(t);
        if self.tenant_limit(t).is_some_and(|limit| now + 1 == limit) {
            self.reactivate_tenant(t);
        }
        Some(lease)
    }

    /// Moves a lease's expiry (an extend).
    pub fn extend_lease(&mut self, job: JobId, expires_at: Millis, duration_ms: u64) -> Option<&ActiveLease> {
        self.leases.extend(job, expires_at, duration_ms)
    }

    /// The lease's Work stream is gone; the lease stays (see
    /// [`Leases::detach`](super::leases::Leases::detach)).
    pub fn detach_lease(&mut self, job: JobId) {
        self.leases.detach(job);
    }

    /// Links a lease to Work stream `consumer`; false if there is no such
    /// lease.
    pub fn attach_lease(&mut self, job: JobId, consumer: u64) -> bool {
        self.leases.attach(job, consumer)
    }

    /// Puts every group of `tenant` with ready jobs back in the rotation
    /// (after its limit rose or a slot freed). O(environments of the tenant).
    pub fn reactivate_tenant(&mut self, tenant: &str) {
        if let Some(envs) = self.groups.get(tenant) {
            for (env, g) in envs {
                if g.ready > 0 {
                    self.scheduler.activate(tenant, env);
                }
            }
        }
    }

    /// Applies a tenant's policy to the scheduler and limits.
    pub fn set_policy(&mut self, tenant: &str, policy: TenantPolicy) {
        self.scheduler.set_tenant_weight(tenant, policy.weight);
        let old_envs: Vec<String> =
            self.policies.get(tenant).map(|p| p.env_weights.keys().cloned().collect()).unwrap_or_default();
        for env in old_envs {
            self.scheduler.set_env_weight(tenant, &env, crate::scheduler::DEFAULT_WEIGHT);
        }
        for (env, w) in &policy.env_weights {
            self.scheduler.set_env_weight(tenant, env, *w);
        }
        if policy.is_default() {
            self.policies.remove(tenant);
        } else {
            self.policies.insert(tenant.to_string(), policy);
        }
        self.reactivate_tenant(tenant);
    }

    /// Drops groups with nothing in them, so tenants that come and go don't
    /// accumulate in memory.
    pub fn forget_group_if_idle(&mut self, tenant: &str, env: &str) -> bool {
        let idle = self.group(tenant, env).is_some_and(|g| g.ready == 0 && g.leased == 0);
        if idle {
            if let Some(envs) = self.groups.get_mut(tenant) {
                envs.remove(env);
                if envs.is_empty() {
                    self.groups.remove(tenant);
                }
            }
        }
        idle
    }
}

/// A tenant's in-flight limit: its policy, else the queue default; `None`
/// = unlimited. A free function so callers can borrow fields separately.
pub fn tenant_limit(policies: &HashMap<String, TenantPolicy>, config: &QueueConfig, tenant: &str) -> Option<u64> {
    let own = policies.get(tenant).map(|p| p.max_in_flight).unwrap_or(0);
    let limit = if own > 0 { own } else { config.tenant_max_in_flight };
    (limit > 0).then_some(u64::from(limit))
}

pub fn config_from_meta(m: &QueueMeta) -> QueueConfig {
    QueueConfig {
        default_lease: Duration::from_millis(m.default_lease_ms),
        max_attempts: m.max_attempts,
        backoff_initial: Duration::from_millis(m.backoff_initial_ms),
        backoff_max: Duration::from_millis(m.backoff_max_ms),
        dedup_window: Duration::from_millis(m.dedup_window_ms),
        max_payload_bytes: m.max_payload_bytes,
        weight: m.weight.max(1),
        max_in_flight: m.max_in_flight,
        tenant_max_in_flight: m.tenant_max_in_flight,
        alerts: {
            let d = crate::model::AlertConfig::default();
            let ms = |v: Option<u64>, default: Duration| v.map_or(default, Duration::from_millis);
            crate::model::AlertConfig {
                oldest_ready_age: ms(m.alert_oldest_ready_age_ms, d.oldest_ready_age),
                backlog: m.alert_backlog.unwrap_or(d.backlog),
                stalled_after: ms(m.alert_stalled_after_ms, d.stalled_after),
                unattended_after: ms(m.alert_unattended_after_ms, d.unattended_after),
                dead_letter_window: ms(m.alert_dead_letter_window_ms, d.dead_letter_window),
            }
        },
        breaker: {
            let d = crate::model::BreakerConfig::default();
            crate::model::BreakerConfig {
                failure_percent: m.breaker_failure_percent.unwrap_or(d.failure_percent),
                min_deliveries: m.breaker_min_deliveries.unwrap_or(d.min_deliveries),
                window: m.breaker_window.unwrap_or(d.window),
                baseline_max_age: m.breaker_baseline_max_age_ms.map_or(d.baseline_max_age, Duration::from_millis),
            }
        },
    }
}

pub fn meta_from_config(name: &str, c: &QueueConfig, paused: bool, generation: u64) -> QueueMeta {
    use crate::model::duration_millis as ms;
    QueueMeta {
        name: name.to_string(),
        default_lease_ms: ms(c.default_lease),
        max_attempts: c.max_attempts,
        backoff_initial_ms: ms(c.backoff_initial),
        backoff_max_ms: ms(c.backoff_max),
        dedup_window_ms: ms(c.dedup_window),
        max_payload_bytes: c.max_payload_bytes,
        paused,
        generation,
        weight: c.weight,
        max_in_flight: c.max_in_flight,
        tenant_max_in_flight: c.tenant_max_in_flight,
        alert_oldest_ready_age_ms: Some(ms(c.alerts.oldest_ready_age)),
        alert_backlog: Some(c.alerts.backlog),
        alert_stalled_after_ms: Some(ms(c.alerts.stalled_after)),
        alert_unattended_after_ms: Some(ms(c.alerts.unattended_after)),
        alert_dead_letter_window_ms: Some(ms(c.alerts.dead_letter_window)),
        breaker_failure_percent: Some(c.breaker.failure_percent),
        breaker_min_deliveries: Some(c.breaker.min_deliveries),
        breaker_window: Some(c.breaker.window),
        breaker_baseline_max_age_ms: Some(ms(c.breaker.baseline_max_age)),
        quarantines: Vec::new(),
    }
}

/// Whether leases to `version` are stopped in a queue of generation
/// `generation`: quarantined here, or fenced on the queue's `board` by
/// another partition whose quarantine is on its way. The one definition
/// both the delivery path and the breaker (a stopped version is never a
/// baseline) use.
pub(super) fn version_stopped(
    quarantine: &BTreeMap<String, QuarantineRecord>,
    board: Option<&crate::partition::breaker_board::BreakerBoard>,
    generation: u64,
    version: &str,
) -> bool {
    (!quarantine.is_empty() && quarantine.contains_key(version)) || board.is_some_and(|b| b.fenced(version, generation))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(p: u32, id: u64) -> ReadyPos {
        (p, id)
    }

    #[test]
    fn a_fresh_group_keeps_new_jobs_in_memory() {
        let mut g = Group::new(0);
        assert!(g.exhausted);
        g.insert_ready(pos(5, 2), 10);
        g.insert_ready(pos(5, 1), 11);
        assert!(!g.needs_refill());
        assert_eq!(g.pop().unwrap().0, pos(5, 1));
        assert_eq!(g.pop().unwrap().0, pos(5, 2));
        assert_eq!(g.ready, 0);
    }

    #[test]
    fn jobs_after_the_cursor_are_left_to_the_disk_scan() {
        let mut g = Group::new(3);
        assert!(g.needs_refill());
        g.refilled(vec![(pos(5, 1), 0), (pos(5, 2), 0)], false);
        g.insert_ready(pos(5, 9), 0); // after the cursor: found by a later scan
        g.insert_ready(pos(1, 7), 0); // higher priority, before the cursor
        assert_eq!(g.heads.len(), 3);
        assert_eq!(g.pop().unwrap().0, pos(1, 7));
        assert_eq!(g.ready, 4);
    }

    #[test]
    fn overflowing_heads_move_the_cursor_back() {
        let mut g = Group::new(0);
        for id in 0..(HEAD_CAP as u64 + 10) {
            g.insert_ready(pos(0, id), 0);
        }
        assert_eq!(g.heads.len(), HEAD_CAP);
        assert!(!g.exhausted);
        assert_eq!(g.cursor, Some(pos(0, HEAD_CAP as u64 - 1)));
        assert_eq!(g.ready, HEAD_CAP as u64 + 10);
    }
}
