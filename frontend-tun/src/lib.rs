//! TUN frontend for svcnet.
//!
//! This crate will bind the core's user-space netstack to a real TUN device (crate `tun`): it creates
//! the interface, assigns the node's service addresses, installs a route for the network prefix and
//! pumps packets between the kernel and `svcnet_core`. It holds no protocol logic of its own; see
//! `docs/architecture.md`. Until the TUN issue lands it only re-exports the core so that the crate
//! graph of the workspace is already in its final shape.

pub use svcnet_core as core;
