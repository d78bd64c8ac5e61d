//! A Raft log entry as bytes, as the log store keeps it and (later) as
//! node-to-node messages carry it.
//!
//! `term | leader node | index` (LEB128 varints), then one kind byte:
//! 0 blank (a new leader's first entry), 1 a turn's batch (its bytes
//! follow as they are: no second encoding of every job), 2 a membership
//! change (JSON: rare and small). Decoding checks everything; a damaged
//! entry is an error, never a different entry.

use super::raft_types::{Entry, LogId, TurnBatch};
use openraft::{EntryPayload, LeaderId};

const BLANK: u8 = 0;
const BATCH: u8 = 1;
const MEMBERSHIP: u8 = 2;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("damaged Raft log entry: {0}")]
pub struct DecodeError(pub &'static str);

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn varint(rest: &mut &[u8]) -> Result<u64, DecodeError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, r) = rest.split_first().ok_or(DecodeError("truncated number"))?;
        *rest = r;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(DecodeError("number too long"))
}

pub fn encode(entry: &Entry) -> Vec<u8> {
    let extra = match &entry.payload {
        EntryPayload::Normal(b) => b.0.len(),
        _ => 64,
    };
    let mut buf = Vec::with_capacity(24 + extra);
    put_varint(&mut buf, entry.log_id.leader_id.term);
    put_varint(&mut buf, entry.log_id.leader_id.node_id);
    put_varint(&mut buf, entry.log_id.index);
    match &entry.payload {
        EntryPayload::Blank => buf.push(BLANK),
        EntryPayload::Normal(batch) => {
            buf.push(BATCH);
            buf.extend_from_slice(&batch.0);
        }
        EntryPayload::Membership(m) => {
            buf.push(MEMBERSHIP);
            // A membership is node ids and addresses: serializing cannot fail.
            serde_json::to_writer(&mut buf, m).expect("a membership serializes");
        }
    }
    buf
}

/// The log id alone, without decoding the payload.
pub fn decode_log_id(bytes: &[u8]) -> Result<LogId, DecodeError> {
    let mut rest = bytes;
    let term = varint(&mut rest)?;
    let node = varint(&mut rest)?;
    let index = varint(&mut rest)?;
    Ok(LogId::new(LeaderId::new(term, node), index))
}

pub fn decode(bytes: &[u8]) -> Result<Entry, DecodeError> {
    let mut rest = bytes;
    let term = varint(&mut rest)?;
    let node = varint(&mut rest)?;
    let index = varint(&mut rest)?;
    let log_id = LogId::new(LeaderId::new(term, node), index);
    let (&kind, body) = rest.split_first().ok_or(DecodeError("no payload kind"))?;
    let payload = match kind {
        BLANK if body.is_empty() => EntryPayload::Blank,
        BLANK => return Err(DecodeError("bytes after a blank entry")),
        BATCH => EntryPayload::Normal(TurnBatch(body.to_vec())),
        MEMBERSHIP => EntryPayload::Membership(serde_json::from_slice(body).map_err(|_| DecodeError("membership"))?),
        _ => return Err(DecodeError("unknown payload kind")),
    };
    Ok(Entry { log_id, payload })
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::Membership;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    fn log_id(term: u64, node: u64, index: u64) -> LogId {
        LogId::new(LeaderId::new(term, node), index)
    }

    #[test]
    fn every_kind_round_trips() {
        let members: BTreeSet<u64> = [1, 2, 3].into();
        let nodes: BTreeMap<u64, crate::cluster::raft_types::Member> = [
            (1, crate::cluster::raft_types::Member::new("a", "a:1", "a:2")),
            (2, crate::cluster::raft_types::Member::new("b", "b:1", "b:2")),
            (3, crate::cluster::raft_types::Member::new("c", "c:1", "c:2")),
            (9, crate::cluster::raft_types::Member::new("learner", "learner:1", "learner:2")),
        ]
        .into();
        let entries = [
            Entry { log_id: log_id(1, 7, 1), payload: EntryPayload::Blank },
            Entry { log_id: log_id(2, 7, 2), payload: EntryPayload::Normal(TurnBatch(b"FWB1 some batch".to_vec())) },
            Entry {
                log_id: log_id(u64::MAX, u64::MAX, u64::MAX),
                payload: EntryPayload::Membership(Membership::new(vec![members], nodes)),
            },
        ];
        for e in entries {
            let bytes = encode(&e);
            assert_eq!(decode(&bytes).unwrap(), e);
            assert_eq!(decode_log_id(&bytes).unwrap(), e.log_id);
        }
    }

    #[test]
    fn damage_is_refused() {
        let e = Entry { log_id: log_id(3, 1, 9), payload: EntryPayload::Blank };
        let mut bytes = encode(&e);
        bytes.push(0);
        assert_eq!(decode(&bytes), Err(DecodeError("bytes after a blank entry")));
        assert_eq!(decode(&[0x80]), Err(DecodeError("truncated number")));
        assert_eq!(decode(&[1, 1, 1, 7]), Err(DecodeError("unknown payload kind")));
        assert_eq!(decode(&[1, 1, 1, 2, b'{']), Err(DecodeError("membership")));
    }

    proptest! {
        #[test]
        fn batches_round_trip(term in any::<u64>(), node in any::<u64>(), index in any::<u64>(), body in proptest::collection::vec(any::<u8>(), 0..300)) {
            let e = Entry { log_id: log_id(term, node, index), payload: EntryPayload::Normal(TurnBatch(body)) };
            prop_assert_eq!(decode(&encode(&e)).unwrap(), e);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&bytes);
        }
    }
}
