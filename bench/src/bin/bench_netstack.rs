//! The netstack benchmark: an in-memory smoltcp client stack (the kernel behind the TUN) against
//! svcnet's netstack, both on this thread, packets moved by hand with no loss and no latency.
//!
//! Usage: `bench-netstack [--quick]`. Figures, printed as `key=value`:
//! - `netstack_one_stream_gbps`: one client→netstack stream, the owner reading everything;
//! - `netstack_10k_idle_ratio`: the same stream with 10 k idle established connections on the
//!   netstack ÷ without, median of per-round ratios (the two measured back to back each round);
//! - `netstack_accepts_per_s`: SYN → `ConnectRequested` → `accept` → SYN-ACK → ACK →
//!   `Established`, driven with raw packets so the client stack's own costs stay out, in
//!   batches of 1,000 that are reset (untimed) before the next, as connections churn.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant as StdInstant};

use svcnet_bench::{median, report};
use svcnet_core::netstack::packet::{build_segment, parse, syn, SegmentSpec};
use svcnet_core::netstack::smoltcp::iface::SocketHandle;
use svcnet_core::netstack::smoltcp::socket::tcp::State;
use svcnet_core::netstack::smoltcp::wire::TcpControl;
use svcnet_core::netstack::testing::{destination, ClientStack};
use svcnet_core::netstack::{Config, ConnId, Event, Netstack};
use svcnet_core::time::Instant;

const SERVICE: IpAddr = IpAddr::V4(Ipv4Addr::new(100, 64, 0, 1));
const STREAM_PORT: u16 = 5001;
const CHUNK: usize = 64 * 1024;

struct Scale {
    rounds: usize,
    stream_bytes: usize,
    idle: usize,
    accepts: usize,
}

impl Scale {
    fn full() -> Scale {
        Scale {
            rounds: 5,
            stream_bytes: 512 << 20,
            idle: 10_000,
            accepts: 20_000,
        }
    }
    fn quick() -> Scale {
        Scale {
            rounds: 1,
            stream_bytes: 16 << 20,
            idle: 1_000,
            accepts: 2_000,
        }
    }
}

/// The netstack config under test: defaults, except limits the scenario needs and an optional
/// buffer size override for experiments (`NETSTACK_BUFFER=65536` sets both buffers).
fn bench_config() -> Config {
    let defaults = Config::default();
    let buffer = std::env::var("NETSTACK_BUFFER")
        .ok()
        .and_then(|v| v.parse().ok());
    Config {
        rx_buffer: buffer.unwrap_or(defaults.rx_buffer),
        tx_buffer: buffer.unwrap_or(defaults.tx_buffer),
        max_connections: 50_000,
        // The idle connections' SYNs arrive in one burst.
        max_held_syns: 50_000,
        // Every SYN of the benchmark comes from a handful of client addresses.
        syn_rate_per_client: u32::MAX / 2,
        syn_burst_per_client: u32::MAX / 2,
        ..defaults
    }
}

/// A netstack, the client stack of the measured stream, and the client stacks of the idle
/// connections (100 connections each, so the client side's own socket walk stays small).
struct Bed {
    ns: Netstack,
    active: ClientStack,
    idle: Vec<ClientStack>,
    route: HashMap<IpAddr, usize>,
    stream: Option<ConnId>,
    stream_socket: SocketHandle,
    epoch: StdInstant,
    sink: Vec<u8>,
    read: u64,
}

