//! `fairway cluster status`: the cluster as the node called sees it (its
//! members, the home that serves every call, each partition's leader, term
//! and replication progress). The node answers for itself, so pointing
//! `--addr` at each node in turn shows whether they agree.

use super::format::{render_table, Column};
use super::{emit, ok_if_closed, CliResult, Remote};
use fairway::pb;

#[derive(Debug, clap::Subcommand)]
pub enum ClusterCmd {
    /// Members, the home, and every partition's leader, term and progress.
    Status,
}

pub async fn cluster(remote: &Remote, cmd: ClusterCmd) -> CliResult {
    match cmd {
        ClusterCmd::Status => {
            let mut admin = remote.connect().await?.admin();
            let status = admin.get_cluster_status(pb::GetClusterStatusRequest {}).await?.into_inner();
            ok_if_closed(emit(&render_status(&status)).map_err(Into::into))
        }
    }
}

/// The status as text: a line about the node and the home, the members,
/// then one row per partition.
pub fn render_status(s: &pb::ClusterStatus) -> String {
    if !s.clustered {
        return "a single node (not started with --cluster): it serves every partition itself\n".into();
    }
    let home = if s.home_node_id.is_empty() {
        "no home known (an election is running, or this node is cut off)".to_string()
    } else if s.home_node_id == s.node_id {
        "this node is the home: it leads every partition and serves every call".to_string()
    } else {
        format!("the home is {}: this node forwards calls to it", s.home_node_id)
    };
    let mut out = format!("node {}; {home}\n\n", s.node_id);
    let members: Vec<Vec<String>> =
        s.members.iter().map(|m| vec![m.node_id.clone(), m.grpc.clone(), m.raft.clone()]).collect();
    out.push_str(&render_table(&[Column::left("NODE"), Column::left("CLIENTS"), Column::left("RAFT")], &members));
    out.push('\n');
    let cols = [
        Column::right("PARTITION"),
        Column::left("ROLE"),
        Column::right("TERM"),
        Column::left("LEADER"),
        Column::right("LOG"),
        Column::right("APPLIED"),
        Column::right("LEADER CHANGES"),
        Column::left("REPLICATED (on the leader)"),
    ];
    let rows: Vec<Vec<String>> = s
        .partitions
        .iter()
        .map(|p| {
            let mut replicated: Vec<String> = p.matched_index.iter().map(|(n, i)| format!("{n}={i}")).collect();
            replicated.sort();
            vec![
                p.partition.to_string(),
                p.role.clone(),
                p.term.to_string(),
                if p.leader_node_id.is_empty() { "-".into() } else { p.leader_node_id.clone() },
                p.last_log_index.to_string(),
                p.applied_index.to_string(),
                p.leader_changes.to_string(),
                if replicated.is_empty() { "-".into() } else { replicated.join(" ") },
            ]
        })
        .collect();
    out.push_str(&render_table(&cols, &rows));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_names_the_home_and_shows_each_partitions_progress() {
        let s = pb::ClusterStatus {
            clustered: true,
            node_id: "n2".into(),
            home_node_id: "n1".into(),
            members: vec![pb::ClusterMember {
                node_id: "n1".into(),
                grpc: "10.0.0.1:50051".into(),
                raft: "10.0.0.1:50061".into(),
            }],
            partitions: vec![pb::PartitionStatus {
                partition: 0,
                role: "follower".into(),
                term: 3,
                leader_node_id: "n1".into(),
                last_log_index: 120,
                applied_index: 118,
                leader_changes: 2,
                ..Default::default()
            }],
        };
        let out = render_status(&s);
        assert!(out.starts_with("node n2; the home is n1: this node forwards calls to it"), "{out}");
        assert!(out.contains("10.0.0.1:50051"), "{out}");
        let row = out.lines().last().expect("a partition row");
        for cell in ["follower", "3", "n1", "120", "118", "2", "-"] {
            assert!(row.split_whitespace().any(|c| c == cell), "{cell} in {row:?}");
        }
        let single = render_status(&pb::ClusterStatus::default());
        assert!(single.starts_with("a single node"), "{single}");
    }
}
