//! Which partition holds a job: a stable hash of (queue, tenant) mapped onto
//! the partitions' hash ranges, and the partition carried in every job id.
//!
//! Pure. The hash is FNV-1a 64 written out here, not the standard library's
//! hasher (whose output may change between Rust releases): a tenant must
//! stay on the partition that holds its jobs for as long as a data dir
//! lives. The test vectors below pin it.

use crate::model::JobId;

/// Bits of a job id that name its partition (the top ones).
pub const PARTITION_BITS: u32 = 10;
/// Most partitions a broker can hold.
pub const MAX_PARTITIONS: u32 = 1 << PARTITION_BITS;
/// Bits of a job id left for the partition's own sequence.
pub const SEQUENCE_BITS: u32 = 64 - PARTITION_BITS;
/// Largest sequence number a partition can hand out.
pub const MAX_SEQUENCE: u64 = (1 << SEQUENCE_BITS) - 1;

/// A partition's number, `0 .. MAX_PARTITIONS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionId(pub u16);

impl std::fmt::Display for PartitionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "p{:04}", self.0)
    }
}

/// The job id of the `seq`-th job of `partition`. Partition 0's ids are the
/// plain sequence, which is what every id of a single-partition data dir
/// (format 1) already is.
pub fn job_id(partition: PartitionId, seq: u64) -> JobId {
    debug_assert!(seq <= MAX_SEQUENCE && u32::from(partition.0) < MAX_PARTITIONS);
    JobId((u64::from(partition.0) << SEQUENCE_BITS) | (seq & MAX_SEQUENCE))
}

/// The partition a job id names.
pub fn partition_of_job(id: JobId) -> PartitionId {
    PartitionId((id.0 >> SEQUENCE_BITS) as u16)
}

