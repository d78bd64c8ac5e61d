//! The typed batch: every change the broker makes to its storage, in one
//! value that commits atomically, reads back what it holds before it commits,
//! and encodes to bytes that another copy of the store applies to reach the
//! same state (what a replica will receive in the cluster issue).
//!
//! A batch names its tables (the `meta` table, or a queue's) and holds, in
//! order, the puts and deletes staged into them, plus the queues it creates
//! (a fresh, empty column family) and drops. [`super::Store::commit`]
//! applies it in three steps: the creations, then every put and delete in
//! one atomic RocksDB write, then the drops. A crash between the steps
//! leaves only a column family without a queue definition (created, or not
//! yet dropped), which the next start removes: a queue exists exactly when
//! its definition, written in the atomic step, does.
//!
//! Wire format (all integers LEB128 varints):
//! `"FWB1" | tables: n, then n names (len, bytes) | creates: n, n table ids |
//! drops: n, n table ids | ops: n, then n × (tag, table id, key len, key,
//! [value len, value])`; table id 0 is `meta`, id i+1 the i-th name; tag 1
//! is a put, 2 a delete.

use super::keys;
use crate::error::{BrokerError, Result};
use crate::model::{FastMap, JobId};

const MAGIC: &[u8; 4] = b"FWB1";
const PUT: u8 = 1;
const DELETE: u8 = 2;

/// Where a write goes: the store's own table, or a queue's column family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table<'a> {
    Meta,
    Queue(&'a str),
}

/// One staged write, as [`Batch::ops`] yields them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op<'a> {
    Put { table: Table<'a>, key: &'a [u8], value: &'a [u8] },
    Delete { table: Table<'a>, key: &'a [u8] },
}

/// Keys whose staged value later reads in the same turn need: jobs, dedup
/// holds and the scheduled index. Every other write is only written.
fn tracked(key: &[u8]) -> bool {
    matches!(key.first(), Some(&keys::JOB) | Some(&keys::DEDUP) | Some(&keys::SCHEDULED))
}

/// The job a `J` key names.
pub fn job_key_id(key: &[u8]) -> Option<JobId> {
    match key {
        [keys::JOB, id @ ..] => id.try_into().ok().map(|b| JobId(u64::from_be_bytes(b))),
        _ => None,
    }
}

#[derive(Default)]
pub struct Batch {
    /// Queue names this batch touches; table id = index + 1 (0 = meta).
    names: Vec<String>,
    /// The puts and deletes, encoded as on the wire, in staging order.
    ops: Vec<u8>,
    count: usize,
    /// Queues created fresh (ids into `names`), before the writes.
    creates: Vec<u32>,
    /// Queues dropped after the writes.
    drops: Vec<u32>,
    /// (table id, key) -> value after this batch (`None` = deleted), for
    /// tracked keys only: what reads during the turn must see.
    overlay: FastMap<(u32, Vec<u8>), Option<Vec<u8>>>,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("tables", &self.names)
            .field("writes", &self.count)
            .field("creates", &self.creates)
            .field("drops", &self.drops)
            .finish()
    }
}

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn put_bytes(buf: &mut Vec<u8>, b: &[u8]) {
    put_varint(buf, b.len() as u64);
    buf.extend_from_slice(b);
}

/// Reads a batch's bytes; every read is bounds-checked.
struct Reader<'a> {
    rest: &'a [u8],
}

fn corrupt(what: &str) -> BrokerError {
    BrokerError::Storage(format!("corrupt batch: {what}"))
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self.rest.split_first().ok_or_else(|| corrupt("truncated number"))?;
            self.rest = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(corrupt("number too long"))
    }

    fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = usize::try_from(self.varint()?).map_err(|_| corrupt("length"))?;
        if n > self.rest.len() {
            return Err(corrupt("truncated bytes"));
        }
        let (b, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(b)
    }

    fn byte(&mut self) -> Result<u8> {
        let (&b, rest) = self.rest.split_first().ok_or_else(|| corrupt("truncated tag"))?;
        self.rest = rest;
        Ok(b)
    }
}

impl Batch {
    pub fn new() -> Batch {
        Batch::default()
    }

    /// The table id of `table`, adding the queue name if it is new here.
    fn table_id(&mut self, table: Table<'_>) -> u32 {
        match table {
            Table::Meta => 0,
            Table::Queue(q) => match self.names.iter().position(|n| n == q) {
                Some(i) => i as u32 + 1,
                None => {
                    self.names.push(q.to_string());
                    self.names.len() as u32
                }
            },
        }
    }

    /// The table id of `table` if this batch names it.
    fn find(&self, table: Table<'_>) -> Option<u32> {
        match table {
            Table::Meta => Some(0),
            Table::Queue(q) => self.names.iter().position(|n| n == q).map(|i| i as u32 + 1),
        }
    }

