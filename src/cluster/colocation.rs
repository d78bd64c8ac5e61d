//! Where a cluster's partitions are led: all on one node, the leader of
//! partition 0, called the cluster's *home*. The home's broker then holds
//! every partition that a call may span (a batch made atomic across
//! partitions, a Work stream fair across every partition, a queue's
//! statistics), and every other node forwards calls to it
//! ([`super::forward`]).
//!
//! Raft elects each partition's leader on its own; this module steers the
//! elections of partitions 1.. towards the home, never their safety (who
//! may win is still Raft's rule: a candidate whose log is behind loses).
//! For each partition `p` ≥ 1, every tick, a node decides from what it sees
//! ([`steer`], pure and unit-tested):
//! - it lets its own election timer run for `p` only if it is the home,
//!   or no home is known, or `p` has been led by another node than the
//!   home (or by none) for three election timeouts: a home whose replica
//!   of `p` is behind cannot win, and a follower may still name a leader
//!   that died, so after that every node may be elected (the home stands
//!   again once the new leader has brought its log up to date);
//! - the home, not leading `p`, stands for election: its higher term makes
//!   the current leader step down at its next heartbeat, and with the other
//!   nodes' timers held, the home wins the vote that follows;
//! - a leader of `p` that is not the home stops its heartbeats, so the
//!   other followers' leases lapse and they can vote for the home.
//!
//! Partition 0 elects the home by Raft's own rule, with one push: Raft
//! makes a follower wait for its leader's lease (`election_timeout_max`
//! since the last heartbeat, during which every follower refuses votes)
//! *and then* its own random timeout before it stands. A follower that has
//! heard nothing from the home for the lease and a heartbeat more stands at
//! once ([`stand_for_home`]), the second follower a little later than the
//! first, so they do not split the vote: a dead home is replaced about one
//! lease after its death instead of up to two.
//!
//! Also here: a partition's writer is woken the moment its node's role in
//! the partition changes, rather than on its next idle turn, so a new
//! leader takes over at once ([`watch_roles`]).
//!
//! Why not spread leaders over the nodes: what spans partitions would then
//! span processes (a Work stream fed from partitions led elsewhere, a
//! batch atomic across nodes). docs/cluster.md says what that needs.

use super::last_heard::LastHeard;
use super::raft_types::{Member, NodeId, TypeConfig};
use crate::broker::Broker;
use openraft::{Raft, ServerState};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// This node's replicas of every partition, to ask who leads.
#[derive(Clone)]
pub struct Leaders {
    /// This node's Raft id.
    me: NodeId,
    /// This node's id in the cluster file, for status and messages.
    name: Arc<str>,
    /// By partition number.
    rafts: Arc<[Raft<TypeConfig>]>,
    /// By partition: how often the leader this node knows of changed
    /// (counted by [`watch_roles`]), for status and `/metrics`.
    changes: Arc<[std::sync::atomic::AtomicU64]>,
}

/// Where the cluster's home (partition 0's leader) is, as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Home {
    Here,
    At(Member),
    /// An election is running, or this node is cut off.
    Unknown,
}

impl Leaders {
    pub fn new(me: NodeId, name: &str, rafts: Arc<[Raft<TypeConfig>]>) -> Leaders {
        let changes = (0..rafts.len()).map(|_| std::sync::atomic::AtomicU64::new(0)).collect();
        Leaders { me, name: name.into(), rafts, changes }
    }

    /// This node's id in the cluster file.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// This node's replica of each partition's group.
    pub fn rafts(&self) -> &[Raft<TypeConfig>] {
        &self.rafts
    }

