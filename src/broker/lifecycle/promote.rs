//! Promote: scheduled jobs whose run time has come become ready, in run
//! time order, a bounded chunk per queue per turn. Promotion reads the
//! schedule only (each entry carries its job's group and priority), never
//! the jobs; the job record keeps saying "scheduled" until its next
//! change, which [`state_of`](super::state_of) accounts for.

use crate::broker::engine::Engine;
use crate::broker::recovery::first_scheduled;
use crate::error::{BrokerError, Result};
use crate::model::JobId;
use crate::storage::keys;
use crate::storage::records::GroupRef;
use prost::Message;

/// Most scheduled jobs promoted per queue per turn.
const PROMOTE_CHUNK: usize = 10_000;

impl Engine {
    pub(in crate::broker) fn promote(&mut self, queue: &str) -> Result<()> {
        let now = self.now;
        let start = self.queue_mut(queue)?.scheduled_cursor;
        let store = self.w.store.clone();
        let due = store.scan(
            queue,
            &keys::scheduled(start, JobId(0)),
            &keys::scheduled(now.saturating_add(1), JobId(0)),
            PROMOTE_CHUNK,
        )?;
        let complete = !due.more;
        let mut last_run_at = start;
        for (k, v) in due.entries {
            let Some((run_at, id)) = keys::scheduled_parts(&k) else { continue };
            // Skip keys this batch already removed (e.g. cancelled this turn).
            if self.w.deletes(queue, &k) {
                continue;
            }
            let g = GroupRef::decode(&*v).map_err(|e| BrokerError::Storage(format!("corrupt schedule entry: {e}")))?;
            self.from_schedule(queue, &k)?;
            self.to_ready_in(queue, id, (&g.tenant, &g.environment, g.priority), run_at)?;
            last_run_at = run_at;
        }
        let q = self.queue_mut(queue)?;
        if complete {
            q.scheduled_cursor = now.saturating_add(1);
            let on_disk = first_scheduled(&store, queue, q.scheduled_cursor)?;
            q.next_due = match (on_disk, q.staged_due) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        } else {
            // Resume at the same run_at next turn, after this batch commits.
            q.scheduled_cursor = last_run_at;
            q.next_due = Some(last_run_at);
        }
        Ok(())
    }
}
