//! The cluster: every partition a Raft group replicated on several nodes
//! (openraft), so losing a machine stops nothing and loses nothing.
//!
//! Built so far, each in the file named after it:
//! - [`config`]: the cluster file (`cluster.toml`), parsed and checked by a
//!   pure function.
//! - [`replica_placement`]: which nodes hold each partition in a new
//!   cluster, and which should lead (pure, property-tested).
//! - [`raft_types`]: the Raft types of a partition group: one log entry per
//!   writer turn, carrying that turn's typed batch.
//! - [`entry_codec`]: log entries as bytes (the batch is stored as it is).
//! - [`log_store`]: a partition's Raft log on RocksDB, appends written by
//!   one thread and fsynced once per group.
//! - [`state_machine`]: the partition's store as the Raft state machine:
//!   followers apply batches, they do not re-run commands; a RocksDB
//!   checkpoint is the snapshot ([`snapshot_file`] packs it for sending).
//! - [`proposer`]: a partition writer's side: each turn's batch proposed as
//!   one entry, the writer waiting until a majority has it.
//! - [`node`]: `fairway serve --cluster`: a node's groups, its
//!   node-to-node server and its broker.
//! - [`network`]: Raft traffic between nodes, every partition's group over
//!   one gRPC service on each node's `raft` address.
//! - [`last_heard`]: when this node last heard from each partition's
//!   leader.
//! - [`colocation`]: every partition led by one node, the leader of
//!   partition 0 (the home); elections steered towards it, writers woken
//!   when their node's role changes.
//! - [`forward`]: any node accepts any call and forwards it to the home.
//! - [`status`]: this node's view of the cluster (status call, `/metrics`,
//!   health per partition).
//!
//! docs/cluster.md describes the design, what is fsynced where, and what
//! is still to come (the network, forwarding, failover, membership calls).

pub mod colocation;
pub mod config;
pub mod entry_codec;
pub mod forward;
pub mod last_heard;
pub mod log_store;
pub mod network;
pub mod node;
pub mod proposer;
pub mod raft_types;
pub mod replica_placement;
pub mod snapshot_file;
pub mod state_machine;
pub mod status;

#[cfg(test)]
mod replication_tests;
