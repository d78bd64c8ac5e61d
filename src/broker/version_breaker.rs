//! The worker-version circuit breaker's bookkeeping: a bounded window of
//! recent delivery outcomes per worker version of one queue, and the rule
//! that decides when a version is broken (a bad deploy) rather than the
//! queue's jobs failing for everyone (a downstream outage).
//!
//! Pure and owned by the writer thread: recording an outcome is O(1) and
//! allocates nothing once a version's window exists (its ring is allocated
//! once, at the configured size). The decision looks at the other versions
//! only when the reporting version is over the threshold.
//!
//! The rule (also in docs/circuit-breaker.md): version V is tripped when
//! 1. the breaker is on (`failure_percent > 0`) and V is not empty (workers
//!    that report no version can't be told apart, so they are never fenced);
//! 2. V's window holds at least `min_deliveries` outcomes and at least
//!    `failure_percent`% of them are failures (nack or lease expiry);
//! 3. some other version W, not quarantined, has a healthy baseline: at
//!    least `min_deliveries` outcomes in its window, a failure rate below
//!    `failure_percent`%, and a newest outcome no older than
//!    `baseline_max_age`. Windows outlive their workers, so after a rollout
//!    replaced every v1 worker with v2, v1's window is still the baseline
//!    (for that long). When every version fails (a downstream outage) there
//!    is no healthy baseline and nothing is quarantined: stopping all
//!    processing would be the outage itself. The age limit keeps it so when
//!    the healthy evidence is old: v1 was fine last week, v2 has run fine
//!    since, and today the downstream fails v2 — v1's window says nothing
//!    about today.
//!
//! With several partitions each keeps the windows of the deliveries it
//! made and posts their figures on the queue's [`BreakerBoard`]; the rule
//! above is applied to the sums over all partitions (a version's window is
//! then up to `window` outcomes per partition, and `min_deliveries` counts
//! over all of them), so a bad version trips after as many outcomes as
//! with one partition, wherever its jobs live.
//!
//! Windows are saved in the queue's column family (see [`VersionBreaker::take_changes`])
//! at most about once a second, so a restart keeps its baselines; a crash
//! loses at most that last second of outcomes.

use crate::model::{BreakerConfig, FastMap, FastSet, JobId, Millis};
use crate::partition::breaker_board::{BreakerBoard, Figures};
use crate::storage::records::BreakerWindowRecord;
use std::sync::Arc;

/// Changed windows are saved at most this often (ms): a window is up to a
/// few KiB, rewritten on every outcome, and a second of outcomes lost to a
/// crash does not change what the breaker decides.
pub const SAVE_INTERVAL_MS: Millis = 1000;

/// Most versions tracked per queue; beyond it the version heard from least
/// recently is forgotten, so a fleet of one-off versions can't grow memory.
pub const MAX_VERSIONS: usize = 32;

/// The last outcomes of deliveries made to one version.
#[derive(Debug, Clone)]
pub struct Window {
    /// Ring of (job, failed); allocated once at the window size.
    ring: Vec<(JobId, bool)>,
    /// The window size (`Vec::with_capacity` may give more room than asked).
    size: usize,
    /// Next slot to overwrite once the ring is full.
    head: usize,
    /// Failures among the outcomes held (kept so a check is O(1)).
    failures: u32,
    /// Turn counter of the last outcome, to evict the stalest version.
    last_seen: u64,
    /// Wall-clock time of the newest outcome, for the baseline age limit.
    last_at: Millis,
}

impl Window {
    fn new(size: usize) -> Window {
        let size = size.max(1);
        Window { ring: Vec::with_capacity(size), size, head: 0, failures: 0, last_seen: 0, last_at: 0 }
    }

    /// The outcomes held, oldest first.
    fn in_order(&self) -> impl Iterator<Item = &(JobId, bool)> {
        self.ring[self.head..].iter().chain(&self.ring[..self.head])
    }

    fn record(&self) -> BreakerWindowRecord {
        let (jobs, failed) = self.in_order().map(|(j, f)| (j.0, u8::from(*f))).unzip();
        BreakerWindowRecord { jobs, failed, last_at_ms: self.last_at }
    }

