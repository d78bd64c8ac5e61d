//! Per-tenant enqueue rate limits: a token bucket per (queue, tenant),
//! checked before a request reaches the writer, so an over-eager producer is
//! told to back off (RESOURCE_EXHAUSTED with a retry hint) and nothing
//! already stored is ever dropped to make room.

use crate::error::BrokerError;
use crate::model::TenantPolicy;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Buckets exist only for tenants with a rate set.
#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<(String, String), Bucket>>,
}

fn capacity(p: &TenantPolicy) -> f64 {
    if p.enqueue_burst > 0 {
        f64::from(p.enqueue_burst)
    } else {
        p.enqueue_rate.max(1.0)
    }
}

impl RateLimiter {
    /// Admits `wants` (queue, tenant, jobs) all together, or none: on refusal
    /// no tokens are taken.
    pub fn admit(
        &self,
        wants: &HashMap<(String, String), u32>,
        policy: impl Fn(&str, &str) -> Option<TenantPolicy>,
    ) -> Result<(), BrokerError> {
        let limited: Vec<_> = wants
            .iter()
            .filter_map(|(k, n)| policy(&k.0, &k.1).filter(|p| p.enqueue_rate > 0.0).map(|p| (k, *n, p)))
            .collect();
        if limited.is_empty() {
            return Ok(());
        }
        let mut buckets = self.buckets.lock().map_err(|_| BrokerError::Internal("rate limiter poisoned".into()))?;
        let now = Instant::now();
        for ((queue, tenant), n, p) in &limited {
            let cap = capacity(p);
            let b = buckets.entry((queue.clone(), tenant.clone())).or_insert(Bucket { tokens: cap, last: now });
            b.tokens = (b.tokens + now.duration_since(b.last).as_secs_f64() * p.enqueue_rate).min(cap);
            b.last = now;
            let need = f64::from(*n);
            if need > cap {
                return Err(BrokerError::ResourceExhausted(format!(
                    "tenant {tenant:?} may enqueue at most {cap} jobs at once in queue {queue:?} \
                     (enqueue_burst); split this request of {n} jobs"
                )));
            }
            if b.tokens < need {
                let wait = Duration::from_secs_f64((need - b.tokens) / p.enqueue_rate);
                return Err(BrokerError::RateLimited {
                    queue: queue.clone(),
                    tenant: tenant.clone(),
                    rate: p.enqueue_rate,
                    retry_after: wait.max(Duration::from_millis(1)),
                });
            }
        }
        for ((queue, tenant), n, _) in &limited {
            if let Some(b) = buckets.get_mut(&(queue.clone(), tenant.clone())) {
                b.tokens -= f64::from(*n);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn want(t: &str, n: u32) -> HashMap<(String, String), u32> {
        HashMap::from([(("q".to_string(), t.to_string()), n)])
    }

    #[test]
    fn bursts_then_refuses_with_a_retry_hint_then_refills() {
        let r = RateLimiter::default();
        let p = TenantPolicy { enqueue_rate: 10.0, enqueue_burst: 3, ..Default::default() };
        let policy = |_: &str, t: &str| (t == "a").then(|| p.clone());
        for _ in 0..3 {
            r.admit(&want("a", 1), policy).unwrap();
        }
        match r.admit(&want("a", 1), policy) {
            Err(BrokerError::RateLimited { retry_after, .. }) => {
                assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_millis(100), "{retry_after:?}")
            }
            other => panic!("{other:?}"),
        }
        // Other tenants are not limited.
        for _ in 0..100 {
            r.admit(&want("b", 1), policy).unwrap();
        }
        std::thread::sleep(Duration::from_millis(120));
        r.admit(&want("a", 1), policy).unwrap();
    }

    #[test]
    fn a_refused_batch_takes_no_tokens_and_oversized_ones_are_explained() {
        let r = RateLimiter::default();
        let p = TenantPolicy { enqueue_rate: 1.0, enqueue_burst: 5, ..Default::default() };
        let policy = |_: &str, _: &str| Some(p.clone());
        let mut both = want("a", 2);
        both.insert(("q".into(), "b".into()), 9);
        assert!(matches!(r.admit(&both, policy), Err(BrokerError::ResourceExhausted(_))));
        r.admit(&want("a", 5), policy).unwrap();
    }
}
