//! The netstack: arbitrary length-prefixed IP packets interleaved with owner operations.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| svcnet_core::fuzzing::netstack_ingress(data));
