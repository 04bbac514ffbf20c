//! The mux frame decoder: decode, re-encode, compare.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| svcnet_core::fuzzing::mux_frames(data));
