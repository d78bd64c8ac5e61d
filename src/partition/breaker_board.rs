//! What the partitions of one queue tell each other about worker versions:
//! each partition's circuit-breaker figures per version (outcomes held in
//! its window, failures among them, the newest outcome's time), so the
//! breaker judges a version on its outcomes in **all** partitions. Without
//! it a bad version's failures spread over P partitions and it would take
//! up to P times `breaker_min_deliveries` to trip.
//!
//! Each partition writes only its own slot of a version (by deltas, from
//! its writer thread, so the slot is always the sum of what that partition
//! added and took away); any partition reads every slot. A post holds the
//! map's read lock while it adds, and an entry whose slots are all zero is
//! removed under the write lock, so a post never lands in a removed entry.
//!
//! The board also carries **fences**: the partition whose outcome trips a
//! version fences it here, in memory, before that outcome is answered; every
//! other partition delivers nothing to a fenced version from then on, though
//! the quarantine itself reaches it only after a round through partition 0
//! (see `broker/catalog.rs`). So once the tripping nack is answered no
//! partition hands the bad version another job. A fence names the queue's
//! generation (a queue deleted and created again starts unfenced) and is
//! taken down by a lift. It is not stored: after a restart every partition
//! holds the quarantine itself (the catalog's reconcile).

use crate::model::{duration_millis, BreakerConfig, FastMap, Millis};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// One version's figures, in one partition or summed over several.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Figures {
    /// Outcomes held in the window(s).
    pub deliveries: u32,
    /// Failures among them.
    pub failures: u32,
    /// The newest outcome's wall-clock time (ms), for the baseline's age.
    pub last_at: Millis,
}

impl Figures {
    /// At least `min_deliveries` outcomes and a failure rate at or over the
    /// threshold.
    pub fn failing(&self, cfg: &BreakerConfig) -> bool {
        self.deliveries >= cfg.min_deliveries.max(1) && self.over(cfg)
    }

    /// A usable baseline: enough outcomes, under the threshold, and recent.
    pub fn healthy(&self, cfg: &BreakerConfig, now: Millis) -> bool {
        let max_age = duration_millis(cfg.baseline_max_age);
        self.deliveries >= cfg.min_deliveries.max(1)
            && !self.over(cfg)
            && (max_age == 0 || now.saturating_sub(self.last_at) <= max_age)
    }

    fn over(&self, cfg: &BreakerConfig) -> bool {
        u64::from(self.failures) * 100 >= u64::from(cfg.failure_percent) * u64::from(self.deliveries)
    }

    /// Both partitions' figures together.
    pub fn plus(self, o: Figures) -> Figures {
        Figures {
            deliveries: self.deliveries.saturating_add(o.deliveries),
            failures: self.failures.saturating_add(o.failures),
            last_at: self.last_at.max(o.last_at),
        }
    }
}

/// A version's slots, one per partition.
#[derive(Debug)]
struct Slots {
    /// Per partition: deliveries in the high 32 bits, failures in the low
    /// 32, so one load reads a consistent pair.
    counts: Box<[AtomicU64]>,
    /// Per partition: its newest outcome's time.
    last_at: Box<[AtomicU64]>,
}

