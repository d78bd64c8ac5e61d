//! Purge: an operator removes every job of a queue (or of one state, or
//! one tenant or environment) that is not leased; leased jobs end with
//! their worker's word or their lease's expiry. The chunked task in
//! `tasks.rs` walks the indexes and calls [`purge_one`](Engine::purge_one)
//! for each entry.

use crate::broker::engine::Engine;
use crate::broker::GroupScope;
use crate::error::Result;
use crate::model::JobId;

impl Engine {
    /// Removes one job in `scope` unless it is leased; false when it was
    /// left (leased, out of scope or gone).
    pub(in crate::broker) fn purge_one(&mut self, queue: &str, id: JobId, scope: &GroupScope) -> Result<bool> {
        if self.queue_mut(queue)?.leases().contains(&id) {
            return Ok(false);
        }
        let Some(rec) = self.w.read_job(queue, id)? else { return Ok(false) };
        if !scope.covers(&rec.tenant, &rec.environment) {
            return Ok(false);
        }
        self.leave_index(queue, id, &rec)?;
        self.finish(queue, id, &rec)?;
        Ok(true)
    }
}
