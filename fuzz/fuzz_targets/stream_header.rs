//! The stream header and dial reply decoders (first byte picks which): round trips and the
//! two-step decode agree.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| svcnet_core::fuzzing::stream_header(data));
