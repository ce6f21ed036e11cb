//! `scripts/fuzz.sh run api_query`: see `pricefeed_fuzzing::api_query`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pricefeed_fuzzing::api_query(data));
