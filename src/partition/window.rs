//! The slots of one Work stream (its prefetch window) or of one unary
//! `Lease` call (its `max_jobs`), shared by every partition that delivers to
//! it. A partition takes a slot before it leases a job for the stream and
//! gives it back when that lease ends, so the stream never holds more than
//! its window however many partitions serve it.
//!
//! A partition that has a job for the stream but finds no slot, or is told
//! by the split to leave the slot to another, marks itself *wanting*; the
//! partition that next frees a slot (or leaves one) wakes the wanting ones,
//! so a slot freed in one partition is used by another without polling.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Shared slots. `max` never changes; `used` is taken and given back with
/// compare-and-swap.
#[derive(Debug)]
pub struct Window {
    /// Most slots in use at once.
    max: u32,
    /// Slots in use now, over all partitions.
    used: AtomicU32,
    /// Bit p set: partition p had a job for this stream and no slot (or
    /// left the slot to another); it wants a wake when one is free. Bits
    /// past 63 share bit 63 (woken together).
    wanting: AtomicU64,
    /// For a unary call: set once the caller is answered, so no partition
    /// leases more for it.
    closed: std::sync::atomic::AtomicBool,
}

impl Window {
    pub fn new(max: u32) -> Window {
        Window {
            max: max.max(1),
            used: AtomicU32::new(0),
            wanting: AtomicU64::new(0),
            closed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub fn max(&self) -> u32 {
        self.max
    }

    pub fn used(&self) -> u32 {
        self.used.load(Ordering::SeqCst)
    }

    /// True while a slot is free and the window is open.
    pub fn has_room(&self) -> bool {
        !self.is_closed() && self.used() < self.max
    }

    /// Takes a slot; false when all are in use or the window is closed.
    pub fn try_take(&self) -> bool {
        if self.is_closed() {
            return false;
        }
        self.used.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |u| (u < self.max).then_some(u + 1)).is_ok()
    }

    /// Gives a slot back (a lease ended, or a taken slot was not used).
    pub fn give_back(&self) {
        let _ = self.used.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |u| Some(u.saturating_sub(1)));
    }

    /// Partition `p` wants a wake when a slot is free.
    pub fn want(&self, p: usize) {
        self.wanting.fetch_or(bit(p), Ordering::SeqCst);
    }

    /// Takes the set of wanting partitions (bit p = partition p; bit 63 also
    /// stands for every partition past it), clearing it.
    pub fn take_wanting(&self) -> u64 {
        if self.wanting.load(Ordering::SeqCst) == 0 {
            return 0;
        }
        self.wanting.swap(0, Ordering::SeqCst)
    }

    /// No more slots are handed out (a unary call was answered).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

fn bit(p: usize) -> u64 {
    1u64 << p.min(63)
}

/// The partitions a set of wanting bits names, among `partitions`.
pub fn wanting_partitions(bits: u64, partitions: usize) -> impl Iterator<Item = usize> {
    (0..partitions).filter(move |p| bits & bit(*p) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn slots_are_never_overtaken_by_racing_partitions() {
        let w = Arc::new(Window::new(5));
        let taken: u32 = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| {
                    let w = w.clone();
                    s.spawn(move || (0..1000).filter(|_| w.try_take()).count() as u32)
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(taken, 5);
        assert_eq!(w.used(), 5);
        assert!(!w.has_room());
        w.give_back();
        assert!(w.try_take() && !w.try_take());
    }

    #[test]
    fn wanting_partitions_are_woken_once() {
        let w = Window::new(1);
        w.want(2);
        w.want(0);
        w.want(70);
        let bits = w.take_wanting();
        assert_eq!(wanting_partitions(bits, 4).collect::<Vec<_>>(), [0, 2]);
        assert!(wanting_partitions(bits, 80).any(|p| p == 70), "partitions past 63 share its bit");
        assert_eq!(w.take_wanting(), 0);
    }

    #[test]
    fn a_closed_window_hands_out_nothing_and_a_give_back_never_underflows() {
        let w = Window::new(3);
        assert!(w.try_take());
        w.close();
        assert!(!w.try_take() && !w.has_room());
        w.give_back();
        w.give_back();
        assert_eq!(w.used(), 0);
    }
}