    /// Adds one outcome, dropping the oldest once the window is full;
    /// returns the dropped outcome's `failed`.
    fn push(&mut self, job: JobId, failed: bool) -> Option<bool> {
        let dropped = if self.ring.len() < self.size {
            self.ring.push((job, failed));
            None
        } else {
            let old = std::mem::replace(&mut self.ring[self.head], (job, failed));
            self.failures -= u32::from(old.1);
            self.head = (self.head + 1) % self.ring.len();
            Some(old.1)
        };
        self.failures += u32::from(failed);
        dropped
    }

    /// This window's figures.
    pub fn figures(&self) -> Figures {
        Figures { deliveries: self.deliveries(), failures: self.failures, last_at: self.last_at }
    }

    /// The jobs failed in this window, with how many times.
    fn refunds(&self) -> Vec<(JobId, u32)> {
        let mut refunds: FastMap<JobId, u32> = FastMap::default();
        for (job, failed) in &self.ring {
            if *failed {
                *refunds.entry(*job).or_default() += 1;
            }
        }
        let mut refunds: Vec<_> = refunds.into_iter().collect();
        refunds.sort();
        refunds
    }

    /// Outcomes held.
    pub fn deliveries(&self) -> u32 {
        self.ring.len() as u32
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// Why a version was tripped: the figures for the alert and the stats
/// (over all partitions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trip {
    pub deliveries: u32,
    pub failures: u32,
    /// The healthy version compared against, and its figures.
    pub baseline_version: String,
    pub baseline_deliveries: u32,
    pub baseline_failures: u32,
    /// Jobs the tripped version failed in this partition's window, with how
    /// many times: attempts to give back (see docs/circuit-breaker.md on refunds).
    pub refunds: Vec<(JobId, u32)>,
}

/// Windows to save (by version), and versions whose saved window must go.
pub type WindowChanges = (Vec<(Arc<str>, BreakerWindowRecord)>, Vec<Arc<str>>);

/// One queue's windows, by worker version.
#[derive(Debug, Default)]
pub struct VersionBreaker {
    /// Version -> its recent outcomes. Keyed by the same `Arc<str>` the
    /// leases carry, so recording an outcome clones no string.
    windows: FastMap<Arc<str>, Window>,
    /// Bumped per outcome; orders versions for eviction.
    clock: u64,
    /// Versions whose window changed since it was last saved.
    changed: FastSet<Arc<str>>,
    /// Versions forgotten since the last save, whose saved window must go.
    removed: FastSet<Arc<str>>,
    /// When changes were last taken for saving.
    saved_at: Millis,
    /// The queue's board and this partition's place on it, when the queue
    /// has several partitions: every change to a window is posted there.
    board: Option<(Arc<BreakerBoard>, usize)>,
}

impl Drop for VersionBreaker {
    fn drop(&mut self) {
        // A dropped queue, or state replaced by a reload (which posts its
        // windows again), no longer holds these outcomes.
        for (v, w) in &self.windows {
            self.post_gone(v, w);
        }
    }
}

impl VersionBreaker {
    /// The breaker of a queue with several partitions: partition `me` of
    /// the queue's `board`.
    /// `generation` is the queue's: fences left from an earlier
    /// generation (a deleted queue of the same name) are taken down.
    pub fn on_board(board: Arc<BreakerBoard>, me: usize, generation: u64) -> VersionBreaker {
        board.unfence_before(generation);
        let board = (board.partitions() > 1).then_some((board, me));
        let mut b = VersionBreaker::default();
        b.board = board;
        b
    }

    fn post(&self, version: &Arc<str>, deliveries: i64, failures: i64, last_at: Option<Millis>) {
        if let Some((b, me)) = &self.board {
            b.post(*me, version, deliveries, failures, last_at);
        }
    }

    fn post_gone(&self, version: &Arc<str>, w: &Window) {
        self.post(version, -i64::from(w.deliveries()), -i64::from(w.failures), None);
    }

    /// Fences `version` in every partition (see [`BreakerBoard::fence`]).
    pub fn fence(&self, version: &Arc<str>, generation: u64) {
        if let Some((b, _)) = &self.board {
            b.fence(version, generation);
        }
    }

    /// Takes down `version`'s fence.
    pub fn unfence(&self, version: &str) {
        if let Some((b, _)) = &self.board {
            b.unfence(version);
        }
    }

    /// The queue's board, when it has several partitions (where another
    /// partition's fences are read).
    pub fn board(&self) -> Option<&BreakerBoard> {
        self.board.as_ref().map(|(b, _)| &**b)
    }

