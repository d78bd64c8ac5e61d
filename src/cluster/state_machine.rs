//! A partition's store as its Raft group's state machine.
//!
//! Applying an entry commits the turn's typed batch it carries, exactly as
//! the leader's writer staged it, together with the entry's log id (and a
//! membership entry's membership) in the same atomic RocksDB write. So the
//! store always says which entry it reached, and replay after a crash
//! resumes there. Applies are not fsynced (except an entry that drops a
//! queue, see `apply`): the Raft log is, on a majority, before any entry is
//! applied, and log entries are purged only behind a snapshot, so an apply
//! lost in a crash is applied again from the log.
//!
//! A snapshot is a RocksDB checkpoint of the store, packed into one file
//! ([`super::snapshot_file`]) under `<store dir>.snapshots/`. Installing one
//! unpacks it beside the store and swaps the directories, once every other
//! handle on the store is closed: others reach the store through a
//! [`StoreSlot`] and hold it only while they need it (a partition's writer
//! holds it only while this node leads the partition, and a leader never
//! installs a snapshot).

use super::raft_types::{Entry, LogId, NodeId, SnapshotMeta, StorageError, StoredMembership, TypeConfig};
use super::snapshot_file;
use crate::storage::batch::{Batch, Table};
use crate::storage::{Durability, Store, META_CF, RAFT_APPLIED_KEY, RAFT_MEMBERSHIP_KEY};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder, StorageIOError};
use std::path::{Path, PathBuf};

const CURRENT: &str = "current.snap";

fn io_err(subject: ErrorSubject<NodeId>, verb: ErrorVerb, e: impl ToString) -> StorageError {
    StorageError::IO { source: StorageIOError::new(subject, verb, openraft::AnyError::error(e.to_string())) }
}

fn sm_err(verb: ErrorVerb, e: impl ToString) -> StorageError {
    io_err(ErrorSubject::StateMachine, verb, e)
}

fn snap_err(verb: ErrorVerb, e: impl ToString) -> StorageError {
    io_err(ErrorSubject::Snapshot(None), verb, e)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, String> + Send + 'static) -> Result<T, String> {
    tokio::task::spawn_blocking(f).await.map_err(|e| format!("blocking task failed: {e}"))?
}

/// The Raft bookkeeping a store holds in its `meta` table.
fn raft_meta_of(
    get: impl Fn(&[u8]) -> Result<Option<Vec<u8>>, String>,
) -> Result<(Option<LogId>, StoredMembership), String> {
    let applied = match get(RAFT_APPLIED_KEY)? {
        Some(v) => Some(serde_json::from_slice(&v).map_err(|e| format!("damaged applied log id: {e}"))?),
        None => None,
    };
    let membership = match get(RAFT_MEMBERSHIP_KEY)? {
        Some(v) => serde_json::from_slice(&v).map_err(|e| format!("damaged membership: {e}"))?,
        None => StoredMembership::default(),
    };
    Ok((applied, membership))
}

/// The Raft bookkeeping of a checkpoint directory, read without opening it
/// as a store.
fn checkpoint_raft_meta(dir: &Path) -> Result<(Option<LogId>, StoredMembership), String> {
    let db = rocksdb::DB::open_cf_for_read_only(&rocksdb::Options::default(), dir, [META_CF], false)
        .map_err(|e| format!("cannot read the checkpoint at {}: {e}", dir.display()))?;
    let cf = db.cf_handle(META_CF).ok_or("checkpoint without a meta table")?;
    raft_meta_of(|k| db.get_cf(&cf, k).map_err(|e| e.to_string()))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Where others find a partition's store: empty while a snapshot replaces
/// it. Take a handle ([`Self::get`]) only for as long as it is needed; an
/// install waits until every handle is closed.
#[derive(Clone, Default)]
pub struct StoreSlot(std::sync::Arc<std::sync::Mutex<Option<Store>>>);

impl StoreSlot {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Store>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A handle on the store, unless a snapshot is replacing it.
    pub fn get(&self) -> Option<Store> {
        self.lock().clone()
    }

    fn take(&self) -> Option<Store> {
        self.lock().take()
    }

    fn put(&self, store: Store) {
        *self.lock() = Some(store);
    }
}

/// How long an install waits for other handles on the store to close.
const INSTALL_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// A partition's store, applied to by its Raft group.
pub struct PartitionStateMachine {
    /// The store's directory.
    dir: PathBuf,
    /// Snapshots built here and received here (`<dir>.snapshots`).
    snapshots: PathBuf,
    /// Empty only while a snapshot is being installed.
    store: StoreSlot,
    /// The last entry applied (also in the store, see the module doc).
    applied: Option<LogId>,
    /// The last membership applied.
    membership: StoredMembership,
    /// Makes snapshot and scratch names unique within this process.
    seq: u64,
}

impl PartitionStateMachine {
    /// Opens the store at `dir` and reads where it stands.
    pub async fn open(dir: &Path) -> Result<PartitionStateMachine, String> {
        let d = dir.to_path_buf();
        let (store, applied, membership) = blocking(move || {
            let store = Store::open(&d, Durability::Strict).map_err(|e| e.to_string())?;
            let (applied, membership) = raft_meta_of(|k| store.get(Table::Meta, k).map_err(|e| e.to_string()))?;
            Ok((store, applied, membership))
        })
        .await?;
        let mut snapshots = dir.as_os_str().to_owned();
        snapshots.push(".snapshots");
        let snapshots = PathBuf::from(snapshots);
        std::fs::create_dir_all(&snapshots).map_err(|e| format!("cannot create {}: {e}", snapshots.display()))?;
        let slot = StoreSlot::default();
        slot.put(store);
        Ok(PartitionStateMachine { dir: dir.to_path_buf(), snapshots, store: slot, applied, membership, seq: 0 })
    }

    /// Where the store is found (for the partition's writer while this node
    /// leads, and for reads).
    pub fn slot(&self) -> StoreSlot {
        self.store.clone()
    }

    /// The open store, or why there is none (an install in progress).
    fn open_store(&self) -> Result<Store, &'static str> {
        self.store.get().ok_or("the store is being replaced by a snapshot")
    }

    fn next_name(&mut self, what: &str) -> String {
        self.seq += 1;
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        format!("{what}-{nanos}-{}", self.seq)
    }
}

