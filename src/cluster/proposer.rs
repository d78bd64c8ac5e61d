//! A partition writer's side of its Raft group: each turn's batch proposed
//! as one log entry, the writer waiting until it is committed on a majority
//! and applied to the partition's store.

use super::raft_types::{NodeId, TurnBatch, TypeConfig};
use crate::error::{BrokerError, Result};
use crate::storage::batch::Batch;
use openraft::error::{ClientWriteError, RaftError};
use openraft::Raft;

/// Whether this node leads a partition now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// It leads, in this term.
    Leader { term: u64 },
    /// It does not; why, naming the leader if one is known.
    Follower { why: String },
}

#[derive(Clone)]
pub struct RaftProposer {
    /// The partition's number, for messages that name it.
    partition: u32,
    raft: Raft<TypeConfig>,
    /// The runtime the Raft group runs on: the writer is a thread of its
    /// own and waits here for each commit (as it waits for an fsync alone).
    runtime: tokio::runtime::Handle,
    /// How much later than stored a new leader expires the leases it finds:
    /// election timeout plus the clock skew allowed between nodes.
    lease_grace_ms: u64,
    /// Turns true when the node stops: a proposal still waiting for a
    /// majority then gives up after [`STOPPING_WAIT`], so a node that lost
    /// its majority can still stop.
    stopping: tokio::sync::watch::Receiver<bool>,
}

/// How long a proposal still waits for a majority once the node stops.
const STOPPING_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl RaftProposer {
    pub fn new(
        partition: u32,
        raft: Raft<TypeConfig>,
        runtime: tokio::runtime::Handle,
        lease_grace: std::time::Duration,
        stopping: tokio::sync::watch::Receiver<bool>,
    ) -> RaftProposer {
        RaftProposer { partition, raft, runtime, lease_grace_ms: lease_grace.as_millis() as u64, stopping }
    }

    pub fn lease_grace_ms(&self) -> u64 {
        self.lease_grace_ms
    }

    /// Whether this node leads the partition now (as Raft last said).
    pub fn role(&self) -> Role {
        let m = self.raft.metrics().borrow().clone();
        if m.state == openraft::ServerState::Leader && m.current_leader == Some(m.id) {
            return Role::Leader { term: m.current_term };
        }
        let p = self.partition;
        let why = match m.current_leader.and_then(|l| m.membership_config.membership().get_node(&l).cloned()) {
            Some(leader) => format!("partition {p} is led by {leader}, not by this node: retry there"),
            None => {
                format!("partition {p} has no leader this node knows of (an election is running?): retry in a moment")
            }
        };
        Role::Follower { why }
    }

    /// Before a new leader serves: confirms with a majority that it still
    /// leads and waits until everything committed before, and the first
    /// entry of its own term, is applied to its store. Blocking.
    pub fn take_over(&self, timeout: std::time::Duration) -> Result<()> {
        let confirmed =
            self.runtime.block_on(async { tokio::time::timeout(timeout, self.raft.ensure_linearizable()).await });
        match confirmed {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                Err(BrokerError::Unavailable(format!("partition {}: taking over failed: {e}", self.partition)))
            }
            Err(_) => Err(BrokerError::Unavailable(format!(
                "partition {}: no majority confirmed this node's leadership within {timeout:?}",
                self.partition
            ))),
        }
    }

    /// Proposes `batch` and waits for it to be committed and applied.
    /// Blocking: call from the partition's writer thread, never from the
    /// async runtime.
    pub fn propose(&self, batch: &Batch) -> Result<()> {
        let entry = TurnBatch(batch.encode());
        let mut stopping = self.stopping.clone();
        self.runtime.block_on(async {
            tokio::select! {
                written = self.raft.client_write(entry) => written.map(|_| ()).map_err(|e| refusal(self.partition, e)),
                _ = async {
                    let _ = stopping.wait_for(|s| *s).await;
                    tokio::time::sleep(STOPPING_WAIT).await;
                } => Err(BrokerError::Unavailable(format!(
                    "partition {}: this node is stopping and a majority has not acknowledged the write within \
                     {STOPPING_WAIT:?}: it may or may not be stored",
                    self.partition
                ))),
            }
        })
    }
}

/// A failed proposal as the broker's error: nothing of the turn is stored.
fn refusal(partition: u32, e: RaftError<NodeId, ClientWriteError<NodeId, super::raft_types::Member>>) -> BrokerError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => BrokerError::Unavailable(match (f.leader_id, f.leader_node) {
            (Some(_), Some(leader)) => format!(
                "partition {partition} is led by {leader} now, not by this node; nothing was stored: retry there"
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
