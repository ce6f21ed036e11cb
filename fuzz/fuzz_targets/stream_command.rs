//! `scripts/fuzz.sh run stream_command`: see `pricefeed_fuzzing::stream_command`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pricefeed_fuzzing::stream_command(data));
