//! A node's view of the cluster, read from its own replicas and never from
//! another node (so it answers on a node cut off from the others): what
//! `GetClusterStatus` returns, `fairway cluster status` prints, `/metrics`
//! exports and the gRPC health of each partition (`fairway.partition.N`)
//! says.

use super::colocation::Leaders;
use super::raft_types::{Member, NodeId};
use crate::pb;
use openraft::ServerState;

/// The gRPC health name of partition `p`.
pub fn health_name(p: usize) -> String {
    format!("fairway.partition.{p}")
}

fn role(s: ServerState) -> &'static str {
    match s {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "stopped",
    }
}

/// This node's view (see the module doc).
pub fn status(leaders: &Leaders) -> pb::ClusterStatus {
    let mut out = pb::ClusterStatus { clustered: true, node_id: leaders.name().to_string(), ..Default::default() };
    for (p, raft) in leaders.rafts().iter().enumerate() {
        let metrics = raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        let name = |id: &NodeId| membership.get_node(id).map_or_else(|| id.to_string(), |n: &Member| n.name.clone());
        if p == 0 {
            out.members = membership
                .nodes()
                .map(|(_, n)| pb::ClusterMember { node_id: n.name.clone(), grpc: n.grpc.clone(), raft: n.raft.clone() })
                .collect();
            out.home_node_id = m.current_leader.as_ref().map(name).unwrap_or_default();
        }
        let matched_index = m
            .replication
            .as_ref()
            .map(|r| r.iter().map(|(id, log)| (name(id), log.map_or(0, |l| l.index))).collect())
            .unwrap_or_default();
        out.partitions.push(pb::PartitionStatus {
            partition: p as u32,
            role: role(m.state).into(),
            term: m.current_term,
            leader_node_id: m.current_leader.as_ref().map(name).unwrap_or_default(),
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.map_or(0, |l| l.index),
            snapshot_index: m.snapshot.map_or(0, |l| l.index),
            leader_changes: leaders.leader_changes(p),
            matched_index,
            quorum_ack_age_ms: if m.state == ServerState::Leader { m.millis_since_quorum_ack } else { None },
            voters: membership.voter_ids().map(|id| name(&id)).collect(),
        });
    }
    out
}

/// Whether a partition is healthy as seen from this node: a leader is
/// known, and if this node is that leader, a majority acknowledged it
/// within two election timeouts (a leader cut off from its followers is
/// not healthy, even before it learns it has lost).
pub fn partition_serving(p: &pb::PartitionStatus, election_timeout_ms: u64) -> bool {
    if p.leader_node_id.is_empty() {
        return false;
    }
    match p.quorum_ack_age_ms {
        Some(age) if p.role == "leader" => age <= election_timeout_ms * 2,
        _ => true,
    }
}

/// Mirrors each partition's health into the gRPC health service until
/// `stop` turns true.
pub async fn mirror_health(
    leaders: Leaders,
    election_timeout_ms: u64,
    health: tonic_health::server::HealthReporter,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use tonic_health::ServingStatus;
    let mut shown: Vec<Option<bool>> = Vec::new();
    loop {
        let now = status(&leaders);
        shown.resize(now.partitions.len(), None);
        for (p, part) in now.partitions.iter().enumerate() {
            let serving = partition_serving(part, election_timeout_ms);
            if shown[p] != Some(serving) {
                let s = if serving { ServingStatus::Serving } else { ServingStatus::NotServing };
                health.set_service_status(health_name(p), s).await;
                shown[p] = Some(serving);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(250)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(role: &str, leader: &str, age: Option<u64>) -> pb::PartitionStatus {
        pb::PartitionStatus {
            role: role.into(),
            leader_node_id: leader.into(),
            quorum_ack_age_ms: age,
            ..Default::default()
        }
    }

    #[test]
    fn a_partition_is_healthy_with_a_known_leader_that_a_majority_acknowledges() {
        assert!(partition_serving(&part("follower", "n1", None), 500));
        assert!(!partition_serving(&part("candidate", "", None), 500), "no leader known");
        assert!(partition_serving(&part("leader", "n1", Some(120)), 500));
        assert!(!partition_serving(&part("leader", "n1", Some(1_500)), 500), "a leader cut off from its majority");
    }
}
