//! bench-quic: one TCP connection proxied through two svcnet nodes over QUIC on loopback, against
//! the same connection made directly, in the same run.
//!
//! Set-up: node alpha (its own tokio runtime, like its own daemon) serves `sink` and `echo`; node
//! beta (another runtime) proxies `sink.alpha` and `echo.alpha` on local ports. The client is a
//! plain blocking socket on its own thread, as an application would be.
//! - Throughput: write N bytes, half-close, wait for the sink's byte count; direct and through
//!   svcnet rounds interleaved; medians.
//! - Connect latency: connect, send one byte, receive its echo (through svcnet this includes
//!   opening the QUIC stream and the remote dial, which the dial-reply design puts before the
//!   first byte); interleaved; medians.
//!
//! Usage: `bench-quic [--quick]`. Figures are printed as `key=value`.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::Instant;

use svcnet::demo::{fresh_key, id_of, loopback_node_config, LoopbackPeer};
use svcnet::node::{Mode, Node};
use svcnet::proxy;
use svcnet_bench::{median, report};

/// The daemon's allocator, so that the nodes here behave as `svcnet daemon` does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A sink: reads until EOF, answers with the byte count (8 bytes, big-endian).
fn sink_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind sink");
    let addr = listener.local_addr().expect("sink addr");
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            thread::spawn(move || {
                let mut buf = vec![0u8; 256 * 1024];
                let mut total = 0u64;
                loop {
                    match stream.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => total += n as u64,
                        Err(_) => return,
                    }
                }
                let _ = stream.write_all(&total.to_be_bytes());
            });
        }
    });
    addr
}

/// An echo server: answers every byte.
fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind echo");
    let addr = listener.local_addr().expect("echo addr");
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 || stream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// Sends `bytes` to `addr` and waits for the sink's count; returns Gbit/s.
fn throughput(addr: SocketAddr, bytes: u64) -> f64 {
    let chunk = vec![0x5au8; 256 * 1024];
    let start = Instant::now();
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let mut sent = 0u64;
    while sent < bytes {
        let n = chunk.len().min((bytes - sent) as usize);
        stream.write_all(&chunk[..n]).expect("write");
        sent += n as u64;
    }
    stream.shutdown(Shutdown::Write).expect("shutdown");
    let mut count = [0u8; 8];
    stream.read_exact(&mut count).expect("sink count");
    let elapsed = start.elapsed().as_secs_f64();
    assert_eq!(u64::from_be_bytes(count), bytes, "the sink got every byte");
    bytes as f64 * 8.0 / elapsed / 1e9
}

/// Connect, one byte out, its echo back: microseconds.
fn connect_latency(addr: SocketAddr) -> f64 {
    let start = Instant::now();
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    stream.write_all(b"x").expect("write");
    let mut b = [0u8; 1];
    stream.read_exact(&mut b).expect("echo");
    start.elapsed().as_secs_f64() * 1e6
}

fn runtime(name: &str) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(name)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!(
            "usage: bench-quic [--quick]\n\n\
             One TCP connection through two svcnet nodes over QUIC on loopback against the same\n\
             connection made directly: throughput and connect latency, key=value figures and\n\
             same-run ratios. --quick runs a small smoke-sized version."
        );
        return;
    }
    if let Some(bad) = args.iter().find(|a| a.as_str() != "--quick") {
        eprintln!("bench-quic: unknown argument `{bad}`; run `bench-quic --help` for the options");
        std::process::exit(2);
    }
    let quick = args.iter().any(|a| a == "--quick");
    let (bytes, rounds, pings) = if quick {
        (64u64 << 20, 2, 30)
    } else {
        (1u64 << 30, 5, 300)
    };
    report("mode", if quick { "quick" } else { "full" });

    let sink = sink_server();
    let echo = echo_server();
    let (alpha_key, beta_key) = (fresh_key().expect("key"), fresh_key().expect("key"));
    let (alpha_id, beta_id) = (id_of(&alpha_key).unwrap(), id_of(&beta_key).unwrap());

    let rt_alpha = runtime("alpha");
    let alpha_config = loopback_node_config(
        "alpha",
        &alpha_key,
        &LoopbackPeer {
            name: "beta",
            id: &beta_id,
            port: None,
        },
        &format!(
            "sink = \"/tcp/{}\"\necho = \"/tcp/{}\"",
            sink.port(),
            echo.port()
        ),
    )
    .expect("alpha config");
    let alpha = rt_alpha
        .block_on(Node::start(alpha_config, Mode::Daemon))
        .expect("alpha starts");
    let alpha_port = alpha.local_addrs()[0].port();

    let rt_beta = runtime("beta");
    let beta_config = loopback_node_config(
        "beta",
        &beta_key,
        &LoopbackPeer {
            name: "alpha",
            id: &alpha_id,
            port: Some(alpha_port),
        },
        "",
    )
    .expect("beta config");
    let zone = beta_config.dns.zone.clone();
    let (sink_proxy, echo_proxy) = rt_beta.block_on(async {
        let beta = Node::start(beta_config, Mode::Daemon)
            .await
            .expect("beta starts");
        let mut addrs = Vec::new();
        for target in ["sink.alpha", "echo.alpha"] {
            let listener =
                proxy::bind(&beta, "127.0.0.1:0".parse().unwrap()).expect("proxy listener");
            addrs.push(listener.local_addr().unwrap());
            let target = proxy::parse_target(target, &zone).unwrap();
            tokio::spawn(proxy::run(beta.clone(), target, listener));
        }
        (addrs[0], addrs[1])
    });
    // Warm-up: the first connection waits for the peer connection to come up.
    connect_latency(echo_proxy);
    throughput(sink_proxy, 1 << 20);

    let (mut direct, mut svcnet) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        direct.push(throughput(sink, bytes));
        svcnet.push(throughput(sink_proxy, bytes));
    }
    let (d, s) = (median(&direct), median(&svcnet));
    report("transfer_bytes", bytes);
    report("direct_one_stream_gbps", format!("{d:.2}"));
    report("quic_proxy_one_stream_gbps", format!("{s:.2}"));
    report("quic_proxy_one_stream_ratio", format!("{:.3}", s / d));

    let (mut direct_lat, mut svcnet_lat) = (Vec::new(), Vec::new());
    for _ in 0..pings {
        direct_lat.push(connect_latency(echo));
        svcnet_lat.push(connect_latency(echo_proxy));
    }
    let (d, s) = (median(&direct_lat), median(&svcnet_lat));
    report("direct_connect_latency_us", format!("{d:.1}"));
    report("quic_connect_latency_us", format!("{s:.1}"));
    report("quic_connect_latency_ratio", format!("{:.2}", s / d));
    let _keep = Arc::new((alpha, rt_alpha, rt_beta));
}