    /// The queue's board while some version is fenced on it (rare: a
    /// clone to check fences next to a `record`).
    pub fn fences(&self) -> Option<Arc<BreakerBoard>> {
        self.board.as_ref().filter(|(b, _)| b.any_fenced()).map(|(b, _)| b.clone())
    }

    /// `version`'s figures here plus in the other partitions.
    fn total(&self, version: &str, here: Figures) -> Figures {
        match &self.board {
            Some((b, me)) => here.plus(b.elsewhere(*me, version)),
            None => here,
        }
    }

    /// Records the outcome of a delivery to `version` and says whether that
    /// version must now be quarantined. `quarantined` tells which versions
    /// already are (they never serve as a baseline).
    pub fn record(
        &mut self,
        cfg: &BreakerConfig,
        (version, job, failed): (&Arc<str>, JobId, bool),
        now: Millis,
        quarantined: impl Fn(&str) -> bool,
    ) -> Option<Trip> {
        if !cfg.enabled() {
            return None;
        }
        self.clock += 1;
        let clock = self.clock;
        if !self.windows.contains_key(&**version) {
            self.evict_if_full();
            self.windows.insert(version.clone(), Window::new(cfg.window as usize));
        }
        let w = self.windows.get_mut(&**version)?;
        let dropped = w.push(job, failed);
        w.last_seen = clock;
        w.last_at = w.last_at.max(now);
        let here = w.figures();
        let failures = i64::from(failed) - dropped.map_or(0, i64::from);
        self.post(version, i64::from(dropped.is_none()), failures, Some(here.last_at));
        if !self.changed.contains(&**version) {
            self.changed.insert(version.clone());
            // Forgotten earlier in this interval and back now: save, not delete.
            self.removed.remove(&**version);
        }
        if version.is_empty() || !failed || quarantined(version) {
            return None;
        }
        let total = self.total(version, here);
        if !total.failing(cfg) {
            return None;
        }
        let (bv, base) = self
            .candidates()
            .into_iter()
            .filter(|(v, b)| **v != **version && !quarantined(v) && b.healthy(cfg, now))
            // The baseline with the most evidence, then the lowest rate.
            .max_by_key(|(v, b)| (b.deliveries, std::cmp::Reverse(b.failures), std::cmp::Reverse(v.clone())))?;
        Some(Trip {
            deliveries: total.deliveries,
            failures: total.failures,
            baseline_version: bv.to_string(),
            baseline_deliveries: base.deliveries,
            baseline_failures: base.failures,
            refunds: self.windows[&**version].refunds(),
        })
    }

    /// Every version with outcomes here or in another partition, with its
    /// figures over all partitions.
    fn candidates(&self) -> Vec<(Arc<str>, Figures)> {
        let mut all = match &self.board {
            Some((b, me)) => b.all_elsewhere(*me),
            None => Vec::with_capacity(self.windows.len()),
        };
        for (v, w) in &self.windows {
            match all.iter_mut().find(|(k, _)| k == v) {
                Some((_, f)) => *f = f.plus(w.figures()),
                None => all.push((v.clone(), w.figures())),
            }
        }
        all
    }

    /// The jobs `version` failed in this partition's window, with how many
    /// times (what a quarantine decided elsewhere refunds here).
    pub fn refunds(&self, version: &str) -> Vec<(JobId, u32)> {
        self.windows.get(version).map(Window::refunds).unwrap_or_default()
    }

    /// Forgets a version's outcomes (on quarantine and on lift, so a lifted
    /// version starts afresh instead of tripping on its old failures).
    pub fn reset(&mut self, version: &str) {
        if let Some((k, w)) = self.windows.remove_entry(version) {
            self.post_gone(&k, &w);
            self.forgot(k);
        }
    }

    /// Forgets everything (the window size changed).
    pub fn clear(&mut self) {
        for (k, w) in std::mem::take(&mut self.windows) {
            self.post_gone(&k, &w);
            self.forgot(k);
        }
    }

    fn forgot(&mut self, version: Arc<str>) {
        self.changed.remove(&version);
        self.removed.insert(version);
    }

