//! What the partitions of one queue share while they serve it: the split's
//! table (each partition's demand and virtual time, see [`super::split`]),
//! and the queue's leases in flight, so `QueueConfig.max_in_flight` holds
//! across partitions exactly (a lease takes a unit with compare-and-swap
//! before it is made).
//!
//! Each partition writes only its own entry of the table; any partition
//! reads all of them. A stale read costs at most a slot left to the wrong
//! partition for one turn, never a broken limit: the limits are the
//! compare-and-swap counters, the table only orders who goes first.

use super::breaker_board::BreakerBoard;
use super::split::{self, Share};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// How many deliveries a partition may run ahead of the one furthest
/// behind before it leaves a stream's free slots to it (see
/// [`split::may_take`]): a quarter of the stream's window, within
/// `MIN_SLACK..=MAX_SLACK`. Partitions fill a big window in bursts (a
/// commit of many acks frees many slots at once); a slack that small next
/// to the window makes every burst a hand-off between writer threads, which
/// cost a fifth of the end-to-end rate in the bench at 2 deliveries. The
/// shares stay exact over time: a partition is never more than the slack
/// ahead.
pub fn slack(window: u32) -> u32 {
    (window / 4).clamp(MIN_SLACK, MAX_SLACK)
}

/// The slack of the smallest windows.
pub const MIN_SLACK: u32 = 2;

/// The slack of windows of 256 slots and more.
pub const MAX_SLACK: u32 = 64;

/// One queue's shared figures.
#[derive(Debug)]
pub struct QueueShares {
    /// Per partition: the sum of the weights of its tenants with
    /// deliverable work (0 = none).
    demand: Vec<AtomicU64>,
    /// Per partition: its virtual time (wrapping).
    vtime: Vec<AtomicU64>,
    /// Per partition: its ready jobs as of its last alert check.
    ready: Vec<AtomicU64>,
    /// Leases of this queue in flight in all partitions.
    leased: AtomicU64,
    /// Bit p set: partition p had ready work but the queue was at its
    /// in-flight limit; it wants a wake when a lease ends (as
    /// `Window::want`).
    wanting: AtomicU64,
    /// Each partition's circuit-breaker figures per worker version, so a
    /// version is judged on its outcomes in all partitions.
    pub breaker: Arc<BreakerBoard>,
}

impl QueueShares {
    pub fn new(partitions: usize) -> QueueShares {
        let n = partitions.max(1);
        QueueShares {
            demand: (0..n).map(|_| AtomicU64::new(0)).collect(),
            vtime: (0..n).map(|_| AtomicU64::new(0)).collect(),
            ready: (0..n).map(|_| AtomicU64::new(0)).collect(),
            leased: AtomicU64::new(0),
            wanting: AtomicU64::new(0),
            breaker: Arc::new(BreakerBoard::new(n)),
        }
    }

    /// Partition `me` holds `ready` ready jobs; returns the queue's ready
    /// jobs over all partitions (each as of its last post).
    pub fn post_ready(&self, me: usize, ready: u64) -> u64 {
        self.ready[me].store(ready, Ordering::Release);
        self.ready.iter().map(|r| r.load(Ordering::Acquire)).sum()
    }

    /// Partition `me` wants a wake when the queue is under its limit again.
    pub fn want(&self, me: usize) {
        self.wanting.fetch_or(1u64 << me.min(63), Ordering::SeqCst);
    }

    /// Takes the set of wanting partitions, clearing it.
    pub fn take_wanting(&self) -> u64 {
        if self.wanting.load(Ordering::SeqCst) == 0 {
            return 0;
        }
        self.wanting.swap(0, Ordering::SeqCst)
    }

    pub fn partitions(&self) -> usize {
        self.demand.len()
    }

    fn snapshot(&self) -> Vec<Share> {
        self.demand
            .iter()
            .zip(&self.vtime)
            .map(|(d, v)| Share { demand: d.load(Ordering::Acquire), vtime: v.load(Ordering::Acquire) })
            .collect()
    }

    /// How a unary call of `n` jobs on this queue alone is split between
    /// partitions (see [`split::quotas_from`]).
    pub fn quotas(&self, n: u32) -> Vec<u32> {
        split::quotas_from(n, &self.snapshot())
    }

    /// Every partition's demand (as last posted).
    pub fn demands(&self) -> Vec<u64> {
        self.demand.iter().map(|d| d.load(Ordering::Acquire)).collect()
    }

    /// Whether partition `me` may use a free slot of a stream now. With one
    /// partition it always may.
    pub fn may_take(&self, me: usize, slack: u32) -> bool {
        self.partitions() == 1 || split::may_take(me, &self.snapshot(), slack)
    }

