//! Disconnect: a Work stream ended while it held leases. Each comes back
//! at once, as an attempt spent (the worker may have died on the job), or
//! to the dead letters when that was its last attempt. A worker that stops
//! gracefully releases its unstarted jobs first (`release.rs`), and while
//! the broker itself shuts down the leases stay, for the worker to settle
//! after it reconnects.

use crate::broker::engine::Engine;
use crate::model::JobId;
use std::sync::Arc;

impl Engine {
    /// The leases of a stream that ended (`why`) come back.
    pub(in crate::broker) fn disconnect(&mut self, leases: impl IntoIterator<Item = (JobId, Arc<str>)>, why: &str) {
        for (job, queue) in leases {
            if let Err(e) = self.lose_lease(&queue, job, why) {
                self.w.poison(e);
            }
        }
    }

    /// Leases that stay when their stream ends: nobody is pushed to, and
    /// the worker may still settle them (after it reconnects) until they
    /// expire.
    pub(in crate::broker) fn detach_leases(&mut self, leases: impl IntoIterator<Item = (JobId, Arc<str>)>) {
        for (job, queue) in leases {
            if let Some(q) = self.queues.get_mut(&*queue) {
                q.detach_lease(job);
            }
        }
    }
}
