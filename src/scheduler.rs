//! Fair selection of the next (tenant, environment) group to lease from.
//!
//! Pure and synchronous: it knows only which groups *may* have ready work and
//! answers "whose turn is it?". Round-robin over tenants, then round-robin over
//! environments inside the chosen tenant, so a tenant with a million ready jobs
//! and a tenant with one alternate. Idle tenants cost nothing: they are dropped
//! from the ring the first time their turn finds nothing ready. Every call is
//! O(1) amortized: no scan over tenants or jobs.

use std::collections::{HashMap, VecDeque};

#[derive(Debug, Default)]
struct Tenant {
    /// Environments of this tenant that may have ready work, in turn order.
    envs: VecDeque<String>,
    /// Mirror of `envs` for O(1) "is it already queued?".
    queued: std::collections::HashSet<String>,
}

/// The round-robin state of one queue.
#[derive(Debug, Default)]
pub struct FairScheduler {
    /// Tenants that may have ready work, in turn order; each appears once.
    ring: VecDeque<String>,
    /// Per tenant in `ring`, its environments.
    tenants: HashMap<String, Tenant>,
}

impl FairScheduler {
    pub fn new() -> Self {
        Self::default()
    }

    /// Notes that group (tenant, env) has ready work. Idempotent; a newly
    /// active tenant joins the back of the ring.
    pub fn activate(&mut self, tenant: &str, env: &str) {
        let t = match self.tenants.get_mut(tenant) {
            Some(t) => t,
            None => {
                self.ring.push_back(tenant.to_string());
                self.tenants.entry(tenant.to_string()).or_default()
            }
        };
        if !t.queued.contains(env) {
            t.queued.insert(env.to_string());
            t.envs.push_back(env.to_string());
        }
    }

    /// Whose turn it is: the next (tenant, env) for which `has_ready` holds.
    /// Groups found empty leave the rotation; the chosen group moves to the
    /// back of its tenant's environments and the tenant to the back of the
    /// ring. `None` when no group has ready work.
    pub fn next(&mut self, mut has_ready: impl FnMut(&str, &str) -> bool) -> Option<(String, String)> {
        while let Some(tenant) = self.ring.pop_front() {
            let Some(t) = self.tenants.get_mut(&tenant) else {
                continue;
            };
            while let Some(env) = t.envs.pop_front() {
                if has_ready(&tenant, &env) {
                    t.envs.push_back(env.clone());
                    self.ring.push_back(tenant.clone());
                    return Some((tenant, env));
                }
                t.queued.remove(&env);
            }
            self.tenants.remove(&tenant);
        }
        None
    }

    /// Tenants currently in the rotation (some may have just run dry).
    pub fn active_tenants(&self) -> usize {
        self.ring.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A toy backlog: ready counts per (tenant, env).
    struct Backlog(HashMap<(String, String), u64>);

    impl Backlog {
        fn new(groups: &[(&str, &str, u64)], s: &mut FairScheduler) -> Backlog {
            let mut m = HashMap::new();
            for (t, e, n) in groups {
                m.insert((t.to_string(), e.to_string()), *n);
                if *n > 0 {
                    s.activate(t, e);
                }
            }
            Backlog(m)
        }

        fn take(&mut self, s: &mut FairScheduler) -> Option<(String, String)> {
            let m = &self.0;
            let pick = s.next(|t, e| m.get(&(t.to_string(), e.to_string())).copied().unwrap_or(0) > 0)?;
            *self.0.get_mut(&pick).unwrap() -= 1;
            Some(pick)
        }
    }

    #[test]
    fn a_small_tenant_is_served_next_to_a_flood() {
        let mut s = FairScheduler::new();
        let mut b = Backlog::new(&[("big", "default", 1_000_000), ("small", "default", 1)], &mut s);
        let first_two: Vec<_> = (0..2).map(|_| b.take(&mut s).unwrap().0).collect();
        assert!(first_two.contains(&"small".to_string()), "{first_two:?}");
        // The flood then continues alone.
        for _ in 0..10 {
            assert_eq!(b.take(&mut s).unwrap().0, "big");
        }
    }

    #[test]
    fn tenants_alternate_then_environments_alternate_inside_a_tenant() {
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
        let mut groups: Vec<(String, String, u64)> =
            (0..50).map(|i| ("spread".to_string(), format!("env{i}"), 100)).collect();
        groups.push(("single".into(), "default".into(), 100));
        let refs: Vec<(&str, &str, u64)> = groups.iter().map(|(t, e, n)| (t.as_str(), e.as_str(), *n)).collect();
        let mut b = Backlog::new(&refs, &mut s);
        let mut single = 0;
        for _ in 0..100 {
            if b.take(&mut s).unwrap().0 == "single" {
                single += 1;
            }
        }
        assert_eq!(single, 50);
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
        assert!(s.next(|_, _| true).is_none());
        // Activation after draining brings the group back.
        s.activate("b", "y");
        assert_eq!(s.next(|_, _| true), Some(("b".into(), "y".into())));
    }

    #[test]
    fn activation_is_idempotent() {
        let mut s = FairScheduler::new();
        for _ in 0..5 {
            s.activate("a", "x");
        }
        assert_eq!(s.active_tenants(), 1);
        assert_eq!(s.next(|_, _| true), Some(("a".into(), "x".into())));
        assert_eq!(s.next(|_, _| false), None);
        assert!(s.is_empty());
    }
}