    /// Puts back a saved window (at startup). Outcomes beyond the window
    /// size keep the newest; versions past [`MAX_VERSIONS`] are dropped.
    pub fn restore(&mut self, cfg: &BreakerConfig, version: &str, rec: &BreakerWindowRecord) {
        if rec.jobs.len() != rec.failed.len() {
            return;
        }
        if self.windows.len() >= MAX_VERSIONS {
            // Keep the newest: the older of this one and the oldest held goes.
            let oldest = self.windows.iter().min_by_key(|(_, w)| w.last_at).map(|(k, w)| (k.clone(), w.last_at));
            match oldest {
                Some((k, at)) if at < rec.last_at_ms => {
                    if let Some(w) = self.windows.remove(&k) {
                        self.post_gone(&k, &w);
                    }
                    self.forgot(k);
                }
                _ => {
                    self.forgot(Arc::from(version));
                    return;
                }
            }
        }
        let mut w = Window::new(cfg.window as usize);
        for (job, failed) in rec.jobs.iter().zip(&rec.failed) {
            w.push(JobId(*job), *failed != 0);
        }
        w.last_at = rec.last_at_ms;
        let version: Arc<str> = Arc::from(version);
        self.post(&version, i64::from(w.deliveries()), i64::from(w.failures), Some(w.last_at));
        if let Some(old) = self.windows.insert(version.clone(), w) {
            self.post_gone(&version, &old);
        }
        // Eviction order follows the saved times: the clock restarts.
        let mut by_age: Vec<_> = self.windows.values_mut().collect();
        by_age.sort_by_key(|w| w.last_at);
        for (i, w) in by_age.into_iter().enumerate() {
            w.last_seen = i as u64 + 1;
        }
        self.clock = self.windows.len() as u64;
    }

    /// Whether there are changes to save: deletes at once (they follow a
    /// quarantine, lift or resize, which commit at once: a crash must not
    /// bring the forgotten window back); changed windows when `force`
    /// (shutdown) or once [`SAVE_INTERVAL_MS`] has passed since the last
    /// save (or the clock stepped back past it).
    pub fn save_due(&self, now: Millis, force: bool) -> bool {
        !self.removed.is_empty()
            || (!self.changed.is_empty() && (force || now < self.saved_at || now - self.saved_at >= SAVE_INTERVAL_MS))
    }

    /// After a failed commit: whatever the last save took may not be on
    /// disk. Every window is saved again, and every version `on_disk` (what
    /// a reload found) that is no longer held is deleted.
    pub fn resave_all(&mut self, on_disk: impl IntoIterator<Item = Arc<str>>) {
        self.changed = self.windows.keys().cloned().collect();
        self.removed = on_disk.into_iter().filter(|v| !self.windows.contains_key(v)).collect();
        self.saved_at = 0;
    }

    /// The windows to write and the versions whose saved window to delete
    /// since the last call.
    pub fn take_changes(&mut self, now: Millis) -> WindowChanges {
        self.saved_at = now;
        let changed = std::mem::take(&mut self.changed);
        let saves = changed.into_iter().filter_map(|v| self.windows.get(&v).map(|w| (v.clone(), w.record()))).collect();
        (saves, std::mem::take(&mut self.removed).into_iter().collect())
    }

    /// The versions whose windows are held.
    pub fn held(&self) -> impl Iterator<Item = &Arc<str>> {
        self.windows.keys()
    }

    pub fn window(&self, version: &str) -> Option<&Window> {
        self.windows.get(version)
    }

    /// Every tracked version with its window, sorted by version.
    pub fn versions(&self) -> Vec<(&str, &Window)> {
        let mut v: Vec<_> = self.windows.iter().map(|(k, w)| (&**k, w)).collect();
        v.sort_by(|a, b| a.0.cmp(b.0));
        v
    }

