//! Compiles `proto/` with protox (pure Rust, so `cargo build` needs no system
//! `protoc`) and generates the tonic services. The encoded descriptor set is
//! written next to the generated code for gRPC server reflection.

use prost::Message;
use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["fairway/v1/fairway.proto"], ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out_dir.join("fairway_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .bytes(".fairway.v1.Job.payload")
        .bytes(".fairway.v1.EnqueueRequest.payload")
        .compile_fds(fds)?;
    // Node-to-node Raft traffic: its own package, not served by reflection.
    let raft = protox::compile(["fairway/raft/v1/raft.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .bytes(".fairway.raft.v1.AppendEntriesMessage.entries")
        .bytes(".fairway.raft.v1.SnapshotChunk.data")
        .compile_fds(raft)?;
    Ok(())
}
