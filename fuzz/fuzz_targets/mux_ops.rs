//! Mux operation sequences on two joined sessions against a byte-level model.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| svcnet_core::fuzzing::mux_ops(data));
