//! libFuzzer driver of `fairway::fuzz::records`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fairway::fuzz::records::fuzz_one(data));
