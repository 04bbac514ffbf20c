//! A mux session fed arbitrary bytes after a valid preface.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| svcnet_core::fuzzing::mux_session_input(data));
