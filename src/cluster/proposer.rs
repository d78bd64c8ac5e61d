//! A partition writer's side of its Raft group: each turn's batch proposed
//! as one log entry, the writer waiting until it is committed on a majority
//! and applied to the partition's store.

use super::raft_types::{NodeId, TurnBatch, TypeConfig};
use crate::error::{BrokerError, Result};
use crate::storage::batch::Batch;
use openraft::error::{ClientWriteError, RaftError};
use openraft::Raft;

pub struct RaftProposer {
    /// The partition's number, for messages that name it.
    partition: u32,
    raft: Raft<TypeConfig>,
    /// The runtime the Raft group runs on: the writer is a thread of its
    /// own and waits here for each commit (as it waits for an fsync alone).
    runtime: tokio::runtime::Handle,
}

impl RaftProposer {
    pub fn new(partition: u32, raft: Raft<TypeConfig>, runtime: tokio::runtime::Handle) -> RaftProposer {
        RaftProposer { partition, raft, runtime }
    }

    /// Proposes `batch` and waits for it to be committed and applied.
    /// Blocking: call from the partition's writer thread, never from the
    /// async runtime.
    pub fn propose(&self, batch: &Batch) -> Result<()> {
        let entry = TurnBatch(batch.encode());
        match self.runtime.block_on(self.raft.client_write(entry)) {
            Ok(_) => Ok(()),
            Err(e) => Err(refusal(self.partition, e)),
        }
    }
}

/// A failed proposal as the broker's error: nothing of the turn is stored.
fn refusal(partition: u32, e: RaftError<NodeId, ClientWriteError<NodeId, openraft::BasicNode>>) -> BrokerError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => BrokerError::Unavailable(match (f.leader_id, f.leader_node) {
            (Some(id), Some(node)) => format!(
                "partition {partition} is led by node {id} at {} now, not by this node; nothing was stored: retry there",
                node.addr
            ),
            _ => format!("partition {partition} has no leader this node knows of (an election is running?); nothing was stored: retry"),
        }),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            BrokerError::Internal(format!("partition {partition}: a write was taken for a membership change: {e}"))
        }
        RaftError::Fatal(f) => BrokerError::Unavailable(format!(
            "partition {partition}'s replica on this node has stopped ({f}); nothing was stored: retry against another node"
        )),
    }
}