impl Bed {
    fn new(idle: usize) -> Bed {
        let mut ns = Netstack::new(bench_config());
        ns.add_address(SERVICE);
        let mtu = ns.config().mtu;
        let mut active = ClientStack::new(1, Ipv4Addr::new(10, 0, 0, 1), Ipv6Addr::LOCALHOST, mtu);
        active.buffer = 256 * 1024;
        let stacks = idle.div_ceil(100);
        let mut idle_stacks = Vec::new();
        let mut route = HashMap::new();
        for i in 0..stacks {
            let v4 = Ipv4Addr::new(10, 1, (i / 250) as u8, (i % 250) as u8 + 1);
            let mut c = ClientStack::new(100 + i as u64, v4, Ipv6Addr::UNSPECIFIED, mtu);
            c.buffer = 4096;
            route.insert(IpAddr::V4(v4), i);
            idle_stacks.push(c);
        }
        let mut bed = Bed {
            ns,
            active,
            idle: idle_stacks,
            route,
            stream: None,
            stream_socket: SocketHandle::default(),
            epoch: StdInstant::now(),
            sink: vec![0u8; CHUNK],
            read: 0,
        };
        let mut socks = Vec::new();
        for i in 0..idle {
            let now = bed.now();
            let port = 10_000 + (i % 50_000) as u16;
            let h = bed.idle[i / 100].connect(SocketAddr::new(SERVICE, port), now);
            socks.push((i / 100, h));
        }
        let s = bed
            .active
            .connect(SocketAddr::new(SERVICE, STREAM_PORT), bed.now());
        bed.stream_socket = s;
        let deadline = StdInstant::now() + Duration::from_secs(600);
        loop {
            bed.pump(true);
            let idle_up = socks
                .iter()
                .all(|&(c, h)| bed.idle[c].socket(h).state() == State::Established);
            if idle_up && bed.stream.is_some() && bed.active.socket(s).may_send() {
                break;
            }
            assert!(StdInstant::now() < deadline, "connections not established");
        }
        assert_eq!(bed.ns.stats().connections, idle + 1);
        // Let delayed ACKs and the like settle, so the idle connections are really idle.
        for _ in 0..100 {
            bed.pump(true);
        }
        bed
    }

    fn now(&self) -> Instant {
        Instant::from_micros(self.epoch.elapsed().as_micros() as u64)
    }

    /// Moves every packet both ways once, runs due timers, accepts requests, reads the stream.
    fn pump(&mut self, poll_idle: bool) {
        let now = self.now();
        self.active.poll(now);
        while let Some(p) = self.active.take_output() {
            self.ns.handle_packet(&p, now);
        }
        if poll_idle {
            for c in &mut self.idle {
                c.poll(now);
                while let Some(p) = c.take_output() {
                    self.ns.handle_packet(&p, now);
                }
            }
        }
        if self.ns.poll_timeout().is_some_and(|t| t <= now) {
            self.ns.handle_timeout(now);
        }
        while let Some(ev) = self.ns.poll_event() {
            match ev {
                Event::ConnectRequested { conn, port, .. } => {
                    self.ns.accept(conn, now).expect("accept");
                    if port == STREAM_PORT {
                        self.stream = Some(conn);
                    }
                }
                Event::Reset { .. } | Event::Closed { .. } => panic!("unexpected {ev:?}"),
                _ => {}
            }
        }
        if let Some(conn) = self.stream {
            while let Ok(n) = self.ns.read(conn, &mut self.sink) {
                if n == 0 {
                    break;
                }
                self.read += n as u64;
            }
        }
        while let Some(p) = self.ns.poll_transmit(now) {
            match destination(&p) {
                Some(d) if self.active.owns(d) => self.active.deliver(p),
                Some(d) => {
                    if let Some(&i) = self.route.get(&d) {
                        self.idle[i].deliver(p);
                    }
                }
                None => {}
            }
        }
    }

    /// Sends `bytes` on the measured stream; returns Gbit/s.
    fn stream(&mut self, bytes: usize) -> f64 {
        let handle = self.stream_socket;
        let data = vec![0x5au8; CHUNK];
        let start_read = self.read;
        let target = start_read + bytes as u64;
        let t0 = StdInstant::now();
        while self.read < target {
            let s = self.active.socket(handle);
            while s.can_send() {
                if s.send_slice(&data).unwrap_or(0) == 0 {
                    break;
                }
            }
            // Idle connections have nothing to say; their stacks are polled only for the
            // packets the netstack sends them (keep-alives would come after 30 s).
            self.pump(false);
        }
        let secs = t0.elapsed().as_secs_f64();
        (self.read - start_read) as f64 * 8.0 / secs / 1e9
    }
}

