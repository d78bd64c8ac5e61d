//! A partition's Raft log, in a RocksDB of its own (`<dir>/`): entries
//! under their index (big-endian, so key order is log order), and the vote,
//! the committed id and the purge point next to them.
//!
//! Every write goes through one thread ([`Io`] requests in a channel), so
//! writes land in the order Raft issued them, as openraft requires. The
//! thread takes every request waiting, writes each to RocksDB (so readers
//! see appended entries at once) and then fsyncs the WAL **once** for all
//! of them before it reports appends durable and votes saved: group commit,
//! as the broker's writers do, and never a RocksDB call or an fsync on the
//! async runtime. Reads run on tokio's blocking pool.

use super::entry_codec;
use super::raft_types::{Entry, LogId, NodeId, StorageError, TypeConfig, Vote};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader, StorageIOError};
use rocksdb::{ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB};
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

const LOG_CF: &str = "log";
const STATE_CF: &str = "state";
const VOTE_KEY: &[u8] = b"vote";
const COMMITTED_KEY: &[u8] = b"committed";
const PURGED_KEY: &[u8] = b"purged";

/// One write, in the order Raft asked for it.
enum Io {
    /// Entries as (index, bytes); `written` once readable, `flushed` once fsynced.
    Append {
        entries: Vec<(u64, Vec<u8>)>,
        written: tokio::sync::oneshot::Sender<Result<(), String>>,
        flushed: LogFlushed<TypeConfig>,
    },
    /// A state key; `done` once fsynced (a vote must be on disk before Raft acts on it).
    Put { key: &'static [u8], value: Vec<u8>, done: tokio::sync::oneshot::Sender<Result<(), String>> },
    /// Deletes entries `from..` (a follower's log that disagrees with its leader).
    Truncate { from: u64, done: tokio::sync::oneshot::Sender<Result<(), String>> },
    /// Deletes entries `..=upto.index` and records the purge point.
    Purge { upto: LogId, done: tokio::sync::oneshot::Sender<Result<(), String>> },
}

/// A partition's Raft log. Cheap to clone (the log reader is a clone).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    writer: Arc<Writer>,
}

/// The writer thread and its queue. When the last handle goes, the queue
/// closes, the thread ends and is joined here, so the log's RocksDB is
/// closed before the drop returns: a RocksDB closed by a thread racing with
/// the process's exit aborts it ("pthread lock: Invalid argument").
struct Writer {
    io: Option<flume::Sender<Io>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.io.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn io_err(subject: ErrorSubject<NodeId>, verb: ErrorVerb, e: impl ToString) -> StorageError {
    StorageError::IO { source: StorageIOError::new(subject, verb, openraft::AnyError::error(e.to_string())) }
}

impl LogStore {
    /// Opens (or creates) the log at `dir` and starts its writer thread,
    /// named `raft-log-<name>`.
    pub fn open(dir: &Path, name: &str) -> Result<LogStore, String> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_total_wal_size(64 << 20);
        opts.set_keep_log_file_num(2);
        let mut log_opts = Options::default();
        // Entries are read soon after they are written and then purged:
        // small memtables, no compression to pay for on every append.
        log_opts.set_write_buffer_size(16 << 20);
        let cfs = vec![
            ColumnFamilyDescriptor::new(LOG_CF, log_opts),
            ColumnFamilyDescriptor::new(STATE_CF, Options::default()),
        ];
        let db = Arc::new(
            DB::open_cf_descriptors(&opts, dir, cfs)
                .map_err(|e| format!("cannot open the Raft log at {}: {e}", dir.display()))?,
        );
        let (tx, rx) = flume::unbounded();
        let writer_db = db.clone();
        let thread = std::thread::Builder::new()
            .name(format!("raft-log-{name}"))
            .spawn(move || write_loop(&writer_db, &rx))
            .map_err(|e| format!("cannot start the Raft log's writer thread: {e}"))?;
        Ok(LogStore { db, writer: Arc::new(Writer { io: Some(tx), thread: Some(thread) }) })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&DB) -> Result<T, String> + Send + 'static,
    ) -> Result<T, String> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db)).await.map_err(|e| format!("log read task failed: {e}"))?
    }

    async fn request(&self, io: Io, done: tokio::sync::oneshot::Receiver<Result<(), String>>) -> Result<(), String> {
        let stopped = || "the Raft log's writer thread has stopped".to_string();
        self.writer.io.as_ref().ok_or_else(stopped)?.send_async(io).await.map_err(|_| stopped())?;
        done.await.map_err(|_| stopped())?
    }

    async fn put_state(&self, key: &'static [u8], value: Vec<u8>) -> Result<(), String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.request(Io::Put { key, value, done: tx }, rx).await
    }

    async fn read_state<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        key: &'static [u8],
    ) -> Result<Option<T>, String> {
        self.blocking(move |db| {
            let cf = db.cf_handle(STATE_CF).ok_or("state column family missing")?;
            match db.get_cf(&cf, key).map_err(|e| e.to_string())? {
                None => Ok(None),
                Some(v) => serde_json::from_slice(&v)
                    .map(Some)
                    .map_err(|e| format!("damaged {:?}: {e}", String::from_utf8_lossy(key))),
            }
        })
        .await
    }
}

