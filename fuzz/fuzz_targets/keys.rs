//! libFuzzer driver of `fairway::fuzz::keys`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fairway::fuzz::keys::fuzz_one(data));
