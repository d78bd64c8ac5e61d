//! Lease: the fair next ready job of a queue goes to a worker. The
//! scheduler picks the (tenant, environment) group, skipping tenants at
//! their in-flight limit; the group's next job in priority order leaves the
//! ready index and its lease is stored. The caller (dispatch) sends the
//! delivery once the lease has committed.

use super::primitives::{effective_max_attempts, Tally};
use crate::broker::engine::Engine;
use crate::broker::queue_state::ActiveLease;
use crate::broker::view;
use crate::error::Result;
use crate::model::{duration_millis, JobId, LeaseId};
use crate::pb;
use std::sync::Arc;

/// Who a lease is for.
pub(in crate::broker) struct Grant<'a> {
    /// The lease length the worker asked for, if any.
    pub lease_ms: Option<u64>,
    pub worker_id: &'a Arc<str>,
    pub worker_version: &'a Arc<str>,
    /// The Work stream that takes it (none for a unary Lease).
    pub consumer: Option<u64>,
    /// Only jobs of these tenants (the worker's token's), when given.
    pub tenants: Option<&'a [String]>,
}

impl Engine {
    /// Takes the fair next ready job of `queue` and leases it, if the queue
    /// is not paused and is under its in-flight limit over all partitions.
    pub(in crate::broker) fn lease_next(
        &mut self,
        queue: &str,
        grant: &Grant,
    ) -> Result<Option<(JobId, pb::Delivery)>> {
        let Some(q) = self.queues.get_mut(queue) else { return Ok(None) };
        if q.paused {
            return Ok(None);
        }
        // A unit of the queue's in-flight limit, over all partitions; given
        // back below if no lease comes of it.
        if !q.shares.try_lease(q.config.max_in_flight) {
            q.shares.want(self.me);
            if !q.shares.try_lease(q.config.max_in_flight) {
                return Ok(None);
            }
        }
        let leased = self.lease_held(queue, grant);
        if !matches!(leased, Ok(Some(_))) {
            if let Some(q) = self.queues.get(queue) {
                q.shares.leases_ended(1);
                self.shared.wake(self.me, q.shares.take_wanting());
            }
        }
        leased
    }

    /// [`lease_next`](Self::lease_next), once a unit of the queue's
    /// in-flight limit is held.
    fn lease_held(&mut self, queue: &str, grant: &Grant) -> Result<Option<(JobId, pb::Delivery)>> {
        let now = self.now;
        loop {
            let Some(q) = self.queues.get_mut(queue) else { return Ok(None) };
            let next = q.pick(grant.tenants);
            let Some((t, e)) = next else {
                return Ok(None);
            };
            let Some((id, ready_at)) = self.from_ready(queue, &t, &e)? else { continue };
            let Some(rec) = self.w.take_job(queue, id)? else {
                tracing::error!(queue, tenant = %t, environment = %e, job_id = %id,
                    "ready index names a missing job; dropped the entry");
                continue;
            };
            let q = self.queue_mut(queue)?;
            let duration_ms = grant
                .lease_ms
                .or((rec.lease_duration_ms > 0).then_some(rec.lease_duration_ms))
                .unwrap_or_else(|| duration_millis(q.config.default_lease));
            q.obs.delivery.observe(now.saturating_sub(ready_at));
            q.obs.last_progress = now;
            q.tally(Tally::Leased);
            let lease = ActiveLease {
                lease_id: LeaseId::random(),
                leased_at: now,
                expires_at: now.saturating_add(duration_ms),
                attempt: rec.attempt + 1,
                duration_ms,
                worker_id: grant.worker_id.clone(),
                worker_version: grant.worker_version.clone(),
                consumer: grant.consumer,
                record: rec,
            };
            let delivery = view::delivery(queue, id, &lease, effective_max_attempts(&lease.record, &q.config));
            tracing::debug!(queue, tenant = %t, environment = %e, job_id = %id, attempt = lease.attempt,
                worker_id = %lease.worker_id, "job leased");
            self.begin_lease(queue, id, lease)?;
            return Ok(Some((id, delivery)));
        }
    }
}
