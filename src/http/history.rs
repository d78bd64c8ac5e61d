//! A few minutes of per-queue history for the dashboard's rates and
//! charts, sampled in the background so a page view costs no extra trip
//! to the writer.

use crate::broker::Broker;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Sampling period.
pub const EVERY: Duration = Duration::from_secs(2);
/// Samples kept: five minutes.
const KEEP: usize = 150;
/// Rates are averaged over about this long.
const RATE_WINDOW: Duration = Duration::from_secs(10);

/// One queue at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Point {
    pub enqueued: u64,
    pub acked: u64,
    pub ready: u64,
}

/// Every queue at one moment.
#[derive(Debug, Clone)]
struct Sample {
    at: Instant,
    queues: HashMap<String, Point>,
}

/// Samples, oldest first. Cloned handles share them.
#[derive(Debug, Clone, Default)]
pub struct History(Arc<Mutex<VecDeque<Sample>>>);

impl History {
    pub fn record(&self, at: Instant, queues: HashMap<String, Point>) {
        if let Ok(mut h) = self.0.lock() {
            h.push_back(Sample { at, queues });
            while h.len() > KEEP {
                h.pop_front();
            }
        }
    }

    /// (enqueued/s, acked/s) of `queue` over the last ~10 s.
    pub fn rates(&self, queue: &str) -> Option<(f64, f64)> {
        let h = self.0.lock().ok()?;
        let last = h.back()?;
        let first = h.iter().find(|s| last.at.duration_since(s.at) <= RATE_WINDOW)?;
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
            .map(|h| h.iter().map(|s| s.queues.get(queue).map_or(0, |p| p.ready)).collect())
            .unwrap_or_default()
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
                (
                    q.name.clone(),
                    Point { enqueued: q.counters.enqueued_total, acked: q.counters.acked_total, ready: q.ready },
                )
            })
            .collect();
        history.record(Instant::now(), queues);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_come_from_the_last_ten_seconds() {
        let h = History::default();
        let t0 = Instant::now();
        let p = |e, a| HashMap::from([("q".to_string(), Point { enqueued: e, acked: a, ready: e - a })]);
        h.record(t0, p(0, 0));
        h.record(t0 + Duration::from_secs(20), p(1000, 0));
        h.record(t0 + Duration::from_secs(25), p(1500, 100));
        h.record(t0 + Duration::from_secs(30), p(2000, 200));
        let (enq, ack) = h.rates("q").unwrap();
        assert!((enq - 100.0).abs() < 1e-9, "{enq}");
        assert!((ack - 20.0).abs() < 1e-9, "{ack}");
        assert_eq!(h.ready_series("q"), vec![0, 1000, 1400, 1800]);
        assert!(h.rates("other").is_none());
        // Created after the window's first sample: rates count from zero.
        h.record(
            t0 + Duration::from_secs(32),
            HashMap::from([("new".to_string(), Point { enqueued: 40, acked: 0, ready: 40 })]),
        );
        let (enq, _) = h.rates("new").unwrap();
        assert!((enq - 40.0 / 7.0).abs() < 1e-9, "{enq}");
    }
}
