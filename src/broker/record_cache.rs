//! Job records kept in memory from enqueue to lease, so leasing a job that
//! arrived recently does not read its record back from RocksDB.
//!
//! Reading the record on every lease was an eighth of the writer's time in
//! the end-to-end profile. The writer already holds the decoded record when
//! it stages the enqueue, so keeping it costs no copy: the record moves in
//! here instead of being dropped, and moves out again into the lease.
//!
//! The cache is bounded by bytes and never evicts: when it is full, new jobs
//! are simply not cached. A queue hands out its oldest jobs first, so keeping
//! the oldest cached records (rather than the newest) is what gives hits; on
//! a backlog larger than the cache the overflow is read from disk as before.
//! Whatever writes or deletes a job's record must call [`RecordCache::forget`],
//! and a failed commit clears the whole cache, so an entry is always exactly
//! the committed (or about to be committed) record.

use crate::model::JobId;
use crate::storage::records::JobRecord;
use std::collections::HashMap;

/// Memory budget of the broker's record caches together (a few hundred
/// thousand typical jobs): each of P partitions gets a Pth of it, so the
/// broker's memory does not grow with its partitions (at P = 4, four full
/// 64 MiB caches took the 10M-job fill past 1 GiB of RSS).
pub const BROKER_BUDGET_BYTES: usize = 64 << 20;

/// One partition's share of [`BROKER_BUDGET_BYTES`].
pub fn partition_budget(partitions: usize) -> usize {
    BROKER_BUDGET_BYTES / partitions.max(1)
}

/// Per-entry memory counted on top of the encoded size: the boxed record
/// itself, its separate allocations (tenant, environment, payload, error)
/// with the allocator's headers, and the map slot. Charging only the
/// encoded size plus a small constant held about twice the budget in RSS
/// (seen in the 10M-job backlog at P = 4).
const ENTRY_OVERHEAD: usize = std::mem::size_of::<JobRecord>() + 160;

pub struct RecordCache {
    /// Job id -> (its record, the bytes charged for it). Ids never repeat, so
    /// the id alone is a safe key across queues.
    /// Boxed so that growing the map moves small slots, not whole records.
    map: HashMap<JobId, (Box<JobRecord>, usize), foldhash::fast::RandomState>,
    /// Bytes charged for everything in `map`.
    bytes: usize,
    /// Most bytes to hold; 0 turns the cache off.
    budget: usize,
    /// Lookups that found the record here, and those that did not: exported
    /// so a deployment can see whether its budget fits its backlog.
    pub hits: u64,
    pub misses: u64,
}

impl RecordCache {
    pub fn new(budget: usize) -> RecordCache {
        RecordCache { map: HashMap::default(), bytes: 0, budget, hits: 0, misses: 0 }
    }

    /// Keeps a just-staged record, if it fits. `encoded_len` is the size of
    /// the value written to disk, the best cheap estimate of its footprint.
    pub fn keep(&mut self, id: JobId, rec: JobRecord, encoded_len: usize) {
        let cost = encoded_len + ENTRY_OVERHEAD;
        if self.bytes + cost > self.budget {
            return;
        }
        self.bytes += cost;
        if let Some((_, old)) = self.map.insert(id, (Box::new(rec), cost)) {
            self.bytes -= old;
        }
    }

    /// Moves the record out (the caller is leasing the job).
    pub fn take(&mut self, id: JobId) -> Option<JobRecord> {
        match self.map.remove(&id) {
            Some((rec, cost)) => {
                self.bytes -= cost;
                self.hits += 1;
                Some(*rec)
            }
            None => {
                self.misses += 1;
                None
            }
        }
    }

    /// Drops the entry of a job whose record is being rewritten or deleted.
    pub fn forget(&mut self, id: JobId) {
        if let Some((_, cost)) = self.map.remove(&id) {
            self.bytes -= cost;
        }
    }

    pub fn clear(&mut self) {
        self.map.clear();
        self.bytes = 0;
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.len()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_share_one_budget() {
        assert_eq!(partition_budget(1), BROKER_BUDGET_BYTES);
        assert_eq!(partition_budget(4) * 4, BROKER_BUDGET_BYTES);
        assert_eq!(partition_budget(0), BROKER_BUDGET_BYTES, "no partitions is read as one");
    }

    fn rec(tenant: &str) -> JobRecord {
        JobRecord { tenant: tenant.into(), payload: vec![7; 10].into(), ..Default::default() }
    }

    #[test]
    fn take_moves_the_record_out_once() {
        let mut c = RecordCache::new(1 << 20);
        c.keep(JobId(1), rec("a"), 20);
        assert_eq!(c.take(JobId(1)).map(|r| r.tenant), Some("a".to_string()));
        assert!(c.take(JobId(1)).is_none());
        assert_eq!((c.hits, c.misses, c.len(), c.bytes()), (1, 1, 0, 0));
    }

    #[test]
    fn full_cache_keeps_the_oldest_and_refuses_new() {
        let per = 100 + ENTRY_OVERHEAD;
        let mut c = RecordCache::new(per * 2);
        for i in 1..=3 {
            c.keep(JobId(i), rec("a"), 100);
        }
        assert_eq!(c.len(), 2);
        assert!(c.take(JobId(3)).is_none(), "the newest did not fit");
        assert!(c.take(JobId(1)).is_some());
        c.keep(JobId(4), rec("a"), 100);
        assert!(c.take(JobId(4)).is_some(), "room came back after a take");
    }

    #[test]
    fn forget_and_clear_release_their_bytes() {
        let mut c = RecordCache::new(1 << 20);
        c.keep(JobId(1), rec("a"), 50);
        c.keep(JobId(2), rec("b"), 50);
        c.forget(JobId(1));
        c.forget(JobId(9));
        assert_eq!(c.len(), 1);
        assert_eq!(c.bytes(), 50 + ENTRY_OVERHEAD);
        c.clear();
        assert_eq!((c.len(), c.bytes()), (0, 0));
    }

    #[test]
    fn zero_budget_caches_nothing() {
        let mut c = RecordCache::new(0);
        c.keep(JobId(1), rec("a"), 1);
        assert!(c.take(JobId(1)).is_none());
    }
}
