//! Queue administration applied by the engine: create, update, pause,
//! delete, per-tenant policies, and the stats read from the writer's state.

use super::engine::Engine;
use super::queue_state::{meta_from_config, QueueState};
use super::reply_after;
use super::{view, QueueConfigPatch, Reply};
use crate::error::{BrokerError, Result};
use crate::model::{QueueConfig, TenantPolicy};
use crate::pb;
use crate::storage::records::QueueCounters;
use std::time::Duration;

impl Engine {
    pub(super) fn create_queue(&mut self, name: String, config: QueueConfig, reply: Reply<pb::Queue>) {
        if self.queues.contains_key(&name) {
            let _ = reply.send(Err(BrokerError::QueueExists(name)));
            return;
        }
        // Created fresh with the batch that stores its definition: a column
        // family left over from a drop that did not finish is never inherited.
        self.w.create_queue(&name);
        let generation = self.alloc_id().0;
        let meta = meta_from_config(&name, &config, false, generation);
        let q = QueueState::new(&meta, QueueCounters::default(), self.shared.shares.of(&name), self.me, self.now);
        self.queues.insert(name.clone(), q);
        self.stage_meta(&name);
        tracing::info!(queue = %name, "queue created");
        self.w.after(reply_after(reply, view::queue(&name, &config, false)));
    }

    pub(super) fn stage_meta(&mut self, name: &str) {
        let Some(q) = self.queues.get(name) else { return };
        let meta = q.meta();
        self.w.put_queue_meta(&meta);
        self.publish_registry();
    }

    pub(super) fn update_queue(&mut self, name: String, patch: QueueConfigPatch, reply: Reply<pb::Queue>) {
        let q = or_reply!(self.queue_mut(&name), reply);
        let config = patch.apply(&q.config);
        if let Err(e) = config.validate() {
            let _ = reply.send(Err(e));
            return;
        }
        if config.breaker.window != q.config.breaker.window {
            // Windows are sized once; they refill at the new size.
            q.breaker.clear();
        }
        q.config = config.clone();
        let paused = q.paused;
        self.stage_meta(&name);
        self.w.after(reply_after(reply, view::queue(&name, &config, paused)));
    }

    pub(super) fn set_paused(&mut self, name: String, paused: bool, reply: Reply<pb::Queue>) {
        let q = or_reply!(self.queue_mut(&name), reply);
        q.paused = paused;
        let config = q.config.clone();
        self.stage_meta(&name);
        tracing::info!(queue = %name, paused, "queue pause state changed");
        self.w.after(reply_after(reply, view::queue(&name, &config, paused)));
    }

    pub(super) fn delete_queue(&mut self, name: String, force: bool, reply: Reply<bool>) {
        let q = or_reply!(self.queue_mut(&name), reply);
        let total = q.total_jobs();
        if total > 0 && !force {
            let msg = format!(
                "queue {name:?} still holds {total} jobs (ready {}, scheduled {}, leased {}, dead {}); \
                 purge it first or delete with force=true",
                q.ready_total(),
                q.counters.scheduled,
                q.leases().len(),
                q.counters.dead
            );
            let _ = reply.send(Err(BrokerError::FailedPrecondition(msg)));
            return;
        }
        self.drop_queue_now(&name);
        tracing::info!(queue = %name, force, dropped_jobs = total, partition = self.me, "queue deleted");
        self.w.after(reply_after(reply, true));
        self.commit();
    }

    /// Drops a queue with whatever it holds: its leases' slots go back to
    /// their streams, its definition, policies and column family go in one
    /// batch (committed by the caller).
    pub(super) fn drop_queue_now(&mut self, name: &str) {
        // Writes already staged for this queue must land before its column
        // family goes away.
        self.commit();
        self.queues.remove(name);
        for c in self.consumers.values_mut() {
            let before = c.leases.len();
            c.leases.retain(|_, q| &**q != name);
            let gone = (before - c.leases.len()) as u32;
            for _ in 0..gone {
                c.window.give_back();
            }
            if gone > 0 {
                self.shared.wake(self.me, c.window.take_wanting());
            }
        }
        self.w.delete_queue(name);
        // Its jobs' cached records would hold budget forever.
        self.w.records.clear();
        self.publish_registry();
    }

