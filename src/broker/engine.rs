//! The writer thread: the only owner of mutable broker state.
//!
//! One turn of the loop: take every command waiting, apply each to memory and
//! to one `WriteBatch`, run timers (due scheduled jobs, expired leases), commit
//! the batch with one fsync, answer every caller, then hand ready jobs to
//! waiting workers (whose leases are committed the same way). A caller is
//! answered only after its write is durable.

use super::dispatch::{Consumer, Outgoing, Waiter};
use super::queue_state::{ActiveLease, Group, QueueState};
use super::tasks::Task;
use super::{Command, Registry, SettleAction, SettleReply};
use crate::error::{BrokerError, Result};
use crate::model::{JobId, LeaseId, Millis};
use crate::storage::batch::{job_key_id, Batch, Table};
use crate::storage::keys;
use crate::storage::records::{AlertStateRecord, BreakerWindowRecord, JobRecord, LeaseRecord, QueueCounters};
use crate::storage::Store;
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

/// Writes are failing because of the disk (full, read-only, I/O errors).
pub(super) struct StorageFault {
    /// The last write tried (a commit or a probe).
    pub last_try: std::time::Instant,
    pub error: BrokerError,
}

/// Runs once the batch it waited on has committed (or failed to).
pub(super) type AfterCommit = Box<dyn FnOnce(Option<&BrokerError>) + Send>;

/// The pending batch (whose overlay lets reads made while building it see
/// its own writes: job records, dedup and scheduled keys), what waits for
/// its commit, and whether it must be fsynced.
pub(super) struct Writes {
    pub(super) store: Store,
    batch: Batch,
    /// Run after the commit, with its error if it failed.
    after: Vec<AfterCommit>,
    /// A failure while building the batch: the whole batch must not commit.
    poisoned: Option<BrokerError>,
    /// Records of recently enqueued jobs, so a lease needn't read them back.
    pub(super) records: super::record_cache::RecordCache,
    /// True while staging writes whose loss in an OS crash can only cause a
    /// redelivery (leases, acks, nacks, expiries): those need no fsync.
    pub(super) relaxed: bool,
    /// The batch holds a write that must be fsynced before it is answered
    /// (an enqueue, an admin change): any write staged outside `relaxed`.
    needs_sync: bool,
    /// Stream slots freed by leases this batch ends: given back once it has
    /// committed and its answers are out, so a worker never sees a new
    /// delivery (from any partition) before the outcome that freed its slot.
    pub(super) freed_slots: Vec<std::sync::Arc<crate::partition::window::Window>>,
}

impl Writes {
    fn new(store: Store) -> Writes {
        Writes {
            store,
            batch: Batch::new(),
            after: Vec::new(),
            poisoned: None,
            records: super::record_cache::RecordCache::new(super::record_cache::DEFAULT_BUDGET_BYTES),
            relaxed: false,
            needs_sync: false,
            freed_slots: Vec::new(),
        }
    }

    /// Stages a write to a queue that exists (in memory): a queue that is
    /// gone has nowhere to write, and a write to it would fail the commit.
    fn check_queue(&mut self, queue: &str) -> bool {
        if self.batch.hides_store(Table::Queue(queue)) || self.store.has_queue(queue) {
            return true;
        }
        self.poison(BrokerError::QueueNotFound(queue.to_string()));
        false
    }

    pub fn put(&mut self, queue: &str, key: &[u8], value: &[u8]) {
        self.needs_sync |= !self.relaxed;
        if !self.check_queue(queue) {
            return;
        }
        if let Some(id) = job_key_id(key) {
            self.records.forget(id);
        }
        self.batch.put(Table::Queue(queue), key, value);
    }

    pub fn delete(&mut self, queue: &str, key: &[u8]) {
        self.needs_sync |= !self.relaxed;
        if !self.check_queue(queue) {
            return;
        }
        if let Some(id) = job_key_id(key) {
            self.records.forget(id);
        }
        self.batch.delete(Table::Queue(queue), key);
    }

