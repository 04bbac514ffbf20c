//! TUN frontend for svcnet: binds the core's netstack to a real TUN device and the OS.
//!
//! - [`device`]: creates the interface (crate `tun`), assigns the node's addresses and routes the
//!   network's prefix into it (iproute2); the kernel removes all of it when the device closes.
//! - [`stack`]: one task drives the sans-IO [`svcnet_core::netstack::Netstack`] against the
//!   device and hands out connection requests and accepted connections as tokio byte streams.
//!
//! Policy — which node and service an address means, whether to accept a connection — is the
//! daemon's (`frontend-cli`); this crate only moves packets and bytes.

pub mod device;
pub mod stack;

pub use device::{TunDevice, TunError};
pub use stack::{
    PendingConnection, ResetHandle, TunReadHalf, TunStack, TunTcpStream, TunWriteHalf,
};
