//! How deliveries are split between the partitions of a queue so that
//! weighted fairness between tenants holds across partitions, not only
//! inside each.
//!
//! Pure. Each partition has a *demand* (the sum of the weights of its
//! tenants that have ready work and are under their caps; 0 = nothing to
//! deliver) and a *virtual time* that advances by `STRIDE_ONE / demand` per
//! delivery. A free slot goes to a partition whose virtual time is within
//! `slack` deliveries of the lowest among partitions with demand; a
//! partition that is further ahead leaves the slot to the one that is
//! behind ([`behind`]). So partition p makes demand_p / Σ demand of the
//! deliveries, and inside it the partition's own scheduler gives tenant i
//! w_i / demand_p of those: tenant i gets w_i / Σ w overall, the share a
//! single scheduler over all tenants would give, to within `slack`
//! deliveries per partition. A partition whose demand comes back from 0
//! starts at the lowest active virtual time ([`activate`]), so idling earns
//! it no burst. Virtual times wrap around (compared as differences), so they
//! can live in one atomic word each.

/// Virtual time of one delivery at demand 1.
pub const STRIDE_ONE: u64 = 1 << 32;

/// What the split knows of one partition (for one queue).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Share {
    /// Sum of the weights of its tenants with deliverable work; 0 = none.
    pub demand: u64,
    /// Advances by `STRIDE_ONE / demand` per delivery (wrapping).
    pub vtime: u64,
}

fn stride(demand: u64) -> u64 {
    (STRIDE_ONE / demand.max(1)).max(1)
}

/// `a - b` for wrapping virtual times that are near each other.
fn diff(a: u64, b: u64) -> i64 {
    a.wrapping_sub(b) as i64
}

/// The lowest virtual time among partitions with demand.
pub fn min_active(shares: &[Share]) -> Option<u64> {
    shares.iter().filter(|s| s.demand > 0).map(|s| s.vtime).reduce(|a, b| if diff(a, b) <= 0 { a } else { b })
}

/// The partition with demand that is furthest behind (lowest virtual time;
/// the lowest index on a tie): where a slot goes that others leave.
pub fn behind(shares: &[Share]) -> Option<usize> {
    let min = min_active(shares)?;
    shares.iter().position(|s| s.demand > 0 && s.vtime == min)
}

/// Whether partition `me` may use a free slot now.
pub fn may_take(me: usize, shares: &[Share], slack: u32) -> bool {
    let Some(s) = shares.get(me).filter(|s| s.demand > 0) else { return false };
    let Some(min) = min_active(shares) else { return false };
    let lead = i64::try_from(stride(s.demand).saturating_mul(u64::from(slack))).unwrap_or(i64::MAX);
    diff(s.vtime, min) <= lead
}

/// Splits `n` deliveries of one unary call between partitions in
/// proportion to their demand (largest remainder; evenly when none has
/// any): partition p's part is served by its own scheduler, so tenant i
/// gets w_i / Σ w of the call, as one scheduler over all tenants would give.
pub fn quotas(n: u32, demand: &[u64]) -> Vec<u32> {
    let total: u64 = demand.iter().sum();
    if demand.is_empty() {
        return Vec::new();
    }
    let weights: Vec<u64> = if total == 0 { vec![1; demand.len()] } else { demand.to_vec() };
    let total: u128 = weights.iter().map(|w| u128::from(*w)).sum();
    let exact: Vec<u128> = weights.iter().map(|w| u128::from(n) * u128::from(*w)).collect();
    let mut out: Vec<u32> = exact.iter().map(|e| (e / total) as u32).collect();
    let mut left = n - out.iter().sum::<u32>();
    let mut order: Vec<usize> = (0..weights.len()).filter(|i| weights[*i] > 0).collect();
    order.sort_by(|a, b| (exact[*b] % total).cmp(&(exact[*a] % total)).then(a.cmp(b)));
    for i in order.into_iter().cycle() {
        if left == 0 {
            break;
        }
        out[i] += 1;
        left -= 1;
    }
    out
}

