//! Deterministic simulation of svcnet.
//!
//! This crate will hold two levels of simulation (see `docs/architecture.md`):
//! a pure sans-IO harness that wires several `svcnet_core` nodes through simulated links with a
//! simulated clock and seeded faults, and whole-node scenarios under turmoil. Each run is derived
//! from one seed (the seed also picks the fault mix) and replays exactly. The first scenarios
//! arrive with the simulation issue; the multiplexer's own paired harness lives in
//! `svcnet_core::mux::testing` for now.

pub use svcnet_core as core;
