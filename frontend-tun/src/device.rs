//! The TUN device and the OS state around it: the interface, its addresses and the route.
//!
//! The interface is created with the `tun` crate (no packet-information header, so every read is
//! one raw IPv4 or IPv6 packet). Addresses and routes are set with iproute2 (`ip`), which every
//! Linux system with network namespaces has; the interface is not persistent, so the kernel
//! removes it — with its addresses and routes — when the device is closed, including when the
//! daemon is killed.

use std::net::Ipv6Addr;
use std::process::Command;

use tracing::debug;

/// Why the device could not be set up. The messages say what to do.
#[derive(Debug)]
pub enum TunError {
    /// No CAP_NET_ADMIN (or no /dev/net/tun).
    Permission(String),
    /// Any other failure, with context.
    Other(String),
}

impl std::fmt::Display for TunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TunError::Permission(detail) => write!(
                f,
                "cannot create the TUN device: {detail}. TUN mode needs root or CAP_NET_ADMIN \
                 (e.g. `sudo setcap cap_net_admin+ep $(which svcnet)`); without it, run \
                 `svcnet daemon --userspace` and reach services with `svcnet proxy`"
            ),
            TunError::Other(detail) => f.write_str(detail),
        }
    }
}

impl std::error::Error for TunError {}

/// An open TUN interface with its addresses and route.
pub struct TunDevice {
    device: tun::AsyncDevice,
    name: String,
    mtu: u16,
}

impl TunDevice {
    /// Creates the interface `name` with `mtu`, brings it up, assigns `addresses` (/128 each, no
    /// duplicate address detection so they are usable at once) and routes `prefix/prefix_len`
    /// into it. Must run inside a tokio runtime.
    pub fn open(
        name: &str,
        mtu: u16,
        addresses: &[Ipv6Addr],
        prefix: Ipv6Addr,
        prefix_len: u8,
    ) -> Result<TunDevice, TunError> {
        let mut config = tun::Configuration::default();
        config.tun_name(name).mtu(mtu).up();
        let device = tun::create_as_async(&config).map_err(|e| {
            let text = e.to_string();
            let lower = text.to_ascii_lowercase();
            if lower.contains("permission")
                || lower.contains("operation not permitted")
                || lower.contains("root")
                || lower.contains("no such file")
            {
                TunError::Permission(text)
            } else {
                TunError::Other(format!("creating TUN device {name}: {text}"))
            }
        })?;
        let device = TunDevice {
            device,
            name: name.to_string(),
            mtu,
        };
        // IPv6 may be disabled per interface by sysctl; make sure it is on for ours.
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "0");
        for address in addresses {
            ip(&[
                "-6",
                "addr",
                "add",
                &format!("{address}/128"),
                "dev",
                name,
                "nodad",
            ])?;
        }
        ip(&[
            "-6",
            "route",
            "replace",
            &format!("{prefix}/{prefix_len}"),
            "dev",
            name,
            "mtu",
            &mtu.to_string(),
        ])?;
        Ok(device)
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The interface MTU.
    pub fn mtu(&self) -> u16 {
        self.mtu
    }

    /// Receives one packet.
    pub async fn recv(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.device.recv(buf).await
    }

    /// Sends one packet.
    pub async fn send(&self, packet: &[u8]) -> std::io::Result<usize> {
        self.device.send(packet).await
    }
}

fn ip(args: &[&str]) -> Result<(), TunError> {
    debug!(?args, "ip");
    let output = Command::new("ip").args(args).output().map_err(|e| {
        TunError::Other(format!(
            "running `ip {}`: {e} (is iproute2 installed?)",
            args.join(" ")
        ))
    })?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    if stderr.contains("Operation not permitted") {
        return Err(TunError::Permission(stderr));
    }
    Err(TunError::Other(format!(
        "`ip {}` failed: {stderr}",
        args.join(" ")
    )))
}
