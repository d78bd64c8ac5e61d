//! What the partitions of one broker share: the other partitions' command
//! channels (to wake one that waits for a stream's slot, or to send a
//! quarantine to partition 0), each queue's split table and in-flight count
//! ([`SharesByQueue`]), and the boards where every partition posts its queue
//! health and its storage fault, merged into the one view the broker shows.
//!
//! Each partition's writer thread holds an `Arc<Shared>`; nothing here
//! blocks longer than a short mutex around a small map.

use super::monitor::HealthMap;
use super::Command;
use crate::partition::queue_shares::SharesByQueue;
use std::sync::{Mutex, OnceLock};

pub(crate) struct Shared {
    /// Partitions of the broker.
    pub partitions: usize,
    /// Every partition's command channel, by index, set once all writers
    /// exist. Weak, so the channels still close when the last broker handle
    /// goes (a writer stops when its channel disconnects).
    peers: OnceLock<Vec<flume::WeakSender<Command>>>,
    /// Per queue: the split between partitions and the in-flight count.
    pub shares: SharesByQueue,
    /// Per partition: its queues' health (healthy = no alert in force).
    health: Mutex<Vec<HealthMap>>,
    /// The merged health: a queue is healthy when it is in every partition.
    health_tx: tokio::sync::watch::Sender<HealthMap>,
    /// Per partition: why its writes fail, while they do.
    faults: Mutex<Vec<Option<String>>>,
    /// The first partition's fault, naming the partition when there are
    /// several.
    fault_tx: tokio::sync::watch::Sender<Option<String>>,
    /// Per partition: dispatch turns it has finished. A partition that
    /// left a stream's free slot to partition p takes it itself once p has
    /// finished a turn since (p had its chance and did not use it).
    turns: Vec<std::sync::atomic::AtomicU64>,
    /// Set when the broker begins to shut down, before any partition
    /// does. Partitions stop one by one, and a Work stream ended by the
    /// first one unsubscribes from the others: those must keep the
    /// stream's leases (detached, for the worker to ack after it
    /// reconnects), not return them as if the worker had left.
    stopping: std::sync::atomic::AtomicBool,
    /// Where every partition's writer reads the time, once per turn.
    pub clock: super::clock::Clock,
    /// In a cluster, per partition: why this node does not serve it now
    /// (another node leads it; says which), or `None` while it does. Always
    /// `None` on a single node.
    not_leading: Mutex<Vec<Option<String>>>,
    /// Per partition: whether `not_leading` holds a reason, so the common
    /// case (served here) costs every call one atomic load, not a lock.
    refused: Vec<std::sync::atomic::AtomicBool>,
    /// In a cluster: set while this node, just become the home, completes
    /// what an earlier home may have left half done (queue definitions,
    /// batches across partitions); every call is refused meanwhile. Set
    /// from the start on a cluster node, never on a single node.
    repairing: std::sync::atomic::AtomicBool,
    /// In a cluster, per partition: why this node, though it leads, has
    /// not heard from a majority for long (it is cut off, or most replicas
    /// are down); calls are refused at once rather than wait for a commit
    /// that cannot come. Set by the node's watch over its groups.
    cut_off: Mutex<Vec<Option<String>>>,
    /// Per partition: whether `cut_off` holds a reason (one atomic load).
    cut_off_flags: Vec<std::sync::atomic::AtomicBool>,
}

impl Shared {
    pub fn new(partitions: usize) -> Shared {
        let partitions = partitions.max(1);
        Shared {
            partitions,
            peers: OnceLock::new(),
            shares: SharesByQueue::new(partitions),
            health: Mutex::new(vec![HealthMap::new(); partitions]),
            health_tx: tokio::sync::watch::channel(HealthMap::new()).0,
            faults: Mutex::new(vec![None; partitions]),
            fault_tx: tokio::sync::watch::channel(None).0,
            turns: (0..partitions).map(|_| std::sync::atomic::AtomicU64::new(0)).collect(),
            stopping: std::sync::atomic::AtomicBool::new(false),
            clock: super::clock::Clock::System,
            not_leading: Mutex::new(vec![None; partitions]),
            refused: (0..partitions).map(|_| std::sync::atomic::AtomicBool::new(false)).collect(),
            repairing: std::sync::atomic::AtomicBool::new(false),
            cut_off: Mutex::new(vec![None; partitions]),
            cut_off_flags: (0..partitions).map(|_| std::sync::atomic::AtomicBool::new(false)).collect(),
        }
    }

    /// Partition `p`'s writer says whether this node serves it.
    pub fn set_not_leading(&self, p: usize, why: Option<String>) {
        let mut all = self.not_leading.lock().unwrap_or_else(|e| e.into_inner());
        if let (Some(slot), Some(flag)) = (all.get_mut(p), self.refused.get(p)) {
            flag.store(why.is_some(), std::sync::atomic::Ordering::Release);
            *slot = why;
        }
    }

    /// Partition `p`'s leader here is cut off from its majority (`Some`,
    /// saying so), or no longer (`None`).
    pub fn set_cut_off(&self, p: usize, why: Option<String>) {
        let mut all = self.cut_off.lock().unwrap_or_else(|e| e.into_inner());
        if let (Some(slot), Some(flag)) = (all.get_mut(p), self.cut_off_flags.get(p)) {
            flag.store(why.is_some(), std::sync::atomic::Ordering::Release);
            *slot = why;
        }
    }

    /// Whether calls wait for the home's repairs (see `repairing`).
    pub fn set_repairing(&self, on: bool) {
        self.repairing.store(on, std::sync::atomic::Ordering::Release);
    }

