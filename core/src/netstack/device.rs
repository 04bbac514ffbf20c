//! The smoltcp device every connection's interface is polled with: at most one borrowed packet to
//! receive, and an output queue the netstack drains through `poll_transmit`.
//!
//! The device lives only for one poll call, borrowing the packet and the queue, so a packet from
//! the TUN is fed to smoltcp without a copy and the queue is shared by all interfaces.

use std::collections::VecDeque;

use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant as SmolInstant;

pub(crate) struct QueueDevice<'a> {
    pub rx: Option<&'a [u8]>,
    pub tx: &'a mut VecDeque<Vec<u8>>,
    pub mtu: usize,
    /// Verify checksums of received packets (the netstack verified them already; a test
    /// client must, or corrupted packets reach its sockets).
    pub verify_rx: bool,
}

pub(crate) struct RxToken<'a>(&'a [u8]);
pub(crate) struct TxToken<'a>(&'a mut VecDeque<Vec<u8>>);

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0u8; len];
        let r = f(&mut buf);
        self.0.push_back(buf);
        r
    }
}

impl phy::Device for QueueDevice<'_> {
    type RxToken<'b>
        = RxToken<'b>
    where
        Self: 'b;
    type TxToken<'b>
        = TxToken<'b>
    where
        Self: 'b;

    fn receive(&mut self, _now: SmolInstant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        let packet = self.rx.take()?;
        Some((RxToken(packet), TxToken(self.tx)))
    }

    fn transmit(&mut self, _now: SmolInstant) -> Option<TxToken<'_>> {
        Some(TxToken(self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        // Checksums of incoming packets were verified by `packet::parse` already; outgoing
        // ones are computed by smoltcp.
        if !self.verify_rx {
            let mut checksum = ChecksumCapabilities::default();
            checksum.ipv4 = Checksum::Tx;
            checksum.tcp = Checksum::Tx;
            checksum.icmpv4 = Checksum::Tx;
            checksum.icmpv6 = Checksum::Tx;
            caps.checksum = checksum;
        }
        caps
    }
}
