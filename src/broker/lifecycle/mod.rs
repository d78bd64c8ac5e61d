//! The job lifecycle: every way a job changes state, one file per
//! transition, all built on the moves in [`primitives`] (`to_ready`,
//! `to_scheduled`, `to_dead`, `begin_lease`, `end_lease`, `give_back`,
//! `end_attempt`, `leave_index`, `finish`). No transition writes an index
//! key or a state counter of its own.
//!
//! A job is in one of four states: **scheduled** (waiting in the schedule
//! for its run time: a delay or a backoff), **ready** (in its group's ready
//! index), **leased** (a worker holds it; its lease is stored) or **dead**
//! (in the dead letters); or it is gone (acked, cancelled, purged). Which
//! transition does what to a job in each state is `table::TABLE`; the same table
//! is in `docs/lifecycle.md` (a test keeps the two equal) and a test drives
//! each row through an engine (`table.rs`, `table_tests.rs`).
//!
//! | file | transition |
//! |---|---|
//! | `enqueue.rs` | a new job: ready, or scheduled when it runs later; or deduplicated onto a live job |
//! | `promote.rs` | scheduled jobs whose time has come become ready |
//! | `lease.rs` | the fair next ready job is leased to a worker |
//! | `settle.rs` | a worker's word on a lease (checks it holds it), then one of: |
//! | `ack.rs` | done: the job leaves the broker |
//! | `nack.rs` | failed: retry later or now, or dead letter |
//! | `extend.rs` | the lease runs longer |
//! | `release.rs` | given back unstarted (no attempt), or never delivered |
//! | `expire.rs` | a lease ran out: the attempt counts |
//! | `disconnect.rs` | a Work stream ended: its leases come back, each an attempt |
//! | `cancel.rs` | an operator removes a job that is not leased |
//! | `redrive.rs` | a dead letter is ready again with fresh attempts |
//! | `purge.rs` | an operator removes jobs that are not leased, in bulk |
//! | `quarantine_return.rs` | a quarantined worker version's leases come back, its failures refunded |

mod ack;
mod cancel;
mod disconnect;
mod enqueue;
mod expire;
mod extend;
mod lease;
mod nack;
pub(super) mod primitives;
mod promote;
mod purge;
mod quarantine_return;
mod redrive;
mod release;
mod settle;
#[cfg(test)]
mod table;
#[cfg(test)]
mod table_tests;

pub(super) use lease::Grant;
pub(super) use primitives::effective_max_attempts;

use crate::model::JobState;
use crate::storage::records::{stored_state, JobRecord};

/// A job's state from what holds it: a stored lease makes it leased; else
/// its record's state, except that a job the record calls scheduled is
/// ready once promotion took it out of the schedule (promotion moves the
/// index entry and leaves the record as it was).
pub(crate) fn state_of(rec: &JobRecord, leased: bool, in_schedule: bool) -> JobState {
    if leased {
        return JobState::Leased;
    }
    match rec.state {
        stored_state::DEAD => JobState::Dead,
        stored_state::SCHEDULED if in_schedule => JobState::Scheduled,
        _ => JobState::Ready,
    }
}
