//! A partition's writer thread: the only owner of its mutable state.
//!
//! One turn of the loop: read the time, take every command waiting, apply
//! each to memory and to the pending batch (`writes.rs`; what a command
//! does to a job is in `lifecycle/`), run timers (due scheduled jobs,
//! expired leases), commit the batch with one fsync, answer every caller,
//! then hand ready jobs to waiting workers (whose leases are committed the
//! same way). A caller is answered only after its write is durable.
//! Start-up recovery is in `recovery.rs`.

use super::dispatch::{Consumer, Outgoing, Waiter};
use super::queue_state::QueueState;
use super::tasks::Task;
use super::{Command, Registry, SettleAction, SettleReply};
use crate::error::BrokerError;
use crate::model::{JobId, Millis};
use crate::storage::keys;
use prost::Message;
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

/// Most commands applied in one turn, so one fsync never waits on an
/// unbounded amount of work.
const MAX_COMMANDS_PER_TURN: usize = 4096;
/// Most staged writes per turn: a turn full of big batches would otherwise
/// make a trickling tenant's single enqueue wait behind all of them.
const MAX_WRITES_PER_TURN: usize = 16_384;
/// Longest sleep between turns: timers are checked at least this often.
const MAX_IDLE: Duration = Duration::from_millis(250);
/// Longest a relaxed write (lease, ack, nack, expiry) waits for an fsync.
const WAL_SYNC_LAG: Duration = Duration::from_millis(100);
/// How often the writer tries a small write while the disk refuses writes,
/// so health turns SERVING again without waiting for a client to write.
const STORAGE_PROBE_INTERVAL: Duration = Duration::from_secs(1);

pub(super) use super::writes::{AfterCommit, Writes};

/// Writes are failing because of the disk (full, read-only, I/O errors).
pub(super) struct StorageFault {
    /// The last write tried (a commit or a probe).
    pub last_try: std::time::Instant,
    pub error: BrokerError,
}

pub(super) struct Engine {
    pub(super) rx: flume::Receiver<Command>,
    pub(super) w: Writes,
    pub(super) registry: Registry,
    pub(super) queues: crate::model::FastMap<String, QueueState>,
    pub(super) consumers: BTreeMap<u64, Consumer>,
    pub(super) waiters: Vec<Waiter>,
    /// Work stream deliveries waiting for their leases to commit.
    pub(super) outbox: Vec<Outgoing>,
    pub(super) tasks: VecDeque<Task>,
    /// Next job id to hand out.
    pub(super) next_id: u64,
    /// Highest id recorded on disk; ids above it are re-usable after a crash
    /// only because no caller ever saw them.
    pub(super) id_hwm: u64,
    /// The time of this turn: one value for the whole turn so ordering
    /// decisions (scheduled vs ready, promotion) agree with each other.
    pub(super) now: Millis,
    pub(super) stopping: Option<tokio::sync::oneshot::Sender<()>>,
    /// When alerts are next evaluated.
    pub(super) next_alert_check: Millis,
    /// Since when committed writes (leases, acks) wait for an fsync; see
    /// [`Engine::sync_lagging_wal`].
    pub(super) unsynced_since: Option<std::time::Instant>,
    pub(super) writer_metrics: super::monitor::WriterMetrics,
    /// Set while writes fail because of the disk; see [`Engine::probe_storage`].
    pub(super) storage_fault: Option<StorageFault>,
    /// This partition's index among the broker's partitions: the top bits
    /// of the ids it makes, its entry in shared tables.
    pub(super) me: usize,
    /// What the broker's partitions share (peers, split tables, health).
    pub(super) shared: std::sync::Arc<super::shared::Shared>,
    /// Where each turn's batch goes: this partition's RocksDB, or its Raft
    /// group in a cluster.
    pub(super) log: super::turn_log::TurnLog,
    /// In a cluster: the Raft term in which this writer took the partition
    /// over (`None` while it does not lead); see `leadership.rs`.
    pub(super) term: Option<u64>,
}

impl Engine {
    pub fn publish_registry(&self) {
        if let Ok(mut reg) = self.registry.write() {
            reg.clear();
            for q in self.queues.values() {
                let info =
                    super::QueueInfo { config: q.config.clone(), paused: q.paused, policies: q.policies.clone() };
                reg.insert(q.name.clone(), info);
            }
        }
    }

    /// A new job id: this partition's next sequence number, with the
    /// partition in its top bits (partition 0's ids are plain sequences).
    pub fn alloc_id(&mut self) -> JobId {
        let seq = self.next_id;
        self.next_id += 1;
        crate::partition::placement::job_id(crate::partition::placement::PartitionId(self.me as u16), seq)
    }

