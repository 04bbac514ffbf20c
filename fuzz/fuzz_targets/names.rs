//! DNS names, node ids, labels, service/role/node names and zones: what parses round-trips.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| svcnet_core::fuzzing::names(data));
