//! The key layout inside one queue's column family.
//!
//! Every key starts with a one-byte tag. Tenants and environments are key
//! prefixes (their names can't hold a NUL byte, so NUL ends them), and numbers
//! are big-endian so byte order is numeric order.
//!
//! | tag | key                                   | value              | what            |
//! |-----|---------------------------------------|--------------------|-----------------|
//! | `J` | id                                    | `JobRecord`        | every stored job |
//! | `R` | tenant 0 env 0 !prio id               | ready_at (u64)     | ready index, per group in lease order |
//! | `S` | run_at id                             | `GroupRef`         | scheduled index (delayed, backing off) |
//! | `L` | id                                    | `LeaseRecord`      | current leases |
//! | `X` | tenant 0 env 0 id                     | empty              | dead letters, per group |
//! | `D` | tenant 0 env 0 dedup_key              | id, expires_at     | dedup keys |
//! | `C` | tenant 0 env 0                        | ready count (u64)  | per-group counters |
//! | `T` | -                                     | `QueueCounters`    | per-queue counters |
//! | `B` | worker_version                        | `BreakerWindowRecord` | circuit-breaker window of one version |
//! | `A` | -                                     | `AlertStateRecord` | what the alert rules need across a restart |

use crate::model::{JobId, Millis};

pub const JOB: u8 = b'J';
pub const READY: u8 = b'R';
pub const SCHEDULED: u8 = b'S';
pub const LEASE: u8 = b'L';
pub const DEAD: u8 = b'X';
pub const DEDUP: u8 = b'D';
pub const GROUP_COUNT: u8 = b'C';
pub const TOTALS: u8 = b'T';
pub const BREAKER: u8 = b'B';
pub const ALERTS: u8 = b'A';

/// Maps priority so that ascending keys list higher priorities first.
pub fn inv_priority(priority: i32) -> u32 {
    !((priority as u32) ^ 0x8000_0000)
}

pub fn job(id: JobId) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = JOB;
    k[1..].copy_from_slice(&id.0.to_be_bytes());
    k
}

pub fn lease(id: JobId) -> [u8; 9] {
    let mut k = job(id);
    k[0] = LEASE;
    k
}

/// `tag tenant 0 env 0`: the prefix of one group's keys under `tag`.
pub fn group_prefix(tag: u8, tenant: &str, env: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(3 + tenant.len() + env.len() + 12);
    k.push(tag);
    k.extend_from_slice(tenant.as_bytes());
    k.push(0);
    k.extend_from_slice(env.as_bytes());
    k.push(0);
    k
}

/// `tag tenant 0`: the prefix of one tenant's keys under `tag`.
pub fn tenant_prefix(tag: u8, tenant: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + tenant.len());
    k.push(tag);
    k.extend_from_slice(tenant.as_bytes());
    k.push(0);
    k
}

/// The position of a ready job inside its group: priority first, then age.
pub type ReadyPos = (u32, u64);

pub fn ready(tenant: &str, env: &str, pos: ReadyPos) -> Vec<u8> {
    let mut k = group_prefix(READY, tenant, env);
    k.extend_from_slice(&pos.0.to_be_bytes());
    k.extend_from_slice(&pos.1.to_be_bytes());
    k
}

/// Reads the position back from the last 12 bytes of a ready key.
pub fn ready_pos(key: &[u8]) -> Option<ReadyPos> {
    let n = key.len();
    if n < 13 {
        return None;
    }
    let inv = u32::from_be_bytes(key[n - 12..n - 8].try_into().ok()?);
    let id = u64::from_be_bytes(key[n - 8..].try_into().ok()?);
    Some((inv, id))
}

pub fn scheduled(run_at: Millis, id: JobId) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = SCHEDULED;
    k[1..9].copy_from_slice(&run_at.to_be_bytes());
    k[9..].copy_from_slice(&id.0.to_be_bytes());
    k
}

/// `(run_at, id)` from a scheduled key.
pub fn scheduled_parts(key: &[u8]) -> Option<(Millis, JobId)> {
    if key.len() != 17 || key[0] != SCHEDULED {
        return None;
    }
    let run_at = u64::from_be_bytes(key[1..9].try_into().ok()?);
    let id = u64::from_be_bytes(key[9..17].try_into().ok()?);
    Some((run_at, JobId(id)))
}

pub fn dead(tenant: &str, env: &str, id: JobId) -> Vec<u8> {
    let mut k = group_prefix(DEAD, tenant, env);
    k.extend_from_slice(&id.0.to_be_bytes());
    k
}

/// The trailing job id of an `R`, `X`, `J` or `L` key.
pub fn trailing_id(key: &[u8]) -> Option<JobId> {
    let n = key.len();
    if n < 9 {
        return None;
    }
    Some(JobId(u64::from_be_bytes(key[n - 8..].try_into().ok()?)))
}

