//! Shared definitions: queue definitions, tenant policies and quarantines
//! apply to every partition of a broker.
//!
//! Partition 0 holds the catalog, the source of truth; every partition keeps
//! a copy of each definition in its own `meta`, so it serves alone. A change
//! is made in partition 0 first and then *adopted* by the others (a command
//! that brings a partition's copy of one queue to exactly partition 0's), and
//! answered once all have it. Two changes go the other way round, so that
//! partition 0 changes last: a delete that must find the queue empty, and the
//! lift of a quarantine (see [`super::Broker`]).
//!
//! At start, before the broker serves, [`reconcile`] brings every partition
//! to partition 0's catalog: queues partition 0 has are adopted, queues it
//! lacks are dropped, and a quarantine that a partition holds and partition
//! 0 lacks (its breaker tripped, and the broker died before partition 0
//! heard) is first added to partition 0. So a crash at any point of a change
//! leaves partitions agreeing after the restart: the change happened exactly
//! when partition 0 committed it.
//!
//! A breaker that trips in partition p ≠ 0 quarantines the version there,
//! then sends the quarantine to partition 0, which adopts it and sends it on
//! to the others.

use super::engine::Engine;
use super::queue_state::{config_from_meta, QueueState};
use super::Reply;
use crate::error::Result;
use crate::storage::records::{QuarantineRecord, QueueCounters, QueueMeta, TenantPolicyRecord};

/// One queue's shared definition: its meta (config, paused, generation,
/// quarantines) and its tenant policies, sorted by tenant.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct QueueDef {
    pub meta: QueueMeta,
    pub policies: Vec<TenantPolicyRecord>,
}

impl QueueDef {
    pub fn name(&self) -> &str {
        &self.meta.name
    }
}

pub(crate) fn policy_record(tenant: &str, p: &crate::model::TenantPolicy) -> TenantPolicyRecord {
    TenantPolicyRecord {
        tenant: tenant.to_string(),
        weight: p.weight,
        max_in_flight: p.max_in_flight,
        enqueue_rate: p.enqueue_rate,
        enqueue_burst: p.enqueue_burst,
        env_weights: p.env_weights.clone(),
    }
}

pub(crate) fn policy_of(r: &TenantPolicyRecord) -> crate::model::TenantPolicy {
    crate::model::TenantPolicy {
        weight: r.weight.max(1),
        max_in_flight: r.max_in_flight,
        enqueue_rate: r.enqueue_rate,
        enqueue_burst: r.enqueue_burst,
        env_weights: r.env_weights.clone(),
    }
}

impl Engine {
    /// This partition's copy of every queue's definition.
    pub(super) fn definitions(&self) -> Vec<QueueDef> {
        let mut out: Vec<QueueDef> = self.queues.values().map(definition).collect();
        out.sort_by(|a, b| a.meta.name.cmp(&b.meta.name));
        out
    }

    /// Brings this partition's copy of queue `def.meta.name` to exactly
    /// `def`: made (fresh) when missing or of another generation, then its
    /// config, pause, policies and quarantines set. Leases of a version
    /// newly quarantined go back to ready, as when the breaker trips here.
    pub(super) fn adopt(&mut self, def: QueueDef, reply: Option<Reply<()>>) {
        let name = def.meta.name.clone();
        if self.queues.get(&name).is_some_and(|q| q.generation != def.meta.generation) {
            tracing::warn!(queue = %name, partition = self.me, "queue of another generation than the catalog's; dropping it");
            self.drop_queue_now(&name);
        }
        if !self.queues.contains_key(&name) {
            self.w.create_queue(&name);
            let q =
                QueueState::new(&def.meta, QueueCounters::default(), self.shared.shares.of(&name), self.me, self.now);
            self.queues.insert(name.clone(), q);
            tracing::info!(queue = %name, partition = self.me, "queue adopted from the catalog");
        }
        let now = self.now;
        let result = (|| -> Result<()> {
            let q = self.queue_mut(&name)?;
            let config = config_from_meta(&def.meta);
            if config.breaker.window != q.config.breaker.window {
                q.breaker.clear();
            }
            q.config = config;
            q.paused = def.meta.paused;
            let wanted: std::collections::HashSet<&str> = def.policies.iter().map(|p| p.tenant.as_str()).collect();
            let gone: Vec<String> = q.policies.keys().filter(|t| !wanted.contains(t.as_str())).cloned().collect();
            for t in gone {
                self.queue_mut(&name)?.set_policy(&t, crate::model::TenantPolicy::default());
                self.w.put_policy(&name, &t, &crate::model::TenantPolicy::default());
            }
            for r in &def.policies {
                let p = policy_of(r);
                let q = self.queue_mut(&name)?;
                if q.policies.get(&r.tenant) != Some(&p) {
                    q.set_policy(&r.tenant, p.clone());
                    self.w.put_policy(&name, &r.tenant, &p);
                }
            }
            let q = self.queue_mut(&name)?;
            let lifted: Vec<String> = q
                .quarantine
                .keys()
                .filter(|v| !def.meta.quarantines.iter().any(|r| &r.worker_version == *v))
                .cloned()
                .collect();
            for v in lifted {
                q.quarantine.remove(&v);
                q.breaker.reset(&v);
            }
            for r in &def.meta.quarantines {
                if !self.queue_mut(&name)?.quarantine.contains_key(&r.worker_version) {
                    self.adopt_quarantine(&name, r.clone())?;
                }
            }
            let q = self.queue_mut(&name)?;
            super::quarantine::sync_alert(q, now);
            Ok(())
        })();
        if let Err(e) = result {
            if let Some(reply) = reply {
                let _ = reply.send(Err(e));
            }
            return;
        }
        self.stage_meta(&name);
        self.publish_health();
        if let Some(reply) = reply {
            self.w.after(super::reply_after(reply, ()));
        }
    }