    /// How often partition `p`'s leader changed, as this node saw it.
    pub fn leader_changes(&self, p: usize) -> u64 {
        self.changes.get(p).map_or(0, |c| c.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Who leads partition 0, as Raft last told this node. Cheap: one read
    /// of the group's metrics, no call.
    pub fn home(&self) -> Home {
        let Some(raft) = self.rafts.first() else { return Home::Unknown };
        let metrics = raft.metrics();
        let m = metrics.borrow();
        match m.current_leader {
            Some(l) if l == self.me && m.state == ServerState::Leader => Home::Here,
            Some(l) if l != self.me => {
                m.membership_config.membership().get_node(&l).cloned().map_or(Home::Unknown, Home::At)
            }
            _ => Home::Unknown,
        }
    }

    /// Each partition's term, if this node leads every partition.
    fn terms_if_leading_all(&self) -> Option<Vec<u64>> {
        self.rafts
            .iter()
            .map(|r| {
                let metrics = r.metrics();
                let m = metrics.borrow();
                (m.state == ServerState::Leader).then_some(m.current_term)
            })
            .collect()
    }

    fn home_id(&self) -> Option<NodeId> {
        let metrics = self.rafts.first()?.metrics();
        let m = metrics.borrow();
        home_of(self.me, &m)
    }
}

/// The home as partition 0's metrics on node `me` show it (this node only
/// once it is leader, not while it is still a candidate).
fn home_of(me: NodeId, m: &openraft::RaftMetrics<NodeId, Member>) -> Option<NodeId> {
    m.current_leader.filter(|&l| l != me || m.state == ServerState::Leader)
}

/// What a node sees of one partition `p` ≥ 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// Partition 0's leader, if known.
    pub home: Option<NodeId>,
    /// Whether this node leads `p`.
    pub leads: bool,
    /// `p`'s leader, if known.
    pub leader: Option<NodeId>,
    /// How long `p` has had no known leader, or one that is not the home
    /// (zero while the home leads it).
    pub unsettled_for: Duration,
    /// How long since this node last stood for election in `p`.
    pub since_last_stood: Duration,
}

/// What a node does about one partition `p` ≥ 1 this tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Steer {
    /// Whether its own election timer runs for `p`.
    pub elect: bool,
    /// Whether, leading `p`, it sends heartbeats.
    pub heartbeat: bool,
    /// Whether it stands for election in `p` now.
    pub stand: bool,
}

/// The steering rule (see the module doc). `timeout` is the cluster's
/// election timeout.
pub fn steer(me: NodeId, seen: Seen, timeout: Duration) -> Steer {
    let home_is_me = seen.home == Some(me);
    let lost = seen.unsettled_for > timeout * 3;
    Steer {
        elect: home_is_me || seen.home.is_none() || lost,
        heartbeat: !seen.leads || home_is_me || seen.home.is_none(),
        stand: home_is_me && !seen.leads && seen.leader != Some(me) && seen.since_last_stood >= timeout * 2,
    }
}

/// Whether a follower of partition 0 stands for election now (see the
/// module doc): the home has been silent for `silent_for`; `rank` is this
/// node's place among the followers (by Raft id), which staggers them by
/// half a timeout; a node that stood waits two timeouts before it stands
/// again (Raft's own timer takes over meanwhile). `timeout` is the
/// cluster's election timeout; the lease is twice that (`raft_config`).
pub fn stand_for_home(silent_for: Duration, rank: u32, since_last_stood: Duration, timeout: Duration) -> bool {
    let (lease, heartbeat) = (timeout * 2, timeout / 5);
    silent_for > lease + heartbeat + timeout / 2 * rank && since_last_stood >= timeout * 2
}

/// This node's place among partition 0's voters other than `leader`, by
/// Raft id; `None` if it is not one.
fn follower_rank(me: NodeId, voters: impl Iterator<Item = NodeId>, leader: Option<NodeId>) -> Option<u32> {
    let mut others: Vec<NodeId> = voters.filter(|v| Some(*v) != leader).collect();
    others.sort_unstable();
    others.iter().position(|&v| v == me).map(|r| r as u32)
}