/// `(tenant, env)` from any key that starts with `tag tenant 0 env 0`.
pub fn group_of(key: &[u8]) -> Option<(&str, &str)> {
    let rest = key.get(1..)?;
    let t_end = rest.iter().position(|&b| b == 0)?;
    let tenant = std::str::from_utf8(&rest[..t_end]).ok()?;
    let rest = &rest[t_end + 1..];
    let e_end = rest.iter().position(|&b| b == 0)?;
    let env = std::str::from_utf8(&rest[..e_end]).ok()?;
    Some((tenant, env))
}

pub fn dedup(tenant: &str, env: &str, key: &str) -> Vec<u8> {
    let mut k = group_prefix(DEDUP, tenant, env);
    k.extend_from_slice(key.as_bytes());
    k
}

/// A dedup entry: the job holding the key, and when the hold ends (0 = while
/// the job is live).
pub fn dedup_value(id: JobId, expires_at: Millis) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&id.0.to_be_bytes());
    v[8..].copy_from_slice(&expires_at.to_be_bytes());
    v
}

pub fn parse_dedup_value(v: &[u8]) -> Option<(JobId, Millis)> {
    if v.len() != 16 {
        return None;
    }
    Some((JobId(u64::from_be_bytes(v[..8].try_into().ok()?)), u64::from_be_bytes(v[8..].try_into().ok()?)))
}

pub fn group_count(tenant: &str, env: &str) -> Vec<u8> {
    group_prefix(GROUP_COUNT, tenant, env)
}

pub const TOTALS_KEY: [u8; 1] = [TOTALS];
pub const ALERTS_KEY: [u8; 1] = [ALERTS];

/// The stored breaker window of one worker version (the version runs to
/// the end of the key: it is the only variable part).
pub fn breaker_window(version: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + version.len());
    k.push(BREAKER);
    k.extend_from_slice(version.as_bytes());
    k
}

/// The version a [`breaker_window`] key names.
pub fn breaker_version(key: &[u8]) -> Option<&str> {
    key.strip_prefix(&[BREAKER]).and_then(|v| std::str::from_utf8(v).ok())
}

/// The smallest key greater than every key starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xff; prefix.len() + 1]
}

/// The smallest key strictly after `key`.
pub fn successor(key: &[u8]) -> Vec<u8> {
    let mut k = key.to_vec();
    k.push(0);
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    fn priority_from_inv(inv: u32) -> i32 {
        ((!inv) ^ 0x8000_0000) as i32
    }

    #[test]
    fn higher_priority_sorts_first() {
        let mut prios = vec![5, -3, i32::MAX, 0, i32::MIN, 1];
        prios.sort_by_key(|p| inv_priority(*p));
        assert_eq!(prios, vec![i32::MAX, 5, 1, 0, -3, i32::MIN]);
        for p in [i32::MIN, -1, 0, 1, i32::MAX] {
            assert_eq!(priority_from_inv(inv_priority(p)), p);
        }
    }

    #[test]
    fn ready_keys_order_by_priority_then_age_within_a_group() {
        let a = ready("t", "e", (inv_priority(0), 2));
        let b = ready("t", "e", (inv_priority(0), 10));
        let c = ready("t", "e", (inv_priority(7), 99));
        let mut keys = vec![a.clone(), b.clone(), c.clone()];
        keys.sort();
        assert_eq!(keys, vec![c.clone(), a.clone(), b]);
        assert_eq!(ready_pos(&c), Some((inv_priority(7), 99)));
        assert_eq!(group_of(&a), Some(("t", "e")));
    }

    #[test]
    fn groups_never_share_prefixes() {
        // "a"/"bc" and "ab"/"c" must not collide, nor tenant "a" contain "ab".
        let g1 = group_prefix(READY, "a", "bc");
        let g2 = group_prefix(READY, "ab", "c");
        assert!(!g1.starts_with(&g2) && !g2.starts_with(&g1));
        assert!(!group_prefix(READY, "ab", "x").starts_with(&tenant_prefix(READY, "a")));
        assert_ne!(dedup("a", "b", "k"), dedup("a", "c", "k"));
    }

    #[test]
    fn scheduled_keys_round_trip_in_time_order() {
        let k1 = scheduled(100, JobId(9));
        let k2 = scheduled(200, JobId(1));
        assert!(k1 < k2);
        assert_eq!(scheduled_parts(&k2), Some((200, JobId(1))));
        assert_eq!(trailing_id(&dead("t", "e", JobId(7))), Some(JobId(7)));
    }

    #[test]
    fn prefix_end_bounds_the_prefix() {
        let p = group_prefix(READY, "t", "e");
        let end = prefix_end(&p);
        assert!(ready("t", "e", (u32::MAX, u64::MAX)) < end);
        assert!(ready("t", "e", (0, 0)) > p);
        assert!(group_prefix(READY, "t", "f") >= end);
    }
}