/// Builds a snapshot from a checkpoint of the store, off the apply path.
pub struct SnapshotBuilder {
    store: StoreSlot,
    snapshots: PathBuf,
    name: String,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let (slot, snapshots, name) = (self.store.clone(), self.snapshots.clone(), self.name.clone());
        let (meta, path) = blocking(move || {
            let ckpt = snapshots.join(format!("{name}.ckpt"));
            let store = slot.get().ok_or("the store is being replaced by a snapshot")?;
            store.checkpoint(&ckpt).map_err(|e| e.to_string())?;
            drop(store);
            let built = (|| {
                // The checkpoint says which entry it holds: applies may go on
                // while this builds, so the store's live value could be later.
                let (last_log_id, last_membership) = checkpoint_raft_meta(&ckpt)?;
                let snapshot_id = match &last_log_id {
                    Some(l) => format!("{}-{}-{name}", l.leader_id, l.index),
                    None => format!("none-{name}"),
                };
                let meta = SnapshotMeta { last_log_id, last_membership, snapshot_id };
                let tmp = snapshots.join(format!("{name}.tmp"));
                snapshot_file::pack(&meta, &ckpt, &tmp).map_err(|e| e.to_string())?;
                let current = snapshots.join(CURRENT);
                std::fs::rename(&tmp, &current).map_err(|e| e.to_string())?;
                sync_dir(&snapshots).map_err(|e| e.to_string())?;
                Ok((meta, current))
            })();
            let _ = std::fs::remove_dir_all(&ckpt);
            built
        })
        .await
        .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        let file = tokio::fs::File::open(&path).await.map_err(|e| snap_err(ErrorVerb::Read, e))?;
        Ok(Snapshot { meta, snapshot: Box::new(file) })
    }
}

