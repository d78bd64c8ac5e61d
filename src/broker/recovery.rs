//! Start-up recovery of a partition (and the reload after a failed
//! commit): its in-memory state rebuilt from its RocksDB in O(queues +
//! groups + leases), never O(jobs): counters, the groups that have ready
//! jobs, leases, breaker windows, alert state and the next scheduled time.

use super::engine::{Engine, Writes};
use super::queue_state::{ActiveLease, Group, QueueState};
use super::{Command, Registry};
use crate::error::{BrokerError, Result};
use crate::model::{JobId, LeaseId, Millis};
use crate::storage::batch::{Batch, Table};
use crate::storage::keys;
use crate::storage::records::{AlertStateRecord, BreakerWindowRecord, JobRecord, LeaseRecord, QueueCounters};
use crate::storage::Store;
use prost::Message;
use std::collections::{BTreeMap, VecDeque};

impl Engine {
    pub fn recover(
        store: Store,
        registry: Registry,
        rx: flume::Receiver<Command>,
        me: usize,
        shared: std::sync::Arc<super::shared::Shared>,
        log: super::turn_log::TurnLog,
    ) -> Result<Engine> {
        let started = std::time::Instant::now();
        let id_hwm = store.load_id_hwm()?;
        let mut engine = Engine {
            rx,
            w: Writes::new(store, super::record_cache::partition_budget(shared.partitions)),
            registry,
            queues: Default::default(),
            consumers: BTreeMap::new(),
            waiters: Vec::new(),
            outbox: Vec::new(),
            tasks: VecDeque::new(),
            next_id: id_hwm + 1,
            id_hwm,
            now: shared.clock.now(),
            stopping: None,
            next_alert_check: 0,
            unsynced_since: None,
            writer_metrics: Default::default(),
            storage_fault: None,
            me,
            shared,
            log,
            term: None,
        };
        engine.load_all()?;
        let (queues, leases) = engine.recovered();
        tracing::info!(queues, leases, elapsed_ms = started.elapsed().as_millis() as u64, "recovered broker state");
        Ok(engine)
    }

    /// Queues and leases held in memory (what start-up recovery loaded).
    pub fn recovered(&self) -> (usize, usize) {
        (self.queues.len(), self.queues.values().map(|q| q.leases().len()).sum())
    }

    /// Rebuilds all in-memory state from disk: O(queues + groups + leases),
    /// never O(jobs).
    pub fn load_all(&mut self) -> Result<()> {
        // Keep what was observed (alerts in force, latencies) across a reload.
        let mut old = std::mem::take(&mut self.queues);
        self.w.records.clear();
        // Another node may have led the partition since this writer last
        // read it (a cluster): ids go on after the last one stored, never
        // from where this writer stood.
        let id_hwm = self.w.store.load_id_hwm()?;
        self.id_hwm = self.id_hwm.max(id_hwm);
        self.next_id = self.next_id.max(id_hwm + 1);
        let metas = self.w.store.load_queues()?;
        for meta in metas {
            let mut q = load_queue(&self.w.store, &meta, self.shared.shares.of(&meta.name), self.me, self.now)?;
            if let Some(mut o) = old.remove(&meta.name).filter(|o| o.generation == q.generation) {
                q.obs = std::mem::replace(&mut o.obs, super::observe::QueueObs::new(0));
                // The windows in memory are newer than what is on disk, but
                // the failed commit may have held their last save.
                let on_disk: Vec<_> = q.breaker.held().cloned().collect();
                q.breaker = std::mem::take(&mut o.breaker);
                q.breaker.resave_all(on_disk);
            }
            // The alert follows the quarantines on disk.
            super::quarantine::sync_alert(&mut q, self.now);
            self.queues.insert(meta.name.clone(), q);
        }
        self.publish_registry();
        self.publish_health();
        // Leases on disk come back without their Work streams: re-link the
        // ones whose stream is still connected, so windows and disconnects
        // keep working.
        for (id, c) in self.consumers.iter_mut() {
            let before = c.leases.len();
            let queues = &mut self.queues;
            c.leases.retain(|job, q| queues.get_mut(&**q).is_some_and(|q| q.attach_lease(*job, *id)));
            // Leases that did not land give their slots back.
            for _ in c.leases.len()..before {
                c.window.give_back();
            }
        }
        Ok(())
    }
}

