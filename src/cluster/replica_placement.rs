//! Where a new cluster puts each partition's replicas, and which of them
//! should lead.
//!
//! Pure. The partitions' replicas are dealt round-robin over the nodes:
//! partition `p` takes the `R` slots `p*R .. p*R+R`, slot `s` on node
//! `s mod N`. So a partition's replicas are `R` distinct nodes (consecutive
//! in ring order) and every node holds the same number of replicas, give
//! or take one. Its preferred leader is the member that leads the fewest
//! partitions so far (ties: the first), which spreads leaders as evenly.
//! This is only the first placement: once a cluster runs, each partition's
//! membership is in its Raft log and moves with the admin calls.

/// The nodes (indexes into the cluster file's `nodes`) holding each
/// partition, preferred leader first.
pub fn place(partitions: u32, nodes: usize, replicas: usize) -> Vec<Vec<usize>> {
    assert!(nodes >= 1 && (1..=nodes).contains(&replicas), "{replicas} replicas on {nodes} nodes");
    let mut leads = vec![0usize; nodes];
    (0..partitions as usize)
        .map(|p| {
            let mut members: Vec<usize> = (0..replicas).map(|k| (p * replicas + k) % nodes).collect();
            let first = (0..replicas).min_by_key(|&i| (leads[members[i]], i)).unwrap_or(0);
            members.swap(0, first);
            leads[members[0]] += 1;
            members
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn spread(counts: &[usize]) -> usize {
        counts.iter().max().unwrap() - counts.iter().min().unwrap()
    }

    #[test]
    fn three_nodes_three_replicas_every_node_holds_everything() {
        let p = place(6, 3, 3);
        assert_eq!(p[0], vec![0, 1, 2]);
        assert_eq!(p[1][0], 1);
        assert_eq!(p[2][0], 2);
        assert!(p.iter().all(|m| m.len() == 3));
    }

    proptest! {
        #[test]
        fn replicas_are_distinct_and_spread_evenly(partitions in 1u32..200, nodes in 1usize..12, r in prop::sample::select(vec![1usize, 3, 5])) {
            prop_assume!(r <= nodes);
            let p = place(partitions, nodes, r);
            prop_assert_eq!(p.len(), partitions as usize);
            let (mut leaders, mut load) = (vec![0usize; nodes], vec![0usize; nodes]);
            for (i, m) in p.iter().enumerate() {
                prop_assert_eq!(m.len(), r);
                let mut sorted = m.clone();
                sorted.sort_unstable();
                sorted.dedup();
                prop_assert_eq!(sorted.len(), r, "partition {} has a node twice: {:?}", i, m);
                prop_assert!(m.iter().all(|&n| n < nodes));
                leaders[m[0]] += 1;
                for &n in m {
                    load[n] += 1;
                }
            }
            prop_assert!(spread(&leaders) <= 1, "leaders {:?}", leaders);
            prop_assert!(spread(&load) <= 1, "replicas per node {:?}", load);
        }

        #[test]
        fn placement_is_a_function_of_its_inputs(partitions in 1u32..64, nodes in 1usize..8) {
            prop_assert_eq!(place(partitions, nodes, 1), place(partitions, nodes, 1));
            let p = place(partitions, nodes, 1);
            prop_assert!(p.iter().enumerate().all(|(i, m)| m == &vec![i % nodes]));
        }
    }
}