    /// Quarantines `rec.worker_version` in `queue` as another partition's
    /// breaker decided: its leases here go back to ready (no attempt spent),
    /// and the attempts its failures in this partition's window spent are
    /// given back. The record keeps the tripping partition's figures (over
    /// all partitions), except what this partition did itself: the leases
    /// it returned and the attempts it refunded, so the broker's stats add
    /// those up over partitions.
    pub(super) fn adopt_quarantine(&mut self, queue: &str, mut rec: QuarantineRecord) -> Result<()> {
        let returned = self.return_version_leases(queue, &rec.worker_version)?;
        let refunds = self.queue_mut(queue)?.breaker.refunds(&rec.worker_version);
        let mut refunded = 0u32;
        for (job, n) in refunds {
            refunded += self.refund(queue, job, n)?;
        }
        rec.returned_leases = returned;
        rec.refunded_attempts = refunded;
        tracing::warn!(queue, partition = self.me, worker_version = %rec.worker_version, returned_leases = returned, refunded_attempts = refunded,
            "worker version quarantined (decided by another partition's breaker)");
        let q = self.queue_mut(queue)?;
        q.breaker.reset(&rec.worker_version);
        q.quarantine.insert(rec.worker_version.clone(), rec);
        Ok(())
    }

    /// A quarantine decided by partition `from`'s breaker. Partition 0
    /// adopts it into the catalog and, once that is committed, sends it on
    /// to every other partition but `from`; the others adopt it.
    pub(super) fn shared_quarantine(&mut self, queue: String, rec: QuarantineRecord, from: usize) {
        let known = match self.queues.get(&queue) {
            Some(q) => q.quarantine.contains_key(&rec.worker_version),
            None => return,
        };
        if !known {
            if let Err(e) = self.adopt_quarantine(&queue, rec.clone()) {
                self.w.poison(e);
                return;
            }
            let now = self.now;
            if let Some(q) = self.queues.get_mut(&queue) {
                super::quarantine::sync_alert(q, now);
            }
            self.stage_meta(&queue);
            self.publish_health();
        }
        if self.me == 0 {
            let shared = self.shared.clone();
            self.w.after(Box::new(move |err| {
                if err.is_some() {
                    return;
                }
                for p in (1..shared.partitions).filter(|p| *p != from) {
                    let cmd = super::Command::Quarantined { queue: queue.clone(), rec: rec.clone(), from };
                    shared.send_surely(p, cmd);
                }
            }));
        }
    }

    /// Sends a quarantine this partition's breaker decided to partition 0,
    /// once it is committed here.
    pub(super) fn share_quarantine(&mut self, queue: &str, rec: &QuarantineRecord) {
        if self.me == 0 && self.shared.partitions == 1 {
            return;
        }
        let (shared, me, queue, rec) = (self.shared.clone(), self.me, queue.to_string(), rec.clone());
        self.w.after(Box::new(move |err| {
            if err.is_some() {
                return;
            }
            if me == 0 {
                for p in 1..shared.partitions {
                    shared.send_surely(
                        p,
                        super::Command::Quarantined { queue: queue.clone(), rec: rec.clone(), from: 0 },
                    );
                }
            } else {
                shared.send_surely(0, super::Command::Quarantined { queue, rec, from: me });
            }
        }));
    }
}

