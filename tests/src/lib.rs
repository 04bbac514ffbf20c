//! End-to-end test support for svcnet.
//!
//! This crate will hold the helpers that build network namespaces joined by veth pairs on
//! 198.18.0.0/15, start real `svcnet daemon` processes with TUN devices inside them, run real clients
//! (curl, iperf3, dig) and tear everything down even when a test fails. The tests themselves live in
//! `tests/tests/`. They arrive with the daemon and TUN issues; the crate exists now so that the
//! workspace already has its final shape.
