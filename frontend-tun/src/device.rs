//! The TUN device and the OS state around it: the interface, its addresses and the route.
//!
//! The interface is created with the `tun` crate, without the packet-information header but with
//! the `virtio_net_hdr` in front of every packet (`IFF_VNET_HDR`) and checksum offload
//! (`TUNSETOFFLOAD` with `TUN_F_CSUM`): the kernel then hands over the packets this host's TCP
//! makes without computing their checksums, and marks them so the netstack does not verify them
//! either — both passes over every byte were 6 % of the sending daemon's time in `bench-tun`.
//! Segmentation offloads stay off: with the 64 KiB MTU (`docs/architecture.md` §7.3) a segment
//! is already as large as a GSO batch, and every packet read is one IPv4 or IPv6 packet.
//! Addresses and routes are set with iproute2 (`ip`), which every
//! Linux system with network namespaces has; the interface is not persistent, so the kernel
//! removes it — with its addresses and routes — when the device is closed, including when the
//! daemon is killed.

use std::io::{self, IoSlice};
use std::net::Ipv6Addr;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::process::Command;

use svcnet_core::netstack::TcpChecksum;
use tracing::debug;

/// The `virtio_net_hdr` in front of every packet (include/uapi/linux/virtio_net.h): flags,
/// gso_type, hdr_len, gso_size, csum_start, csum_offset; 10 bytes.
pub const VNET_HDR_LEN: usize = 10;
/// `flags`: the TCP checksum field holds only the pseudo-header sum (a packet made here).
const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
/// `flags`: the kernel verified the checksum.
const VIRTIO_NET_HDR_F_DATA_VALID: u8 = 2;
/// `_IOW('T', 208, unsigned int)` (include/uapi/linux/if_tun.h), in the generic ioctl encoding
/// of x86, arm and riscv (powerpc, mips and sparc encode it differently).
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
/// Checksum offload: the reader copes with partial checksums. The kernel reads the argument as
/// an `unsigned long`.
const TUN_F_CSUM: libc::c_ulong = 0x01;
/// `gso_type` of a packet that is not a segmentation batch.
const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;
/// The header of every packet written: no flags, no segmentation (the netstack computes every
/// checksum it sends).
const PLAIN_HEADER: [u8; VNET_HDR_LEN] = [0; VNET_HDR_LEN];

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
        config.platform_config(|platform| {
            platform.vnet_hdr(true);
        });
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
        // SAFETY: TUNSETOFFLOAD takes its argument by value; the descriptor is the open TUN
        // device, owned by `device` for the duration of the call.
        let offload = unsafe { libc::ioctl(device.as_raw_fd(), TUNSETOFFLOAD, TUN_F_CSUM) };
        if offload != 0 {
            // Still correct without it: packets then arrive with full checksums, and those are
            // verified.
            debug!(error = %io::Error::last_os_error(), "TUN checksum offload unavailable");
        }
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

    /// Receives one packet into `buf` (which needs room for [`VNET_HDR_LEN`] more bytes than the
    /// MTU): where in `buf` the packet is, and whether its TCP checksum needs verifying.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<(Range<usize>, TcpChecksum)> {
        let n = self.device.recv(buf).await?;
        Ok(split_header(&buf[..n]))
    }

    /// Sends one packet, behind a header that asks for nothing (the netstack computed every
    /// checksum).
    pub async fn send(&mut self, packet: &[u8]) -> io::Result<()> {
        let total = VNET_HDR_LEN + packet.len();
        let iov = [IoSlice::new(&PLAIN_HEADER), IoSlice::new(packet)];
        let mut busy = 0;
        loop {
            // One writev, so the packet is not copied behind its header (the `tun` crate's
            // vectored write sends only the first buffer).
            // SAFETY: `IoSlice` is ABI-compatible with `iovec` on Unix; both slices outlive the
            // call; the descriptor is the open TUN device owned by `self.device`.
            let n = unsafe {
                libc::writev(self.device.as_raw_fd(), iov.as_ptr().cast(), iov.len() as _)
            };
            if n >= 0 {
                // A TUN write takes a whole packet or fails.
                return if n as usize == total {
                    Ok(())
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        format!("TUN took {n} of {total} bytes"),
                    ))
                };
            }
            let error = io::Error::last_os_error();
            match error.kind() {
                io::ErrorKind::Interrupted => {}
                // Only when the device's send buffer (INT_MAX by default) is exhausted; give the
                // reader a moment, then drop the packet (TCP resends it).
                io::ErrorKind::WouldBlock if busy < 100 => {
                    busy += 1;
                    tokio::task::yield_now().await;
                }
                _ => return Err(error),
            }
        }
    }
}

/// The packet after the `virtio_net_hdr`, and what its flags say about its TCP checksum. A read
/// shorter than the header, or a segmentation batch (never asked for), gives an empty packet
/// (dropped as invalid by the netstack).
pub fn split_header(read: &[u8]) -> (Range<usize>, TcpChecksum) {
    if read.len() < VNET_HDR_LEN || read[1] != VIRTIO_NET_HDR_GSO_NONE {
        return (0..0, TcpChecksum::Verify);
    }
    let flags = read[0];
    let checksum = if flags & (VIRTIO_NET_HDR_F_NEEDS_CSUM | VIRTIO_NET_HDR_F_DATA_VALID) != 0 {
        TcpChecksum::Trusted
    } else {
        TcpChecksum::Verify
    };
    (VNET_HDR_LEN..read.len(), checksum)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_flags_decide_whether_checksums_are_verified() {
        let packet = [0x60u8, 0, 0, 0];
        let with = |flags: u8| {
            let mut read = vec![flags, 0, 0, 0, 0, 0, 0, 0, 0, 0];
            read.extend_from_slice(&packet);
            split_header(&read)
        };
        assert_eq!(
            with(0),
            (VNET_HDR_LEN..VNET_HDR_LEN + 4, TcpChecksum::Verify)
        );
        assert_eq!(with(VIRTIO_NET_HDR_F_NEEDS_CSUM).1, TcpChecksum::Trusted);
        assert_eq!(with(VIRTIO_NET_HDR_F_DATA_VALID).1, TcpChecksum::Trusted);
        // Shorter than the header, or a segmentation batch: nothing to hand on.
        assert_eq!(split_header(&[1, 2, 3]), (0..0, TcpChecksum::Verify));
        let mut batch = vec![VIRTIO_NET_HDR_F_NEEDS_CSUM, 4, 0, 0, 0, 0, 0, 0, 0, 0];
        batch.extend_from_slice(&packet);
        assert_eq!(split_header(&batch), (0..0, TcpChecksum::Verify));
    }
}