/// The sequence part of a job id.
pub fn sequence_of_job(id: JobId) -> u64 {
    id.0 & MAX_SEQUENCE
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// The placement hash of a tenant of a queue (names can't hold NUL, so
/// `queue 0 tenant` is unambiguous).
pub fn tenant_hash(queue: &str, tenant: &str) -> u64 {
    let h = fnv1a(FNV_OFFSET, queue.as_bytes());
    let h = fnv1a(h, &[0]);
    // FNV's low bits mix poorly for short inputs; the ranges use the high
    // bits, so finish with a multiply-xorshift that spreads every input bit.
    let h = fnv1a(h, tenant.as_bytes());
    let h = (h ^ (h >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

/// How the hash space is divided: partition `i` holds the hashes from
/// `starts[i]` up to the next start. Stored with the data dir, so a later
/// version can split a range without moving any other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// (first hash of the range, the partition holding it), ascending,
    /// the first starting at 0.
    ranges: Vec<(u64, PartitionId)>,
}

impl Layout {
    /// `n` partitions with equal ranges (the layout of a new data dir).
    pub fn even(n: u32) -> Layout {
        let n = n.clamp(1, MAX_PARTITIONS);
        let width = u64::MAX / u64::from(n);
        let ranges = (0..n).map(|i| (u64::from(i) * width, PartitionId(i as u16))).collect();
        Layout { ranges }
    }

    /// A layout from its stored ranges: each `(start, partition)`, the first
    /// at 0, starts strictly ascending, every partition number distinct and
    /// below [`MAX_PARTITIONS`].
    pub fn from_ranges(ranges: Vec<(u64, PartitionId)>) -> Result<Layout, String> {
        if ranges.first().map(|r| r.0) != Some(0) {
            return Err("the first range must start at hash 0".into());
        }
        if ranges.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err("range starts must ascend strictly".into());
        }
        let mut ids: Vec<u16> = ranges.iter().map(|r| r.1 .0).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != ranges.len() || ids.iter().any(|i| u32::from(*i) >= MAX_PARTITIONS) {
            return Err(format!("partition numbers must be distinct and below {MAX_PARTITIONS}"));
        }
        Ok(Layout { ranges })
    }

    pub fn ranges(&self) -> &[(u64, PartitionId)] {
        &self.ranges
    }

    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The partition holding `hash`.
    pub fn partition_of_hash(&self, hash: u64) -> PartitionId {
        let i = self.ranges.partition_point(|(start, _)| *start <= hash);
        self.ranges[i.saturating_sub(1)].1
    }

    /// The partition holding a tenant's jobs in a queue.
    pub fn place(&self, queue: &str, tenant: &str) -> PartitionId {
        self.partition_of_hash(tenant_hash(queue, tenant))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_hash_is_pinned() {
        // If these change, every existing data dir would put tenants on the
        // wrong partition: the hash is part of the on-disk format.
        assert_eq!(tenant_hash("emails", "acme"), 0x6251_a8bd_28d8_66a5);
        assert_eq!(tenant_hash("emails", "globex"), 0xf195_2e23_f418_eaaa);
        assert_eq!(tenant_hash("", ""), 0x9091_d607_2657_4ae6);
        assert_ne!(tenant_hash("ab", "c"), tenant_hash("a", "bc"), "the separator keeps names apart");
    }

    #[test]
    fn job_ids_carry_their_partition_and_partition_zero_keeps_plain_ids() {
        assert_eq!(job_id(PartitionId(0), 3), JobId(3));
        let id = job_id(PartitionId(5), 42);
        assert_eq!(id.to_string(), "014000000000002a");
        assert_eq!((partition_of_job(id), sequence_of_job(id)), (PartitionId(5), 42));
        let last = job_id(PartitionId(1023), MAX_SEQUENCE);
        assert_eq!((partition_of_job(last), sequence_of_job(last)), (PartitionId(1023), MAX_SEQUENCE));
        assert_eq!(last, JobId(u64::MAX));
    }

    #[test]
    fn even_layouts_start_at_zero_and_cover_the_space() {
        for n in [1, 2, 3, 4, 7, 16, 1024] {
            let l = Layout::even(n);
            assert_eq!(l.len(), n as usize);
            assert_eq!(l.partition_of_hash(0), PartitionId(0));
            assert_eq!(l.partition_of_hash(u64::MAX), PartitionId(n as u16 - 1));
            assert!(Layout::from_ranges(l.ranges().to_vec()).is_ok());
        }
        assert_eq!(Layout::even(0).len(), 1, "at least one partition");
    }

    #[test]
    fn stored_ranges_are_checked() {
        let p = PartitionId;
        assert!(Layout::from_ranges(vec![(1, p(0))]).is_err());
        assert!(Layout::from_ranges(vec![(0, p(0)), (0, p(1))]).is_err());
        assert!(Layout::from_ranges(vec![(0, p(0)), (5, p(0))]).is_err());
        assert!(Layout::from_ranges(vec![(0, p(0)), (5, p(1024))]).is_err());
        // A split range: partition 0's second half given to partition 4.
        let l = Layout::from_ranges(vec![(0, p(0)), (1 << 62, p(4)), (1 << 63, p(1))]).unwrap();
        assert_eq!(l.partition_of_hash((1 << 62) + 1), p(4));
        assert_eq!(l.partition_of_hash((1 << 62) - 1), p(0));
    }

    proptest! {
        /// Every hash lands in the range that holds it.
        #[test]
        fn a_hash_lands_in_its_range(n in 1u32..64, h in any::<u64>()) {
            let l = Layout::even(n);
            let p = l.partition_of_hash(h);
            let i = l.ranges().iter().position(|r| r.1 == p).unwrap();
            prop_assert!(l.ranges()[i].0 <= h);
            if let Some(next) = l.ranges().get(i + 1) {
                prop_assert!(h < next.0);
            }
        }

        /// Many tenants spread evenly: no partition gets more than 1.5x or
        /// less than 0.5x its share of 4000 random tenant names.
        #[test]
        fn tenants_spread_evenly(n in 2u32..9, seed in any::<u64>()) {
            let l = Layout::even(n);
            let mut counts = vec![0u32; n as usize];
            for i in 0..4000u64 {
                let tenant = format!("tenant-{:x}", seed.wrapping_add(i).wrapping_mul(0x9e37_79b9_7f4a_7c15));
                counts[l.place("q", &tenant).0 as usize] += 1;
            }
            let share = 4000.0 / f64::from(n);
            for c in counts {
                prop_assert!(f64::from(c) > share * 0.5 && f64::from(c) < share * 1.5, "{c} vs {share}");
            }
        }
    }
}
