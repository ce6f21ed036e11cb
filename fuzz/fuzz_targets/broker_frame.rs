//! `scripts/fuzz.sh run broker_frame`: see `pricefeed_fuzzing::broker_frame`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pricefeed_fuzzing::broker_frame(data));