    fn evict_if_full(&mut self) {
        if self.windows.len() < MAX_VERSIONS {
            return;
        }
        let stalest = self.windows.iter().min_by_key(|(_, w)| w.last_seen).map(|(k, _)| k.clone());
        if let Some(k) = stalest {
            if let Some(w) = self.windows.remove(&k) {
                self.post_gone(&k, &w);
            }
            self.forgot(k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cfg() -> BreakerConfig {
        BreakerConfig { failure_percent: 50, min_deliveries: 20, window: 100, ..BreakerConfig::default() }
    }

    /// The wall clock of most tests: outcomes all land at this time.
    const NOW: Millis = 1_000_000_000;

    fn v(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    /// Records `n` outcomes for `version`; returns the first trip.
    fn feed(b: &mut VersionBreaker, c: &BreakerConfig, version: &str, n: u64, failed: bool) -> Option<Trip> {
        feed_at(b, c, version, n, failed, NOW)
    }

    fn feed_at(
        b: &mut VersionBreaker,
        c: &BreakerConfig,
        version: &str,
        n: u64,
        failed: bool,
        now: Millis,
    ) -> Option<Trip> {
        let ver = v(version);
        let mut trip = None;
        for i in 0..n {
            let t = b.record(c, (&ver, JobId(i % 7), failed), now, |_| false);
            trip = trip.or(t);
        }
        trip
    }

    #[test]
    fn a_bad_deploy_trips_against_the_previous_versions_window() {
        let mut b = VersionBreaker::default();
        assert!(feed(&mut b, &cfg(), "v1", 30, false).is_none());
        // v1's workers are gone; only v2 runs, and fails.
        assert!(feed(&mut b, &cfg(), "v2", 19, true).is_none(), "fewer than min_deliveries");
        let t = feed(&mut b, &cfg(), "v2", 1, true).expect("20 failures of 20");
        assert_eq!((t.deliveries, t.failures), (20, 20));
        assert_eq!((t.baseline_version.as_str(), t.baseline_deliveries, t.baseline_failures), ("v1", 30, 0));
        // Jobs 0..6 cycled (i = 0, 7, 14, then 0 again for job 0): the
        // refunds add up to the failures.
        assert_eq!(t.refunds.iter().map(|(_, n)| n).sum::<u32>(), 20);
        assert_eq!(t.refunds[0], (JobId(0), 4));
    }

    #[test]
    fn the_threshold_is_inclusive_and_successes_count_against_it() {
        let c = cfg();
        let mut b = VersionBreaker::default();
        feed(&mut b, &c, "v1", 20, false);
        assert!(feed(&mut b, &c, "v2", 11, false).is_none());
        // 9 failures of 20: 45%, under 50%.
        assert!(feed(&mut b, &c, "v2", 9, true).is_none());
        // 10 of 21 = 47.6%: still under.
        assert!(feed(&mut b, &c, "v2", 1, true).is_none());
        // 11 of 22 = 50%: trips.
        assert!(feed(&mut b, &c, "v2", 1, true).is_some());
    }

    #[test]
    fn a_success_never_trips_even_over_the_threshold() {
        let c = cfg();
        let mut b = VersionBreaker::default();
        feed(&mut b, &c, "v1", 20, false);
        feed(&mut b, &c, "v2", 19, true);
        assert!(feed(&mut b, &c, "v2", 1, false).is_none(), "19 of 20 failed, but the outcome was an ack");
    }

    #[test]
    fn min_deliveries_applies_to_the_baseline_too() {
        let c = cfg();
        let mut b = VersionBreaker::default();
        feed(&mut b, &c, "v1", 19, false);
        assert!(feed(&mut b, &c, "v2", 40, true).is_none(), "a 19-delivery baseline is no baseline");
        feed(&mut b, &c, "v1", 1, false);
        assert!(feed(&mut b, &c, "v2", 1, true).is_some());
    }

    #[test]
    fn every_version_failing_is_an_outage_not_a_bad_deploy() {
        let c = cfg();
        let mut b = VersionBreaker::default();
        feed(&mut b, &c, "v1", 20, false);
        // The downstream goes away: v1 fails too before v2 has its evidence.
        feed(&mut b, &c, "v1", 20, true);
        assert!(feed(&mut b, &c, "v2", 50, true).is_none());
        assert!(feed(&mut b, &c, "v3", 50, true).is_none());
    }

    #[test]
    fn a_lone_version_without_history_is_never_quarantined() {
        let mut b = VersionBreaker::default();
        assert!(feed(&mut b, &cfg(), "v1", 100, true).is_none());
    }

    /// Breakers of one queue in `n` partitions, sharing a board.
    fn partitions(n: usize) -> Vec<VersionBreaker> {
        let board = Arc::new(BreakerBoard::new(n));
        (0..n).map(|p| VersionBreaker::on_board(board.clone(), p, 1)).collect()
    }

    #[test]
    fn a_bad_version_spread_over_partitions_trips_after_min_deliveries_in_all() {
        let c = cfg();
        let mut ps = partitions(4);
        // The baseline lives in partition 3 only.
        feed(&mut ps[3], &c, "v1", 30, false);
        // v2 fails 6 times in each of partitions 0, 1 and 2, then once more
        // in 0: 19 failures, no trip (each partition alone is far under
        // min_deliveries 20).
        for b in &mut ps[..3] {
            assert!(feed(b, &c, "v2", 6, true).is_none());
        }
        assert!(feed(&mut ps[0], &c, "v2", 1, true).is_none(), "19 of 19");
        let t = feed(&mut ps[1], &c, "v2", 1, true).expect("20 failures over 3 partitions");
        assert_eq!((t.deliveries, t.failures), (20, 20));
        assert_eq!((t.baseline_version.as_str(), t.baseline_deliveries, t.baseline_failures), ("v1", 30, 0));
        // Refunds are this partition's own window: 7 failures in partition 1.
        assert_eq!(t.refunds.iter().map(|(_, n)| n).sum::<u32>(), 7);
        assert_eq!(ps[2].refunds("v2").iter().map(|(_, n)| n).sum::<u32>(), 6);
    }

    #[test]
    fn successes_in_another_partition_count_against_a_version() {
        let c = cfg();
        let mut ps = partitions(2);
        feed(&mut ps[0], &c, "v1", 20, false);
        // v2 fails in partition 0 but succeeds as often in partition 1.
        feed(&mut ps[1], &c, "v2", 20, false);
        assert!(feed(&mut ps[0], &c, "v2", 19, true).is_none(), "19 of 39 failed: under 50%");
        assert!(feed(&mut ps[0], &c, "v2", 1, true).is_some(), "20 of 40: at 50%");
    }

    #[test]
    fn a_reset_or_a_dropped_breaker_takes_its_figures_off_the_board() {
        let c = cfg();
        let mut ps = partitions(2);
        feed(&mut ps[0], &c, "v1", 20, false);
        feed(&mut ps[1], &c, "v2", 15, true);
        // Partition 1 forgets v2 (a quarantine or lift reached it).
        ps[1].reset("v2");
        assert!(feed(&mut ps[0], &c, "v2", 15, true).is_none(), "only 15 failures left");
        // Partition 0's state is dropped (its queue deleted): its v1
        // baseline is gone too, and nothing trips without one.
        let gone = ps.remove(0);
        drop(gone);
        assert!(feed(&mut ps[0], &c, "v2", 30, true).is_none());
        // Windows restored after a restart are posted again.
        let board = Arc::new(BreakerBoard::new(2));
        let mut a = VersionBreaker::on_board(board.clone(), 0, 1);
        let mut b = VersionBreaker::on_board(board.clone(), 1, 1);
        let mut donor = VersionBreaker::default();
        feed(&mut donor, &c, "v1", 25, false);
        a.restore(&c, "v1", &donor.windows["v1"].record());
        assert!(feed(&mut b, &c, "v2", 20, true).is_some(), "the restored baseline in partition 0 counts");
    }

    #[test]
    fn a_full_window_posts_what_it_drops() {
        let c = BreakerConfig { window: 10, min_deliveries: 10, ..cfg() };
        let mut ps = partitions(2);
        feed(&mut ps[0], &c, "v", 10, true);
        feed(&mut ps[0], &c, "v", 6, false);
        let board = ps[1].board.as_ref().map(|(b, _)| b.clone()).expect("on a board");
        assert_eq!((board.elsewhere(1, "v").deliveries, board.elsewhere(1, "v").failures), (10, 4));
        ps[0].clear();
        assert!(board.is_empty());
    }

    #[test]
    fn unversioned_workers_are_a_baseline_but_never_fenced() {
        let c = cfg();
        let mut b = VersionBreaker::default();
        feed(&mut b, &c, "", 20, false);
        assert!(feed(&mut b, &c, "v2", 20, true).is_some());
        let mut b = VersionBreaker::default();
        feed(&mut b, &c, "v1", 20, false);
        assert!(feed(&mut b, &c, "", 40, true).is_none());
    }

    #[test]
    fn quarantined_versions_are_no_baseline_and_off_turns_it_all_off() {
        let c = cfg();
        let mut b = VersionBreaker::default();
        feed(&mut b, &c, "v1", 20, false);
        let v2 = v("v2");
        let mut tripped = false;
        for i in 0..20 {
            tripped |= b.record(&c, (&v2, JobId(i), true), NOW, |ver| ver == "v1").is_some();
        }
        assert!(!tripped, "v1 is quarantined, so it is no baseline");
        let off = BreakerConfig { failure_percent: 0, ..c };
        let mut b = VersionBreaker::default();
        feed(&mut b, &off, "v1", 20, false);
        assert!(feed(&mut b, &off, "v2", 40, true).is_none());
        assert!(b.versions().is_empty(), "off records nothing");
    }

    #[test]
    fn the_window_slides_and_reset_forgets() {
        let c = BreakerConfig { failure_percent: 50, min_deliveries: 4, window: 4, ..BreakerConfig::default() };
        let mut b = VersionBreaker::default();
        feed(&mut b, &c, "v2", 4, true);
        feed(&mut b, &c, "v2", 3, false);
        let w = b.window("v2").unwrap();
        assert_eq!((w.deliveries(), w.failures()), (4, 1), "the window keeps the last 4");
        b.reset("v2");
        assert!(b.window("v2").is_none());
    }

    #[test]
    fn versions_are_bounded() {
        let c = cfg();
        let mut b = VersionBreaker::default();
        for i in 0..(MAX_VERSIONS + 5) {
            feed(&mut b, &c, &format!("v{i}"), 1, false);
        }
        assert_eq!(b.versions().len(), MAX_VERSIONS);
        assert!(b.window("v0").is_none(), "the stalest went first");
        assert!(b.window(&format!("v{}", MAX_VERSIONS + 4)).is_some());
    }

    #[test]
    fn an_old_baseline_is_no_baseline() {
        let c = BreakerConfig { baseline_max_age: Duration::from_secs(60), ..cfg() };
        let mut b = VersionBreaker::default();
        feed_at(&mut b, &c, "v1", 30, false, NOW);
        // v2 took over and fails, but v1's evidence is over a minute old:
        // nothing says v2 is worse than what runs today (an outage).
        assert!(feed_at(&mut b, &c, "v2", 40, true, NOW + 60_001).is_none());
        // Within the age it is a baseline.
        let mut b = VersionBreaker::default();
        feed_at(&mut b, &c, "v1", 30, false, NOW);
        assert!(feed_at(&mut b, &c, "v2", 20, true, NOW + 60_000).is_some());
        // Zero turns the limit off.
        let c = BreakerConfig { baseline_max_age: Duration::ZERO, ..cfg() };
        let mut b = VersionBreaker::default();
        feed_at(&mut b, &c, "v1", 30, false, NOW);
        assert!(feed_at(&mut b, &c, "v2", 20, true, NOW + 86_400_000 * 30).is_some());
    }

    #[test]
    fn saved_windows_restore_with_their_order_and_age() {
        let c = BreakerConfig { window: 4, min_deliveries: 4, ..cfg() };
        let mut b = VersionBreaker::default();
        // v1: 6 outcomes into a window of 4 (the ring has wrapped).
        for (i, failed) in [true, true, false, false, true].into_iter().enumerate() {
            b.record(&c, (&v("v1"), JobId(i as u64), failed), NOW + i as u64, |_| false);
        }
        assert!(b.save_due(NOW, false), "the first changes are saved at once");
        b.take_changes(NOW);
        feed(&mut b, &c, "v2", 1, false);
        assert!(b.save_due(NOW + 10, true) && !b.save_due(NOW + 10, false), "a second has not passed");
        assert!(b.save_due(NOW + SAVE_INTERVAL_MS, false));
        let (saves, _) = b.take_changes(NOW + SAVE_INTERVAL_MS);
        assert_eq!(saves.iter().map(|(v, _)| &**v).collect::<Vec<_>>(), ["v2"], "only what changed since");
        b.record(&c, (&v("v1"), JobId(5), false), NOW + 5, |_| false);
        b.record(&c, (&v("v2"), JobId(9), false), NOW + 5, |_| false);
        let (mut saves, deletes) = b.take_changes(NOW + 2 * SAVE_INTERVAL_MS);
        saves.sort_by(|a, b| a.0.cmp(&b.0));
        assert!(deletes.is_empty() && saves.len() == 2);
        let v1 = &saves[0].1;
        assert_eq!(
            (v1.jobs.as_slice(), v1.failed.as_slice(), v1.last_at_ms),
            (&[2, 3, 4, 5][..], &[0, 0, 1, 0][..], NOW + 5)
        );
        assert!(!b.save_due(NOW + 5 * SAVE_INTERVAL_MS, false), "nothing changed since");

        let mut r = VersionBreaker::default();
        for (ver, rec) in &saves {
            r.restore(&c, ver, rec);
        }
        let w = r.window("v1").unwrap();
        assert_eq!((w.deliveries(), w.failures(), w.last_at), (4, 1, NOW + 5));
        // The restored v1 is the baseline that trips a failing v3.
        assert!(feed(&mut r, &c, "v3", 4, true).is_some());
        // Restoring into a smaller window keeps the newest outcomes.
        let mut small = VersionBreaker::default();
        small.restore(&BreakerConfig { window: 2, min_deliveries: 2, ..c }, "v1", v1);
        assert_eq!(small.window("v1").map(|w| (w.deliveries(), w.failures())), Some((2, 1)));
    }

    #[test]
    fn forgotten_versions_are_deleted_from_storage() {
        let c = cfg();
        let mut b = VersionBreaker::default();
        feed(&mut b, &c, "v1", 3, false);
        feed(&mut b, &c, "v2", 3, false);
        b.take_changes(NOW);
        b.reset("v1");
        feed(&mut b, &c, "v2", 1, false);
        let (saves, deletes) = b.take_changes(NOW);
        assert_eq!((saves.len(), &*saves[0].0), (1, "v2"));
        assert_eq!(deletes.iter().map(|v| &**v).collect::<Vec<_>>(), ["v1"]);
        b.clear();
        let (saves, mut deletes) = b.take_changes(NOW);
        deletes.sort();
        assert!(saves.is_empty());
        assert_eq!(deletes.iter().map(|v| &**v).collect::<Vec<_>>(), ["v2"]);
    }

    #[test]
    fn a_version_back_after_a_reset_is_saved_not_deleted() {
        let c = cfg();
        let mut b = VersionBreaker::default();
        feed(&mut b, &c, "v1", 3, false);
        b.take_changes(NOW);
        b.reset("v1");
        assert!(b.save_due(NOW + 1, false), "a delete is due at once");
        feed(&mut b, &c, "v1", 1, true);
        let (saves, deletes) = b.take_changes(NOW + 1);
        assert!(deletes.is_empty(), "{deletes:?}");
        assert_eq!(saves.len(), 1);
        assert_eq!((saves[0].1.jobs.len(), saves[0].1.failed.as_slice()), (1, &[1u8][..]));
    }

    #[test]
    fn a_clock_stepped_back_does_not_stall_saves() {
        let c = cfg();
        let mut b = VersionBreaker::default();
        feed(&mut b, &c, "v1", 1, false);
        b.take_changes(NOW);
        feed(&mut b, &c, "v1", 1, false);
        assert!(b.save_due(NOW - 3_600_000, false));
    }

    #[test]
    fn restoring_past_the_version_cap_keeps_the_newest_and_deletes_the_rest() {
        let c = cfg();
        let rec = |at: Millis| BreakerWindowRecord { jobs: vec![1], failed: vec![0], last_at_ms: at };
        let mut b = VersionBreaker::default();
        for i in 0..MAX_VERSIONS as u64 {
            b.restore(&c, &format!("v{i}"), &rec(NOW + 10 + i));
        }
        b.restore(&c, "older", &rec(NOW));
        b.restore(&c, "newer", &rec(NOW + 1000));
        assert_eq!(b.versions().len(), MAX_VERSIONS);
        assert!(b.window("older").is_none() && b.window("newer").is_some() && b.window("v0").is_none());
        let (saves, mut deletes) = b.take_changes(NOW);
        deletes.sort();
        assert!(saves.is_empty());
        assert_eq!(deletes.iter().map(|v| &**v).collect::<Vec<_>>(), ["older", "v0"]);
    }

    #[test]
    fn after_a_failed_commit_everything_is_saved_again() {
        let c = cfg();
        let mut b = VersionBreaker::default();
        feed(&mut b, &c, "v1", 2, false);
        feed(&mut b, &c, "v2", 2, false);
        // The save that held these was lost; disk still has v3, forgotten since.
        b.take_changes(NOW);
        b.resave_all([v("v1"), v("v3")]);
        assert!(b.save_due(NOW, false));
        let (mut saves, deletes) = b.take_changes(NOW);
        saves.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(saves.iter().map(|(v, _)| &**v).collect::<Vec<_>>(), ["v1", "v2"]);
        assert_eq!(deletes.iter().map(|v| &**v).collect::<Vec<_>>(), ["v3"]);
    }
}
