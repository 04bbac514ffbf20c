//! Control-stream frames decoded in sequence; each re-encodes to itself.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| svcnet_core::fuzzing::control_messages(data));
