//! Thin gRPC handlers: proto in, validated domain values to the broker,
//! proto out. No job logic lives here.

pub mod admin;
pub(crate) mod convert;
mod enqueue_stream;
pub mod jobs;
mod outcome_window;
pub mod trace;
pub mod traceparent;
mod work_trace;
pub mod worker;
