//! Expire: a lease ran out before its worker settled it. The attempt
//! counts (its worker may have crashed on the job), and the job is ready
//! again at once, or dead when that was its last attempt. The worker's
//! late ack, nack or extend is then refused (fencing by lease id).

use super::primitives::Tally;
use crate::broker::engine::Engine;

impl Engine {
    /// Expires every lease of `queue` due at this turn's time.
    pub(in crate::broker) fn expire_leases(&mut self, queue: &str) {
        let Some(q) = self.queues.get(queue).filter(|q| !q.leases().is_empty()) else { return };
        for id in q.leases().expired(self.now) {
            // Gone already when quarantining its version returned it.
            let Some(q) = self.queues.get_mut(queue) else { break };
            let Some(version) = q.leases().get(&id).map(|l| l.worker_version.clone()) else { continue };
            q.tally(Tally::Expired);
            if let Err(e) = self.lose_lease(queue, id, "lease expired") {
                self.w.poison(e);
            }
            self.note_outcome(queue, &version, id, true);
        }
    }
}