    fn table_of(&self, id: u32) -> Result<Table<'_>> {
        match id {
            0 => Ok(Table::Meta),
            i => self.names.get(i as usize - 1).map(|n| Table::Queue(n)).ok_or_else(|| corrupt("unknown table")),
        }
    }

    fn stage(&mut self, tag: u8, table: Table<'_>, key: &[u8], value: Option<&[u8]>, track: bool) {
        let id = self.table_id(table);
        self.ops.push(tag);
        put_varint(&mut self.ops, u64::from(id));
        put_bytes(&mut self.ops, key);
        if let Some(v) = value {
            put_bytes(&mut self.ops, v);
        }
        self.count += 1;
        if track && tracked(key) {
            self.overlay.insert((id, key.to_vec()), value.map(<[u8]>::to_vec));
        }
    }

    pub fn put(&mut self, table: Table<'_>, key: &[u8], value: &[u8]) {
        self.stage(PUT, table, key, Some(value), true);
    }

    pub fn delete(&mut self, table: Table<'_>, key: &[u8]) {
        self.stage(DELETE, table, key, None, true);
    }

    /// A put that reads in this batch will never ask for (a brand-new
    /// job's record: nothing can name an id made this turn), so its value
    /// is not copied into the overlay.
    pub fn put_unread(&mut self, table: Table<'_>, key: &[u8], value: &[u8]) {
        self.stage(PUT, table, key, Some(value), false);
    }

    /// Creates `queue`'s column family, fresh: a leftover of the same name
    /// (a drop that did not finish) is removed first, so nothing of it is
    /// inherited. Reads of `queue` in this batch see only what it stages.
    pub fn create_queue(&mut self, queue: &str) {
        let id = self.table_id(Table::Queue(queue));
        self.drops.retain(|d| *d != id);
        if !self.creates.contains(&id) {
            self.creates.push(id);
        }
    }

    /// Drops `queue`'s column family once this batch's writes are in.
    pub fn drop_queue(&mut self, queue: &str) {
        let id = self.table_id(Table::Queue(queue));
        if !self.drops.contains(&id) {
            self.drops.push(id);
        }
    }

    /// What this batch makes of `key`: `Some(Some(v))` staged `v`,
    /// `Some(None)` deleted, `None` the batch says nothing of it (read the
    /// store, unless [`Self::hides_store`]). Only tracked keys are known.
    pub fn staged(&self, table: Table<'_>, key: &[u8]) -> Option<Option<&[u8]>> {
        if self.overlay.is_empty() {
            return None;
        }
        let id = self.find(table)?;
        self.overlay.get(&(id, key.to_vec())).map(|v| v.as_deref())
    }

    /// True when the batch stages a value (or a delete) for `key`.
    pub fn touches(&self, table: Table<'_>, key: &[u8]) -> bool {
        self.staged(table, key).is_some()
    }

    /// True when reads of `table` must not look at the store: this batch
    /// creates it fresh, or drops it.
    pub fn hides_store(&self, table: Table<'_>) -> bool {
        self.find(table).is_some_and(|id| self.creates.contains(&id) || self.drops.contains(&id))
    }

    /// Puts and deletes staged.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when it stages a put or a delete.
    pub fn has_writes(&self) -> bool {
        self.count > 0
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0 && self.creates.is_empty() && self.drops.is_empty()
    }

    /// Queues this batch creates, in order.
    pub fn creates(&self) -> impl Iterator<Item = &str> {
        self.creates.iter().map(|id| self.names[*id as usize - 1].as_str())
    }

    /// Queues this batch drops, in order.
    pub fn drops(&self) -> impl Iterator<Item = &str> {
        self.drops.iter().map(|id| self.names[*id as usize - 1].as_str())
    }

    /// The puts and deletes, in the order they were staged.
    pub fn ops(&self) -> Result<Vec<Op<'_>>> {
        let mut r = Reader { rest: &self.ops };
        let mut out = Vec::with_capacity(self.count);
        while !r.rest.is_empty() {
            let tag = r.byte()?;
            let table = self.table_of(u32::try_from(r.varint()?).map_err(|_| corrupt("table id"))?)?;
            let key = r.bytes()?;
            out.push(match tag {
                PUT => Op::Put { table, key, value: r.bytes()? },
                DELETE => Op::Delete { table, key },
                _ => return Err(corrupt("unknown op")),
            });
        }
        Ok(out)
    }

    /// The batch as bytes (see the module's wire format).
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(self.ops.len() + 64);
        buf.extend_from_slice(MAGIC);
        put_varint(&mut buf, self.names.len() as u64);
        for n in &self.names {
            put_bytes(&mut buf, n.as_bytes());
        }
        for ids in [&self.creates, &self.drops] {
            put_varint(&mut buf, ids.len() as u64);
            for id in ids {
                put_varint(&mut buf, u64::from(*id));
            }
        }
        put_varint(&mut buf, self.count as u64);
        buf.extend_from_slice(&self.ops);
        buf
    }

    /// A batch from [`Self::encode`]'s bytes, checked whole (a truncated or
    /// altered batch is refused, never half applied).
    pub fn decode(bytes: &[u8]) -> Result<Batch> {
        let rest = bytes.strip_prefix(MAGIC).ok_or_else(|| corrupt("not a Fairway batch"))?;
        let mut r = Reader { rest };
        let mut b = Batch::new();
        for _ in 0..r.varint()? {
            let name = std::str::from_utf8(r.bytes()?).map_err(|_| corrupt("table name"))?;
            b.names.push(name.to_string());
        }
        let tables = b.names.len() as u64;
        for i in 0..2 {
            for _ in 0..r.varint()? {
                let id = r.varint()?;
                if id == 0 || id > tables {
                    return Err(corrupt("created or dropped table"));
                }
                if i == 0 { &mut b.creates } else { &mut b.drops }.push(id as u32);
            }
        }
        b.count = usize::try_from(r.varint()?).map_err(|_| corrupt("count"))?;
        b.ops = r.rest.to_vec();
        let ops = b.ops()?;
        if ops.len() != b.count {
            return Err(corrupt("op count"));
        }
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_see_tracked_writes_and_deletes_of_this_batch() {
        let mut b = Batch::new();
        let job = keys::job(JobId(7));
        assert_eq!(b.staged(Table::Queue("q"), &job), None);
        b.put(Table::Queue("q"), &job, b"rec");
        b.put(Table::Queue("q"), &[keys::GROUP_COUNT, 1], b"3");
        assert_eq!(b.staged(Table::Queue("q"), &job), Some(Some(&b"rec"[..])));
        assert_eq!(b.staged(Table::Queue("other"), &job), None, "per table");
        assert_eq!(b.staged(Table::Queue("q"), &[keys::GROUP_COUNT, 1]), None, "untracked keys are only written");
        b.delete(Table::Queue("q"), &job);
        assert_eq!(b.staged(Table::Queue("q"), &job), Some(None));
        b.put_unread(Table::Queue("q"), &keys::job(JobId(8)), b"new");
        assert!(!b.touches(Table::Queue("q"), &keys::job(JobId(8))));
        assert_eq!(b.len(), 4);
    }

    #[test]
    fn a_created_or_dropped_queue_hides_the_store() {
        let mut b = Batch::new();
        b.put(Table::Queue("a"), b"k", b"v");
        assert!(!b.hides_store(Table::Queue("a")));
        b.create_queue("n");
        b.drop_queue("old");
        assert!(b.hides_store(Table::Queue("n")) && b.hides_store(Table::Queue("old")));
        assert_eq!(b.creates().collect::<Vec<_>>(), ["n"]);
        assert_eq!(b.drops().collect::<Vec<_>>(), ["old"]);
        // Dropped, then created again in the same batch: created fresh.
        b.create_queue("old");
        assert_eq!(b.drops().count(), 0);
        assert!(!b.is_empty());
    }

    #[test]
    fn damaged_bytes_are_refused() {
        let mut b = Batch::new();
        b.put(Table::Queue("q"), b"key", b"value");
        let bytes = b.encode();
        assert!(Batch::decode(&bytes[..bytes.len() - 1]).is_err(), "truncated");
        assert!(Batch::decode(b"XXXX").is_err(), "not a batch");
        let mut bad = bytes.clone();
        bad[4] = 9; // claims nine table names
        assert!(Batch::decode(&bad).is_err());
    }

    fn arb_table() -> impl Strategy<Value = Option<String>> {
        prop_oneof![Just(None), "[a-c]{1,2}".prop_map(Some)]
    }

    proptest! {
        /// Whatever is staged, the bytes decode to the same ops, tables,
        /// creations and drops, in the same order.
        #[test]
        fn encode_then_decode_gives_the_same_batch(
            ops in proptest::collection::vec((arb_table(), any::<bool>(), proptest::collection::vec(any::<u8>(), 0..12),
                proptest::collection::vec(any::<u8>(), 0..40)), 0..40),
            creates in proptest::collection::vec("[a-d]", 0..3),
            drops in proptest::collection::vec("[e-f]", 0..3),
        ) {
            let mut b = Batch::new();
            for (table, put, key, value) in &ops {
                let t = table.as_deref().map_or(Table::Meta, Table::Queue);
                if *put { b.put(t, key, value) } else { b.delete(t, key) }
            }
            for c in &creates { b.create_queue(c); }
            for d in &drops { b.drop_queue(d); }
            let again = Batch::decode(&b.encode()).unwrap();
            prop_assert_eq!(again.ops().unwrap(), b.ops().unwrap());
            prop_assert_eq!(again.creates().collect::<Vec<_>>(), b.creates().collect::<Vec<_>>());
            prop_assert_eq!(again.drops().collect::<Vec<_>>(), b.drops().collect::<Vec<_>>());
            prop_assert_eq!(again.len(), ops.len());
            prop_assert_eq!(again.encode(), b.encode());
        }
    }
}
