//! RocksDB: one column family per queue plus `meta`, sharing one block cache
//! and one write-buffer budget. Everything that knows about RocksDB options
//! and column-family names lives here; the key layout is in [`keys`], and
//! every change goes through one typed [`batch::Batch`]: nothing outside
//! this module holds a RocksDB handle or builds a RocksDB write.

pub mod batch;
pub mod data_dir;
pub mod figures;
pub mod keys;
pub mod records;

use crate::error::{BrokerError, Result};
use crate::model::now_millis;
use batch::{Batch, Op, Table};
use prost::Message;
use records::QueueMeta;
use rocksdb::{
    compaction_filter::Decision, BlockBasedOptions, BoundColumnFamily, Cache, ColumnFamilyDescriptor,
    DBCompressionType, DBWithThreadMode, Direction, IteratorMode, MultiThreaded, Options, ReadOptions, WriteBatch,
    WriteBufferManager, WriteOptions,
};
use std::path::Path;
use std::sync::Arc;

pub type Db = DBWithThreadMode<MultiThreaded>;

pub const META_CF: &str = "meta";
/// Meta key of the highest job id ever handed out (ids never repeat).
const ID_HWM_KEY: &[u8] = b"id_hwm";
/// Meta key of the on-disk format version the data dir was written in.
const FORMAT_KEY: &[u8] = b"format_version";
/// The on-disk format this build reads and writes: the key layout of
/// `keys.rs` and the records of `records.rs`. Bump it on any change an
/// older or newer broker would misread; a broker refuses a data dir of
/// another version instead of guessing.
pub const FORMAT_VERSION: u32 = 1;
const QUEUE_PREFIX: &[u8] = b"queue/";
/// In a cluster: the last Raft log entry this store has applied (JSON of
/// openraft's `LogId`), written in the same atomic write as the entry's
/// changes, so after a crash the store says exactly where replay resumes.
pub const RAFT_APPLIED_KEY: &[u8] = b"raft/applied";
/// In a cluster: the partition's last applied membership (JSON of
/// openraft's `StoredMembership`).
pub const RAFT_MEMBERSHIP_KEY: &[u8] = b"raft/membership";
/// Meta keys of cross-partition batches being completed (see
/// `broker/batch_intent.rs`): `intent/SEQ` at the coordinating partition,
/// `applied/FROM SEQ` at each partition that stored its part.
const INTENT_PREFIX: &[u8] = b"intent/";
const APPLIED_PREFIX: &[u8] = b"applied/";

/// Block cache shared by every column family: idle queues cost no memory.
const BLOCK_CACHE_BYTES: usize = 256 << 20;
/// Memtable budget shared by every column family, so a thousand queues don't
/// mean a thousand full memtables. Not charged to the block cache: charged,
/// full memtables crowded every filter and index block out of the cache, and
/// with 10M jobs stored each lease re-read a filter block from disk.
const WRITE_BUFFER_BUDGET: usize = 256 << 20;

/// A (key, value) pair read from a queue.
pub type Entry = (Vec<u8>, Vec<u8>);

/// One entry of [`Store::dump`]: column family, key, value.
pub type DumpEntry = (String, Vec<u8>, Vec<u8>);

/// The result of [`Store::scan`].
pub struct Scan {
    pub entries: Vec<Entry>,
    /// True when the range holds more than was returned.
    pub more: bool,
}

/// How writes reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Durability {
    /// Every acknowledged write is in the WAL and fsynced (group commit).
    Strict,
    /// Writes reach the WAL (surviving a process crash) but are not fsynced:
    /// an OS crash or power loss can lose the last moments of writes.
    Relaxed,
}

/// Called with every batch the store has committed, in commit order.
pub type CommitTap = Arc<dyn Fn(&Batch) + Send + Sync>;

/// The database handle plus what is needed to create queue column families.
#[derive(Clone)]
pub struct Store {
    db: Arc<Db>,
    /// Options for new queue column families (carry the shared cache). In an
    /// Arc: cloning `Options` copies the whole C++ options struct, and the
    /// writer clones the store on hot paths.
    cf_opts: Arc<Options>,
    sync: bool,
    /// Sees every committed batch: where a second copy of the store (a
    /// replica, or a test's follower) gets the changes to apply.
    tap: Option<CommitTap>,
    /// Commits still to refuse as if the disk failed (fault injection for
    /// tests; 0 in production, costing one atomic load per commit).
    injected_failures: Arc<std::sync::atomic::AtomicU32>,
}

