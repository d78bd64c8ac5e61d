//! In a cluster, a partition's writer follows its node's leadership of the
//! partition: it serves only while this node leads, and when the node
//! becomes leader (a new term) it first rebuilds the partition's state from
//! the replicated store.
//!
//! Taking over, in order: a majority confirms the leadership and the store
//! has applied every committed entry and the first of the new term
//! ([`RaftProposer::take_over`]); the state is rebuilt as at start
//! (O(queues + groups + leases)); every lease found expires a grace later
//! than stored (election timeout + allowed clock skew), so a lease the old
//! leader granted is never handed to a second worker while the first may
//! still hold it by its own clock. Until then, and whenever another node
//! leads, the partition is refused at the broker's door with the leader's
//! address, and the writer runs no timers, tasks or dispatch (which would
//! write). When the node stops leading, the Work streams and waiting Lease
//! calls it served end with UNAVAILABLE, so their workers reconnect (and
//! reach the new leader) instead of waiting on a node that can no longer
//! hand out anything.

use super::engine::Engine;
use super::turn_log::TurnLog;
use crate::cluster::proposer::Role;
use std::time::Duration;

/// Longest a new leader waits for a majority to confirm it before it gives
/// up this turn (and tries again on the next).
const TAKE_OVER_WAIT: Duration = Duration::from_secs(5);

impl Engine {
    /// Whether this turn may serve: always on a single node; in a cluster,
    /// while this node leads the partition (after taking over, once per
    /// term).
    pub(super) fn follow_leadership(&mut self) -> bool {
        let TurnLog::Raft(raft) = &self.log else { return true };
        let raft = raft.clone();
        match raft.role() {
            Role::Leader { term } if self.term == Some(term) => true,
            // A writer that is stopping does not take over: the take-over
            // would wait for a majority that may be stopping too.
            Role::Leader { .. } if self.stopping.is_some() => false,
            Role::Leader { term } => {
                let taken = raft.take_over(TAKE_OVER_WAIT).and_then(|()| self.load_all());
                if let Err(e) = taken {
                    tracing::warn!(partition = self.me, term, error = %e, "not serving the partition yet");
                    self.shared.set_not_leading(self.me, Some(e.to_string()));
                    return false;
                }
                let grace = raft.lease_grace_ms();
                for q in self.queues.values_mut() {
                    q.postpone_leases(grace);
                }
                self.publish_registry();
                self.term = Some(term);
                self.shared.set_not_leading(self.me, None);
                let (queues, leases) = self.recovered();
                tracing::info!(partition = self.me, term, queues, leases, grace_ms = grace, "leading the partition");
                true
            }
            Role::Follower { why } => {
                if self.term.take().is_some() {
                    tracing::info!(partition = self.me, "no longer leading the partition");
                    self.end_calls_on_step_down(&why);
                }
                self.shared.set_not_leading(self.me, Some(why));
                false
            }
        }
    }
}

impl Engine {
    /// Ends every Work stream and waiting Lease call this partition served:
    /// this node no longer leads it, so it could never deliver to them
    /// again. Their leases stay as the store has them (the new leader
    /// expires them a grace after their stored expiry); the workers
    /// reconnect and any node forwards them to the new leader.
    fn end_calls_on_step_down(&mut self, why: &str) {
        let msg = format!("this node stopped leading partition {}: {why}; reconnect (any node forwards)", self.me);
        for w in self.waiters.drain(..) {
            if let Some(reply) = w.reply {
                let _ = reply.send(Err(crate::error::BrokerError::Unavailable(msg.clone())));
            }
        }
        for (_, c) in std::mem::take(&mut self.consumers) {
            let _ = c.tx.send(Err(tonic::Status::unavailable(msg.clone())));
        }
    }
}