    /// True when this batch deletes `key`.
    pub fn deletes(&self, queue: &str, key: &[u8]) -> bool {
        matches!(self.batch.staged(Table::Queue(queue), key), Some(None))
    }

    /// Reads a key as it will be after this batch.
    pub fn get(&self, queue: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let table = Table::Queue(queue);
        if let Some(v) = self.batch.staged(table, key) {
            return Ok(v.map(<[u8]>::to_vec));
        }
        if self.batch.hides_store(table) {
            return Ok(None);
        }
        self.store.get(table, key)
    }

    pub fn read_job(&self, queue: &str, id: JobId) -> Result<Option<JobRecord>> {
        match self.get(queue, &keys::job(id))? {
            None => Ok(None),
            Some(v) => JobRecord::decode(v.as_slice())
                .map(Some)
                .map_err(|e| BrokerError::Storage(format!("corrupt job {id} in {queue}: {e}"))),
        }
    }

    /// Reads a job about to be leased: from the record cache when it is
    /// there (moving it out), else from the batch or the store.
    pub fn take_job(&mut self, queue: &str, id: JobId) -> Result<Option<JobRecord>> {
        if !self.batch.touches(Table::Queue(queue), &keys::job(id)) {
            if let Some(rec) = self.records.take(id) {
                return Ok(Some(rec));
            }
        }
        self.read_job(queue, id)
    }

    pub fn put_job(&mut self, queue: &str, id: JobId, rec: &JobRecord) {
        self.put(queue, &keys::job(id), &rec.encode_to_vec());
    }

    /// Stages a brand-new job without copying it into the overlay: nothing
    /// in the same turn can read a job whose id was just made (reads name
    /// jobs from committed indexes or from leases), and the copy of every
    /// payload was a measurable share of the writer's time. The record
    /// itself moves into the record cache for its lease.
    pub fn put_new_job(&mut self, queue: &str, id: JobId, rec: JobRecord) {
        self.needs_sync = true;
        if !self.check_queue(queue) {
            return;
        }
        let value = rec.encode_to_vec();
        self.batch.put_unread(Table::Queue(queue), &keys::job(id), &value);
        self.records.keep(id, rec, value.len());
    }

    pub fn after(&mut self, f: AfterCommit) {
        self.after.push(f);
    }

    /// True when callers are waiting for this batch to commit.
    pub fn has_waiting(&self) -> bool {
        !self.after.is_empty()
    }

    /// Marks the batch as unfit to commit (e.g. a read failed half way
    /// through an atomic enqueue). Everyone waiting on it gets the error.
    pub fn poison(&mut self, e: BrokerError) {
        tracing::error!(error = %e, "storage failure while building a write batch");
        self.poisoned.get_or_insert(e);
    }

    pub fn is_empty(&self) -> bool {
        self.batch.is_empty() && self.after.is_empty() && self.poisoned.is_none() && self.freed_slots.is_empty()
    }

    /// Writes staged in the pending batch.
    pub fn staged(&self) -> usize {
        self.batch.len()
    }

    pub fn is_poisoned(&self) -> bool {
        self.poisoned.is_some()
    }

    pub fn put_policy(&mut self, queue: &str, tenant: &str, p: &crate::model::TenantPolicy) {
        self.needs_sync = true;
        if p.is_default() {
            Store::delete_policy(&mut self.batch, queue, tenant);
        } else {
            Store::put_policy(&mut self.batch, queue, &super::catalog::policy_record(tenant, p));
        }
    }

    pub fn put_queue_meta(&mut self, meta: &crate::storage::records::QueueMeta) {
        self.needs_sync = true;
        Store::put_queue_meta(&mut self.batch, meta);
    }

    /// Stages a cross-partition batch's intent (already encoded by the
    /// caller, off this thread); fsynced with the coordinator's own part.
    pub fn put_intent(&mut self, seq: u64, encoded: &[u8]) {
        self.needs_sync = true;
        self.batch.put(Table::Meta, &Store::intent_key(seq), encoded);
    }

