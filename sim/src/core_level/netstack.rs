//! Core level: many TCP connections through the netstack (user-space TCP termination), from
//! client stacks behind a faulty packet link — the TUN side of a node, without a kernel.
//!
//! The seed derives the fault mix (loss, duplication, corruption, reordering, latency, which of
//! them are on) and the load (connections, clients, ports, payload sizes). Every connection is
//! echoed by the owner. Invariants: every connection's echo equals what it sent (blake3) — or,
//! if the netstack saw the connection aborted, is a prefix of it — every connection ends, and once all have ended the netstack holds no socket, hold or buffered byte
//! and wants no timer. The trace hash covers every netstack event with its simulated time.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use svcnet_core::netstack::testing::{Faults, Harness, Owner};
use svcnet_core::netstack::{Config, Event, Netstack};
use svcnet_core::rng::SplitMix64;

use crate::trace::Trace;
use crate::{Defect, Outcome, RunOpts};

/// The scenario's name.
pub const NAME: &str = "core-netstack";

fn services() -> Vec<IpAddr> {
    vec![
        IpAddr::V4(Ipv4Addr::new(100, 64, 0, 1)),
        IpAddr::V4(Ipv4Addr::new(100, 64, 0, 2)),
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 1, 0, 0, 0, 1)),
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 1, 0, 0, 0, 2)),
    ]
}

