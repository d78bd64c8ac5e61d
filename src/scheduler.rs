//! Fair selection of the next (tenant, environment) group to lease from.
//!
//! Pure and synchronous: it knows only which groups *may* have ready work and
//! answers "whose turn is it?". Two levels of weighted fair queueing by
//! virtual time (stride scheduling): first a tenant, then an environment of
//! that tenant. Each member of a level has a `pass`; the lowest pass goes
//! next, and serving it adds `1 / weight` to its pass. So over any stretch in
//! which tenants stay backlogged, each gets leases in proportion to its
//! weight, within one lease; and since the choice of environment happens
//! *inside* the tenant's turn, spreading jobs over many environments buys a
//! tenant nothing.
//!
//! A member that comes back from idle starts at the level's current virtual
//! time, so idling earns no credit to burst with later. Idle members are
//! dropped the first time their turn finds nothing ready: they cost no memory
//! and no time. Each choice is O(log active members).

use std::collections::BTreeSet;

/// The pass increment of weight 1. Fixed point, so shares are exact.
const STRIDE_ONE: u128 = 1 << 40;
/// Largest weight accepted.
pub const MAX_WEIGHT: u32 = 10_000;
pub const DEFAULT_WEIGHT: u32 = 1;

fn stride(weight: u32) -> u128 {
    STRIDE_ONE / u128::from(weight.clamp(1, MAX_WEIGHT))
}

/// One level of weighted fair queueing over named members.
#[derive(Debug, Default)]
struct Level {
    /// Members that may have work, ordered by (pass, name).
    queue: BTreeSet<(u128, String)>,
    /// Pass of every queued member.
    pass: crate::model::FastMap<String, u128>,
    /// Pass of the member served last: where newcomers start.
    vtime: u128,
}

impl Level {
    /// Queues `name` if it isn't; returns true when newly queued.
    fn activate(&mut self, name: &str) -> bool {
        if self.pass.contains_key(name) {
            return false;
        }
        self.pass.insert(name.to_string(), self.vtime);
        self.queue.insert((self.vtime, name.to_string()));
        true
    }

    fn first(&self) -> Option<&str> {
        self.queue.first().map(|(_, n)| n.as_str())
    }

    /// Charges the member one lease at `weight`.
    fn charge(&mut self, name: &str, weight: u32) {
        if let Some(p) = self.pass.get_mut(name) {
            self.queue.remove(&(*p, name.to_string()));
            self.vtime = self.vtime.max(*p);
            *p += stride(weight);
            self.queue.insert((*p, name.to_string()));
        }
    }

    fn remove(&mut self, name: &str) {
        if let Some(p) = self.pass.remove(name) {
            self.queue.remove(&(p, name.to_string()));
        }
    }

    fn len(&self) -> usize {
        self.queue.len()
    }
}

/// The weighted fair rotation of one queue.
#[derive(Debug, Default)]
pub struct FairScheduler {
    tenants: Level,
    /// Per queued tenant, its environments.
    envs: crate::model::FastMap<String, Level>,
    /// Configured tenant weights; absent = [`DEFAULT_WEIGHT`].
    tenant_weight: crate::model::FastMap<String, u32>,
    /// Configured environment weights inside a tenant.
    env_weight: crate::model::FastMap<(String, String), u32>,
    /// Sum of the weights of the tenants in the rotation: this queue's
    /// demand in the split between partitions (`partition::split`).
    active_weight: u64,
}

impl FairScheduler {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a tenant's weight (its share relative to other tenants).
    pub fn set_tenant_weight(&mut self, tenant: &str, weight: u32) {
        if self.tenants.pass.contains_key(tenant) {
            self.active_weight -= u64::from(self.tenant_weight(tenant));
            self.active_weight += u64::from(weight.clamp(1, MAX_WEIGHT));
        }
        if weight == DEFAULT_WEIGHT {
            self.tenant_weight.remove(tenant);
        } else {
            self.tenant_weight.insert(tenant.to_string(), weight.clamp(1, MAX_WEIGHT));
        }
    }

