//! Backpressure for the settles a worker sends on its Work stream.
//!
//! Every ack, nack or extend read from a stream is answered with an
//! `Outcome` on the same stream. A client that keeps sending but never reads
//! would make those answers pile up in the broker without bound; instead the
//! stream stops reading once [`MAX_UNREAD_OUTCOMES`] answers are waiting to
//! be sent, and HTTP/2 flow control pushes back on the client.

use std::sync::Arc;
use tokio::sync::Semaphore;

/// Most outcomes of one Work stream answered but not yet handed to the
/// transport. Deliveries are not counted: `max_in_flight` bounds those.
pub const MAX_UNREAD_OUTCOMES: usize = 4096;

/// Counts the outcomes a stream owes or holds unsent.
#[derive(Clone)]
pub struct OutcomeWindow {
    /// One permit per outcome that may still be owed.
    room: Arc<Semaphore>,
}

impl Default for OutcomeWindow {
    fn default() -> Self {
        OutcomeWindow { room: Arc::new(Semaphore::new(MAX_UNREAD_OUTCOMES)) }
    }
}

impl OutcomeWindow {
    /// Waits for room for one more outcome, and takes it.
    pub async fn reserve(&self) {
        // The semaphore is never closed, so acquire cannot fail.
        if let Ok(permit) = self.room.acquire().await {
            permit.forget();
        }
    }

    /// Waits for room for `n` more outcomes, and takes it.
    pub async fn reserve_many(&self, n: usize) {
        let Ok(n) = u32::try_from(n) else { return };
        if n == 0 {
            return;
        }
        if let Ok(permit) = self.room.acquire_many(n).await {
            permit.forget();
        }
    }

    /// Gives back room taken by [`Self::reserve`]: the outcome was handed to
    /// the transport, or the message read needed none.
    pub fn release(&self) {
        self.room.add_permits(1);
    }

    /// Room left, for tests.
    #[cfg(test)]
    pub fn room(&self) -> usize {
        self.room.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn reserving_past_the_window_waits_for_a_release() {
        let w = OutcomeWindow::default();
        for _ in 0..MAX_UNREAD_OUTCOMES {
            w.reserve().await;
        }
        assert_eq!(w.room(), 0);
        let blocked = tokio::time::timeout(Duration::from_millis(50), w.reserve()).await;
        assert!(blocked.is_err(), "a full window must make the reader wait");
        w.release();
        tokio::time::timeout(Duration::from_secs(1), w.reserve()).await.expect("room after a release");
    }
}
