//! When this node last heard from each partition's leader: an append
//! (heartbeats included) that its replica accepted as coming from the
//! current leader. Recorded by the node-to-node service as messages arrive
//! ([`super::network`]); read by the steering ([`super::colocation`]) to
//! tell a home that went silent sooner than Raft's own timer does.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone)]
pub struct LastHeard {
    /// What the per-partition readings count from: the node's start, so a
    /// partition never heard from has been silent since then.
    base: Instant,
    /// By partition: milliseconds after `base` of the last accepted append.
    at_ms: Arc<[AtomicU64]>,
}

impl LastHeard {
    pub fn new(partitions: usize) -> LastHeard {
        LastHeard { base: Instant::now(), at_ms: (0..partitions).map(|_| AtomicU64::new(0)).collect() }
    }

    /// Partition `p`'s leader was heard from now.
    pub fn heard(&self, p: u32) {
        if let Some(at) = self.at_ms.get(p as usize) {
            at.store(self.base.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
    }

    /// How long partition `p`'s leader has been silent (since the node
    /// started, if it never spoke).
    pub fn silent_for(&self, p: usize) -> Duration {
        let at = self.at_ms.get(p).map_or(0, |a| a.load(Ordering::Relaxed));
        self.base.elapsed().saturating_sub(Duration::from_millis(at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_is_silent_since_the_start_until_heard_and_each_is_its_own() {
        let h = LastHeard::new(2);
        std::thread::sleep(Duration::from_millis(30));
        assert!(h.silent_for(0) >= Duration::from_millis(30));
        h.heard(0);
        assert!(h.silent_for(0) < Duration::from_millis(20));
        assert!(h.silent_for(1) >= Duration::from_millis(30), "partition 1 was not heard");
        h.heard(9); // no such partition: ignored
    }
}