/// Loads one queue's counters, groups with ready jobs, leases and next
/// scheduled time.
fn load_queue(
    store: &Store,
    meta: &crate::storage::records::QueueMeta,
    shares: std::sync::Arc<crate::partition::queue_shares::QueueShares>,
    me: usize,
    now: Millis,
) -> Result<QueueState> {
    let table = Table::Queue(&meta.name);
    let counters = match store.get(table, &keys::TOTALS_KEY)? {
        Some(v) => QueueCounters::decode(v.as_slice())
            .map_err(|e| BrokerError::Storage(format!("corrupt counters of {}: {e}", meta.name)))?,
        None => QueueCounters::default(),
    };
    let mut q = QueueState::new(meta, counters, shares, me, now);
    if let Some(v) = store.get(table, &keys::ALERTS_KEY)? {
        match AlertStateRecord::decode(v.as_slice()) {
            Ok(rec) => q.obs = super::observe::QueueObs::restore(&rec, now),
            // Only what the alerts watch, never a job: start watching afresh.
            Err(e) => tracing::warn!(queue = %meta.name, error = %e, "corrupt alert state; alerts start afresh"),
        }
    }
    for p in store.load_policies(&meta.name)? {
        let policy = crate::model::TenantPolicy {
            weight: p.weight.max(1),
            max_in_flight: p.max_in_flight,
            enqueue_rate: p.enqueue_rate,
            enqueue_burst: p.enqueue_burst,
            env_weights: p.env_weights,
        };
        q.set_policy(&p.tenant, policy);
    }
    for (k, v) in scan_prefix(store, &meta.name, &[keys::GROUP_COUNT])? {
        let Some((t, e)) = keys::group_of(&k) else { continue };
        let ready = v.as_slice().try_into().map(u64::from_be_bytes).unwrap_or(0);
        if ready > 0 {
            q.groups.entry(t.to_string()).or_default().insert(e.to_string(), Group::new(ready));
            q.scheduler.activate(t, e);
        }
    }
    for (k, v) in scan_prefix(store, &meta.name, &[keys::LEASE])? {
        let Some(id) = keys::trailing_id(&k) else { continue };
        let lr = LeaseRecord::decode(v.as_slice())
            .map_err(|e| BrokerError::Storage(format!("corrupt lease of job {id}: {e}")))?;
        let Some(raw) = store.get(table, &keys::job(id))? else {
            tracing::warn!(queue = %meta.name, job_id = %id, "lease without a job; dropping it");
            let mut b = Batch::new();
            b.delete(table, &k);
            store.commit(&b, true)?;
            continue;
        };
        let record =
            JobRecord::decode(raw.as_slice()).map_err(|e| BrokerError::Storage(format!("corrupt job {id}: {e}")))?;
        let mut lease_id = [0u8; 16];
        if lr.lease_id.len() == 16 {
            lease_id.copy_from_slice(&lr.lease_id);
        }
        q.begin_lease(
            id,
            ActiveLease {
                lease_id: LeaseId(lease_id),
                leased_at: lr.leased_at(),
                expires_at: lr.expires_at_ms,
                attempt: lr.attempt,
                duration_ms: lr.duration_ms,
                worker_id: std::sync::Arc::from(lr.worker_id),
                worker_version: std::sync::Arc::from(lr.worker_version),
                consumer: None,
                record,
            },
        );
    }
    for (k, v) in scan_prefix(store, &meta.name, &[keys::BREAKER])? {
        let Some(version) = keys::breaker_version(&k) else { continue };
        match BreakerWindowRecord::decode(v.as_slice()) {
            Ok(rec) => q.breaker.restore(&q.config.breaker, version, &rec),
            // Only evidence for the breaker, never a job: start that
            // version afresh rather than refuse to start.
            Err(e) => tracing::warn!(queue = %meta.name, worker_version = version, error = %e,
                "corrupt breaker window; that version starts without history"),
        }
    }
    q.shares.leases_recovered(q.leases().len() as u64);
    q.next_due = first_scheduled(store, &meta.name, 0)?;
    Ok(q)
}

/// All entries under a prefix (used at startup for small key ranges).
fn scan_prefix(store: &Store, queue: &str, prefix: &[u8]) -> Result<Vec<crate::storage::Entry>> {
    Ok(store.scan(queue, prefix, &keys::prefix_end(prefix), usize::MAX)?.entries)
}

/// The run_at of the first scheduled job at or after `from`.
pub(super) fn first_scheduled(store: &Store, queue: &str, from: Millis) -> Result<Option<Millis>> {
    let scan = store.scan(queue, &keys::scheduled(from, JobId(0)), &[keys::SCHEDULED + 1], 1)?;
    Ok(scan.entries.first().and_then(|(k, _)| keys::scheduled_parts(k)).map(|(t, _)| t))
}