/// Brings every partition to partition 0's catalog (see the module's
/// comment); runs at start, before the broker serves, off the runtime.
pub(super) fn reconcile(parts: &[super::partition::Partition]) -> Result<()> {
    if parts.len() == 1 {
        return Ok(());
    }
    let defs = parts
        .iter()
        .map(|p| p.call_blocking(|reply| super::Command::Definitions { reply }))
        .collect::<Result<Vec<_>>>()?;
    let plan = plan(&defs);
    for (p, def) in plan.adopt {
        tracing::warn!(partition = p, queue = %def.name(), "partition differs from the catalog after a restart; adopting the catalog's definition");
        parts[p].call_blocking(|reply| super::Command::Adopt { def, reply: Some(reply) })?;
    }
    for (p, name) in plan.drop {
        tracing::warn!(partition = p, queue = %name, "queue the catalog does not hold (a create or delete cut short); dropping it");
        match parts[p].call_blocking(|reply| super::Command::DeleteQueue { name, force: true, reply }) {
            Ok(_) | Err(crate::error::BrokerError::QueueNotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn definition(q: &QueueState) -> QueueDef {
    let mut policies: Vec<TenantPolicyRecord> = q.policies.iter().map(|(t, p)| policy_record(t, p)).collect();
    policies.sort_by(|a, b| a.tenant.cmp(&b.tenant));
    QueueDef { meta: q.meta(), policies }
}

/// What [`reconcile`] does to bring partitions to partition 0's catalog,
/// decided from every partition's definitions (pure, so it is tested on its
/// own).
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Plan {
    /// (partition, definition to adopt); partition 0's own come first.
    pub adopt: Vec<(usize, QueueDef)>,
    /// (partition, queue to drop).
    pub drop: Vec<(usize, String)>,
}

/// The plan that makes every partition hold partition 0's catalog, after
/// adding to partition 0 the quarantines other partitions hold of the same
/// queue generation.
pub(crate) fn plan(defs: &[Vec<QueueDef>]) -> Plan {
    let mut plan = Plan::default();
    let Some(first) = defs.first() else { return plan };
    let mut catalog: Vec<QueueDef> = first.clone();
    for def in catalog.iter_mut() {
        let mut grew = false;
        for other in defs.iter().skip(1) {
            let Some(o) = other.iter().find(|o| o.name() == def.name() && o.meta.generation == def.meta.generation)
            else {
                continue;
            };
            for r in &o.meta.quarantines {
                if !def.meta.quarantines.iter().any(|m| m.worker_version == r.worker_version) {
                    def.meta.quarantines.push(r.clone());
                    grew = true;
                }
            }
        }
        if grew {
            def.meta.quarantines.sort_by(|a, b| a.worker_version.cmp(&b.worker_version));
            plan.adopt.push((0, def.clone()));
        }
    }
    for (p, theirs) in defs.iter().enumerate().skip(1) {
        for def in &catalog {
            let same = theirs.iter().find(|o| o.name() == def.name()).is_some_and(|o| same_def(o, def));
            if !same {
                plan.adopt.push((p, def.clone()));
            }
        }
        for o in theirs {
            if !catalog.iter().any(|d| d.name() == o.name()) {
                plan.drop.push((p, o.name().to_string()));
            }
        }
    }
    plan
}

/// Equal definitions, quarantines compared by version only (each partition
/// keeps its own figures of a quarantine).
fn same_def(a: &QueueDef, b: &QueueDef) -> bool {
    let versions = |d: &QueueDef| {
        let mut v: Vec<String> = d.meta.quarantines.iter().map(|r| r.worker_version.clone()).collect();
        v.sort();
        v
    };
    let strip = |d: &QueueDef| QueueMeta { quarantines: Vec::new(), ..d.meta.clone() };
    strip(a) == strip(b) && a.policies == b.policies && versions(a) == versions(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(name: &str, generation: u64, paused: bool, quarantined: &[&str]) -> QueueDef {
        let mut meta = super::super::queue_state::meta_from_config(
            name,
            &crate::model::QueueConfig::default(),
            paused,
            generation,
        );
        meta.quarantines = quarantined
            .iter()
            .map(|v| QuarantineRecord { worker_version: v.to_string(), ..Default::default() })
            .collect();
        QueueDef { meta, policies: Vec::new() }
    }

    #[test]
    fn partitions_that_agree_need_nothing() {
        let all = vec![vec![def("a", 1, false, &[])], vec![def("a", 1, false, &[])]];
        assert_eq!(plan(&all), Plan::default());
    }

    #[test]
    fn a_change_partition_zero_committed_reaches_the_others_and_one_it_did_not_is_undone() {
        // p0 created b and paused a; p1 has neither change; p2 still has c,
        // which p0 dropped.
        let all = vec![
            vec![def("a", 1, true, &[]), def("b", 5, false, &[])],
            vec![def("a", 1, false, &[])],
            vec![def("a", 1, true, &[]), def("b", 5, false, &[]), def("c", 3, false, &[])],
        ];
        let p = plan(&all);
        let adopted: Vec<(usize, &str, bool)> = p.adopt.iter().map(|(i, d)| (*i, d.name(), d.meta.paused)).collect();
        assert_eq!(adopted, [(1, "a", true), (1, "b", false)]);
        assert_eq!(p.drop, [(2, "c".to_string())]);
    }

    #[test]
    fn a_quarantine_another_partition_holds_joins_the_catalog_first_then_everyone() {
        let all = vec![
            vec![def("a", 1, false, &[])],
            vec![def("a", 1, false, &["v2"])],
            vec![def("a", 1, false, &[])],
            // Another generation's quarantine is not this queue's.
            vec![def("a", 9, false, &["v3"])],
        ];
        let p = plan(&all);
        let order: Vec<(usize, Vec<String>)> = p
            .adopt
            .iter()
            .map(|(i, d)| (*i, d.meta.quarantines.iter().map(|r| r.worker_version.clone()).collect()))
            .collect();
        assert_eq!(
            order,
            [(0, vec!["v2".to_string()]), (2, vec!["v2".to_string()]), (3, vec!["v2".to_string()])],
            "partition 0 first; partition 1 already has it"
        );
    }
}
