//! Partitions: the unit of state. A broker's jobs are spread over
//! partitions by tenant ([`placement`]), and the deliveries of a queue are
//! split between its partitions so that weighted fairness holds across them
//! ([`split`], pure). What partitions share while they serve one queue or
//! one stream lives in [`queue_shares`] (the split's table and the queue's
//! in-flight count), [`breaker_board`] (each partition's circuit-breaker
//! figures per worker version) and [`window`] (a stream's slots); see
//! docs/partitions.md for the design they belong to.

pub mod breaker_board;
pub mod placement;
pub mod queue_shares;
pub mod split;
pub mod window;