    /// The intent is done with: fsynced, because the markers saying its
    /// parts were stored are dropped only once it is surely gone.
    pub fn delete_intent(&mut self, seq: u64) {
        self.needs_sync = true;
        Store::delete_intent(&mut self.batch, seq);
    }

    /// Marks part `seq` of partition `from` as stored, in the part's write.
    pub fn put_applied(&mut self, from: u16, seq: u64) {
        self.needs_sync = true;
        Store::put_applied(&mut self.batch, from, seq);
    }

    pub fn delete_applied(&mut self, from: u16, seq: u64) {
        self.needs_sync |= !self.relaxed;
        Store::delete_applied(&mut self.batch, from, seq);
    }

    /// Creates a queue's storage, fresh, in this batch.
    pub fn create_queue(&mut self, queue: &str) {
        self.needs_sync = true;
        self.batch.create_queue(queue);
    }

    /// Deletes a queue's definition, its policies and its storage, in this
    /// batch.
    pub fn delete_queue(&mut self, queue: &str) {
        self.needs_sync = true;
        Store::delete_queue_meta(&mut self.batch, queue);
        if let Err(e) = self.store.delete_policies(&mut self.batch, queue) {
            self.poison(e);
        }
        self.batch.drop_queue(queue);
    }
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
}

impl Engine {
    pub fn recover(
        store: Store,
        registry: Registry,
        rx: flume::Receiver<Command>,
        me: usize,
        shared: std::sync::Arc<super::shared::Shared>,
    ) -> Result<Engine> {
        let started = std::time::Instant::now();
        let id_hwm = store.load_id_hwm()?;
        let mut engine = Engine {
            rx,
            w: Writes::new(store),
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
            c.leases.retain(|(q, job)| queues.get_mut(q).is_some_and(|q| q.attach_lease(*job, *id)));
            // Leases that did not land give their slots back.
            for _ in c.leases.len()..before {
                c.window.give_back();
            }
        }
        Ok(())
    }

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
        loop {
            let timeout = self.next_wakeup();
            let first = match self.rx.recv_timeout(timeout) {
                Ok(cmd) => Some(cmd),
                Err(flume::RecvTimeoutError::Timeout) => None,
                Err(flume::RecvTimeoutError::Disconnected) => break,
            };
            self.now = self.shared.clock.now();
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
            self.w.relaxed = true;
            self.run_timers();
            self.w.relaxed = false;
            self.check_alerts();
            self.run_tasks();
            self.commit();
            // Dispatch reads the ready index, so it runs on committed state.
            self.w.relaxed = true;
            self.dispatch();
            self.w.relaxed = false;
            self.commit();
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

    fn next_wakeup(&self) -> Duration {
        if !self.tasks.is_empty() || !self.w.is_empty() {
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
        let batch = std::mem::take(&mut self.w.batch);
        let sync = std::mem::take(&mut self.w.needs_sync);
        let writes = batch.len() as u64;
        let started = std::time::Instant::now();
        let result = match self.w.poisoned.take() {
            Some(e) => Err(e),
            None => self.w.store.commit(&batch, sync),
        };
        let synced = sync && self.w.store.syncs_commits();
        let m = &mut self.writer_metrics;
        match &result {
            Ok(()) => {
                m.commits += 1;
                m.writes += writes;
                m.commit_us.observe(started.elapsed().as_micros() as u64);
                if synced {
                    m.syncs += 1;
                    self.unsynced_since = None;
                } else if self.w.store.syncs_commits() {
                    self.unsynced_since.get_or_insert(std::time::Instant::now());
                }
            }
            Err(_) => m.failed_commits += 1,
        }
        match &result {
            Ok(()) => self.storage_ok(),
            Err(e) => self.storage_failed(e),
        }
        let after = std::mem::take(&mut self.w.after);
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
        if last > self.id_hwm && !self.w.batch.is_empty() {
            Store::put_id_hwm(&mut self.w.batch, last);
            self.id_hwm = last;
        }
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
                worker_id: lr.worker_id,
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
