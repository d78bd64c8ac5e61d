//! Per-queue history for the dashboard's rates and charts, sampled in the
//! background so a page view costs no extra trip to the writer: the last
//! five minutes every two seconds (rates, the ready sparkline), and the
//! last hour a minute at a time (processed vs failed). Kept in memory: the
//! charts start empty when the broker restarts (the counters behind them
//! are stored, the history is not).

use crate::broker::Broker;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Sampling period.
pub const EVERY: Duration = Duration::from_secs(2);
/// Samples kept: five minutes.
const KEEP: usize = 150;
/// Rates are averaged over about this long.
const RATE_WINDOW: Duration = Duration::from_secs(10);
/// Minutes of processed/failed history shown.
pub const MINUTES: usize = 60;

/// One queue at one moment (counters are totals since the queue began).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Point {
    pub enqueued: u64,
    pub acked: u64,
    /// Failed attempts: nacks and lease expiries.
    pub failed: u64,
    pub ready: u64,
}

/// Every queue at one moment.
#[derive(Debug, Clone)]
struct Sample {
    at: Instant,
    queues: HashMap<String, Point>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Samples, oldest first.
    samples: VecDeque<Sample>,
    /// Per queue, oldest first, the last [`MINUTES`] + 1 minutes.
    minutes: HashMap<String, VecDeque<MinuteSamples>>,
}

/// The first and the last sample of a queue in one minute.
#[derive(Debug, Clone, Copy)]
struct MinuteSamples {
    /// Minutes since the epoch.
    minute: u64,
    first: Point,
    last: Point,
}

/// What one minute saw of a queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Minute {
    /// Jobs acked.
    pub processed: u64,
    /// Failed attempts (nacks and lease expiries).
    pub failed: u64,
}

/// Cloned handles share the history.
#[derive(Debug, Clone, Default)]
pub struct History(Arc<Mutex<Inner>>);

impl History {
    /// Adds a sample taken at `at` (monotonic) and `wall` (for minutes).
    pub fn record(&self, at: Instant, wall: SystemTime, queues: HashMap<String, Point>) {
        let Ok(mut h) = self.0.lock() else { return };
        let minute = wall.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() / 60);
        h.minutes.retain(|q, _| queues.contains_key(q));
        // A queue first seen after sampling began was created since the last
        // sample: its totals count from zero. In the very first sample they
        // may predate the broker's start, so they count from there.
        let running = !h.samples.is_empty();
        for (q, p) in &queues {
            let m = h.minutes.entry(q.clone()).or_default();
            match m.back_mut() {
                Some(s) if s.minute == minute => s.last = *p,
                None if running => m.push_back(MinuteSamples { minute, first: Point::default(), last: *p }),
                _ => m.push_back(MinuteSamples { minute, first: *p, last: *p }),
            }
            while m.len() > MINUTES + 1 {
                m.pop_front();
            }
        }
        h.samples.push_back(Sample { at, queues });
        while h.samples.len() > KEEP {
            h.samples.pop_front();
        }
    }

    /// (enqueued/s, acked/s) of `queue` over the last ~10 s.
    pub fn rates(&self, queue: &str) -> Option<(f64, f64)> {
        let h = self.0.lock().ok()?;
        let last = h.samples.back()?;
        let first = h.samples.iter().find(|s| last.at.duration_since(s.at) <= RATE_WINDOW)?;
        let secs = last.at.duration_since(first.at).as_secs_f64();
        // A queue created inside the window counts from zero.
        let b = last.queues.get(queue)?;
        let a = first.queues.get(queue).copied().unwrap_or_default();
        (secs > 0.0).then(|| {
            (b.enqueued.saturating_sub(a.enqueued) as f64 / secs, b.acked.saturating_sub(a.acked) as f64 / secs)
        })
    }

    /// Ready jobs of `queue` in each sample, oldest first.
    pub fn ready_series(&self, queue: &str) -> Vec<u64> {
        self.0
            .lock()
            .map(|h| h.samples.iter().map(|s| s.queues.get(queue).map_or(0, |p| p.ready)).collect())
            .unwrap_or_default()
    }

    /// The last [`MINUTES`] minutes of `queue` up to `now`'s (which is still
    /// going), oldest first; `None` for a minute nothing was sampled in. A
    /// minute counts from the last sample before it, or, for the first
    /// minute sampled, from its own first sample.
    pub fn per_minute(&self, queue: &str, now: SystemTime) -> Vec<Option<Minute>> {
        let current = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() / 60);
        let Ok(h) = self.0.lock() else { return vec![None; MINUTES] };
        let Some(m) = h.minutes.get(queue) else { return vec![None; MINUTES] };
        (0..MINUTES as u64)
            .map(|back| current.saturating_sub(MINUTES as u64 - 1 - back))
            .map(|minute| {
                let this = m.iter().find(|s| s.minute == minute)?;
                let start = m.iter().rev().find(|s| s.minute < minute).map_or(this.first, |s| s.last);
                let end = this.last;
                Some(Minute {
                    processed: end.acked.saturating_sub(start.acked),
                    failed: end.failed.saturating_sub(start.failed),
                })
            })
            .collect()
    }
}