impl Slots {
    fn new(parts: usize) -> Slots {
        Slots {
            counts: (0..parts).map(|_| AtomicU64::new(0)).collect(),
            last_at: (0..parts).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn read(&self, p: usize) -> Figures {
        let c = self.counts[p].load(Ordering::Acquire);
        Figures { deliveries: (c >> 32) as u32, failures: c as u32, last_at: self.last_at[p].load(Ordering::Acquire) }
    }

    /// Only partition `p`'s writer changes slot `p`: load and store are enough.
    fn add(&self, p: usize, deliveries: i64, failures: i64, last_at: Option<Millis>) {
        let f = self.read(p);
        let d = (i64::from(f.deliveries) + deliveries).clamp(0, i64::from(u32::MAX)) as u64;
        let x = (i64::from(f.failures) + failures).clamp(0, i64::from(u32::MAX)) as u64;
        self.counts[p].store((d << 32) | x, Ordering::Release);
        if let Some(at) = last_at {
            self.last_at[p].store(at, Ordering::Release);
        }
    }

    fn empty(&self) -> bool {
        self.counts.iter().all(|c| c.load(Ordering::Acquire) >> 32 == 0)
    }
}

/// One queue's board, shared by its partitions.
#[derive(Debug)]
pub struct BreakerBoard {
    parts: usize,
    versions: RwLock<FastMap<Arc<str>, Slots>>,
    /// Fenced versions, each with the queue generation it was fenced in.
    fences: RwLock<FastMap<Arc<str>, u64>>,
    /// Whether `fences` holds anything: the delivery path reads only this
    /// while nothing is fenced (the common case).
    any_fence: AtomicBool,
}

impl BreakerBoard {
    pub fn new(partitions: usize) -> BreakerBoard {
        BreakerBoard {
            parts: partitions.max(1),
            versions: RwLock::default(),
            fences: RwLock::default(),
            any_fence: AtomicBool::new(false),
        }
    }

    /// Stops deliveries to `version` in every partition of the queue (in
    /// its generation `generation`) until [`BreakerBoard::unfence`].
    pub fn fence(&self, version: &Arc<str>, generation: u64) {
        let mut f = self.fences.write().unwrap_or_else(|p| p.into_inner());
        f.insert(version.clone(), generation);
        self.any_fence.store(true, Ordering::Release);
    }

    /// Takes down `version`'s fence (its quarantine was lifted).
    pub fn unfence(&self, version: &str) {
        if !self.any_fence.load(Ordering::Acquire) {
            return;
        }
        let mut f = self.fences.write().unwrap_or_else(|p| p.into_inner());
        f.remove(version);
        self.any_fence.store(!f.is_empty(), Ordering::Release);
    }

    /// Takes down every fence of a generation before `generation`: the
    /// queue they stopped was deleted, and a queue of the same name was
    /// made since. Without this they would stay, and every delivery would
    /// look them up.
    pub fn unfence_before(&self, generation: u64) {
        if !self.any_fence.load(Ordering::Acquire) {
            return;
        }
        let mut f = self.fences.write().unwrap_or_else(|p| p.into_inner());
        f.retain(|_, g| *g >= generation);
        self.any_fence.store(!f.is_empty(), Ordering::Release);
    }

    /// Whether any version is fenced.
    pub fn any_fenced(&self) -> bool {
        self.any_fence.load(Ordering::Acquire)
    }

    /// Whether `version` is fenced in the queue's generation `generation`.
    pub fn fenced(&self, version: &str, generation: u64) -> bool {
        self.any_fence.load(Ordering::Acquire)
            && self.fences.read().unwrap_or_else(|p| p.into_inner()).get(version) == Some(&generation)
    }

    pub fn partitions(&self) -> usize {
        self.parts
    }

    fn read(&self) -> RwLockReadGuard<'_, FastMap<Arc<str>, Slots>> {
        self.versions.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, FastMap<Arc<str>, Slots>> {
        self.versions.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Partition `me`'s window of `version` changed by these deltas (and
    /// its newest outcome is now `last_at`, when given).
    pub fn post(&self, me: usize, version: &Arc<str>, deliveries: i64, failures: i64, last_at: Option<Millis>) {
        if me >= self.parts || (deliveries == 0 && failures == 0 && last_at.is_none()) {
            return;
        }
        {
            let m = self.read();
            if let Some(s) = m.get(&**version) {
                s.add(me, deliveries, failures, last_at);
                if deliveries >= 0 || !s.empty() {
                    return;
                }
            } else if deliveries <= 0 {
                return;
            }
        }
        let mut m = self.write();
        if deliveries > 0 {
            let parts = self.parts;
            m.entry(version.clone()).or_insert_with(|| Slots::new(parts)).add(me, deliveries, failures, last_at);
        } else if m.get(&**version).is_some_and(Slots::empty) {
            m.remove(&**version);
        }
    }

    /// `version`'s figures in every partition but `me`.
    pub fn elsewhere(&self, me: usize, version: &str) -> Figures {
        let m = self.read();
        let Some(s) = m.get(version) else { return Figures::default() };
        (0..self.parts).filter(|p| *p != me).fold(Figures::default(), |a, p| a.plus(s.read(p)))
    }

    /// Every version with outcomes in a partition other than `me`, with
    /// its figures there.
    pub fn all_elsewhere(&self, me: usize) -> Vec<(Arc<str>, Figures)> {
        let m = self.read();
        m.iter()
            .map(|(v, s)| {
                (v.clone(), (0..self.parts).filter(|p| *p != me).fold(Figures::default(), |a, p| a.plus(s.read(p))))
            })
            .filter(|(_, f)| f.deliveries > 0)
            .collect()
    }

    /// Versions on the board (for tests and the bound on its size).
    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    #[test]
    fn each_partition_sees_the_others_figures_not_its_own() {
        let b = BreakerBoard::new(3);
        b.post(0, &v("v2"), 5, 4, Some(10));
        b.post(1, &v("v2"), 7, 7, Some(30));
        b.post(2, &v("v1"), 20, 0, Some(20));
        assert_eq!(b.elsewhere(0, "v2"), Figures { deliveries: 7, failures: 7, last_at: 30 });
        assert_eq!(b.elsewhere(2, "v2"), Figures { deliveries: 12, failures: 11, last_at: 30 });
        assert_eq!(b.elsewhere(2, "v1"), Figures::default());
        let mut all = b.all_elsewhere(1);
        all.sort();
        assert_eq!(
            all,
            vec![
                (v("v1"), Figures { deliveries: 20, failures: 0, last_at: 20 }),
                (v("v2"), Figures { deliveries: 5, failures: 4, last_at: 10 })
            ]
        );
    }

    #[test]
    fn deltas_add_up_and_an_emptied_version_leaves_the_board() {
        let b = BreakerBoard::new(2);
        // A full window: a success replaces a failure (deliveries stay).
        b.post(0, &v("v"), 3, 3, Some(1));
        b.post(0, &v("v"), 0, -1, Some(2));
        assert_eq!(b.elsewhere(1, "v"), Figures { deliveries: 3, failures: 2, last_at: 2 });
        b.post(1, &v("v"), 1, 0, Some(3));
        b.post(0, &v("v"), -3, -2, None);
        assert_eq!(b.len(), 1, "partition 1 still holds an outcome");
        b.post(1, &v("v"), -1, 0, None);
        assert!(b.is_empty());
        // A version forgotten twice (a reload's old state dropped late) stays at 0.
        b.post(0, &v("w"), -5, -5, None);
        assert!(b.is_empty());
    }

    #[test]
    fn a_fence_holds_in_its_generation_until_lifted() {
        let b = BreakerBoard::new(3);
        assert!(!b.fenced("v2", 1));
        b.fence(&v("v2"), 1);
        assert!(b.fenced("v2", 1));
        assert!(!b.fenced("v1", 1), "only the tripped version");
        assert!(!b.fenced("v2", 2), "a queue created again starts unfenced");
        b.unfence("v1");
        assert!(b.fenced("v2", 1));
        b.unfence("v2");
        assert!(!b.fenced("v2", 1));
        assert!(!b.any_fence.load(Ordering::Acquire));
    }

    #[test]
    fn posts_racing_a_removal_are_never_lost() {
        let b = Arc::new(BreakerBoard::new(2));
        std::thread::scope(|sc| {
            for p in 0..2 {
                let b = b.clone();
                sc.spawn(move || {
                    for _ in 0..2000 {
                        b.post(p, &v("v"), 1, 1, Some(1));
                        b.post(p, &v("v"), -1, -1, None);
                    }
                    b.post(p, &v("v"), 1, 0, Some(1));
                });
            }
        });
        assert_eq!(b.elsewhere(0, "v").deliveries, 1);
        assert_eq!(b.elsewhere(1, "v").deliveries, 1);
    }
}