/// Splits `n` deliveries of one unary call between partitions as the split
/// would hand them out one by one from where the partitions' virtual times
/// stand (the lowest next finish goes; ties to the lowest index), so
/// successive calls add up to the shares a stream would get. Evenly when no
/// partition has demand.
pub fn quotas_from(n: u32, shares: &[Share]) -> Vec<u32> {
    if shares.iter().all(|s| s.demand == 0) {
        return quotas(n, &vec![0; shares.len()]);
    }
    let mut sim: Vec<Share> = shares.to_vec();
    let base = min_active(&sim).unwrap_or(0);
    for s in sim.iter_mut().filter(|s| s.demand > 0) {
        // Behind the lowest active time: starts there (as `activate`).
        if diff(s.vtime, base) < 0 {
            s.vtime = base;
        }
    }
    let mut out = vec![0u32; shares.len()];
    for _ in 0..n {
        let next = sim
            .iter()
            .enumerate()
            .filter(|(_, s)| s.demand > 0)
            .min_by(|(i, a), (j, b)| {
                let fa = a.vtime.wrapping_add(stride(a.demand));
                let fb = b.vtime.wrapping_add(stride(b.demand));
                diff(fa, fb).cmp(&0).then(i.cmp(j))
            })
            .map(|(i, _)| i);
        let Some(i) = next else { break };
        out[i] += 1;
        charge(&mut sim[i]);
    }
    out
}

/// Counts one delivery by `s`.
pub fn charge(s: &mut Share) {
    s.vtime = s.vtime.wrapping_add(stride(s.demand));
}

/// A partition's demand changes; from 0 to more, it starts at the lowest
/// virtual time of the others with demand (no credit for having been idle).
pub fn set_demand(me: usize, shares: &mut [Share], demand: u64) {
    let was_idle = shares[me].demand == 0;
    shares[me].demand = demand;
    if demand > 0 && was_idle {
        activate(me, shares);
    }
}