/// Samples the broker until it shuts down.
pub async fn sample(broker: Broker, history: History) {
    let mut tick = tokio::time::interval(EVERY);
    loop {
        tick.tick().await;
        let Ok(m) = broker.metrics().await else { return };
        let queues = m
            .queues
            .iter()
            .map(|q| {
                let c = &q.counters;
                let point = Point {
                    enqueued: c.enqueued_total,
                    acked: c.acked_total,
                    failed: c.nacked_total + c.expired_total,
                    ready: q.ready,
                };
                (q.name.clone(), point)
            })
            .collect();
        history.record(Instant::now(), SystemTime::now(), queues);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(e: u64, a: u64) -> Point {
        Point { enqueued: e, acked: a, failed: 0, ready: e - a }
    }

    #[test]
    fn rates_come_from_the_last_ten_seconds() {
        let h = History::default();
        let t0 = Instant::now();
        let wall = UNIX_EPOCH;
        let one = |pt| HashMap::from([("q".to_string(), pt)]);
        h.record(t0, wall, one(p(0, 0)));
        h.record(t0 + Duration::from_secs(20), wall, one(p(1000, 0)));
        h.record(t0 + Duration::from_secs(25), wall, one(p(1500, 100)));
        h.record(t0 + Duration::from_secs(30), wall, one(p(2000, 200)));
        let (enq, ack) = h.rates("q").unwrap();
        assert!((enq - 100.0).abs() < 1e-9, "{enq}");
        assert!((ack - 20.0).abs() < 1e-9, "{ack}");
        assert_eq!(h.ready_series("q"), vec![0, 1000, 1400, 1800]);
        assert!(h.rates("other").is_none());
        // Created after the window's first sample: rates count from zero.
        h.record(t0 + Duration::from_secs(32), wall, HashMap::from([("new".to_string(), p(40, 0))]));
        let (enq, _) = h.rates("new").unwrap();
        assert!((enq - 40.0 / 7.0).abs() < 1e-9, "{enq}");
    }

    #[test]
    fn minutes_count_what_happened_in_each() {
        let h = History::default();
        let t0 = Instant::now();
        let at = |min: u64, sec: u64| UNIX_EPOCH + Duration::from_secs(min * 60 + sec);
        let pt = |acked, failed| HashMap::from([("q".to_string(), Point { acked, failed, ..Default::default() })]);
        h.record(t0, at(100, 30), pt(10, 1));
        h.record(t0, at(100, 58), pt(12, 1));
        h.record(t0, at(101, 10), pt(20, 3));
        h.record(t0, at(101, 50), pt(30, 4));
        // Minute 102 was not sampled (a pause); 103 counts from 101's end.
        h.record(t0, at(103, 5), pt(31, 9));
        let m = h.per_minute("q", at(103, 20));
        assert_eq!(m.len(), MINUTES);
        let last4: Vec<_> = m[MINUTES - 4..].to_vec();
        assert_eq!(
            last4,
            [
                Some(Minute { processed: 2, failed: 0 }), // 100: from its own first sample
                Some(Minute { processed: 18, failed: 3 }),
                None,
                Some(Minute { processed: 1, failed: 5 }),
            ]
        );
        assert!(m[..MINUTES - 4].iter().all(Option::is_none));
        assert!(h.per_minute("other", at(103, 20)).iter().all(Option::is_none));
        // Created between two samples: everything it did counts.
        let both = HashMap::from([
            ("q".to_string(), Point { acked: 31, failed: 9, ..Default::default() }),
            ("new".to_string(), Point { acked: 4, failed: 1, ..Default::default() }),
        ]);
        h.record(t0, at(103, 40), both);
        assert_eq!(h.per_minute("new", at(103, 50))[MINUTES - 1], Some(Minute { processed: 4, failed: 1 }));
    }
}
