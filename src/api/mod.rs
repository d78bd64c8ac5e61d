//! Thin gRPC handlers: proto in, validated domain values to the broker,
//! proto out. No job logic lives here. Each handler takes the caller's
//! [`Access`](crate::auth::Access) from the request and checks the queue and
//! tenant the message names before acting.

pub mod admin;
pub(crate) mod convert;
mod enqueue_stream;
pub mod jobs;
mod outcome_window;
pub mod oversize;
mod settle_scope;
pub mod trace;
pub mod traceparent;
mod work_trace;
pub mod worker;
