//! Fuzz targets: each takes arbitrary bytes, must never panic, and checks
//! its invariants with `assert!` (a failed assert is a finding).
//!
//! Two drivers run them: `fuzz/` (cargo-fuzz and libFuzzer, on a nightly
//! toolchain) and `tests/fuzz_smoke.rs` (stable: the committed corpus plus
//! seeded mutations, in every test run). See docs/fuzzing.md.

pub mod keys;
pub mod records;
pub mod requests;

/// A target's name (its corpus folder under `fuzz/corpus/`) and entry point.
pub type Target = (&'static str, fn(&[u8]));

/// Every target, for drivers that run them all.
pub const TARGETS: &[Target] =
    &[("records", records::fuzz_one), ("keys", keys::fuzz_one), ("requests", requests::fuzz_one)];

/// Reads fuzzer bytes as a sequence of small values.
pub(crate) struct Cursor<'a> {
    /// What is left to read; reads past the end yield zeros.
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Cursor { rest: data }
    }

    pub(crate) fn byte(&mut self) -> u8 {
        match self.rest.split_first() {
            Some((b, rest)) => {
                self.rest = rest;
                *b
            }
            None => 0,
        }
    }

    pub(crate) fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }

    pub(crate) fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }

    /// A name the broker would accept (`[a-z0-9][a-z0-9._-]*`), 1 to 128
    /// bytes, shaped by the input.
    pub(crate) fn name(&mut self) -> String {
        const FIRST: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        const REST: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789._-";
        let len = 1 + usize::from(self.byte()) % crate::limits::MAX_NAME_BYTES;
        let mut s = String::with_capacity(len);
        s.push(char::from(FIRST[usize::from(self.byte()) % FIRST.len()]));
        for _ in 1..len {
            s.push(char::from(REST[usize::from(self.byte()) % REST.len()]));
        }
        s
    }
}