pub fn queue_cf(queue: &str) -> String {
    format!("q.{queue}")
}

fn queue_cf_options(cache: &Cache) -> Options {
    let mut block = BlockBasedOptions::default();
    block.set_block_cache(cache);
    block.set_bloom_filter(10.0, false);
    // Filters and indexes live with each open table, outside the block
    // cache: in the cache, a large table's filter block was evicted (or never
    // fit a cache shard) and re-read from disk on every point read, which
    // made leasing from a 1M-job backlog cost milliseconds. Their size is
    // about 1.3 bytes per key (10 bits), so 10M stored jobs cost ~30 MB.
    block.set_cache_index_and_filter_blocks(false);
    let mut o = Options::default();
    o.set_block_based_table_factory(&block);
    o.set_compression_type(DBCompressionType::Lz4);
    o.set_level_compaction_dynamic_level_bytes(true);
    o.set_write_buffer_size(64 << 20);
    // Expired dedup holds vanish at compaction; the broker already treats
    // them as absent, so this only reclaims space.
    o.set_compaction_filter("fairway-dedup-expiry", |_level: u32, key: &[u8], value: &[u8]| {
        if key.first() == Some(&keys::DEDUP) {
            if let Some((_, expires)) = keys::parse_dedup_value(value) {
                if expires != 0 && expires < now_millis() {
                    return Decision::Remove;
                }
            }
        }
        Decision::Keep
    });
    o
}

/// Says plainly when the data dir is held by another broker: RocksDB's own
/// message names only a lock file.
fn open_error(dir: &Path, e: rocksdb::Error) -> BrokerError {
    let msg = e.into_string();
    if msg.contains("LOCK") || msg.contains("lock") {
        BrokerError::Storage(format!(
            "data dir {} is in use by another running broker (its LOCK file is held); \
             stop that broker or give this one another --data-dir ({msg})",
            dir.display()
        ))
    } else {
        BrokerError::Storage(msg)
    }
}

/// The block cache and the memtable budget of a broker, shared by the
/// RocksDB of each of its partitions.
pub struct Memory {
    cache: Cache,
    write_buffers: WriteBufferManager,
}

impl Memory {
    pub fn new() -> Memory {
        Memory {
            cache: Cache::new_lru_cache(BLOCK_CACHE_BYTES),
            write_buffers: WriteBufferManager::new_write_buffer_manager(WRITE_BUFFER_BUDGET, false),
        }
    }
}

impl Default for Memory {
    fn default() -> Self {
        Memory::new()
    }
}

impl Store {
    pub fn open(dir: &Path, durability: Durability) -> Result<Store> {
        Store::open_with_tap(dir, durability, None)
    }

    /// [`Self::open`], with `tap` called after each commit (from the first:
    /// the format stamp of a new data dir).
    pub fn open_with_tap(dir: &Path, durability: Durability, tap: Option<CommitTap>) -> Result<Store> {
        Store::open_sharing(dir, durability, tap, &Memory::new())
    }

    /// [`Self::open_with_tap`], with the block cache and memtable budget
    /// `memory` shares with the other partitions of a broker: a broker's
    /// memory does not grow with its number of partitions.
    pub fn open_sharing(dir: &Path, durability: Durability, tap: Option<CommitTap>, memory: &Memory) -> Result<Store> {
        std::fs::create_dir_all(dir)
            .map_err(|e| BrokerError::Storage(format!("cannot create data dir {}: {e}", dir.display())))?;
        let (cache, wbm) = (&memory.cache, &memory.write_buffers);
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.increase_parallelism(2);
        db_opts.set_max_background_jobs(2);
        db_opts.set_write_buffer_manager(wbm);
        db_opts.set_max_total_wal_size(256 << 20);
        db_opts.set_keep_log_file_num(3);
        let cf_opts = queue_cf_options(cache);
        let existing = Db::list_cf(&db_opts, dir).unwrap_or_default();
        let mut descriptors = vec![ColumnFamilyDescriptor::new(META_CF, Options::default())];
        for name in existing.iter().filter(|n| n.starts_with("q.")) {
            descriptors.push(ColumnFamilyDescriptor::new(name, cf_opts.clone()));
        }
        let db = Db::open_cf_descriptors(&db_opts, dir, descriptors).map_err(|e| open_error(dir, e))?;
        let store = Store {
            db: Arc::new(db),
            cf_opts: Arc::new(cf_opts),
            sync: durability == Durability::Strict,
            tap,
            injected_failures: Arc::default(),
        };
        store.check_format(dir)?;
        Ok(store)
    }

