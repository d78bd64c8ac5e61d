//! A queue's leases in one partition, with the two views of them that must
//! never disagree: the leases by job, and their expiry order. The counts per
//! tenant (for in-flight limits) are derived from the same inserts and
//! removals, so no caller keeps a count by hand.

use super::queue_state::ActiveLease;
use crate::model::{FastMap, JobId, Millis};
use std::collections::BTreeSet;

/// Every lease of one queue in one partition.
#[derive(Debug, Default)]
pub struct Leases {
    /// The leases, whole, so settling one needs no disk read.
    by_job: FastMap<JobId, ActiveLease>,
    /// (expires_at, job) of every lease in `by_job`: expiry runs in time
    /// order without looking at the others.
    expiry: BTreeSet<(Millis, JobId)>,
    /// Leases per tenant (absent = 0): a tenant's in-flight limit is
    /// checked on every pick.
    per_tenant: FastMap<String, u64>,
}

impl Leases {
    /// Adds a lease. A job holds at most one: a second insert of the same
    /// job replaces the first and keeps the counts right.
    pub fn insert(&mut self, job: JobId, lease: ActiveLease) {
        self.remove(job);
        self.expiry.insert((lease.expires_at, job));
        *self.per_tenant.entry(lease.record.tenant.clone()).or_default() += 1;
        self.by_job.insert(job, lease);
    }

    /// Moves every lease's expiry `by_ms` later (in memory only): a new
    /// leader's grace for leases granted by the one before it, whose clock
    /// may run behind this node's.
    pub fn postpone_all(&mut self, by_ms: u64) {
        self.expiry = self.expiry.iter().map(|(at, job)| (at.saturating_add(by_ms), *job)).collect();
        for lease in self.by_job.values_mut() {
            lease.expires_at = lease.expires_at.saturating_add(by_ms);
        }
    }

    /// Takes a lease out, with its tenant's count.
    pub fn remove(&mut self, job: JobId) -> Option<ActiveLease> {
        let lease = self.by_job.remove(&job)?;
        self.expiry.remove(&(lease.expires_at, job));
        if let Some(n) = self.per_tenant.get_mut(&lease.record.tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_tenant.remove(&lease.record.tenant);
            }
        }
        Some(lease)
    }

    /// Moves a lease's expiry to `expires_at` with a new length.
    pub fn extend(&mut self, job: JobId, expires_at: Millis, duration_ms: u64) -> Option<&ActiveLease> {
        let lease = self.by_job.get_mut(&job)?;
        self.expiry.remove(&(lease.expires_at, job));
        lease.expires_at = expires_at;
        lease.duration_ms = duration_ms;
        self.expiry.insert((expires_at, job));
        Some(lease)
    }

    /// The lease no longer belongs to a Work stream (it ended, or the
    /// broker stops): nothing is pushed for it, and it is settled by lease
    /// id or expires.
    pub fn detach(&mut self, job: JobId) {
        if let Some(l) = self.by_job.get_mut(&job) {
            l.consumer = None;
        }
    }

    /// The lease now belongs to Work stream `consumer` (re-linked after a
    /// reload from disk).
    pub fn attach(&mut self, job: JobId, consumer: u64) -> bool {
        match self.by_job.get_mut(&job) {
            Some(l) => {
                l.consumer = Some(consumer);
                true
            }
            None => false,
        }
    }

    pub fn get(&self, job: &JobId) -> Option<&ActiveLease> {
        self.by_job.get(job)
    }

    pub fn contains(&self, job: &JobId) -> bool {
        self.by_job.contains_key(job)
    }

    pub fn len(&self) -> usize {
        self.by_job.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_job.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&JobId, &ActiveLease)> {
        self.by_job.iter()
    }

    /// Leases of `tenant` now.
    pub fn of_tenant(&self, tenant: &str) -> u64 {
        self.per_tenant.get(tenant).copied().unwrap_or(0)
    }

    /// Jobs whose lease expired at `now`, earliest first.
    pub fn expired(&self, now: Millis) -> Vec<JobId> {
        self.expiry.iter().take_while(|(t, _)| *t <= now).map(|(_, id)| *id).collect()
    }

    /// When the next lease expires.
    pub fn next_expiry(&self) -> Option<Millis> {
        self.expiry.first().map(|(t, _)| *t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::LeaseId;
    use crate::storage::records::JobRecord;
    use std::sync::Arc;

    fn lease(tenant: &str, expires_at: Millis) -> ActiveLease {
        ActiveLease {
            lease_id: LeaseId::random(),
            leased_at: 0,
            expires_at,
            attempt: 1,
            duration_ms: expires_at,
            worker_id: Arc::from("w"),
            worker_version: Arc::from("v"),
            consumer: Some(1),
            record: JobRecord { tenant: tenant.into(), ..Default::default() },
        }
    }

    #[test]
    fn expiry_order_and_tenant_counts_follow_inserts_and_removals() {
        let mut l = Leases::default();
        l.insert(JobId(1), lease("a", 30));
        l.insert(JobId(2), lease("a", 10));
        l.insert(JobId(3), lease("b", 20));
        assert_eq!((l.of_tenant("a"), l.of_tenant("b"), l.len()), (2, 1, 3));
        assert_eq!(l.expired(20), vec![JobId(2), JobId(3)]);
        assert_eq!(l.next_expiry(), Some(10));
        l.extend(JobId(2), 50, 40);
        assert_eq!(l.expired(30), vec![JobId(3), JobId(1)]);
        assert!(l.remove(JobId(1)).is_some());
        assert!(l.remove(JobId(1)).is_none(), "a lease ends once");
        assert_eq!((l.of_tenant("a"), l.len()), (1, 2));
        // A second lease of the same job replaces the first.
        l.insert(JobId(3), lease("b", 5));
        assert_eq!((l.of_tenant("b"), l.len(), l.next_expiry()), (1, 2, Some(5)));
        l.remove(JobId(2));
        l.remove(JobId(3));
        assert!(l.is_empty() && l.next_expiry().is_none() && l.per_tenant.is_empty());
    }

    #[test]
    fn detach_and_attach_change_only_the_stream() {
        let mut l = Leases::default();
        l.insert(JobId(7), lease("a", 10));
        l.detach(JobId(7));
        assert_eq!(l.get(&JobId(7)).unwrap().consumer, None);
        assert!(l.attach(JobId(7), 4));
        assert!(!l.attach(JobId(8), 4));
        assert_eq!(l.get(&JobId(7)).unwrap().consumer, Some(4));
    }
}
