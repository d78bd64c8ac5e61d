//! Where a partition's writer sends each turn's batch.
//!
//! On one node, straight to the partition's RocksDB (one fsync per turn
//! when the turn asks for it). In a cluster, through the partition's Raft
//! group: the batch becomes one log entry, committed once a majority hold
//! it on disk and applied to the same RocksDB before the writer goes on.
//! This is the only difference between the two for the writer: everything
//! else (answering callers after the commit, reloading state after a
//! failed one) is the same code.

use crate::cluster::proposer::RaftProposer;
use crate::error::Result;
use crate::storage::batch::Batch;
use crate::storage::Store;

pub(crate) enum TurnLog {
    /// A single node: the store's own WAL is the log.
    Local,
    /// A cluster: the partition's Raft group is the log.
    Raft(RaftProposer),
}

impl TurnLog {
    /// Makes `batch` durable as the turn asks (`sync`): a local commit
    /// fsyncs only when asked; a Raft commit is always on a majority's disk.
    pub fn commit(&self, store: &Store, batch: &Batch, sync: bool) -> Result<()> {
        match self {
            TurnLog::Local => store.commit(batch, sync),
            TurnLog::Raft(raft) => raft.propose(batch),
        }
    }

    /// True when a commit of this turn was durable (fsynced) when it returned.
    pub fn synced(&self, store: &Store, sync: bool) -> bool {
        match self {
            TurnLog::Local => sync && store.syncs_commits(),
            TurnLog::Raft(_) => true,
        }
    }

    /// True when commits that were not asked to sync leave writes to be
    /// fsynced later (see the writer's lagging-WAL sync).
    pub fn leaves_unsynced(&self, store: &Store) -> bool {
        match self {
            TurnLog::Local => store.syncs_commits(),
            TurnLog::Raft(_) => false,
        }
    }
}
