//! The `svcnet` program as a library: config, socket options, the QUIC transport, the running
//! node, the userspace proxy, the control socket, metrics and the demo. The `svcnet` binary
//! (`main.rs`) only parses arguments and calls into here; protocol decisions live in
//! `svcnet-core`.

pub mod config;
pub mod control_socket;
pub mod demo;
pub mod metrics;
pub mod node;
pub mod proxy;
pub mod sockopt;
pub mod tls;
