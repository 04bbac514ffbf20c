//! Every on-the-wire format of svcnet, versioned and length-checked.
//!
//! Decoders here never panic and never allocate more than the bytes they were given; each format is
//! specified field by field in `docs/protocol.md`, and the tests check the examples given there.
//! - [`mux`]: the stream multiplexer's preface and frames.
//! - [`stream`]: the header that opens every node-to-node stream, and the dial reply.
//! - [`control`]: messages on the per-peer control stream.

pub mod control;
pub mod mux;
pub mod stream;
