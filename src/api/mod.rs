//! Thin gRPC handlers: proto in, validated domain values to the broker,
//! proto out. No job logic lives here.

pub mod admin;
mod convert;
pub mod jobs;
pub mod worker;