    pub fn run(mut self) {
        // In a cluster: learn at once whether this node leads, so calls are
        // served or sent to the leader from the start.
        let mut serving = self.follow_leadership();
        loop {
            let timeout = self.next_wakeup(serving);
            let first = match self.rx.recv_timeout(timeout) {
                Ok(cmd) => Some(cmd),
                Err(flume::RecvTimeoutError::Timeout) => None,
                Err(flume::RecvTimeoutError::Disconnected) => break,
            };
            self.now = self.shared.clock.now();
            serving = self.follow_leadership();
            if let Some(cmd) = first {
                self.apply(cmd);
            }
            let mut n = 1;
            while n < MAX_COMMANDS_PER_TURN && self.w.staged() < MAX_WRITES_PER_TURN {
                match self.rx.try_recv() {
                    Ok(cmd) => self.apply(cmd),
                    Err(_) => break,
                }
                n += 1;
            }
            if serving {
                self.w.relaxed = true;
                self.run_timers();
                self.w.relaxed = false;
                self.check_alerts();
                self.run_tasks();
            }
            // A writer that does not serve (its node follows, in a cluster)
            // writes nothing of its own; a command that slipped in as
            // leadership moved is refused by the failed commit.
            if serving || !self.w.is_empty() {
                self.commit();
            }
            if serving {
                // Dispatch reads the ready index, so it runs on committed state.
                self.w.relaxed = true;
                self.dispatch();
                self.w.relaxed = false;
                self.commit();
            }
            self.sync_lagging_wal();
            self.probe_storage();
            self.finish_waiters();
            if self.stopping.is_some() && self.rx.is_empty() {
                break;
            }
        }
        self.commit();
        if let Err(e) = self.w.store.sync_wal() {
            tracing::error!(error = %e, "final WAL sync failed");
        }
        if let Err(e) = self.w.store.flush_memtables() {
            tracing::warn!(error = %e, "flushing memtables at shutdown failed; the next start replays the WAL");
        }
        tracing::info!("writer stopped; storage closed cleanly");
        if let Some(done) = self.stopping.take() {
            let _ = done.send(());
        }
    }

    /// Fsyncs the WAL when relaxed writes have waited [`WAL_SYNC_LAG`]: they
    /// survive a broker crash as written, and this bounds what an OS crash
    /// can roll back (to redeliveries) to that long.
    fn sync_lagging_wal(&mut self) {
        if self.unsynced_since.is_some_and(|t| t.elapsed() >= WAL_SYNC_LAG) {
            match self.w.store.sync_wal() {
                Ok(()) => {
                    self.writer_metrics.syncs += 1;
                    self.unsynced_since = None;
                }
                Err(e) => {
                    tracing::error!(error = %e, "WAL sync failed");
                    self.storage_failed(&e);
                }
            }
        }
    }

    /// Notes a failed write: when the disk is at fault (full, read-only,
    /// I/O errors) the broker reports NOT_SERVING with the reason until a
    /// write succeeds again.
    fn storage_failed(&mut self, e: &BrokerError) {
        if !matches!(e, BrokerError::DiskFull(_) | BrokerError::StorageUnavailable(_)) {
            return;
        }
        let last_try = std::time::Instant::now();
        if self.storage_fault.is_none() {
            tracing::error!(error = %e, "writes to the data dir fail; reporting NOT_SERVING until they succeed again");
            self.shared.post_fault(self.me, Some(e.to_string()));
        }
        self.storage_fault = Some(StorageFault { last_try, error: e.clone() });
    }

    fn storage_ok(&mut self) {
        if let Some(f) = self.storage_fault.take() {
            tracing::warn!(previous_error = %f.error, "writes to the data dir succeed again; serving");
            self.shared.post_fault(self.me, None);
        }
    }

    /// While writes fail, tries one small synced write a second: RocksDB
    /// resumes by itself once a full disk has room again, and nobody may be
    /// writing to notice. Some faults (a filesystem gone read-only, I/O
    /// errors) stop RocksDB's writes for good; then the probe keeps failing
    /// and the broker keeps reporting NOT_SERVING until it is restarted.
    fn probe_storage(&mut self) {
        let Some(f) = &self.storage_fault else { return };
        if f.last_try.elapsed() < STORAGE_PROBE_INTERVAL {
            return;
        }
        match self.w.store.probe_write() {
            Ok(()) => self.storage_ok(),
            Err(e) => {
                let known = self.storage_fault.as_ref().is_some_and(|f| f.error.to_string() == e.to_string());
                if !known {
                    tracing::error!(error = %e, "writes to the data dir still fail");
                }
                self.storage_failed(&e);
            }
        }
    }

