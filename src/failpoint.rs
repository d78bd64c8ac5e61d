//! Crash points for tests: with the `failpoints` feature, a broker started
//! with `FAIRWAY_FAILPOINT=NAME:N` aborts (like a kill -9: no unwinding, no
//! clean close) the N-th time it reaches the point `NAME`. Without the
//! feature (a release build) [`hit`] is empty and compiles to nothing.
//!
//! Points: `batch-intent-stored` (a batch across partitions is decided, no
//! other part stored yet) and `batch-parts-stored` (every part stored, the
//! intent not yet dropped); see `broker/batch_intent.rs`.

#[cfg(feature = "failpoints")]
pub fn hit(name: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static ARMED: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static HITS: AtomicU64 = AtomicU64::new(0);
    let armed = ARMED.get_or_init(|| {
        let spec = std::env::var("FAIRWAY_FAILPOINT").ok()?;
        let (point, n) = spec.rsplit_once(':').unwrap_or((spec.as_str(), "1"));
        Some((point.to_string(), n.parse().unwrap_or(1)))
    });
    if let Some((point, n)) = armed {
        if point == name && HITS.fetch_add(1, Ordering::SeqCst) + 1 == *n {
            eprintln!("failpoint {name} reached (hit {n}): aborting");
            std::process::abort();
        }
    }
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_name: &str) {}
