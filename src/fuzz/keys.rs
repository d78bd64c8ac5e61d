//! Target `keys`: the key parsers of `storage::keys` on arbitrary bytes, and
//! encode/parse round trips and orderings on keys built from the input.

use super::Cursor;
use crate::model::JobId;
use crate::storage::keys;

pub fn fuzz_one(data: &[u8]) {
    parse_arbitrary(data);
    round_trips(data);
}

/// Parsers never panic, and what they accept re-encodes to the same key.
fn parse_arbitrary(key: &[u8]) {
    if let Some(pos) = keys::ready_pos(key) {
        assert!(key.ends_with(&[pos.0.to_be_bytes().as_slice(), pos.1.to_be_bytes().as_slice()].concat()));
    }
    if let Some((run_at, id)) = keys::scheduled_parts(key) {
        assert_eq!(keys::scheduled(run_at, id).as_slice(), key);
    }
    if let Some(id) = keys::trailing_id(key) {
        assert!(key.ends_with(&id.0.to_be_bytes()));
    }
    if let Some((tenant, env)) = keys::group_of(key) {
        assert!(!tenant.contains('\0') && !env.contains('\0'));
        assert!(key.starts_with(&keys::group_prefix(key[0], tenant, env)));
    }
    if let Some(version) = keys::breaker_version(key) {
        assert_eq!(keys::breaker_window(version), key);
    }
    if let Some((id, expires)) = keys::parse_dedup_value(key) {
        assert_eq!(keys::dedup_value(id, expires).as_slice(), key);
    }
    let succ = keys::successor(key);
    assert!(succ.as_slice() > key && succ.starts_with(key) && succ.len() == key.len() + 1);
    // An all-0xff prefix has no finite bound; tags and names never are one.
    if key.iter().any(|&b| b < 0xff) {
        let end = keys::prefix_end(key);
        assert!(end.as_slice() > key);
        let mut longest = key.to_vec();
        longest.extend_from_slice(&[0xff; 16]);
        assert!(longest < end, "prefix_end must bound every key under the prefix");
    }
}

/// Keys built from valid names and any numbers parse back to them, sort
/// in lease order, and never collide across groups.
fn round_trips(data: &[u8]) {
    let mut c = Cursor::new(data);
    let (t1, e1, t2, e2) = (c.name(), c.name(), c.name(), c.name());
    let (p1, p2) = (c.u32() as i32, c.u32() as i32);
    let (id1, id2) = (JobId(c.u64()), JobId(c.u64()));
    let run_at = c.u64();

    let r1 = keys::ready(&t1, &e1, (keys::inv_priority(p1), id1.0));
    assert_eq!(keys::group_of(&r1), Some((t1.as_str(), e1.as_str())));
    assert_eq!(keys::ready_pos(&r1), Some((keys::inv_priority(p1), id1.0)));
    // Same group: higher priority first, then lower id (older) first.
    let r2 = keys::ready(&t1, &e1, (keys::inv_priority(p2), id2.0));
    let expected = (std::cmp::Reverse(p1), id1.0).cmp(&(std::cmp::Reverse(p2), id2.0));
    assert_eq!(r1.cmp(&r2), expected, "ready keys must sort by priority, then age");

    let s = keys::scheduled(run_at, id1);
    assert_eq!(keys::scheduled_parts(&s), Some((run_at, id1)));
    assert!(s < keys::scheduled(run_at, id2) || id1 >= id2);

    let d = keys::dead(&t1, &e1, id1);
    assert_eq!(keys::trailing_id(&d), Some(id1));
    assert_eq!(keys::group_of(&d), Some((t1.as_str(), e1.as_str())));
    assert_eq!(keys::trailing_id(&keys::job(id1)), Some(id1));
    assert_eq!(keys::trailing_id(&keys::lease(id1)), Some(id1));
    assert_eq!(keys::parse_dedup_value(&keys::dedup_value(id1, run_at)), Some((id1, run_at)));

    // Distinct groups are never prefixes of one another, and a tenant's
    // prefix covers exactly its own groups.
    let g1 = keys::group_prefix(keys::READY, &t1, &e1);
    let g2 = keys::group_prefix(keys::READY, &t2, &e2);
    if (t1.as_str(), e1.as_str()) != (t2.as_str(), e2.as_str()) {
        assert!(!g1.starts_with(&g2) && !g2.starts_with(&g1), "groups {t1}/{e1} and {t2}/{e2} collide");
    }
    assert_eq!(g2.starts_with(&keys::tenant_prefix(keys::READY, &t1)), t1 == t2);
    let end = keys::prefix_end(&g1);
    assert!(r1 > g1 && r1 < end);
}