/// Steers partitions 1.. towards the home every tick until `stop`; and
/// when this node has come to lead every partition (a new term in any),
/// has `broker` complete what an earlier home left half done before it
/// serves ([`Broker::repair`]).
pub async fn keep_together(
    leaders: Leaders,
    heard: LastHeard,
    broker: Broker,
    timeout: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let n = leaders.rafts.len();
    let long_ago = Instant::now().checked_sub(timeout * 10).unwrap_or_else(Instant::now);
    let mut unsettled_since: Vec<Option<Instant>> = vec![None; n];
    let mut stood: Vec<Instant> = vec![long_ago; n];
    let mut applied: Vec<Option<(bool, bool)>> = vec![None; n];
    let tick = (timeout / 5).max(Duration::from_millis(20));
    let mut repaired_for: Option<Vec<u64>> = None;
    let mut cut_off = vec![false; n];
    let mut stood_for_home = long_ago;
    loop {
        if let Some(raft) = leaders.rafts.first() {
            let rank = {
                let metrics = raft.metrics();
                let m = metrics.borrow();
                let voters = m.membership_config.membership().voter_ids();
                (m.state == ServerState::Follower)
                    .then(|| follower_rank(leaders.me, voters, m.current_leader))
                    .flatten()
            };
            let now = Instant::now();
            if let Some(rank) = rank {
                if stand_for_home(heard.silent_for(0), rank, now.saturating_duration_since(stood_for_home), timeout) {
                    stood_for_home = now;
                    tracing::info!(silent_ms = heard.silent_for(0).as_millis() as u64, "the home is silent: standing");
                    if raft.trigger().elect().await.is_err() {
                        return;
                    }
                }
            }
        }
        for (p, raft) in leaders.rafts.iter().enumerate() {
            let age = {
                let metrics = raft.metrics();
                let m = metrics.borrow();
                (m.state == ServerState::Leader).then_some(m.millis_since_quorum_ack).flatten()
            };
            let now_cut_off = age.is_some_and(|ms| ms > (timeout * 2).as_millis() as u64);
            if now_cut_off != cut_off[p] {
                cut_off[p] = now_cut_off;
                let why = now_cut_off.then(|| {
                    format!(
                        "partition {p}: this node leads it but no majority of its replicas has answered for over \
                         {:?} (most are down, or this node is cut off from them); nothing was done: retry (a \
                         majority elects a new leader within seconds, if one is up)",
                        timeout * 2
                    )
                });
                if now_cut_off {
                    tracing::warn!(partition = p, "cut off from the partition's majority: refusing its calls");
                } else {
                    tracing::info!(partition = p, "the partition's majority answers again: serving");
                }
                broker.set_cut_off(p, why);
            }
        }
        match leaders.terms_if_leading_all() {
            Some(terms) if repaired_for.as_ref() != Some(&terms) => {
                let b = broker.clone();
                b.hold_for_repair();
                match tokio::task::spawn_blocking(move || b.repair()).await {
                    Ok(Ok(())) => {
                        broker.repaired();
                        tracing::info!(?terms, "this node leads every partition: serving as the cluster's home");
                        repaired_for = Some(terms);
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "taking over as the cluster's home: repairs failed; retrying")
                    }
                    Err(e) => tracing::warn!(error = %e, "taking over as the cluster's home: repair task failed"),
                }
            }
            Some(_) => {}
            None => {
                if repaired_for.take().is_some() {
                    broker.hold_for_repair();
                }
            }
        }
        let home = leaders.home_id();
        let now = Instant::now();
        for p in 1..n {
            let raft = &leaders.rafts[p];
            let (leads, leader) = {
                let metrics = raft.metrics();
                let m = metrics.borrow();
                (m.state == ServerState::Leader, m.current_leader)
            };
            let settled = leader.is_some() && leader == home;
            let unsettled_for = match unsettled_since[p] {
                _ if settled => {
                    unsettled_since[p] = None;
                    Duration::ZERO
                }
                Some(since) => now.saturating_duration_since(since),
                None => {
                    unsettled_since[p] = Some(now);
                    Duration::ZERO
                }
            };
            let seen =
                Seen { home, leads, leader, unsettled_for, since_last_stood: now.saturating_duration_since(stood[p]) };
            let s = steer(leaders.me, seen, timeout);
            if applied[p] != Some((s.elect, s.heartbeat)) {
                raft.runtime_config().elect(s.elect);
                raft.runtime_config().heartbeat(s.heartbeat);
                applied[p] = Some((s.elect, s.heartbeat));
            }
            if s.stand {
                stood[p] = now;
                tracing::debug!(partition = p, "standing for election: the partition's leader is not the home");
                if raft.trigger().elect().await.is_err() {
                    return;
                }
            }
        }
        // The next tick, or sooner when partition 0's leader changes: a new
        // home stands for the other partitions at once.
        let home_changed = async {
            match leaders.rafts.first().map(|r| r.metrics()) {
                Some(mut m) => {
                    let me = leaders.me;
                    let _ = m.wait_for(|m| home_of(me, m) != home).await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = home_changed => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Wakes partition `p`'s writer whenever this node's role in it changes
/// (a term, a state or a leader), and counts the changes of leader, until
/// the group stops.
pub async fn watch_roles(p: usize, leaders: Leaders, broker: Broker) {
    let Some(raft) = leaders.rafts.get(p).cloned() else { return };
    let mut metrics = raft.metrics();
    let mut last: Option<(u64, ServerState, Option<NodeId>)> = None;
    loop {
        let now = {
            let m = metrics.borrow_and_update();
            Some((m.current_term, m.state, m.current_leader))
        };
        if now != last {
            let leader = now.and_then(|n| n.2);
            if leader.is_some() && leader != last.and_then(|l| l.2) {
                leaders.changes[p].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            broker.wake_partition(p);
            last = now;
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_millis(500);
    const ME: NodeId = 1;
    const OTHER: NodeId = 2;

    fn seen(home: Option<NodeId>, leads: bool, leader: Option<NodeId>) -> Seen {
        Seen { home, leads, leader, unsettled_for: Duration::ZERO, since_last_stood: T * 10 }
    }

    #[test]
    fn a_follower_stands_for_the_home_one_lease_and_a_heartbeat_after_it_fell_silent_staggered_by_rank() {
        let ms = Duration::from_millis;
        let long_ago = T * 10;
        // Lease 1000 ms + heartbeat 100 ms; rank 1 waits 250 ms more.
        assert!(!stand_for_home(ms(1100), 0, long_ago, T));
        assert!(stand_for_home(ms(1101), 0, long_ago, T));
        assert!(!stand_for_home(ms(1300), 1, long_ago, T));
        assert!(stand_for_home(ms(1351), 1, long_ago, T));
        // Once stood, not again for two timeouts.
        assert!(!stand_for_home(ms(5000), 0, ms(999), T));
        assert!(stand_for_home(ms(5000), 0, ms(1000), T));
    }

    #[test]
    fn followers_rank_by_raft_id_without_the_leader() {
        assert_eq!(follower_rank(7, [3, 7, 9].into_iter(), Some(3)), Some(0));
        assert_eq!(follower_rank(9, [3, 7, 9].into_iter(), Some(3)), Some(1));
        assert_eq!(follower_rank(9, [3, 7, 9].into_iter(), None), Some(2));
        assert_eq!(follower_rank(4, [3, 7, 9].into_iter(), Some(3)), None, "not a voter");
    }

    #[test]
    fn the_home_stands_for_a_partition_led_elsewhere_and_only_it_runs_an_election_timer() {
        let s = steer(ME, seen(Some(ME), false, Some(OTHER)), T);
        assert_eq!(s, Steer { elect: true, heartbeat: true, stand: true });
        let other = steer(ME, seen(Some(OTHER), false, Some(3)), T);
        assert!(!other.elect && !other.stand, "{other:?}");
    }

    #[test]
    fn the_home_stands_at_most_once_per_two_timeouts() {
        let mut s = seen(Some(ME), false, None);
        s.since_last_stood = T;
        assert!(!steer(ME, s, T).stand);
        s.since_last_stood = T * 2;
        assert!(steer(ME, s, T).stand);
    }

    #[test]
    fn a_leader_that_is_not_the_home_stops_its_heartbeats() {
        let s = steer(ME, seen(Some(OTHER), true, Some(ME)), T);
        assert_eq!(s, Steer { elect: false, heartbeat: false, stand: false });
        // Leading with the home: heartbeats as usual.
        assert!(steer(ME, seen(Some(ME), true, Some(ME)), T).heartbeat);
        // No home known (partition 0 is electing): nobody lets go.
        assert!(steer(ME, seen(None, true, Some(ME)), T).heartbeat);
    }

    #[test]
    fn without_a_home_or_when_a_partition_stays_away_from_it_every_node_may_be_elected() {
        assert!(steer(ME, seen(None, false, None), T).elect);
        let mut s = seen(Some(OTHER), false, None);
        assert!(!steer(ME, s, T).elect);
        s.unsettled_for = T * 3 + Duration::from_millis(1);
        assert!(steer(ME, s, T).elect, "a home whose replica cannot win must not leave the partition leaderless");
        // Still naming a leader that died (its vote requests refused by a
        // more up-to-date log, a follower keeps its old leader): the same.
        let mut stale = seen(Some(OTHER), false, Some(3));
        stale.unsettled_for = T * 4;
        assert!(steer(ME, stale, T).elect);
    }

    #[test]
    fn nothing_changes_once_the_home_leads_everything() {
        let s = steer(ME, seen(Some(ME), true, Some(ME)), T);
        assert_eq!(s, Steer { elect: true, heartbeat: true, stand: false });
        let follower = steer(OTHER, seen(Some(ME), false, Some(ME)), T);
        assert_eq!(follower, Steer { elect: false, heartbeat: true, stand: false });
    }
}
