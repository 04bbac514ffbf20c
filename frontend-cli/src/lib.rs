//! The library half of the `svcnet` command: what the daemon and the commands share.
//!
//! - [`config`]: loading and validating `svcnet.toml` (every key is described in
//!   `docs/config.md`), and writing a new commented config with a fresh identity (`svcnet init`).
//! - [`sockopt`]: socket options from the config, checked per kind of socket and applied with
//!   `socket2`; TCP dial/listen and UDP bind helpers that apply them before `connect`/`bind`.
//!
//! Service targets (`/tcp/8080`, …) and port allow-lists are pure logic and live in the core
//! (`svcnet_core::service`); [`config::parse_service_target`] turns multiaddr text into them.

pub mod config;
pub mod sockopt;