    /// The partition with demand furthest behind, to wake when `me` leaves
    /// it a slot.
    pub fn behind(&self) -> Option<usize> {
        split::behind(&self.snapshot())
    }

    /// Counts one delivery by partition `me`.
    pub fn charge(&self, me: usize) {
        if self.partitions() == 1 {
            return;
        }
        let mut s = Share { demand: self.demand[me].load(Ordering::Acquire), vtime: 0 };
        split::charge(&mut s);
        self.vtime[me].fetch_add(s.vtime, Ordering::AcqRel);
    }

    /// Partition `me`'s demand is now `demand`. From 0 to more it starts at
    /// the lowest virtual time of the others (no credit for idling).
    pub fn set_demand(&self, me: usize, demand: u64) {
        if self.partitions() == 1 {
            return;
        }
        let was = self.demand[me].swap(demand, Ordering::AcqRel);
        if was == 0 && demand > 0 {
            let mut shares = self.snapshot();
            split::activate(me, &mut shares);
            self.vtime[me].store(shares[me].vtime, Ordering::Release);
        }
    }

    /// Takes one unit of the queue's in-flight limit (`max` 0 = none);
    /// false when the queue is at it.
    pub fn try_lease(&self, max: u32) -> bool {
        if max == 0 {
            self.leased.fetch_add(1, Ordering::SeqCst);
            return true;
        }
        self.leased.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < u64::from(max)).then_some(n + 1)).is_ok()
    }

    /// `n` leases ended (or were dropped with their queue).
    pub fn leases_ended(&self, n: u64) {
        let _ = self.leased.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |l| Some(l.saturating_sub(n)));
    }

    /// `n` leases found by recovery.
    pub fn leases_recovered(&self, n: u64) {
        self.leased.fetch_add(n, Ordering::AcqRel);
    }

    /// Leases in flight in all partitions.
    pub fn leased(&self) -> u64 {
        self.leased.load(Ordering::SeqCst)
    }

    /// Whether another lease fits under `max` (0 = no limit) now.
    pub fn has_room(&self, max: u32) -> bool {
        max == 0 || self.leased() < u64::from(max)
    }
}

/// Every queue's shares, by name, for all partitions of a broker. An entry
/// outlives a deleted queue: each partition gives back its leases when it
/// drops the queue, so a queue created again under the name starts at 0.
#[derive(Debug)]
pub struct SharesByQueue {
    partitions: usize,
    map: RwLock<HashMap<String, Arc<QueueShares>>>,
}

impl SharesByQueue {
    pub fn new(partitions: usize) -> SharesByQueue {
        SharesByQueue { partitions: partitions.max(1), map: RwLock::default() }
    }

    pub fn partitions(&self) -> usize {
        self.partitions
    }

    /// The shares of `queue`, made on first use.
    pub fn of(&self, queue: &str) -> Arc<QueueShares> {
        if let Some(s) = self.map.read().ok().and_then(|m| m.get(queue).cloned()) {
            return s;
        }
        let mut m = match self.map.write() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        m.entry(queue.to_string()).or_insert_with(|| Arc::new(QueueShares::new(self.partitions))).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_limit_holds_over_partitions_racing_for_it() {
        let s = Arc::new(QueueShares::new(4));
        let got: u64 = std::thread::scope(|sc| {
            let hs: Vec<_> = (0..4)
                .map(|_| {
                    let s = s.clone();
                    sc.spawn(move || (0..500).filter(|_| s.try_lease(10)).count() as u64)
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(got, 10);
        assert!(!s.has_room(10));
        s.leases_ended(3);
        assert_eq!(s.leased(), 7);
        assert!(s.try_lease(0), "no limit");
    }

    #[test]
    fn a_partition_ahead_leaves_the_slot_to_the_one_behind() {
        let s = QueueShares::new(2);
        const SLACK: u32 = MIN_SLACK;
        assert!(!s.may_take(0, SLACK), "no demand, no slot");
        s.set_demand(0, 1);
        s.set_demand(1, 1);
        for _ in 0..=SLACK {
            assert!(s.may_take(0, SLACK));
            s.charge(0);
        }
        assert!(!s.may_take(0, SLACK), "{} deliveries ahead", SLACK + 1);
        assert_eq!(s.behind(), Some(1));
        assert!(s.may_take(1, SLACK));
        s.set_demand(1, 0);
        assert!(s.may_take(0, SLACK), "alone with demand, it takes every slot");
    }

    #[test]
    fn one_partition_always_takes() {
        let s = QueueShares::new(1);
        assert!(s.may_take(0, MAX_SLACK));
        let by = SharesByQueue::new(1);
        assert!(Arc::ptr_eq(&by.of("q"), &by.of("q")));
    }
}
