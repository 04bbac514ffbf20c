//! The `svcnet` program as a library: what the daemon and the commands share. The `svcnet` binary
//! (`main.rs`) only parses arguments and calls into here; protocol decisions live in `svcnet-core`.
//!
//! - [`config`]: loading and validating `svcnet.toml` (every key is described in
//!   `docs/config.md`), and writing a new commented config with a fresh identity (`svcnet init`).
//! - [`sockopt`]: socket options from the config, checked per kind of socket and applied with
//!   `socket2`; TCP dial/listen and UDP bind helpers that apply them before `connect`/`bind`.
//! - [`tls`]: QUIC's TLS, raw public keys pinned to node ids.
//! - [`node`]: the running node: QUIC endpoints, peer connections, service streams.
//! - [`proxy`]: `svcnet proxy`, a local port forwarded to a remote service.
//! - [`control_socket`]: the daemon's unix control socket (`svcnet status`, `resolve`).
//! - [`metrics`]: live counters and their Prometheus exposition.
//! - [`tun_mode`]: TUN mode — served addresses and held SYNs become QUIC streams.
//! - [`dns_server`]: the daemon's DNS server for the zone.
//! - [`demo`]: `svcnet demo`, a two-node network on 127.0.0.1.
//!
//! Service targets (`/tcp/8080`, …) and port allow-lists are pure logic and live in the core
//! (`svcnet_core::service`); [`config::parse_service_target`] turns multiaddr text into them.

pub mod config;
pub mod control_socket;
pub mod demo;
pub mod dns_server;
pub mod metrics;
pub mod node;
pub mod proxy;
pub mod quic_io;
pub mod sockopt;
pub mod tls;
pub mod tun_mode;
