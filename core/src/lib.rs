//! svcnet-core: the sans-IO engine of svcnet.
//!
//! Nothing in this crate performs I/O, reads a clock or draws OS randomness. Time enters every call
//! as a [`time::Instant`] parameter; outputs leave through `poll_*` methods. The same code therefore
//! runs inside the tokio daemon, the deterministic simulator and the fuzzers. The one exception is
//! [`mux::adapter`], a thin, runtime-agnostic driver that binds a [`mux::Session`] to any
//! `futures-io` byte pipe; it lives here so that programs embedding svcnet need only this crate.
//!
//! Modules, one concern each:
//! - [`time`]: the core's own clock-free instant type.
//! - [`identity`]: ed25519 node identities and their text form.
//! - [`addressing`]: blake3-derived network, node and service addresses; DNS names.
//! - [`service`]: service targets (`/tcp/8080`, …), port allow-lists, where a dial goes.
//! - [`dns`]: the DNS responder for the svcnet zone (hickory-proto wire format).
//! - [`wire`]: every on-the-wire format, versioned and length-checked (`docs/protocol.md`).
//! - [`mux`]: many byte streams over one reliable ordered byte pipe.
//! - [`peering`]: which peers to dial when, with backoff; which connection carries new streams.
//! - [`registry`]: the replicated service registry: signed announcements, leases, health, SWIM
//!   membership (foca), anti-entropy, semver lookups, load balancing and failover (`docs/registry.md`).
//! - [`rng`]: the seeded generator behind every random choice.
//! - [`netstack`]: user-space TCP termination of TUN traffic (smoltcp), port-on-demand.
//! - [`fuzzing`]: the bodies of the fuzz targets, shared with the corpus-replay tests.
#![forbid(unsafe_code)]

pub mod addressing;
pub mod dns;
pub mod fuzzing;
pub mod identity;
pub mod mux;
pub mod netstack;
pub mod peering;
pub mod registry;
pub mod rng;
pub mod service;
pub mod time;
pub mod wire;
