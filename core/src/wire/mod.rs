//! Every on-the-wire format of svcnet, versioned and length-checked.
//!
//! Decoders here never panic and never allocate more than the bytes they were given; each format is
//! specified field by field in `docs/protocol.md`, and the tests check the examples given there.
//! - [`mux`]: the stream multiplexer's preface and frames.

pub mod mux;