    /// How long the writer may wait for a command. Timers only run while
    /// it `serving` (a follower's leases are the leader's to expire), so
    /// only then do they wake it.
    fn next_wakeup(&self, serving: bool) -> Duration {
        if !self.w.is_empty() {
            return Duration::ZERO;
        }
        if !serving {
            return MAX_IDLE;
        }
        if !self.tasks.is_empty() {
            return Duration::ZERO;
        }
        if let Some(t) = self.unsynced_since {
            return WAL_SYNC_LAG.saturating_sub(t.elapsed());
        }
        let now = self.shared.clock.now();
        let mut due = now + MAX_IDLE.as_millis() as u64;
        if let Some(f) = &self.storage_fault {
            let wait = STORAGE_PROBE_INTERVAL.saturating_sub(f.last_try.elapsed());
            due = due.min(now + wait.as_millis() as u64);
        }
        for q in self.queues.values() {
            if let Some(t) = q.leases().next_expiry() {
                due = due.min(t);
            }
            if let Some(t) = q.next_due {
                due = due.min(t);
            }
        }
        for w in &self.waiters {
            due = due.min(w.deadline);
        }
        Duration::from_millis(due.saturating_sub(now))
    }

    fn apply(&mut self, cmd: Command) {
        match cmd {
            Command::Enqueue { jobs, batch, reply } => self.enqueue(jobs, batch, reply),
            Command::EnqueueCoordinated { jobs, intent, reply } => self.enqueue_coordinated(jobs, intent, reply),
            Command::ApplyPart { from, seq, jobs, reply } => self.apply_part(from, seq, jobs, reply),
            Command::DropIntent { seq, reply } => self.drop_intent(seq, reply),
            Command::DropApplied { which, reply } => self.drop_applied(which, reply),
            Command::Intents { reply } => {
                let _ = reply.send(self.w.store.load_intents());
            }
            Command::Settle { queue, job, lease, action, reply } => self.settle(queue, job, lease, action, reply),
            Command::Acks { acks, tx } => {
                for (queue, job, lease) in acks {
                    let reply = SettleReply::Stream { tx: tx.clone(), job_id: job.to_string(), kind: "ack" };
                    self.settle(queue, job, lease, SettleAction::Ack, reply);
                }
            }
            Command::Cancel { queue, job, reply } => self.cancel(queue, job, reply),
            Command::Subscribe { id, sub, tx, window } => self.subscribe(id, sub, tx, window),
            Command::Unsubscribe { id } => self.unsubscribe(id, "worker disconnected"),
            Command::Drain { id, done } => self.drain(id, done),
            Command::ListWorkers { queue, reply } => {
                let _ = reply.send(Ok(self.workers(queue.as_deref())));
            }
            Command::Lease { spec, window, reply } => self.add_waiter(spec, window, reply),
            Command::Wake => {}
            Command::Definitions { reply } => {
                let _ = reply.send(Ok(self.definitions()));
            }
            Command::Adopt { def, reply } => self.adopt(def, reply),
            Command::Quarantined { queue, rec, from } => self.shared_quarantine(queue, rec, from),
            Command::CreateQueue { name, config, reply } => self.create_queue(name, config, reply),
            Command::UpdateQueue { name, patch, reply } => self.update_queue(name, patch, reply),
            Command::DeleteQueue { name, force, reply } => self.delete_queue(name, force, reply),
            Command::SetPaused { name, paused, reply } => self.set_paused(name, paused, reply),
            Command::Stats { queue, reply } => {
                let _ = reply.send(self.stats(&queue));
            }
            Command::Metrics { reply } => {
                let _ = reply.send(Ok(self.metrics()));
            }
            Command::Redrive { queue, which, reply } => self.start_redrive(queue, which, reply),
            Command::Purge { queue, state, scope, reply } => self.start_purge(queue, state, scope, reply),
            Command::SetTenantPolicy { queue, tenant, env, policy, reply } => {
                self.set_tenant_policy(queue, tenant, env, policy, reply)
            }
            Command::LiftQuarantine { queue, version, reply } => self.lift_quarantine(queue, version, reply),
            Command::Shutdown { done } => self.begin_shutdown(done),
        }
    }

    /// Expires due leases and promotes due scheduled jobs, in every queue.
    pub(super) fn run_timers(&mut self) {
        let now = self.now;
        let names: Vec<String> = self.queues.keys().cloned().collect();
        for name in names {
            let Some(q) = self.queues.get(&name) else { continue };
            let due = q.next_due.is_some_and(|t| t <= now);
            self.expire_leases(&name);
            if due {
                if let Err(e) = self.promote(&name) {
                    self.w.poison(e);
                }
            }
        }
    }

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