/// Runs one seed.
pub fn run(seed: u64, opts: &RunOpts) -> Outcome {
    let mut rng = SplitMix64::new(seed ^ 0x6e65_7473_7461_636b);
    // Swarm: each fault on or off by the seed, then its strength.
    let mut pick = |max_ppm: u64| -> u32 {
        if rng.below(2) == 0 {
            0
        } else {
            (1 + rng.below(max_ppm)) as u32
        }
    };
    let faults = Faults {
        loss_ppm: pick(40_000),
        duplicate_ppm: pick(20_000),
        corrupt_ppm: pick(20_000),
        reorder_ppm: pick(50_000),
        latency: Duration::from_micros(100 + rng.below(5_000)),
        jitter: Duration::from_micros(rng.below(10_000)),
    };
    let connections = 100 + rng.below(300) as usize;
    let clients = 1 + rng.below(6) as usize;
    let ports = 1 + rng.below(500) as u16;
    let mix = format!(
        "loss={}ppm dup={}ppm corrupt={}ppm reorder={}ppm latency={:?} jitter={:?} \
         connections={connections} clients={clients} ports={ports}",
        faults.loss_ppm,
        faults.duplicate_ppm,
        faults.corrupt_ppm,
        faults.reorder_ppm,
        faults.latency,
        faults.jitter
    );

    let config = Config {
        seed,
        rx_buffer: 8 * 1024,
        tx_buffer: 8 * 1024,
        ..Config::default()
    };
    let mut netstack = Netstack::new(config);
    let svcs = services();
    for a in &svcs {
        netstack.add_address(*a);
    }
    let mut h = Harness::new(netstack, clients, faults, seed);
    h.owner = Owner::Echo;
    for c in &mut h.clients {
        c.buffer = 8 * 1024;
    }

    struct Conn {
        client: usize,
        sock: svcnet_core::netstack::smoltcp::iface::SocketHandle,
        data: Vec<u8>,
        sent: usize,
        got: Vec<u8>,
        closed: bool,
        local: Option<SocketAddr>,
    }
    let mut conns: Vec<Conn> = (0..connections)
        .map(|i| {
            let client = i % clients;
            let remote = SocketAddr::new(
                svcs[rng_index(seed, i, svcs.len())],
                1 + (i as u16 % ports).wrapping_mul(97) % 65_000,
            );
            let sock = h.clients[client].connect(remote, h.now);
            let len = 1 + ((seed as usize).wrapping_add(i * 7919)) % 6000;
            let data: Vec<u8> = (0..len)
                .map(|j| (seed as usize ^ (i * 131 + j)) as u8)
                .collect();
            Conn {
                client,
                sock,
                data,
                sent: 0,
                got: Vec::new(),
                closed: false,
                local: None,
            }
        })
        .collect();

    let mut trace = Trace::new(opts.keep_log);
    let mut violations = Vec::new();
    let mut dropped_one = false;
    // Which netstack connection serves which client endpoint, and which of them were aborted.
    let mut by_client: BTreeMap<SocketAddr, u64> = BTreeMap::new();
    let mut aborted: std::collections::BTreeSet<u64> = std::collections::BTreeSet::new();
    let finished = h.run_until(Duration::from_secs(900), |h| {
        for e in h.take_events() {
            match &e {
                Event::ConnectRequested { conn, client, .. } => {
                    by_client.insert(*client, conn.0);
                }
                Event::Reset { conn, .. } | Event::ConnectAbandoned { conn, .. } => {
                    aborted.insert(conn.0);
                }
                _ => {}
            }
            let (kind, id) = match e {
                Event::ConnectRequested { conn, .. } => ("requested", conn.0),
                Event::ConnectAbandoned { conn, .. } => ("abandoned", conn.0),
                Event::Established { conn } => ("established", conn.0),
                Event::Readable { conn } => ("readable", conn.0),
                Event::Writable { conn } => ("writable", conn.0),
                Event::Closed { conn } => ("closed", conn.0),
                Event::Reset { conn, .. } => ("reset", conn.0),
            };
            trace.record(h.now.as_micros(), kind, &[id]);
        }
        let mut all = true;
        for c in conns.iter_mut() {
            let s = h.clients[c.client].socket(c.sock);
            if c.local.is_none() {
                c.local = s
                    .local_endpoint()
                    .map(|e| SocketAddr::new(IpAddr::from(e.addr), e.port));
            }
            if s.may_send() && c.sent < c.data.len() {
                let mut n = s.send_slice(&c.data[c.sent..]).unwrap_or(0);
                // Self-test: one write is silently lost on its way in (as a buggy pump would).
                if n > 0 && !dropped_one && opts.defect == Some(Defect::DropOneWrite) {
                    dropped_one = true;
                    c.data.drain(c.sent..c.sent + n);
                    n = 0;
                }
                c.sent += n;
                if c.sent == c.data.len() {
                    s.close();
                }
            }
            let mut buf = [0u8; 4096];
            while let Ok(n) = s.recv_slice(&mut buf) {
                if n == 0 {
                    break;
                }
                let got = &mut buf[..n];
                if opts.defect == Some(Defect::CorruptOneByte) && !dropped_one {
                    dropped_one = true;
                    got[0] ^= 0x55;
                }
                c.got.extend_from_slice(got);
            }
            if !c.closed && c.sent == c.data.len() && !s.is_open() {
                c.closed = true;
            }
            all &= c.closed;
        }
        all
    });
    let unfinished = conns.iter().filter(|c| !c.closed).count();
    if !finished {
        violations.push(format!(
            "liveness: {unfinished} of {connections} connections did not end (stats {:?})",
            h.netstack.stats()
        ));
    }
    // Integrity: the echo equals what was sent, or — when the connection was aborted (a RST
    // after the known smoltcp-vs-smoltcp close stalls under heavy loss, docs/netstack.md) — is a
    // prefix of it. Never a corrupted byte.
    let mut intact = 0u64;
    let mut aborted_count = 0u64;
    for (i, c) in conns.iter().enumerate() {
        if blake3::hash(&c.got) == blake3::hash(&c.data) {
            intact += 1;
            continue;
        }
        let was_aborted = c
            .local
            .and_then(|l| by_client.get(&l))
            .is_some_and(|id| aborted.contains(id));
        let prefix = c.data.starts_with(&c.got);
        if was_aborted && prefix {
            aborted_count += 1;
        } else {
            let state = h.clients[c.client].socket(c.sock).state();
            violations.push(format!(
                "integrity: connection {i}: echo of {} bytes differs from the {} sent ({}, {}, client {:?}, netstack conn {:?})",
                c.got.len(),
                c.data.len(),
                if prefix { "a prefix" } else { "corrupted" },
                if was_aborted { "aborted" } else { "not aborted" },
                state,
                c.local.and_then(|l| by_client.get(&l)),
            ));
        }
    }
    // Leaks: once every connection has ended, the netstack lets go of everything.
    let drained = h.run_until(Duration::from_secs(120), |h| {
        let st = h.netstack.stats();
        st.sockets == 0 && st.held == 0
    });
    let st = h.netstack.stats();
    if !drained || st.connections != 0 || st.held_bytes != 0 {
        violations.push(format!(
            "leak: state left after every connection ended: {st:?}"
        ));
    }
    if h.netstack.poll_timeout().is_some() {
        violations.push("leak: the netstack still wants a timer with nothing left".into());
    }
    let mut counters = BTreeMap::new();
    counters.insert("connections", connections as u64);
    counters.insert("intact", intact);
    counters.insert("aborted", aborted_count);
    counters.insert("echoed_bytes", h.echoed);
    counters.insert("dropped_invalid", st.dropped_invalid);
    Outcome {
        scenario: NAME,
        seed,
        mix,
        trace_hash: trace.hash_hex(),
        events: trace.events(),
        sim_millis: h.now.as_micros() / 1000,
        violations,
        counters,
        log: trace.take_log(),
    }
}

fn rng_index(seed: u64, i: usize, n: usize) -> usize {
    let mut r = SplitMix64::new(seed.wrapping_add(i as u64));
    r.below(n as u64) as usize
}