impl RaftStateMachine<TypeConfig> for PartitionStateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<()>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let Some(last) = entries.last().map(|e| e.log_id) else {
            return Ok(Vec::new());
        };
        let store = self.open_store().map_err(|e| sm_err(ErrorVerb::Write, e))?;
        let n = entries.len();
        let membership = blocking(move || {
            let mut membership = None;
            for e in entries {
                let mut batch = match &e.payload {
                    EntryPayload::Normal(turn) => {
                        Batch::decode(&turn.0).map_err(|err| format!("entry {}: {err}", e.log_id))?
                    }
                    EntryPayload::Blank | EntryPayload::Membership(_) => Batch::new(),
                };
                if let EntryPayload::Membership(m) = &e.payload {
                    let stored = StoredMembership::new(Some(e.log_id), m.clone());
                    batch.put(
                        Table::Meta,
                        RAFT_MEMBERSHIP_KEY,
                        &serde_json::to_vec(&stored).map_err(|e| e.to_string())?,
                    );
                    membership = Some(stored);
                }
                batch.put(Table::Meta, RAFT_APPLIED_KEY, &serde_json::to_vec(&e.log_id).map_err(|e| e.to_string())?);
                // A dropped queue's column family is gone at once, while
                // unsynced writes could be lost in a crash and replayed
                // into it: so an entry that drops a queue is fsynced (with
                // every entry before it) before the drop.
                let sync = batch.drops().next().is_some();
                store.commit(&batch, sync).map_err(|err| format!("applying entry {}: {err}", e.log_id))?;
            }
            Ok(membership)
        })
        .await
        .map_err(|e| io_err(ErrorSubject::Apply(last), ErrorVerb::Write, e))?;
        self.applied = Some(last);
        if let Some(m) = membership {
            self.membership = m;
        }
        Ok(vec![(); n])
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let name = self.next_name("snapshot");
        SnapshotBuilder { store: self.store.clone(), snapshots: self.snapshots.clone(), name }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let name = self.next_name("received");
        let path = self.snapshots.join(format!("{name}.incoming"));
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        // Unlinked at once: the file lives as long as its handle, so an
        // abandoned transfer leaves nothing behind.
        tokio::fs::remove_file(&path).await.map_err(|e| snap_err(ErrorVerb::Write, e))?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let mut received = snapshot.into_std().await;
        let (dir, snapshots) = (self.dir.clone(), self.snapshots.clone());
        let name = self.next_name("install");
        let want = meta.clone();
        let store = self.store.take();
        let result = blocking(move || {
            use std::io::Seek;
            // Every other handle must close first: the directory is replaced.
            if let Some(store) = store {
                let since = std::time::Instant::now();
                while store.holders() > 1 {
                    if since.elapsed() > INSTALL_WAIT {
                        return Err(format!("the store is still open elsewhere after {INSTALL_WAIT:?}"));
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
            }
            let copy = snapshots.join(format!("{name}.tmp"));
            received.seek(std::io::SeekFrom::Start(0)).map_err(|e| e.to_string())?;
            let mut out = std::fs::File::create(&copy).map_err(|e| e.to_string())?;
            std::io::copy(&mut received, &mut out).map_err(|e| e.to_string())?;
            out.sync_all().map_err(|e| e.to_string())?;
            let incoming = snapshots.join(format!("{name}.store"));
            let got = snapshot_file::unpack(&copy, &incoming).map_err(|e| e.to_string())?;
            if got.snapshot_id != want.snapshot_id || got.last_log_id != want.last_log_id {
                let _ = std::fs::remove_dir_all(&incoming);
                return Err(format!("received snapshot {} but was told {}", got.snapshot_id, want.snapshot_id));
            }
            // Swap: the old store aside, the snapshot in its place.
            let old = snapshots.join(format!("{name}.old"));
            if dir.exists() {
                std::fs::rename(&dir, &old).map_err(|e| e.to_string())?;
            }
            std::fs::rename(&incoming, &dir).map_err(|e| e.to_string())?;
            if let Some(parent) = dir.parent() {
                sync_dir(parent).map_err(|e| e.to_string())?;
            }
            std::fs::rename(&copy, snapshots.join(CURRENT)).map_err(|e| e.to_string())?;
            sync_dir(&snapshots).map_err(|e| e.to_string())?;
            let _ = std::fs::remove_dir_all(&old);
            Ok(())
        })
        .await;
        // Open whatever the directory now holds: the snapshot, or (if the
        // swap never happened) the old store.
        let d = self.dir.clone();
        let reopened = blocking(move || {
            let store = Store::open(&d, Durability::Strict).map_err(|e| e.to_string())?;
            let (applied, membership) = raft_meta_of(|k| store.get(Table::Meta, k).map_err(|e| e.to_string()))?;
            Ok((store, applied, membership))
        })
        .await;
        match reopened {
            Ok((store, applied, membership)) => {
                self.store.put(store);
                self.applied = applied;
                self.membership = membership;
            }
            Err(e) => return Err(snap_err(ErrorVerb::Read, e)),
        }
        result.map_err(|e| snap_err(ErrorVerb::Write, e))?;
        if self.applied != meta.last_log_id {
            return Err(snap_err(
                ErrorVerb::Read,
                format!("installed snapshot holds {:?}, not {:?}", self.applied, meta.last_log_id),
            ));
        }
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let path = self.snapshots.join(CURRENT);
        if !tokio::fs::try_exists(&path).await.map_err(|e| snap_err(ErrorVerb::Read, e))? {
            return Ok(None);
        }
        let p = path.clone();
        let meta = blocking(move || snapshot_file::meta_of(&p).map_err(|e| e.to_string()))
            .await
            .map_err(|e| snap_err(ErrorVerb::Read, e))?;
        let file = tokio::fs::File::open(&path).await.map_err(|e| snap_err(ErrorVerb::Read, e))?;
        Ok(Some(Snapshot { meta, snapshot: Box::new(file) }))
    }
}

