//! libFuzzer driver of `fairway::fuzz::requests`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fairway::fuzz::requests::fuzz_one(data));