/// The writer thread: takes every waiting request, writes them in order,
/// fsyncs once, then answers.
fn write_loop(db: &DB, rx: &flume::Receiver<Io>) {
    let mut durable: Vec<AfterSync> = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(io) = next.take() {
            if let Some(after_sync) = write_one(db, io) {
                durable.push(after_sync);
            }
            next = rx.try_recv().ok();
        }
        if !durable.is_empty() {
            let synced = db.flush_wal(true).map_err(|e| format!("fsync of the Raft log failed: {e}"));
            for f in durable.drain(..) {
                f(synced.clone());
            }
        }
    }
}

type AfterSync = Box<dyn FnOnce(Result<(), String>)>;

/// Writes one request (no fsync). Returns what to run once the fsync that
/// follows is done, if the request waits for it (a failed write is
/// answered at once).
fn write_one(db: &DB, io: Io) -> Option<AfterSync> {
    let no_sync = WriteOptions::default();
    let cf = |name| db.cf_handle(name).ok_or_else(|| format!("{name} column family missing"));
    match io {
        Io::Append { entries, written, flushed } => {
            let result = cf(LOG_CF).and_then(|log| {
                let mut wb = WriteBatch::default();
                for (index, bytes) in &entries {
                    wb.put_cf(&log, key(*index), bytes);
                }
                db.write_opt(wb, &no_sync).map_err(|e| format!("appending to the Raft log failed: {e}"))
            });
            let _ = written.send(result.clone());
            if let Err(e) = result {
                flushed.log_io_completed(Err(std::io::Error::other(e)));
                return None;
            }
            Some(Box::new(move |synced: Result<(), String>| {
                flushed.log_io_completed(synced.map_err(std::io::Error::other));
            }))
        }
        Io::Put { key, value, done } => {
            match cf(STATE_CF).and_then(|st| db.put_cf_opt(&st, key, value, &no_sync).map_err(|e| e.to_string())) {
                Ok(()) => Some(Box::new(move |synced| {
                    let _ = done.send(synced);
                })),
                Err(e) => {
                    let _ = done.send(Err(e));
                    None
                }
            }
        }
        Io::Truncate { from, done } => {
            let result = cf(LOG_CF).and_then(|log| {
                let mut wb = WriteBatch::default();
                wb.delete_range_cf(&log, key(from), key(u64::MAX));
                wb.delete_cf(&log, key(u64::MAX));
                db.write_opt(wb, &no_sync).map_err(|e| e.to_string())
            });
            let _ = done.send(result);
            None
        }
        Io::Purge { upto, done } => {
            let result = (|| {
                let (log, st) = (cf(LOG_CF)?, cf(STATE_CF)?);
                let mut wb = WriteBatch::default();
                wb.delete_range_cf(&log, key(0), key(upto.index.saturating_add(1)));
                if upto.index == u64::MAX {
                    wb.delete_cf(&log, key(u64::MAX));
                }
                wb.put_cf(&st, PURGED_KEY, serde_json::to_vec(&upto).map_err(|e| e.to_string())?);
                db.write_opt(wb, &no_sync).map_err(|e| e.to_string())
            })();
            let _ = done.send(result);
            None
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => x.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = range.end_bound().cloned();
        self.blocking(move |db| {
            let log = db.cf_handle(LOG_CF).ok_or("log column family missing")?;
            let mut out = Vec::new();
            for item in db.iterator_cf(&log, IteratorMode::From(&key(start), Direction::Forward)) {
                let (k, v) = item.map_err(|e| e.to_string())?;
                let index = u64::from_be_bytes(k.as_ref().try_into().map_err(|_| "damaged log key")?);
                let inside = match end {
                    Bound::Included(e) => index <= e,
                    Bound::Excluded(e) => index < e,
                    Bound::Unbounded => true,
                };
                if !inside {
                    break;
                }
                let entry = entry_codec::decode(&v).map_err(|e| e.to_string())?;
                if entry.log_id.index != index {
                    return Err(format!("log entry under index {index} says it is {}", entry.log_id.index));
                }
                out.push(entry);
            }
            Ok(out)
        })
        .await
        .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let purged: Option<LogId> =
            self.read_state(PURGED_KEY).await.map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Read, e))?;
        let last = self
            .blocking(|db| {
                let log = db.cf_handle(LOG_CF).ok_or("log column family missing")?;
                match db.iterator_cf(&log, IteratorMode::End).next() {
                    None => Ok(None),
                    Some(item) => {
                        let (_, v) = item.map_err(|e| e.to_string())?;
                        entry_codec::decode_log_id(&v).map(Some).map_err(|e| e.to_string())
                    }
                }
            })
            .await
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
        Ok(LogState { last_purged_log_id: purged, last_log_id: last.or(purged) })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let bytes = serde_json::to_vec(vote).map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, e))?;
        self.put_state(VOTE_KEY, bytes).await.map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.read_state(VOTE_KEY).await.map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Read, e))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let bytes = serde_json::to_vec(&committed).map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, e))?;
        self.put_state(COMMITTED_KEY, bytes).await.map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, e))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let v: Option<Option<LogId>> =
            self.read_state(COMMITTED_KEY).await.map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Read, e))?;
        Ok(v.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<(u64, Vec<u8>)> =
            entries.into_iter().map(|e| (e.log_id.index, entry_codec::encode(&e))).collect();
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.request(Io::Append { entries, written: tx, flushed: callback }, rx)
            .await
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Write, e))
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.request(Io::Truncate { from: log_id.index, done: tx }, rx)
            .await
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.request(Io::Purge { upto: log_id, done: tx }, rx)
            .await
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }
}
