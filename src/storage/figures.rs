//! RocksDB's own figures for `/metrics`: write stalls, compaction debt and
//! sizes. Read from RocksDB properties (cheap in-memory lookups), never by
//! scanning data.

use super::{queue_cf, Store};

/// Database-wide figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoreFigures {
    /// True while RocksDB refuses writes (too many L0 files, memtables or
    /// compaction debt): every enqueue waits.
    pub write_stopped: bool,
    /// Bytes/s RocksDB throttles writes to; 0 = not throttled.
    pub delayed_write_rate: u64,
    pub running_compactions: u64,
    pub running_flushes: u64,
    /// Background errors since start (a full disk shows here first).
    pub background_errors: u64,
    pub queues: Vec<CfFigures>,
}

/// One queue's column family.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CfFigures {
    pub queue: String,
    /// Bytes compaction still has to rewrite (RocksDB's estimate).
    pub pending_compaction_bytes: u64,
    pub memtable_bytes: u64,
    pub sst_bytes: u64,
}

impl Store {
    /// The figures of the database and of the given queues' column families.
    pub fn figures(&self, queues: &[String]) -> StoreFigures {
        let db = &self.db;
        let int = |name: &str| db.property_int_value(name).ok().flatten().unwrap_or(0);
        let mut f = StoreFigures {
            write_stopped: int("rocksdb.is-write-stopped") != 0,
            delayed_write_rate: int("rocksdb.actual-delayed-write-rate"),
            running_compactions: int("rocksdb.num-running-compactions"),
            running_flushes: int("rocksdb.num-running-flushes"),
            background_errors: int("rocksdb.background-errors"),
            queues: Vec::with_capacity(queues.len()),
        };
        for q in queues {
            let Some(cf) = db.cf_handle(&queue_cf(q)) else { continue };
            let int = |name: &str| db.property_int_value_cf(&cf, name).ok().flatten().unwrap_or(0);
            f.queues.push(CfFigures {
                queue: q.clone(),
                pending_compaction_bytes: int("rocksdb.estimate-pending-compaction-bytes"),
                memtable_bytes: int("rocksdb.cur-size-all-mem-tables"),
                sst_bytes: int("rocksdb.total-sst-files-size"),
            });
        }
        f
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Durability, Store};

    #[test]
    fn figures_cover_every_named_queue_that_exists() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Durability::Strict).unwrap();
        store.create_queue_cf("a").unwrap();
        let f = store.figures(&["a".into(), "missing".into()]);
        assert!(!f.write_stopped);
        assert_eq!(f.queues.iter().map(|q| q.queue.as_str()).collect::<Vec<_>>(), vec!["a"]);
    }
}