    pub(super) fn stats(&mut self, queue: &str) -> Result<pb::QueueStats> {
        let mut unbounded = usize::MAX;
        let oldest = self.oldest_ready_at(queue, &mut unbounded);
        let workers = self.streams_on(queue);
        let q = self.queues.get(queue).ok_or_else(|| BrokerError::QueueNotFound(queue.to_string()))?;
        let mut groups = Vec::new();
        for (t, envs) in &q.groups {
            for (e, g) in envs {
                if g.ready == 0 && g.leased == 0 {
                    continue;
                }
                groups.push(pb::GroupStats {
                    tenant: t.clone(),
                    environment: e.clone(),
                    ready: g.ready,
                    leased: g.leased,
                });
            }
        }
        groups.sort_by(|a, b| (b.ready + b.leased).cmp(&(a.ready + a.leased)).then(a.tenant.cmp(&b.tenant)));
        groups.truncate(1000);
        let c = &q.counters;
        Ok(pb::QueueStats {
            queue: queue.to_string(),
            scheduled: c.scheduled,
            ready: q.ready_total(),
            leased: q.leases().len() as u64,
            dead: c.dead,
            oldest_ready_age: oldest.map(|o| view::duration(Duration::from_millis(self.now.saturating_sub(o)))),
            paused: q.paused,
            groups,
            enqueued_total: c.enqueued_total,
            acked_total: c.acked_total,
            nacked_total: c.nacked_total,
            expired_total: c.expired_total,
            deduplicated_total: c.deduplicated_total,
            dead_lettered_total: c.dead_lettered_total,
            connected_workers: workers as u32,
            tenant_policies: {
                let mut p: Vec<_> =
                    q.policies.iter().map(|(t, p)| view::tenant_policy(t, p, q.leases().of_tenant(t))).collect();
                p.sort_by(|a, b| a.tenant.cmp(&b.tenant));
                p
            },
            alerts: q
                .obs
                .active
                .iter()
                .map(|(k, a)| pb::QueueAlert {
                    kind: k.as_str().to_string(),
                    since: Some(view::timestamp(a.since)),
                    message: a.message(*k, &q.config.alerts, self.now),
                })
                .collect(),
            leased_total: c.leased_total,
            quarantined_versions: q.quarantine.values().map(view::quarantine).collect(),
            worker_versions: q
                .breaker
                .versions()
                .into_iter()
                .map(|(v, w)| pb::WorkerVersionStats {
                    worker_version: v.to_string(),
                    deliveries: w.deliveries(),
                    failures: w.failures(),
                    quarantined: q.is_quarantined(v),
                })
                .collect(),
            quarantines_total: c.quarantines_total,
            released_total: c.released_total,
        })
    }

    // -------------------------------------------------------- tenant policy

    pub(super) fn set_tenant_policy(
        &mut self,
        queue: String,
        tenant: String,
        env: Option<String>,
        policy: TenantPolicy,
        reply: Reply<pb::TenantPolicy>,
    ) {
        let q = or_reply!(self.queue_mut(&queue), reply);
        let mut next = q.policies.get(&tenant).cloned().unwrap_or_default();
        match env {
            Some(env) => {
                if policy.weight == crate::scheduler::DEFAULT_WEIGHT {
                    next.env_weights.remove(&env);
                } else {
                    next.env_weights.insert(env, policy.weight);
                }
            }
            None => {
                next = TenantPolicy { env_weights: next.env_weights, ..policy };
            }
        }
        q.set_policy(&tenant, next.clone());
        let leased = q.leases().of_tenant(&tenant);
        self.w.put_policy(&queue, &tenant, &next);
        self.publish_registry();
        tracing::info!(queue = %queue, tenant = %tenant, weight = next.weight, max_in_flight = next.max_in_flight,
            enqueue_rate = next.enqueue_rate, "tenant policy set");
        self.w.after(reply_after(reply, view::tenant_policy(&tenant, &next, leased)));
    }
}
