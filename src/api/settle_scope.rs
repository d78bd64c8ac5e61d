//! Whether a caller may ack, nack or extend a lease: its token must cover
//! the queue and, when it covers only some tenants, the job's tenant too
//! (a lease id alone must not let one tenant's worker settle another's
//! jobs).
//!
//! The job's tenant costs a read, except on a Work stream for the jobs the
//! stream itself delivered: those were picked among the token's tenants, so
//! the stream remembers them and skips the read.

use crate::auth::Access;
use crate::broker::Broker;
use crate::error::BrokerError;
use crate::model::JobId;
use crate::pb;
use crate::pb::work_response::Response as WorkMsg;
use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

/// Checks one caller's settles.
#[derive(Clone)]
pub struct SettleScope {
    /// The caller's rights.
    access: Access,
    /// Jobs delivered on this Work stream and not yet acked or nacked; only
    /// kept when the token covers some tenants (else nothing is read anyway).
    delivered: Option<Arc<Mutex<HashSet<JobId>>>>,
    /// Past this many remembered jobs (leases that expired unsettled) the
    /// memory is dropped; later settles just read their job.
    cap: usize,
}

impl SettleScope {
    /// For unary settles: nothing delivered to remember.
    pub fn unary(access: Access) -> SettleScope {
        SettleScope { access, delivered: None, cap: 0 }
    }

    /// For a Work stream with a prefetch window of `max_in_flight`.
    pub fn stream(access: Access, max_in_flight: u32) -> SettleScope {
        let delivered = access.tenant_limited().then(Default::default);
        SettleScope { access, delivered, cap: 2 * max_in_flight as usize + 1024 }
    }

    /// True when deliveries must be shown to [`on_response`](Self::on_response).
    pub fn watches_deliveries(&self) -> bool {
        self.delivered.is_some()
    }

    /// A message on its way to the worker: remembers delivered jobs.
    pub fn on_response(&self, r: &pb::WorkResponse) {
        let (Some(set), Some(WorkMsg::Delivery(d))) = (&self.delivered, &r.response) else { return };
        let Some(job) = d.job.as_ref().and_then(|j| JobId::parse(&j.id).ok()) else { return };
        let mut set = set.lock().unwrap_or_else(PoisonError::into_inner);
        if set.len() >= self.cap {
            set.clear();
        }
        set.insert(job);
    }

    /// Refuses a settle of `job` in `queue` the token does not cover.
    /// `finishes`: an ack or nack, after which the job is forgotten.
    pub async fn check(&self, broker: &Broker, queue: &str, job: JobId, finishes: bool) -> Result<(), BrokerError> {
        self.access.settle(queue)?;
        if !self.access.tenant_limited() {
            return Ok(());
        }
        if let Some(set) = &self.delivered {
            let mut set = set.lock().unwrap_or_else(PoisonError::into_inner);
            let known = if finishes { set.remove(&job) } else { set.contains(&job) };
            if known {
                return Ok(());
            }
        }
        let record = broker.get_job(queue.to_string(), job).await?;
        self.access.settle_tenant(queue, &record.tenant)
    }
}
