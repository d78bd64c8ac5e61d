//! A partition's pending write batch, as the writer builds it during a
//! turn: the writes staged so far (which reads made while building it see),
//! what waits for its commit, whether it must be fsynced, and the records
//! of recently enqueued jobs. The engine commits it (`Engine::commit`).

use crate::error::{BrokerError, Result};
use crate::model::JobId;
use crate::storage::batch::{job_key_id, Batch, Table};
use crate::storage::keys;
use crate::storage::records::JobRecord;
use crate::storage::Store;
use prost::Message;

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
    /// A pending batch for `store`, keeping records of recently enqueued
    /// jobs up to `record_budget` bytes.
    pub(super) fn new(store: Store, record_budget: usize) -> Writes {
        Writes {
            store,
            batch: Batch::new(),
            after: Vec::new(),
            poisoned: None,
            records: super::record_cache::RecordCache::new(record_budget),
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

    /// The batch to commit and whether it must be fsynced; the pending
    /// batch starts afresh.
    pub fn take_batch(&mut self) -> (Batch, bool) {
        (std::mem::take(&mut self.batch), std::mem::take(&mut self.needs_sync))
    }

    /// Why the pending batch must not commit, if it must not.
    pub fn take_poison(&mut self) -> Option<BrokerError> {
        self.poisoned.take()
    }

    /// What waits for the commit.
    pub fn take_after(&mut self) -> Vec<AfterCommit> {
        std::mem::take(&mut self.after)
    }

    /// Whether the pending batch holds any write.
    pub fn has_writes(&self) -> bool {
        !self.batch.is_empty()
    }

    /// Records the highest job id handed out, with the writes that used it.
    pub fn put_id_hwm(&mut self, last: u64) {
        Store::put_id_hwm(&mut self.batch, last);
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
