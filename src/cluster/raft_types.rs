//! The Raft types of a partition's group.

/// One writer turn's changes: the bytes of a typed batch
/// ([`crate::storage::batch::Batch::encode`]). A log entry carries exactly
/// one, so a follower reaches the leader's state by applying batches in
/// log order, never by re-running the commands that made them.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct TurnBatch(pub Vec<u8>);

openraft::declare_raft_types!(
    /// A partition's Raft group: node ids are [`super::config::raft_id`]s,
    /// entries carry [`TurnBatch`]es, snapshots travel as files.
    pub TypeConfig:
        D = TurnBatch,
        R = (),
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type NodeId = u64;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, openraft::BasicNode>;
pub type StorageError = openraft::StorageError<NodeId>;
