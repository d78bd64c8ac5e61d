//! Where the writers read the time. A writer reads it once at the start of
//! each turn (`Engine::now`), and every transition of that turn uses that
//! value: no transition reads a clock of its own. Production brokers use
//! the system clock; engine tests use a manual one, so they decide every
//! instant a transition sees (lease expiries, backoffs, promotions, alert
//! windows).

use crate::model::Millis;
#[cfg(test)]
use std::sync::atomic::{AtomicU64, Ordering};
#[cfg(test)]
use std::sync::Arc;

/// A source of milliseconds since the Unix epoch.
#[derive(Debug, Clone, Default)]
pub(crate) enum Clock {
    /// The system's wall clock.
    #[default]
    System,
    /// A clock that only moves when told to (tests).
    #[cfg(test)]
    Manual(Arc<AtomicU64>),
}

impl Clock {
    /// A manual clock reading `start`, and the handle that moves it.
    #[cfg(test)]
    pub fn manual(start: Millis) -> (Clock, Arc<AtomicU64>) {
        let t = Arc::new(AtomicU64::new(start));
        (Clock::Manual(t.clone()), t)
    }

    pub fn now(&self) -> Millis {
        match self {
            Clock::System => crate::model::now_millis(),
            #[cfg(test)]
            Clock::Manual(t) => t.load(Ordering::SeqCst),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let (c, t) = Clock::manual(1_000);
        assert_eq!(c.now(), 1_000);
        t.store(5_000, Ordering::SeqCst);
        assert_eq!(c.now(), 5_000);
        assert!(Clock::System.now() > 1_700_000_000_000);
    }
}