    /// Refuses a data dir written in another on-disk format, and stamps a
    /// new one (or one from before versioning, which is format 1).
    fn check_format(&self, dir: &Path) -> Result<()> {
        match self.get(Table::Meta, FORMAT_KEY)? {
            Some(v) => {
                let found = v.as_slice().try_into().map(u32::from_be_bytes).unwrap_or(0);
                if found != FORMAT_VERSION {
                    return Err(BrokerError::Storage(format!(
                        "data dir {} holds on-disk format v{found}, but this broker reads format v{FORMAT_VERSION}: \
                         run the Fairway version that wrote it (or a newer one that can migrate it); \
                         nothing was changed",
                        dir.display()
                    )));
                }
                Ok(())
            }
            None => {
                let mut b = Batch::new();
                b.put(Table::Meta, FORMAT_KEY, &FORMAT_VERSION.to_be_bytes());
                self.commit(&b, true)
            }
        }
    }

    fn cf(&self, queue: &str) -> Result<Arc<BoundColumnFamily<'_>>> {
        // The writer looks a handle up for every key it stages: build the
        // name in a reused buffer rather than formatting a new String.
        thread_local! {
            static NAME: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
        }
        let cf = NAME.with_borrow_mut(|name| {
            name.clear();
            name.push_str("q.");
            name.push_str(queue);
            self.db.cf_handle(name)
        });
        cf.ok_or_else(|| BrokerError::QueueNotFound(queue.to_string()))
    }

    fn meta(&self) -> Result<Arc<BoundColumnFamily<'_>>> {
        self.db.cf_handle(META_CF).ok_or_else(|| BrokerError::Storage("meta column family missing".into()))
    }

    fn table(&self, table: Table<'_>) -> Result<Arc<BoundColumnFamily<'_>>> {
        match table {
            Table::Meta => self.meta(),
            Table::Queue(q) => self.cf(q),
        }
    }

    /// True when `queue` has its column family.
    pub fn has_queue(&self, queue: &str) -> bool {
        self.cf(queue).is_ok()
    }

    /// One key's committed value.
    pub fn get(&self, table: Table<'_>, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get_cf(&self.table(table)?, key)?)
    }

    /// Calls `f` with each committed entry of a queue with a key in
    /// `[start, end)`, in key order, until it returns false. Bounded on both
    /// sides, so it never wanders into tombstones outside the range.
    pub fn visit(
        &self,
        queue: &str,
        start: &[u8],
        end: &[u8],
        mut f: impl FnMut(&[u8], &[u8]) -> Result<bool>,
    ) -> Result<()> {
        let cf = self.cf(queue)?;
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(end.to_vec());
        for item in self.db.iterator_cf_opt(&cf, ro, IteratorMode::From(start, Direction::Forward)) {
            let (k, v) = item?;
            if !f(&k, &v)? {
                break;
            }
        }
        Ok(())
    }

    /// Up to `limit` entries of a queue with keys in `[start, end)`, in key
    /// order; `more` says whether the range holds further entries. The
    /// iterator is bounded on both sides, so it never wanders into
    /// tombstones outside the range.
    pub fn scan(&self, queue: &str, start: &[u8], end: &[u8], limit: usize) -> Result<Scan> {
        let mut entries = Vec::new();
        let mut more = false;
        self.visit(queue, start, end, |k, v| {
            if entries.len() >= limit {
                more = true;
                return Ok(false);
            }
            entries.push((k.to_vec(), v.to_vec()));
            Ok(true)
        })?;
        Ok(Scan { entries, more })
    }

    fn create_queue_cf(&self, queue: &str) -> Result<()> {
        let name = queue_cf(queue);
        if self.db.cf_handle(&name).is_none() {
            self.db.create_cf(&name, &self.cf_opts)?;
        }
        Ok(())
    }

    fn drop_queue_cf(&self, queue: &str) -> Result<()> {
        let name = queue_cf(queue);
        if self.db.cf_handle(&name).is_some() {
            self.db.drop_cf(&name)?;
        }
        Ok(())
    }

    /// Commits a batch: its queues created fresh, then every put and delete
    /// in one atomic write (in the WAL, surviving a broker crash, and
    /// fsynced when `sync` and the durability is strict), then its queues
    /// dropped. See [`batch`] for why a crash between the steps is safe.
    pub fn commit(&self, batch: &Batch, sync: bool) -> Result<()> {
        use std::sync::atomic::Ordering;
        let injected = self.injected_failures.load(Ordering::Relaxed);
        if injected > 0 {
            self.injected_failures.store(injected - 1, Ordering::Relaxed);
            return Err(BrokerError::StorageUnavailable("injected I/O error (test fault injection)".into()));
        }
        for q in batch.creates() {
            self.drop_queue_cf(q)?;
            self.create_queue_cf(q)?;
        }
        if batch.has_writes() {
            let mut wb = WriteBatch::default();
            // Handles looked up once per table, not once per write.
            let mut handles: Vec<(Table<'_>, Arc<BoundColumnFamily<'_>>)> = Vec::new();
            for op in batch.ops()? {
                let table = match op {
                    Op::Put { table, .. } | Op::Delete { table, .. } => table,
                };
                let cf = match handles.iter().find(|(t, _)| *t == table) {
                    Some((_, cf)) => cf.clone(),
                    None => {
                        let cf = self.table(table)?;
                        handles.push((table, cf.clone()));
                        cf
                    }
                };
                match op {
                    Op::Put { key, value, .. } => wb.put_cf(&cf, key, value),
                    Op::Delete { key, .. } => wb.delete_cf(&cf, key),
                }
            }
            let mut wo = WriteOptions::default();
            wo.set_sync(self.sync && sync);
            self.db.write_opt(wb, &wo)?;
        }
        for q in batch.drops() {
            self.drop_queue_cf(q)?;
        }
        if let Some(tap) = &self.tap {
            tap(batch);
        }
        Ok(())
    }

    /// Makes the next `n` commits fail as a broken disk would, writing
    /// nothing: for tests of what a failed commit leaves behind.
    #[doc(hidden)]
    pub fn fail_next_commits(&self, n: u32) {
        self.injected_failures.store(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// One small synced write that changes nothing (the format stamp again):
    /// whether the data dir takes writes.
    pub fn probe_write(&self) -> Result<()> {
        let mut b = Batch::new();
        b.put(Table::Meta, FORMAT_KEY, &FORMAT_VERSION.to_be_bytes());
        self.commit(&b, true)
    }

    /// True under strict durability.
    pub fn syncs_commits(&self) -> bool {
        self.sync
    }

    /// Makes every write so far durable.
    pub fn sync_wal(&self) -> Result<()> {
        self.db.flush_wal(true)?;
        Ok(())
    }

    /// Handles open on this store (this one included): it is closed when
    /// the last is dropped.
    pub fn holders(&self) -> usize {
        Arc::strong_count(&self.db)
    }

    /// A consistent copy of the whole store at `to` (a new directory on the
    /// same filesystem: table files are hard-linked, so it costs little
    /// space and time): a cluster's snapshot of a partition.
    pub fn checkpoint(&self, to: &Path) -> Result<()> {
        let cp = rocksdb::checkpoint::Checkpoint::new(&self.db)?;
        cp.create_checkpoint(to)?;
        Ok(())
    }

    /// Writes every memtable to SST files, so the next start has no WAL to
    /// replay (a clean shutdown restarts fast however much is stored).
    pub fn flush_memtables(&self) -> Result<()> {
        let names = Db::list_cf(&Options::default(), self.db.path()).unwrap_or_default();
        for name in names {
            if let Some(cf) = self.db.cf_handle(&name) {
                self.db.flush_cf(&cf)?;
            }
        }
        Ok(())
    }

    pub fn queue_meta_key(queue: &str) -> Vec<u8> {
        let mut k = QUEUE_PREFIX.to_vec();
        k.extend_from_slice(queue.as_bytes());
        k
    }

    pub fn put_queue_meta(batch: &mut Batch, meta: &QueueMeta) {
        batch.put(Table::Meta, &Self::queue_meta_key(&meta.name), &meta.encode_to_vec());
    }

    pub fn delete_queue_meta(batch: &mut Batch, queue: &str) {
        batch.delete(Table::Meta, &Self::queue_meta_key(queue));
    }

    /// Every queue definition, and drops column families left without one
    /// (a queue whose creation did not commit).
    pub fn load_queues(&self) -> Result<Vec<QueueMeta>> {
        let meta_cf = self.meta()?;
        let mut out = Vec::new();
        for item in self.db.prefix_iterator_cf(&meta_cf, QUEUE_PREFIX) {
            let (k, v) = item?;
            if !k.starts_with(QUEUE_PREFIX) {
                break;
            }
            let meta =
                QueueMeta::decode(&*v).map_err(|e| BrokerError::Storage(format!("corrupt queue definition: {e}")))?;
            out.push(meta);
        }
        let existing = Db::list_cf(&Options::default(), self.db.path()).unwrap_or_default();
        let mut fix = Batch::new();
        for cf in existing.iter().filter_map(|n| n.strip_prefix("q.")) {
            if !out.iter().any(|m| m.name == cf) {
                tracing::warn!(queue = cf, "dropping column family of a queue with no definition");
                fix.drop_queue(cf);
            }
        }
        for m in out.iter().filter(|m| !self.has_queue(&m.name)) {
            tracing::warn!(queue = %m.name, "queue definition without its column family; creating it empty");
            fix.create_queue(&m.name);
        }
        if !fix.is_empty() {
            self.commit(&fix, true)?;
        }
        Ok(out)
    }

    fn policy_prefix(queue: &str) -> Vec<u8> {
        format!("policy/{queue}/").into_bytes()
    }

    pub fn put_policy(batch: &mut Batch, queue: &str, p: &records::TenantPolicyRecord) {
        let mut key = Self::policy_prefix(queue);
        key.extend_from_slice(p.tenant.as_bytes());
        batch.put(Table::Meta, &key, &p.encode_to_vec());
    }

    pub fn delete_policy(batch: &mut Batch, queue: &str, tenant: &str) {
        let mut key = Self::policy_prefix(queue);
        key.extend_from_slice(tenant.as_bytes());
        batch.delete(Table::Meta, &key);
    }

    /// Every tenant policy of a queue.
    pub fn load_policies(&self, queue: &str) -> Result<Vec<records::TenantPolicyRecord>> {
        let prefix = Self::policy_prefix(queue);
        let meta = self.meta()?;
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(keys::prefix_end(&prefix));
        let mut out = Vec::new();
        for item in self.db.iterator_cf_opt(&meta, ro, IteratorMode::From(&prefix, Direction::Forward)) {
            let (_, v) = item?;
            out.push(
                records::TenantPolicyRecord::decode(&*v)
                    .map_err(|e| BrokerError::Storage(format!("corrupt tenant policy in {queue}: {e}")))?,
            );
        }
        Ok(out)
    }

    pub fn delete_policies(&self, batch: &mut Batch, queue: &str) -> Result<()> {
        for p in self.load_policies(queue)? {
            Self::delete_policy(batch, queue, &p.tenant);
        }
        Ok(())
    }

    /// Meta key of a cross-partition batch this partition coordinates.
    pub fn intent_key(seq: u64) -> Vec<u8> {
        let mut k = INTENT_PREFIX.to_vec();
        k.extend_from_slice(&seq.to_be_bytes());
        k
    }

    /// Meta key saying this partition stored its part of batch `seq` of
    /// partition `from`, in the same write as the part's jobs.
    pub fn applied_key(from: u16, seq: u64) -> Vec<u8> {
        let mut k = APPLIED_PREFIX.to_vec();
        k.extend_from_slice(&from.to_be_bytes());
        k.extend_from_slice(&seq.to_be_bytes());
        k
    }

    pub fn delete_intent(batch: &mut Batch, seq: u64) {
        batch.delete(Table::Meta, &Self::intent_key(seq));
    }

    pub fn put_applied(batch: &mut Batch, from: u16, seq: u64) {
        batch.put(Table::Meta, &Self::applied_key(from, seq), &[]);
    }

    pub fn delete_applied(batch: &mut Batch, from: u16, seq: u64) {
        batch.delete(Table::Meta, &Self::applied_key(from, seq));
    }

    /// The cross-partition batches this partition coordinates and has not
    /// seen completed, oldest first (there are none after a clean stop).
    pub fn load_intents(&self) -> Result<Vec<(u64, records::BatchIntentRecord)>> {
        let mut out = Vec::new();
        self.visit_meta(INTENT_PREFIX, |k, v| {
            let seq = k.get(INTENT_PREFIX.len()..).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes);
            let Some(seq) = seq else { return Err(BrokerError::Storage("corrupt batch intent key".into())) };
            let rec = records::BatchIntentRecord::decode(v)
                .map_err(|e| BrokerError::Storage(format!("corrupt batch intent {seq}: {e}")))?;
            out.push((seq, rec));
            Ok(())
        })?;
        Ok(out)
    }

    /// Every "part stored" marker this partition holds, as (from, seq).
    pub fn load_applied(&self) -> Result<Vec<(u16, u64)>> {
        let mut out = Vec::new();
        self.visit_meta(APPLIED_PREFIX, |k, _| {
            let rest = &k[APPLIED_PREFIX.len()..];
            match (rest.get(..2), rest.get(2..10)) {
                (Some(f), Some(s)) if rest.len() == 10 => {
                    let from = u16::from_be_bytes([f[0], f[1]]);
                    let seq = u64::from_be_bytes(s.try_into().unwrap_or_default());
                    out.push((from, seq));
                    Ok(())
                }
                _ => Err(BrokerError::Storage("corrupt batch marker key".into())),
            }
        })?;
        Ok(out)
    }

    fn visit_meta(&self, prefix: &[u8], mut f: impl FnMut(&[u8], &[u8]) -> Result<()>) -> Result<()> {
        let meta = self.meta()?;
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(keys::prefix_end(prefix));
        for item in self.db.iterator_cf_opt(&meta, ro, IteratorMode::From(prefix, Direction::Forward)) {
            let (k, v) = item?;
            f(&k, &v)?;
        }
        Ok(())
    }

    pub fn load_id_hwm(&self) -> Result<u64> {
        let v = self.get(Table::Meta, ID_HWM_KEY)?;
        Ok(v.and_then(|v| v.as_slice().try_into().ok().map(u64::from_be_bytes)).unwrap_or(0))
    }

    pub fn put_id_hwm(batch: &mut Batch, hwm: u64) {
        batch.put(Table::Meta, ID_HWM_KEY, &hwm.to_be_bytes());
    }

    /// Every committed entry of every table, in table then key order, with
    /// expired dedup holds left out (compaction may or may not have removed
    /// them yet): what two copies of a store that applied the same batches
    /// must agree on.
    pub fn dump(&self) -> Result<Vec<DumpEntry>> {
        let mut names = Db::list_cf(&Options::default(), self.db.path()).unwrap_or_default();
        names.retain(|n| n != "default");
        names.sort();
        let now = now_millis();
        let mut out = Vec::new();
        for name in names {
            let Some(cf) = self.db.cf_handle(&name) else { continue };
            for item in self.db.iterator_cf(&cf, IteratorMode::Start) {
                let (k, v) = item?;
                let expired = k.first() == Some(&keys::DEDUP)
                    && name != META_CF
                    && keys::parse_dedup_value(&v).is_some_and(|(_, e)| e != 0 && e < now);
                if !expired {
                    out.push((name.clone(), k.to_vec(), v.to_vec()));
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_dir_of_another_format_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), Durability::Strict).unwrap();
            let mut b = Batch::new();
            b.put(Table::Meta, FORMAT_KEY, &99u32.to_be_bytes());
            store.commit(&b, true).unwrap();
        }
        let err = Store::open(dir.path(), Durability::Strict).err().expect("refused").to_string();
        assert!(err.contains("format v99") && err.contains("reads format v1"), "{err}");
        // Still v99: refusing changed nothing.
        let err = Store::open(dir.path(), Durability::Strict).err().expect("refused again").to_string();
        assert!(err.contains("format v99"), "{err}");
    }

    #[test]
    fn a_new_data_dir_is_stamped_with_the_current_format() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Durability::Strict).unwrap();
        let v = store.get(Table::Meta, FORMAT_KEY).unwrap().unwrap();
        assert_eq!(v, FORMAT_VERSION.to_be_bytes());
    }

    #[test]
    fn a_data_dir_in_use_is_refused_with_a_clear_message() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path(), Durability::Strict).unwrap();
        let err = Store::open(dir.path(), Durability::Strict).err().expect("second open refused").to_string();
        assert!(err.contains("in use by another running broker"), "{err}");
    }

    #[test]
    fn scan_is_bounded_on_both_sides_and_reports_more() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Durability::Relaxed).unwrap();
        let mut b = Batch::new();
        b.create_queue("q");
        for k in [&b"a1"[..], b"b1", b"b2", b"b3", b"c1"] {
            b.put(Table::Queue("q"), k, b"v");
        }
        b.delete(Table::Queue("q"), b"b2");
        store.commit(&b, true).unwrap();
        let s = store.scan("q", b"b", b"c", 10).unwrap();
        let keys: Vec<_> = s.entries.iter().map(|(k, _)| k.as_slice()).collect();
        assert_eq!(keys, [&b"b1"[..], b"b3"]);
        assert!(!s.more);
        let s = store.scan("q", b"b", b"c", 1).unwrap();
        assert_eq!(s.entries.len(), 1);
        assert!(s.more);
        let s = store.scan("q", b"b", b"c", 2).unwrap();
        assert!(!s.more, "exactly the range: nothing more");
        assert!(store.scan("missing", b"a", b"z", 1).is_err());
    }

    #[test]
    fn a_batch_creates_writes_and_drops_in_that_order_and_the_tap_sees_it() {
        let dir = tempfile::tempdir().unwrap();
        let seen: Arc<std::sync::Mutex<Vec<Vec<u8>>>> = Arc::default();
        let tap_seen = seen.clone();
        let tap: CommitTap = Arc::new(move |b: &Batch| tap_seen.lock().unwrap().push(b.encode()));
        let store = Store::open_with_tap(dir.path(), Durability::Strict, Some(tap)).unwrap();
        let mut b = Batch::new();
        b.create_queue("a");
        b.put(Table::Queue("a"), b"k", b"1");
        store.commit(&b, true).unwrap();
        // Created again: fresh, the old key is gone.
        let mut b = Batch::new();
        b.create_queue("a");
        b.put(Table::Queue("a"), b"other", b"2");
        b.create_queue("gone");
        store.commit(&b, true).unwrap();
        assert_eq!(store.get(Table::Queue("a"), b"k").unwrap(), None);
        assert_eq!(store.get(Table::Queue("a"), b"other").unwrap().as_deref(), Some(&b"2"[..]));
        let mut b = Batch::new();
        b.drop_queue("gone");
        store.commit(&b, true).unwrap();
        assert!(!store.has_queue("gone") && store.has_queue("a"));
        // The format stamp of the new dir, then the three batches.
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 4);
        // Replayed on a second store, the batches give the same state.
        let copy_dir = tempfile::tempdir().unwrap();
        let copy = Store::open(copy_dir.path(), Durability::Relaxed).unwrap();
        for bytes in seen.iter() {
            copy.commit(&Batch::decode(bytes).unwrap(), false).unwrap();
        }
        assert_eq!(copy.dump().unwrap(), store.dump().unwrap());
    }

    #[test]
    fn queues_and_id_hwm_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), Durability::Strict).unwrap();
            let mut b = Batch::new();
            b.create_queue("emails");
            b.create_queue("orphan");
            let meta = QueueMeta { name: "emails".into(), max_attempts: 3, ..Default::default() };
            Store::put_queue_meta(&mut b, &meta);
            Store::put_id_hwm(&mut b, 42);
            b.put(Table::Queue("emails"), b"k", b"v");
            store.commit(&b, true).unwrap();
        }
        let store = Store::open(dir.path(), Durability::Strict).unwrap();
        let queues = store.load_queues().unwrap();
        assert_eq!(queues.len(), 1);
        assert_eq!(queues[0].max_attempts, 3);
        assert_eq!(store.load_id_hwm().unwrap(), 42);
        assert!(store.cf("orphan").is_err(), "a queue without a definition is dropped");
        let v = store.get(Table::Queue("emails"), b"k").unwrap();
        assert_eq!(v.as_deref(), Some(&b"v"[..]));
    }
}