    /// Commits the batch (one fsync) and runs what waited on it.
    pub fn commit(&mut self) {
        // Counters follow the writes they count: they need no sync of their own.
        self.w.relaxed = true;
        self.stage_counters();
        self.w.relaxed = false;
        if self.w.is_empty() {
            return;
        }
        let (batch, sync) = self.w.take_batch();
        let writes = batch.len() as u64;
        let started = std::time::Instant::now();
        let result = match self.w.take_poison() {
            Some(e) => Err(e),
            None => self.log.commit(&self.w.store, &batch, sync),
        };
        let synced = self.log.synced(&self.w.store, sync);
        let m = &mut self.writer_metrics;
        match &result {
            Ok(()) => {
                m.commits += 1;
                m.writes += writes;
                m.commit_us.observe(started.elapsed().as_micros() as u64);
                if synced {
                    m.syncs += 1;
                    self.unsynced_since = None;
                } else if self.log.leaves_unsynced(&self.w.store) {
                    self.unsynced_since.get_or_insert(std::time::Instant::now());
                }
            }
            Err(_) => m.failed_commits += 1,
        }
        match &result {
            Ok(()) => self.storage_ok(),
            Err(e) => self.storage_failed(e),
        }
        let after = self.w.take_after();
        match result {
            Ok(()) => {
                for q in self.queues.values_mut() {
                    q.staged_due = None;
                }
                // Before the callers hear of it: a lease sent right after an
                // answered enqueue finds this partition's demand in the split.
                self.post_demand();
                for f in after {
                    f(None);
                }
                for window in std::mem::take(&mut self.w.freed_slots) {
                    window.give_back();
                    self.shared.wake(self.me, window.take_wanting());
                }
                self.deliver_committed();
            }
            Err(e) => {
                tracing::error!(error = %e, "commit failed; answering callers with the error and reloading state from disk");
                // It may hold records of jobs this batch failed to store.
                self.w.records.clear();
                for f in after {
                    f(Some(&e));
                }
                // The leases they ended come back from disk without their
                // stream (they expire or are settled by lease id): the
                // slots are free either way.
                for window in std::mem::take(&mut self.w.freed_slots) {
                    window.give_back();
                    self.shared.wake(self.me, window.take_wanting());
                }
                // Their progress so far may not have landed: fail them
                // rather than report a partial redrive or purge as done.
                for task in self.tasks.drain(..) {
                    task.fail(e.clone());
                }
                self.drop_uncommitted_deliveries();
                if let Err(e) = self.load_all() {
                    tracing::error!(error = %e, "reloading state after a failed commit failed");
                }
            }
        }
    }

    /// Adds changed counters (and the id high-water mark) to the batch, so
    /// counters are always exactly as durable as the changes they count.
    fn stage_counters(&mut self) {
        // While stopping, every commit saves the breaker's windows in full.
        let (now, stopping) = (self.now, self.stopping.is_some());
        for q in self.queues.values_mut() {
            if q.totals_dirty {
                q.totals_dirty = false;
                self.w.put(&q.name, &keys::TOTALS_KEY, &q.counters.encode_to_vec());
            }
            if q.alerts_dirty {
                q.alerts_dirty = false;
                self.w.put(&q.name, &keys::ALERTS_KEY, &q.obs.take_record().encode_to_vec());
            }
            if q.breaker.save_due(now, stopping) {
                let (saves, deletes) = q.breaker.take_changes(now);
                // Deletes first: within a batch the later write of a key wins.
                for version in deletes {
                    self.w.delete(&q.name, &keys::breaker_window(&version));
                }
                for (version, rec) in saves {
                    self.w.put(&q.name, &keys::breaker_window(&version), &rec.encode_to_vec());
                }
            }
            let dirty: Vec<_> = q.dirty_groups.drain().collect();
            for (t, e) in dirty {
                let key = keys::group_count(&t, &e);
                match q.group(&t, &e).map(|g| g.ready).unwrap_or(0) {
                    0 => self.w.delete(&q.name, &key),
                    n => self.w.put(&q.name, &key, &n.to_be_bytes()),
                }
                q.forget_group_if_idle(&t, &e);
            }
        }
        let last = self.next_id - 1;
        if last > self.id_hwm && self.w.has_writes() {
            self.w.put_id_hwm(last);
            self.id_hwm = last;
        }
    }
}