/// Moves partition `me` up to the lowest active virtual time of the others
/// when it is behind it.
pub fn activate(me: usize, shares: &mut [Share]) {
    let others: Vec<Share> = shares.iter().enumerate().filter(|(i, _)| *i != me).map(|(_, s)| *s).collect();
    if let Some(min) = min_active(&others) {
        if diff(shares[me].vtime, min) < 0 {
            shares[me].vtime = min;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::FairScheduler;
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    #[test]
    fn a_calls_quotas_follow_demand_and_add_up() {
        assert_eq!(quotas(7, &[1, 2, 4]), [1, 2, 4]);
        assert_eq!(quotas(2, &[1, 0, 1]), [1, 0, 1]);
        assert_eq!(quotas(5, &[0, 0]), [3, 2], "evenly when nobody posted demand");
        assert_eq!(quotas(1, &[1, 1, 1]), [1, 0, 0]);
        assert!(quotas(3, &[]).is_empty());
    }

    #[test]
    fn successive_calls_add_up_to_the_weighted_shares() {
        // Weights 1 and 3 in two partitions, leased 50 then 30: 20 and 60,
        // as one scheduler would give over the 80.
        let mut s = vec![Share { demand: 1, vtime: 0 }, Share { demand: 3, vtime: 0 }];
        let mut total = [0u32; 2];
        for n in [50, 30] {
            let q = quotas_from(n, &s);
            for (i, k) in q.iter().enumerate() {
                total[i] += k;
                for _ in 0..*k {
                    charge(&mut s[i]);
                }
            }
        }
        assert_eq!(total, [20, 60]);
        assert_eq!(quotas_from(4, &[Share::default(), Share::default()]), [2, 2]);
    }

    proptest! {
        #[test]
        fn quotas_always_add_up_and_stay_within_one_of_the_exact_share(
            n in 0u32..5000,
            demand in proptest::collection::vec(0u64..50, 1..8),
        ) {
            let q = quotas(n, &demand);
            prop_assert_eq!(q.iter().sum::<u32>(), n);
            let total: u64 = demand.iter().sum();
            if total > 0 {
                for (qi, d) in q.iter().zip(&demand) {
                    let exact = f64::from(n) * *d as f64 / total as f64;
                    prop_assert!((f64::from(*qi) - exact).abs() < 1.0 + 1e-9);
                }
            }
        }
    }

    #[test]
    fn only_partitions_with_demand_take_and_the_one_behind_goes_first() {
        let mut s = vec![Share::default(); 3];
        assert!(!may_take(0, &s, 4) && behind(&s).is_none());
        set_demand(1, &mut s, 2);
        assert!(may_take(1, &s, 0) && !may_take(0, &s, 4));
        set_demand(2, &mut s, 1);
        assert_eq!(behind(&s), Some(1), "a tie goes to the lower index");
        charge(&mut s[1]);
        assert_eq!(behind(&s), Some(2));
        assert!(may_take(1, &s, 1), "half a weight-1 delivery ahead: within a slack of one");
        charge(&mut s[1]);
        charge(&mut s[1]);
        assert!(!may_take(1, &s, 1), "three deliveries at demand 2 put it 1.5 ahead");
    }

    #[test]
    fn a_partition_back_from_idle_starts_level_with_the_others() {
        let mut s = vec![Share { demand: 1, vtime: 0 }, Share::default()];
        for _ in 0..1000 {
            charge(&mut s[0]);
        }
        set_demand(1, &mut s, 1);
        assert_eq!(s[1].vtime, s[0].vtime, "no credit for 1000 deliveries it was idle for");
        assert!(may_take(1, &s, 0) && may_take(0, &s, 0));
    }

    #[test]
    fn virtual_times_that_wrap_still_compare() {
        let s = [Share { demand: 1, vtime: u64::MAX - 10 }, Share { demand: 1, vtime: 5 }];
        assert_eq!(min_active(&s), Some(u64::MAX - 10));
        assert_eq!(behind(&s), Some(0));
        assert!(may_take(1, &s, 1));
    }

    /// A queue of always-backlogged tenants over `p` partitions, with `slots`
    /// deliveries in flight: each step one in-flight job (chosen at random,
    /// so partitions free slots in proportion to what they hold) finishes,
    /// and its slot goes to that partition if the split allows it, else to
    /// the one behind. Inside a partition its own fair scheduler picks the
    /// tenant. Returns deliveries per tenant and how many slots changed
    /// partition.
    fn simulate(
        weights: &[u32],
        placement: &[usize],
        p: usize,
        slots: usize,
        steps: usize,
        slack: u32,
        seed: u64,
    ) -> (Vec<u64>, u64) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut scheds: Vec<FairScheduler> = (0..p).map(|_| FairScheduler::new()).collect();
        let mut shares = vec![Share::default(); p];
        for (t, (&w, &part)) in weights.iter().zip(placement).enumerate() {
            let name = format!("t{t}");
            scheds[part].set_tenant_weight(&name, w);
            scheds[part].activate(&name, "e");
            let d = shares[part].demand + u64::from(w);
            set_demand(part, &mut shares, d);
        }
        let mut delivered = vec![0u64; weights.len()];
        let mut held: Vec<usize> = Vec::new();
        let mut moves = 0;
        let mut deliver = |part: usize, shares: &mut Vec<Share>, held: &mut Vec<usize>| {
            let (tenant, _) = scheds[part].next(|_, _| true).expect("backlogged");
            delivered[tenant[1..].parse::<usize>().unwrap()] += 1;
            charge(&mut shares[part]);
            held.push(part);
        };
        // Start from the naive split: the window dealt out evenly over the
        // partitions with work, whatever their demand.
        let busy: Vec<usize> = (0..p).filter(|i| shares[*i].demand > 0).collect();
        for i in 0..slots {
            deliver(busy[i % busy.len()], &mut shares, &mut held);
        }
        for _ in 0..steps {
            let freed = held.swap_remove(rng.random_range(0..held.len()));
            let to = if may_take(freed, &shares, slack) { freed } else { behind(&shares).unwrap() };
            moves += u64::from(to != freed);
            deliver(to, &mut shares, &mut held);
        }
        (delivered, moves)
    }

    fn jain(x: &[f64]) -> f64 {
        let (s, s2): (f64, f64) = x.iter().fold((0.0, 0.0), |(a, b), v| (a + v, b + v * v));
        s * s / (x.len() as f64 * s2)
    }

    #[test]
    fn weights_1_2_4_over_4_partitions_get_their_shares_within_2_percent() {
        // Each tenant alone on its partition, and one partition empty.
        let (got, _) = simulate(&[1, 2, 4], &[0, 1, 3], 4, 256, 70_000, 4, 7);
        let total: u64 = got.iter().sum();
        for (i, want) in [1.0 / 7.0, 2.0 / 7.0, 4.0 / 7.0].iter().enumerate() {
            let share = got[i] as f64 / total as f64;
            assert!((share - want).abs() < 0.02 * want, "tenant {i}: {share:.4} vs {want:.4} ({got:?})");
        }
    }

    #[test]
    fn without_the_split_the_naive_shares_stay() {
        // The control: a partition that always keeps the slot it freed
        // keeps the even split it started with, so the tests above can tell.
        let (got, moves) = simulate(&[1, 2, 4], &[0, 1, 3], 4, 256, 70_000, u32::MAX, 7);
        let total: u64 = got.iter().sum();
        assert_eq!(moves, 0);
        assert!((got[0] as f64 / total as f64 - 1.0 / 3.0).abs() < 0.02, "{got:?}");
    }

    #[test]
    fn ten_equal_tenants_unevenly_placed_are_served_equally() {
        // 10 tenants over 4 partitions, 5/3/1/1: per-partition round robin
        // would give the lone tenants 2.5x the others.
        let placement = [0, 0, 0, 0, 0, 1, 1, 1, 2, 3];
        let (got, moves) = simulate(&[1; 10], &placement, 4, 256, 50_000, 4, 11);
        let x: Vec<f64> = got.iter().map(|&v| v as f64).collect();
        assert!(jain(&x) >= 0.99, "Jain's index {:.4} ({got:?})", jain(&x));
        assert!(moves < 50_000 / 2, "most slots stay where they were freed ({moves} moves)");
    }

    /// A flooding tenant on partition 0 holds the whole window; a trickling
    /// tenant on partition 1 gets one job now and then. Its job takes at most
    /// the `slack + 2`-th slot that frees (the flood's partition, level with
    /// it, may use `slack + 1` first), however long the flood.
    #[test]
    fn a_trickling_tenant_is_served_next_to_a_flood_on_another_partition() {
        let slack = 4;
        let mut rng = StdRng::seed_from_u64(3);
        let mut shares = vec![Share::default(); 2];
        set_demand(0, &mut shares, 1);
        let mut held: Vec<usize> = vec![0; 256];
        for _ in 0..256 {
            charge(&mut shares[0]);
        }
        let (mut waiting, mut waited, mut worst, mut served) = (false, 0, 0, 0);
        for step in 0..100_000 {
            if !waiting && step % 97 == 0 {
                waiting = true;
                waited = 0;
                set_demand(1, &mut shares, 1);
            }
            let freed = held.swap_remove(rng.random_range(0..held.len()));
            let to = if may_take(freed, &shares, slack) { freed } else { behind(&shares).unwrap() };
            charge(&mut shares[to]);
            held.push(to);
            if waiting {
                waited += 1;
            }
            if to == 1 {
                waiting = false;
                worst = worst.max(waited);
                served += 1;
                set_demand(1, &mut shares, 0);
            }
        }
        assert!(served > 1000, "{served}");
        assert!(worst <= slack + 2, "a trickle job waited for {worst} freed slots");
    }

    proptest! {
        /// Whatever the weights, placement, slack and window, every tenant's
        /// share is within 2 % (relative, plus the slack's worth of
        /// deliveries) of w / Σ w.
        #[test]
        fn shares_follow_weights_across_partitions(
            tenants in proptest::collection::vec((1u32..6, 0usize..4), 1..8),
            slots in 8usize..300,
            slack in 0u32..8,
            seed in any::<u64>(),
        ) {
            let weights: Vec<u32> = tenants.iter().map(|t| t.0).collect();
            let placement: Vec<usize> = tenants.iter().map(|t| t.1).collect();
            let steps = 40_000;
            let (got, _) = simulate(&weights, &placement, 4, slots, steps, slack, seed);
            let total: u64 = got.iter().sum();
            let wsum: u32 = weights.iter().sum();
            for (i, w) in weights.iter().enumerate() {
                let want = f64::from(*w) / f64::from(wsum);
                let share = got[i] as f64 / total as f64;
                let bound = 0.02 * want + f64::from(slack + 1) * 4.0 / total as f64;
                prop_assert!((share - want).abs() <= bound, "tenant {} (w {}): {:.4} vs {:.4}; {:?}", i, w, share, want, got);
            }
        }
    }
}
