//! Fairway: a durable, fair, multi-tenant job-queue broker over gRPC.
//!
//! Layout: [`model`] (domain types and validation), [`scheduler`] (fair
//! selection), [`storage`] (RocksDB layout), [`broker`] (the writer thread and
//! all job logic), [`api`] (thin gRPC handlers), [`server`] (tonic wiring,
//! health, reflection), [`auth`] and [`tls`] (who may connect and do what),
//! [`client`] (a Rust client). The terminal client is in the binary
//! (`src/cli/`), the benchmarks in the `fairway-bench` crate (`bench/`).

pub mod api;
pub mod auth;
pub mod broker;
pub mod client;
pub mod cluster;
pub mod config;
pub mod conn_limits;
pub mod deadline;
pub mod error;
#[doc(hidden)]
pub mod failpoint;
/// Fuzz targets: not part of the broker's API, compiled only with the
/// `fuzz` feature (the fuzz drivers and `tests/fuzz_smoke.rs` turn it on).
#[cfg(feature = "fuzz")]
pub mod fuzz;
pub mod http;
pub mod limits;
pub mod model;
pub mod partition;
pub mod scheduler;
pub mod server;
pub mod storage;
pub mod telemetry;
pub mod tls;

/// Code generated from `proto/fairway/v1/fairway.proto`.
/// Node-to-node Raft messages of a cluster (internal; see src/cluster/network.rs).
pub mod raft_pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("fairway.raft.v1");
}

pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("fairway.v1");

    /// Encoded descriptors of the contract, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/fairway_descriptor.bin"));
}