/// Accepted connections per second, driven with raw SYN and ACK packets. Connections churn as
/// on a real node: batches of 1,000 are accepted (timed), then reset (not timed).
fn accepts_per_s(n: usize) -> f64 {
    let mut ns = Netstack::new(bench_config());
    ns.add_address(SERVICE);
    let epoch = StdInstant::now();
    let now = || Instant::from_micros(epoch.elapsed().as_micros() as u64);
    let mut established = 0usize;
    let mut timed = Duration::ZERO;
    let mut i = 0usize;
    while i < n {
        let batch = (n - i).min(1000);
        let mut conns = Vec::with_capacity(batch);
        let t0 = StdInstant::now();
        for _ in 0..batch {
            let client = SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(10, 2, (i / 60_000) as u8, 1)),
                1024 + (i % 60_000) as u16,
            );
            let server = SocketAddr::new(SERVICE, 1 + (i % 65_000) as u16);
            let isn = 1000 + i as u32;
            i += 1;
            ns.handle_packet(&syn(client, server, isn, 1460).expect("syn"), now());
            let Some(Event::ConnectRequested { conn, .. }) = ns.poll_event() else {
                panic!("no request")
            };
            ns.accept(conn, now()).expect("accept");
            let synack = parse(&ns.poll_transmit(now()).expect("syn-ack")).expect("valid");
            let ack = build_segment(&SegmentSpec {
                src: client,
                dst: server,
                control: TcpControl::None,
                seq: isn.wrapping_add(1),
                ack: Some(synack.seq.wrapping_add(1)),
                window: 65_535,
                mss: None,
                payload: &[],
            })
            .expect("ack");
            ns.handle_packet(&ack, now());
            if let Some(Event::Established { .. }) = ns.poll_event() {
                established += 1;
            }
            conns.push(conn);
        }
        timed += t0.elapsed();
        for c in conns {
            ns.reset(c, now()).expect("reset");
        }
        while ns.poll_transmit(now()).is_some() {}
    }
    assert_eq!(established, n, "every accepted connection established");
    assert_eq!(ns.stats().sockets, 0);
    n as f64 / timed.as_secs_f64()
}

fn main() {
    const FLAGS: [&str; 3] = ["--quick", "--help", "-h"];
    if let Some(bad) = std::env::args()
        .skip(1)
        .find(|a| !FLAGS.contains(&a.as_str()))
    {
        eprintln!(
            "bench-netstack: unknown argument `{bad}`; run `bench-netstack --help` for the options"
        );
        std::process::exit(2);
    }
    if std::env::args().any(|a| a == "--help" || a == "-h") {
        println!(
            "usage: bench-netstack [--quick]\n\n\
             Drives svcnet's netstack (user-space TCP termination on smoltcp) from an in-memory\n\
             smoltcp client stack and prints key=value figures: single-stream throughput, the\n\
             throughput ratio with 10 k idle established connections versus none (same run,\n\
             median of interleaved rounds), and accepted connections per second. --quick runs a\n\
             small smoke-sized version (1 k idle connections)."
        );
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let scale = if quick { Scale::quick() } else { Scale::full() };
    report("mode", if quick { "quick" } else { "full" });
    report("netstack_mtu", bench_config().mtu);
    report("netstack_buffer_bytes", bench_config().rx_buffer);

    let t = StdInstant::now();
    let mut bare = Bed::new(0);
    let mut loaded = Bed::new(scale.idle);
    report(
        "netstack_setup_s",
        format!("{:.1}", t.elapsed().as_secs_f64()),
    );
    report(
        "netstack_idle_connections",
        loaded.ns.stats().connections - 1,
    );
    // Warm-up, then interleaved rounds.
    bare.stream(scale.stream_bytes / 4);
    loaded.stream(scale.stream_bytes / 4);
    let mut alone = Vec::new();
    let mut ratios = Vec::new();
    for _ in 0..scale.rounds {
        let a = bare.stream(scale.stream_bytes);
        let b = loaded.stream(scale.stream_bytes);
        alone.push(a);
        ratios.push(b / a);
    }
    report("netstack_one_stream_gbps", format!("{:.2}", median(&alone)));
    report("netstack_10k_idle_ratio", format!("{:.2}", median(&ratios)));
    let rates: Vec<f64> = (0..scale.rounds)
        .map(|_| accepts_per_s(scale.accepts))
        .collect();
    report("netstack_accepts_per_s", format!("{:.0}", median(&rates)));
}