    /// Sets an environment's weight inside its tenant.
    pub fn set_env_weight(&mut self, tenant: &str, env: &str, weight: u32) {
        let key = (tenant.to_string(), env.to_string());
        if weight == DEFAULT_WEIGHT {
            self.env_weight.remove(&key);
        } else {
            self.env_weight.insert(key, weight.clamp(1, MAX_WEIGHT));
        }
    }

    pub fn tenant_weight(&self, tenant: &str) -> u32 {
        self.tenant_weight.get(tenant).copied().unwrap_or(DEFAULT_WEIGHT)
    }

    pub fn env_weight(&self, tenant: &str, env: &str) -> u32 {
        self.env_weight.get(&(tenant.to_string(), env.to_string())).copied().unwrap_or(DEFAULT_WEIGHT)
    }

    /// Notes that group (tenant, env) has ready work. Idempotent.
    pub fn activate(&mut self, tenant: &str, env: &str) {
        if self.tenants.activate(tenant) {
            self.active_weight += u64::from(self.tenant_weight(tenant));
        }
        match self.envs.get_mut(tenant) {
            Some(level) => {
                level.activate(env);
            }
            None => {
                let mut level = Level::default();
                level.activate(env);
                self.envs.insert(tenant.to_string(), level);
            }
        }
    }

    /// Whose turn it is: the next (tenant, env) for which `has_ready` holds,
    /// charged one lease. Groups found empty leave the rotation. `None` when
    /// no group has ready work.
    pub fn next(&mut self, mut has_ready: impl FnMut(&str, &str) -> bool) -> Option<(String, String)> {
        while let Some(tenant) = self.tenants.first().map(str::to_string) {
            if let Some(env) = self.serve(&tenant, &mut has_ready) {
                return Some((tenant, env));
            }
        }
        None
    }

    /// As [`next`](Self::next), among `tenants` only (a worker whose token
    /// covers those): the one of them with the lowest pass goes. Tenants
    /// left out keep their place in the rotation for the other workers.
    /// O(`tenants.len()`) per choice.
    pub fn next_among(
        &mut self,
        tenants: &[String],
        mut has_ready: impl FnMut(&str, &str) -> bool,
    ) -> Option<(String, String)> {
        loop {
            let (_, tenant) = tenants.iter().filter_map(|t| self.tenants.pass.get(t).map(|p| (*p, t))).min()?;
            let tenant = tenant.clone();
            if let Some(env) = self.serve(&tenant, &mut has_ready) {
                return Some((tenant, env));
            }
        }
    }

    /// Serves queued `tenant`: its next environment with ready work, both
    /// charged one lease. `None` (and the tenant leaves the rotation) when
    /// none of its environments has any.
    fn serve(&mut self, tenant: &str, has_ready: &mut impl FnMut(&str, &str) -> bool) -> Option<String> {
        let Some(level) = self.envs.get_mut(tenant) else {
            self.leave(tenant);
            return None;
        };
        let mut chosen = None;
        while let Some(env) = level.first().map(str::to_string) {
            if has_ready(tenant, &env) {
                chosen = Some(env);
                break;
            }
            level.remove(&env);
        }
        let Some(env) = chosen else {
            self.envs.remove(tenant);
            self.leave(tenant);
            return None;
        };
        let (tw, ew) = (self.tenant_weight(tenant), self.env_weight(tenant, &env));
        if let Some(level) = self.envs.get_mut(tenant) {
            level.charge(&env, ew);
        }
        self.tenants.charge(tenant, tw);
        Some(env)
    }

