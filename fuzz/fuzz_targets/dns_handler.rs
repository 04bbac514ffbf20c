//! The DNS responder: arbitrary queries never panic; every reply is a well-formed response.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| svcnet_core::fuzzing::dns_handler(data));
