//! The Raft types of a partition's group.

/// One writer turn's changes: the bytes of a typed batch
/// ([`crate::storage::batch::Batch::encode`]). A log entry carries exactly
/// one, so a follower reaches the leader's state by applying batches in
/// log order, never by re-running the commands that made them.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct TurnBatch(pub Vec<u8>);

/// A member of a partition's group, as its membership records it: where
/// the other nodes reach it (`raft`) and where clients do (`grpc`), so a
/// node can forward a call to the leader, or name it in a refusal, without
/// the cluster file (members added later are not in it).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Member {
    /// The node's id in the cluster file (`n1`).
    pub name: String,
    /// Its node-to-node address.
    pub raft: String,
    /// The address its clients use.
    pub grpc: String,
}

impl Member {
    pub fn new(name: &str, raft: &str, grpc: &str) -> Member {
        Member { name: name.into(), raft: raft.into(), grpc: grpc.into() }
    }
}

impl std::fmt::Display for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "node {} at {}", self.name, self.grpc)
    }
}

openraft::declare_raft_types!(
    /// A partition's Raft group: node ids are [`super::config::raft_id`]s,
    /// entries carry [`TurnBatch`]es, snapshots travel as files.
    pub TypeConfig:
        D = TurnBatch,
        R = (),
        NodeId = u64,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type NodeId = u64;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, Member>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Member>;
pub type StorageError = openraft::StorageError<NodeId>;