#[cfg(test)]
mod tests {
    use super::super::log_store::LogStore;
    use super::*;
    use openraft::testing::{StoreBuilder, Suite};

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, PartitionStateMachine, tempfile::TempDir> for Builder {
        async fn build(&self) -> Result<(tempfile::TempDir, LogStore, PartitionStateMachine), StorageError> {
            let t = tempfile::tempdir().map_err(|e| sm_err(ErrorVerb::Write, e))?;
            let log = LogStore::open(&t.path().join("raft"), "test").map_err(|e| sm_err(ErrorVerb::Write, e))?;
            let sm =
                PartitionStateMachine::open(&t.path().join("store")).await.map_err(|e| sm_err(ErrorVerb::Write, e))?;
            Ok((t, log, sm))
        }
    }

    fn entry(term: u64, index: u64, batch: &Batch) -> Entry {
        Entry {
            log_id: LogId::new(openraft::LeaderId::new(term, 1), index),
            payload: EntryPayload::Normal(super::super::raft_types::TurnBatch(batch.encode())),
        }
    }

    /// Three turns' batches: a queue made, jobs written, some deleted, a
    /// second queue made and the first dropped.
    fn turns() -> Vec<Entry> {
        let mut b1 = Batch::new();
        b1.create_queue("emails");
        for i in 0..50u8 {
            b1.put(Table::Queue("emails"), &[b'J', i], &[i; 40]);
        }
        b1.put(Table::Meta, b"queue/emails", b"definition");
        let mut b2 = Batch::new();
        for i in 0..25u8 {
            b2.delete(Table::Queue("emails"), &[b'J', i]);
        }
        b2.create_queue("sms");
        b2.put(Table::Queue("sms"), b"J1", b"hello");
        let mut b3 = Batch::new();
        b3.delete(Table::Meta, b"queue/emails");
        b3.drop_queue("emails");
        b3.put(Table::Queue("sms"), b"J2", b"world");
        vec![entry(1, 1, &b1), entry(1, 2, &b2), entry(2, 3, &b3)]
    }

    fn contents(sm: &PartitionStateMachine) -> Vec<crate::storage::DumpEntry> {
        sm.slot().get().unwrap().dump().unwrap()
    }

    /// Followers apply batches, not commands: two stores that apply the
    /// same entries hold the same bytes; applying entries again after a
    /// restart (a crash before the apply reached the disk) changes nothing;
    /// and a snapshot installed on a third store makes it identical too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replicas_that_apply_the_same_entries_are_identical() {
        let t = tempfile::tempdir().unwrap();
        let mut a = PartitionStateMachine::open(&t.path().join("a")).await.unwrap();
        let mut b = PartitionStateMachine::open(&t.path().join("b")).await.unwrap();
        a.apply(turns()).await.unwrap();
        let want = contents(&a);
        assert!(want.iter().any(|(cf, k, v)| cf == "q.sms" && k == b"J2" && v == b"world"));
        assert!(!want.iter().any(|(cf, _, _)| cf == "q.emails"), "the dropped queue is gone");
        assert_eq!(a.applied_state().await.unwrap().0.map(|l| l.index), Some(3));

        // One entry at a time, with a restart in the middle: the store says
        // where it stands, and the rest of the log brings it level.
        for e in turns().into_iter().take(2) {
            b.apply([e]).await.unwrap();
        }
        drop(b);
        let mut b = PartitionStateMachine::open(&t.path().join("b")).await.unwrap();
        assert_eq!(b.applied_state().await.unwrap().0.map(|l| l.index), Some(2));
        b.apply(turns().into_iter().skip(2)).await.unwrap();
        assert_eq!(want, contents(&b));

        // A snapshot of `a`, installed on a fresh `c` that had other data.
        let snap = a.get_snapshot_builder().await.build_snapshot().await.unwrap();
        assert_eq!(snap.meta.last_log_id.map(|l| l.index), Some(3));
        let mut c = PartitionStateMachine::open(&t.path().join("c")).await.unwrap();
        let mut stray = Batch::new();
        stray.create_queue("stray");
        stray.put(Table::Queue("stray"), b"J9", b"not in the snapshot");
        c.apply([entry(1, 1, &stray)]).await.unwrap();
        let mut incoming = c.begin_receiving_snapshot().await.unwrap();
        let mut sent = snap.snapshot;
        tokio::io::copy(&mut *sent, &mut *incoming).await.unwrap();
        c.install_snapshot(&snap.meta, incoming).await.unwrap();
        assert_eq!(want, contents(&c));
        assert_eq!(c.applied_state().await.unwrap().0, snap.meta.last_log_id);
        // And it survives a restart.
        drop(c);
        let c = PartitionStateMachine::open(&t.path().join("c")).await.unwrap();
        assert_eq!(want, contents(&c));
    }

    /// openraft's own suite for log stores and state machines: votes, log
    /// states, appends, truncation, purges, applies, memberships, snapshots
    /// built on one node and installed on another.
    #[test]
    fn openraft_s_storage_suite_passes() {
        Suite::test_all(Builder).unwrap();
    }
}
