//! The registry fed arbitrary message sequences from an authorized peer: no panic, limits and
//! authorization hold.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| svcnet_core::fuzzing::registry_merge(data));