    /// `tenant` leaves the rotation.
    fn leave(&mut self, tenant: &str) {
        if self.tenants.pass.contains_key(tenant) {
            self.active_weight -= u64::from(self.tenant_weight(tenant));
            self.tenants.remove(tenant);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.tenants.len() == 0
    }

    /// Sum of the weights of the tenants in the rotation (that may have
    /// deliverable work): the queue's demand in the split between
    /// partitions.
    pub fn active_weight(&self) -> u64 {
        self.active_weight
    }
}

/// One worker's turn order over the queues it serves, weighted by each
/// queue's `weight`: a flooded queue can't starve a small one that the same
/// workers serve. Same virtual-time rule as the tenant level, over a handful
/// of queues, so a sort per pick is cheap.
#[derive(Debug, Clone)]
pub struct QueueRotation {
    pass: Vec<u128>,
    vtime: u128,
}

impl QueueRotation {
    pub fn new(queues: usize) -> Self {
        QueueRotation { pass: vec![0; queues], vtime: 0 }
    }

    /// Queue indices in the order to try them; a queue that sat idle starts
    /// from the current virtual time (no saved-up burst).
    pub fn order(&self) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..self.pass.len()).collect();
        idx.sort_by_key(|&i| (self.pass[i].max(self.vtime), i));
        idx
    }

    /// Charges queue `i` one job at `weight`.
    pub fn charge(&mut self, i: usize, weight: u32) {
        if let Some(p) = self.pass.get_mut(i) {
            let start = (*p).max(self.vtime);
            self.vtime = start;
            *p = start + stride(weight);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    /// A toy backlog: ready counts per (tenant, env).
    struct Backlog(HashMap<(String, String), u64>);

    impl Backlog {
        fn new(groups: &[(&str, &str, u64)], s: &mut FairScheduler) -> Backlog {
            let mut m = HashMap::new();
            for (t, e, n) in groups {
                *m.entry((t.to_string(), e.to_string())).or_default() += *n;
                if *n > 0 {
                    s.activate(t, e);
                }
            }
            Backlog(m)
        }

        fn take(&mut self, s: &mut FairScheduler) -> Option<(String, String)> {
            let m = &self.0;
            let pick = s.next(|t, e| m.get(&(t.to_string(), e.to_string())).copied().unwrap_or(0) > 0)?;
            let n = self.0.get_mut(&pick).expect("picked group exists");
            assert!(*n > 0, "picked an empty group {pick:?}");
            *n -= 1;
            Some(pick)
        }
    }

    #[test]
    fn a_restricted_worker_takes_only_its_tenants_and_the_others_keep_their_turn() {
        let mut s = FairScheduler::new();
        let mut b = Backlog::new(&[("a", "default", 3), ("b", "default", 3), ("c", "default", 3)], &mut s);
        let only = ["b".to_string(), "zzz".to_string()];
        for _ in 0..3 {
            let m = &b.0;
            let pick = s
                .next_among(&only, |t, e| m.get(&(t.to_string(), e.to_string())).copied().unwrap_or(0) > 0)
                .expect("b has ready jobs");
            assert_eq!(pick.0, "b");
            *b.0.get_mut(&pick).expect("picked group exists") -= 1;
        }
        let m = &b.0;
        assert_eq!(s.next_among(&only, |t, e| m.get(&(t.to_string(), e.to_string())).copied().unwrap_or(0) > 0), None);
        // a and c were skipped, not dropped: an unrestricted worker still
        // finds all of their jobs.
        let rest: Vec<_> = std::iter::from_fn(|| b.take(&mut s)).map(|p| p.0).collect();
        assert_eq!(rest.len(), 6, "{rest:?}");
        assert!(rest.iter().all(|t| t == "a" || t == "c"), "{rest:?}");
    }

    #[test]
    fn a_small_tenant_is_served_next_to_a_flood() {
        let mut s = FairScheduler::new();
        let mut b = Backlog::new(&[("big", "default", 1_000_000), ("small", "default", 1)], &mut s);
        let first_two: Vec<_> = (0..2).map(|_| b.take(&mut s).unwrap().0).collect();
        assert!(first_two.contains(&"small".to_string()), "{first_two:?}");
        for _ in 0..10 {
            assert_eq!(b.take(&mut s).unwrap().0, "big");
        }
    }

    #[test]
    fn equal_tenants_alternate_and_environments_alternate_inside_a_tenant() {
        let mut s = FairScheduler::new();
        let mut b = Backlog::new(&[("a", "prod", 10), ("a", "staging", 10), ("b", "prod", 10)], &mut s);
        let picks: Vec<_> = (0..8).map(|_| b.take(&mut s).unwrap()).collect();
        let tenants: Vec<_> = picks.iter().map(|p| p.0.as_str()).collect();
        assert_eq!(tenants, ["a", "b", "a", "b", "a", "b", "a", "b"]);
        let a_envs: Vec<_> = picks.iter().filter(|p| p.0 == "a").map(|p| p.1.as_str()).collect();
        assert_eq!(a_envs, ["prod", "staging", "prod", "staging"]);
    }

    #[test]
    fn many_environments_do_not_buy_a_tenant_more_turns() {
        let mut s = FairScheduler::new();
        let groups: Vec<(String, String, u64)> = (0..50)
            .map(|i| ("spread".to_string(), format!("env{i}"), 100))
            .chain([("single".into(), "d".into(), 100)])
            .collect();
        let refs: Vec<(&str, &str, u64)> = groups.iter().map(|(t, e, n)| (t.as_str(), e.as_str(), *n)).collect();
        let mut b = Backlog::new(&refs, &mut s);
        let single = (0..100).filter(|_| b.take(&mut s).unwrap().0 == "single").count();
        assert_eq!(single, 50);
    }

    #[test]
    fn weights_split_leases_proportionally() {
        let mut s = FairScheduler::new();
        s.set_tenant_weight("b", 2);
        s.set_tenant_weight("c", 4);
        let mut b = Backlog::new(&[("a", "e", 10_000), ("b", "e", 10_000), ("c", "e", 10_000)], &mut s);
        let mut n: HashMap<String, u32> = HashMap::new();
        for _ in 0..700 {
            *n.entry(b.take(&mut s).unwrap().0).or_default() += 1;
        }
        assert_eq!((n["a"], n["b"], n["c"]), (100, 200, 400));
    }

    #[test]
    fn environment_weights_split_a_tenants_share() {
        let mut s = FairScheduler::new();
        s.set_env_weight("a", "prod", 3);
        let mut b = Backlog::new(&[("a", "prod", 1000), ("a", "dev", 1000), ("b", "x", 1000)], &mut s);
        let picks: Vec<_> = (0..800).map(|_| b.take(&mut s).unwrap()).collect();
        let count = |t: &str, e: &str| picks.iter().filter(|p| p.0 == t && p.1 == e).count();
        assert_eq!(count("b", "x"), 400, "the tenant level is untouched");
        assert_eq!((count("a", "prod"), count("a", "dev")), (300, 100));
    }

    #[test]
    fn idle_time_earns_no_credit() {
        let mut s = FairScheduler::new();
        let mut b = Backlog::new(&[("a", "e", 1000)], &mut s);
        for _ in 0..500 {
            b.take(&mut s);
        }
        // b arrives late with a big backlog: it alternates with a, it does
        // not get 500 turns in a row to "catch up".
        b.0.insert(("b".into(), "e".into()), 1000);
        s.activate("b", "e");
        let next: Vec<_> = (0..10).map(|_| b.take(&mut s).unwrap().0).collect();
        assert_eq!(next.iter().filter(|t| *t == "b").count(), 5, "{next:?}");
    }

    #[test]
    fn drained_groups_leave_and_idle_tenants_cost_nothing() {
        let mut s = FairScheduler::new();
        let mut b = Backlog::new(&[("a", "x", 2), ("b", "y", 1)], &mut s);
        let mut n = 0;
        while b.take(&mut s).is_some() {
            n += 1;
        }
        assert_eq!(n, 3);
        assert!(s.is_empty());
        assert!(s.envs.is_empty() && s.tenants.pass.is_empty(), "no memory kept for idle tenants");
        s.activate("b", "y");
        assert_eq!(s.next(|_, _| true), Some(("b".into(), "y".into())));
    }

    #[test]
    fn activation_is_idempotent() {
        let mut s = FairScheduler::new();
        for _ in 0..5 {
            s.activate("a", "x");
        }
        assert_eq!(s.tenants.len(), 1);
        assert_eq!(s.next(|_, _| true), Some(("a".into(), "x".into())));
        assert_eq!(s.next(|_, _| false), None);
        assert!(s.is_empty());
    }

    #[test]
    fn workers_split_between_queues_by_weight_and_idle_queues_save_nothing() {
        let mut r = QueueRotation::new(2);
        let weights = [1, 3];
        let mut n = [0; 2];
        for _ in 0..400 {
            let i = r.order()[0];
            r.charge(i, weights[i]);
            n[i] += 1;
        }
        assert_eq!(n, [100, 300]);
        // Queue 0 has nothing for a while: queue 1 takes every turn...
        for _ in 0..100 {
            let i = *r.order().iter().find(|&&i| i == 1).unwrap();
            r.charge(i, weights[i]);
        }
        // ...and when queue 0 returns it gets its share, not a catch-up burst.
        let next: Vec<usize> = (0..8)
            .map(|_| {
                let i = r.order()[0];
                r.charge(i, weights[i]);
                i
            })
            .collect();
        assert_eq!(next.iter().filter(|&&i| i == 0).count(), 2, "{next:?}");
    }

    /// Operations of the model-based property test.
    #[derive(Debug, Clone)]
    enum Op {
        Enqueue {
            tenant: u8,
            env: u8,
            n: u8,
        },
        Lease,
        /// Settle the k-th oldest leased job: ack, or nack it back to ready.
        Settle {
            k: u8,
            ack: bool,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            2 => (0u8..6, 0u8..4, 1u8..20).prop_map(|(tenant, env, n)| Op::Enqueue { tenant, env, n }),
            3 => Just(Op::Lease),
            2 => (any::<u8>(), any::<bool>()).prop_map(|(k, ack)| Op::Settle { k, ack }),
        ]
    }

    proptest! {
        /// Against any sequence of enqueues, leases, acks and nacks, with
        /// job ids: a lease never picks an empty group; it finds work
        /// whenever any is ready (work-conserving); no job is delivered
        /// while it is leased; and at the end every job is acked or still
        /// ready: none disappears.
        #[test]
        fn no_job_is_lost_or_delivered_twice(ops in proptest::collection::vec(op(), 1..400)) {
            let mut s = FairScheduler::new();
            let mut ready: HashMap<(String, String), std::collections::VecDeque<u32>> = HashMap::new();
            let mut leased: Vec<(u32, (String, String))> = Vec::new();
            let mut acked = std::collections::HashSet::new();
            let mut next_id = 0u32;
            for op in ops {
                match op {
                    Op::Enqueue { tenant, env, n } => {
                        let g = (format!("t{tenant}"), format!("e{env}"));
                        for _ in 0..n {
                            ready.entry(g.clone()).or_default().push_back(next_id);
                            next_id += 1;
                        }
                        s.activate(&g.0, &g.1);
                    }
                    Op::Lease => {
                        let any = ready.values().any(|q| !q.is_empty());
                        let r = &ready;
                        let pick = s.next(|t, e| r.get(&(t.to_string(), e.to_string())).is_some_and(|q| !q.is_empty()));
                        prop_assert_eq!(pick.is_some(), any, "work-conserving");
                        if let Some(g) = pick {
                            let id = ready.get_mut(&g).and_then(|q| q.pop_front());
                            prop_assert!(id.is_some(), "picked an empty group {:?}", g);
                            let id = id.unwrap();
                            prop_assert!(!leased.iter().any(|(l, _)| *l == id), "job {} delivered while leased", id);
                            prop_assert!(!acked.contains(&id), "acked job {} delivered again", id);
                            leased.push((id, g));
                        }
                    }
                    Op::Settle { k, ack } => {
                        if leased.is_empty() {
                            continue;
                        }
                        let (id, g) = leased.remove(usize::from(k) % leased.len());
                        if ack {
                            acked.insert(id);
                        } else {
                            ready.entry(g.clone()).or_default().push_back(id);
                            s.activate(&g.0, &g.1);
                        }
                    }
                }
            }
            // Drain: every job still ready comes out exactly once.
            let mut drained = std::collections::HashSet::new();
            loop {
                let r = &ready;
                let Some(g) = s.next(|t, e| r.get(&(t.to_string(), e.to_string())).is_some_and(|q| !q.is_empty())) else { break };
                let id = ready.get_mut(&g).and_then(|q| q.pop_front()).expect("picked group has a job");
                prop_assert!(drained.insert(id));
            }
            prop_assert!(ready.values().all(|q| q.is_empty()));
            let leased_ids: std::collections::HashSet<u32> = leased.iter().map(|(id, _)| *id).collect();
            for id in 0..next_id {
                let places = [acked.contains(&id), drained.contains(&id), leased_ids.contains(&id)];
                prop_assert_eq!(places.iter().filter(|p| **p).count(), 1, "job {} must be in exactly one place", id);
            }
        }

        /// Backlogged tenants get shares within 2% of their weights, and
        /// each is served at least once every ceil(total / weight) + tenants
        /// leases (bounded wait), however many environments they use.
        #[test]
        fn shares_match_weights_and_waits_are_bounded(
            weights in proptest::collection::vec(1u32..=8, 2..7),
            envs in proptest::collection::vec(1usize..5, 7),
        ) {
            let mut s = FairScheduler::new();
            let total: u32 = weights.iter().sum();
            let mut groups = Vec::new();
            for (i, w) in weights.iter().enumerate() {
                s.set_tenant_weight(&format!("t{i}"), *w);
                for e in 0..envs[i] {
                    groups.push((format!("t{i}"), format!("e{e}"), 1_000_000u64));
                }
            }
            let refs: Vec<(&str, &str, u64)> = groups.iter().map(|(t, e, n)| (t.as_str(), e.as_str(), *n)).collect();
            let mut b = Backlog::new(&refs, &mut s);
            let rounds = 200 * total as usize;
            let mut count = vec![0usize; weights.len()];
            let mut last = vec![0usize; weights.len()];
            let mut last_group: HashMap<(String, String), usize> = HashMap::new();
            for k in 1..=rounds {
                let (t, e) = b.take(&mut s).unwrap();
                let i: usize = t[1..].parse().unwrap();
                let gap = k - last[i];
                let bound = total.div_ceil(weights[i]) as usize + weights.len();
                prop_assert!(gap <= bound, "tenant {} waited {} > {}", i, gap, bound);
                // A group waits for at most one turn of each sibling environment.
                let group_gap = k - last_group.get(&(t.clone(), e.clone())).copied().unwrap_or(0);
                prop_assert!(group_gap <= envs[i] * bound, "group {}/{} waited {}", t, e, group_gap);
                last_group.insert((t, e), k);
                last[i] = k;
                count[i] += 1;
            }
            for (i, w) in weights.iter().enumerate() {
                let want = rounds as f64 * f64::from(*w) / f64::from(total);
                let got = count[i] as f64;
                prop_assert!((got - want).abs() <= want * 0.02, "tenant {} got {} want {}", i, got, want);
            }
        }
    }
}