    /// Why this node does not serve partition `p` now, if it does not.
    pub fn not_leading(&self, p: usize) -> Option<String> {
        if self.refused.get(p).is_some_and(|f| f.load(std::sync::atomic::Ordering::Acquire)) {
            let why = self.not_leading.lock().unwrap_or_else(|e| e.into_inner()).get(p).cloned().flatten();
            if why.is_some() {
                return why;
            }
        }
        if self.cut_off_flags.get(p).is_some_and(|f| f.load(std::sync::atomic::Ordering::Acquire)) {
            let why = self.cut_off.lock().unwrap_or_else(|e| e.into_inner()).get(p).cloned().flatten();
            if why.is_some() {
                return why;
            }
        }
        self.repairing.load(std::sync::atomic::Ordering::Acquire).then(|| {
            format!(
                "partition {p}: this node is taking over as the cluster's home and completing what the previous \
                 one left half done (queue definitions, batches across partitions): retry in a moment"
            )
        })
    }

    /// Partitions that read the time from `clock` (tests).
    #[cfg(test)]
    pub fn with_clock(partitions: usize, clock: super::clock::Clock) -> Shared {
        Shared { clock, ..Shared::new(partitions) }
    }

    /// The broker is shutting down: a stream that ends from now on keeps
    /// its leases.
    pub fn begin_stopping(&self) {
        self.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether the broker is shutting down.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Dispatch turns partition `p` has finished.
    pub fn turns(&self, p: usize) -> u64 {
        self.turns.get(p).map_or(0, |t| t.load(std::sync::atomic::Ordering::SeqCst))
    }

    /// Partition `me` finished a dispatch turn.
    pub fn turn_done(&self, me: usize) {
        if let Some(t) = self.turns.get(me) {
            t.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Records every partition's command channel (once, at start).
    pub fn set_peers(&self, peers: Vec<flume::WeakSender<Command>>) {
        let _ = self.peers.set(peers);
    }

    /// Sends `cmd` to partition `p` if it still runs; never blocks (a
    /// full channel drops a wake: the partition is busy and will look at
    /// its streams on its next turn anyway).
    pub fn send_to(&self, p: usize, cmd: Command) -> bool {
        let Some(tx) = self.peers.get().and_then(|v| v.get(p)).and_then(|w| w.upgrade()) else { return false };
        tx.try_send(cmd).is_ok()
    }

    /// Sends `cmd` to partition `p`, waiting for room: for commands that
    /// must arrive (a quarantine for partition 0).
    pub fn send_surely(&self, p: usize, cmd: Command) -> bool {
        let Some(tx) = self.peers.get().and_then(|v| v.get(p)).and_then(|w| w.upgrade()) else { return false };
        match tx.try_send(cmd) {
            Ok(()) => true,
            Err(flume::TrySendError::Full(cmd)) => {
                // From a writer thread: a blocking send could deadlock two
                // writers waiting on each other's full channels.
                std::thread::spawn(move || {
                    let _ = tx.send(cmd);
                });
                true
            }
            Err(flume::TrySendError::Disconnected(_)) => false,
        }
    }

    /// Wakes the partitions named by `bits` (see `Window::take_wanting`),
    /// other than `me`, which runs its dispatch at the end of its turn.
    pub fn wake(&self, me: usize, bits: u64) {
        for p in crate::partition::window::wanting_partitions(bits, self.partitions) {
            if p != me {
                self.send_to(p, Command::Wake);
            }
        }
    }

    pub fn health(&self) -> tokio::sync::watch::Receiver<HealthMap> {
        self.health_tx.subscribe()
    }

    pub fn storage_fault(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.fault_tx.subscribe()
    }

    /// Partition `me`'s queue health is now `map`.
    pub fn post_health(&self, me: usize, map: HealthMap) {
        let merged = {
            let mut all = match self.health.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            if all[me] == map {
                return;
            }
            all[me] = map;
            merge_health(&all)
        };
        self.health_tx.send_if_modified(|old| {
            if *old == merged {
                return false;
            }
            *old = merged;
            true
        });
    }

    /// Partition `me`'s writes fail for `fault` (`None`: they work again).
    pub fn post_fault(&self, me: usize, fault: Option<String>) {
        let mut all = match self.faults.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        all[me] = fault;
        let several = all.len() > 1;
        let first = all
            .iter()
            .enumerate()
            .find_map(|(p, f)| f.as_ref().map(|f| if several { format!("partition {p}: {f}") } else { f.clone() }));
        self.fault_tx.send_replace(first);
    }
}

/// The broker's health from its partitions': every queue any partition
/// has, healthy only where it is healthy in all.
pub fn merge_health(parts: &[HealthMap]) -> HealthMap {
    let mut out = HealthMap::new();
    for map in parts {
        for (q, ok) in map {
            let e = out.entry(q.clone()).or_insert(true);
            *e &= *ok;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_is_healthy_only_where_every_partition_says_so() {
        let a: HealthMap = [("q".to_string(), true), ("r".to_string(), true)].into();
        let b: HealthMap = [("q".to_string(), false)].into();
        let m = merge_health(&[a, b]);
        assert_eq!(m.get("q"), Some(&false));
        assert_eq!(m.get("r"), Some(&true));
    }

    #[test]
    fn the_fault_names_its_partition_when_there_are_several() {
        let s = Shared::new(2);
        let rx = s.storage_fault();
        s.post_fault(1, Some("disk full".into()));
        assert_eq!(rx.borrow().as_deref(), Some("partition 1: disk full"));
        s.post_fault(1, None);
        assert_eq!(*rx.borrow(), None);
        let one = Shared::new(1);
        let rx = one.storage_fault();
        one.post_fault(0, Some("disk full".into()));
        assert_eq!(rx.borrow().as_deref(), Some("disk full"));
    }
}
