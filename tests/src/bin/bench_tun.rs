//! bench-tun: iperf3 through svcnet in TUN mode between two network namespaces, against iperf3
//! directly over the same veth, in the same run. Needs root (namespaces, TUN).
//!
//! Host 0 (alpha) runs iperf3 servers — one on 127.0.0.1:5201 behind the service `iperf`, one on
//! its underlay address for the direct baseline — and an echo server; host 1 (beta) runs the
//! clients. Throughput: one stream and four (`-P 4`), medians of interleaved rounds. Connect
//! latency: connect + one byte echoed, measured by this binary re-run inside beta's namespace
//! (`--latency-client`), through `echo.alpha.svcnet` and directly.
//!
//! Usage: `bench-tun [--quick | --profile-one-stream]`. Figures are printed as `key=value`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use svcnet_bench::median;
use svcnet_e2e::{require_tools, Lab, NodeDef};

/// `--echo-server ADDR`: answers every byte, forever.
fn echo_server(addr: &str) {
    let listener = TcpListener::bind(addr).expect("bind echo server");
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 || stream.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
    }
}

/// `--latency-client HOST:PORT N`: prints the median of N (connect, one byte, echo) in µs.
fn latency_client(target: &str, n: usize) {
    let addr: SocketAddr = target
        .to_socket_addrs()
        .expect("resolve latency target")
        .next()
        .expect("an address");
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        s.set_nodelay(true).expect("nodelay");
        s.write_all(b"x").expect("write");
        let mut b = [0u8; 1];
        s.read_exact(&mut b).expect("echo");
        samples.push(start.elapsed().as_secs_f64() * 1e6);
    }
    println!("{:.1}", median(&samples));
}

fn iperf(lab: &Lab, target: &str, port: u16, streams: u32, seconds: u32) -> f64 {
    let out = lab.exec(
        1,
        &[
            "iperf3",
            "-c",
            target,
            "-p",
            &port.to_string(),
            "-t",
            &seconds.to_string(),
            "-P",
            &streams.to_string(),
            "-J",
        ],
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "iperf3 to {target}: {e}\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let bps = json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| panic!("iperf3 to {target} gave no result: {json}"));
    bps / 1e9
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--echo-server") => return echo_server(&args[1]),
        Some("--latency-client") => {
            return latency_client(&args[1], args[2].parse().expect("count"));
        }
        Some("--help") | Some("-h") => {
            println!(
                "usage: bench-tun [--quick | --profile-one-stream]\n\n\
                 iperf3 through svcnet (TUN mode, two network namespaces) against iperf3 directly\n\
                 over the same veth, one stream and four, plus connect latency; key=value figures\n\
                 and same-run ratios. Needs root. --quick: one short round (smoke run).\n\
                 --profile-one-stream: one 20-second stream through svcnet and nothing else, to\n\
                 attach perf to."
            );
            return;
        }
        Some("--quick") | Some("--profile-one-stream") | None => {}
        Some(other) => {
            eprintln!("bench-tun: unknown argument `{other}`; run `bench-tun --help`");
            std::process::exit(2);
        }
    }
    let quick = args.iter().any(|a| a == "--quick");
    let (rounds, seconds, pings) = if quick { (1, 2, 20) } else { (3, 5, 200) };
    if !std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
    {
        eprintln!("bench-tun: needs root (network namespaces and TUN devices)");
        std::process::exit(1);
    }
    require_tools(&["ip", "iperf3"]);
    let me = std::env::current_exe().expect("current exe");
    let me = me.to_str().expect("utf-8 path");

    let mut lab = Lab::new("bench", 2);
    let alpha = NodeDef {
        name: "alpha".into(),
        seed: 1,
    };
    let beta = NodeDef {
        name: "beta".into(),
        seed: 2,
    };
    lab.spawn(
        0,
        "iperf-svc",
        &["iperf3", "-s", "-B", "127.0.0.1", "-p", "5201"],
        None,
    );
    lab.spawn(
        0,
        "iperf-direct",
        &["iperf3", "-s", "-B", "198.18.0.1", "-p", "5202"],
        None,
    );
    lab.spawn(
        0,
        "echo-svc",
        &[me, "--echo-server", "127.0.0.1:7000"],
        None,
    );
    lab.spawn(
        0,
        "echo-direct",
        &[me, "--echo-server", "198.18.0.1:7001"],
        None,
    );
    let alpha_cfg = lab.write_config(
        0,
        &alpha,
        &[(&beta, 1)],
        "iperf = \"/tcp/5201\"\necho = \"/tcp/7000\"",
    );
    let beta_cfg = lab.write_config(1, &beta, &[(&alpha, 0)], "");
    lab.start_daemon(0, "alpha", &alpha_cfg);
    lab.start_daemon(1, "beta", &beta_cfg);
    let iperf_addr = alpha.service_address("iperf").to_string();
    let echo_target = format!("[{}]:7000", alpha.service_address("echo"));
    Lab::wait_until(
        "the echo service answers through svcnet",
        Duration::from_secs(15),
        || {
            lab.exec(1, &[me, "--latency-client", &echo_target, "1"])
                .status
                .success()
        },
    );

    if args.iter().any(|a| a == "--profile-one-stream") {
        let g = iperf(&lab, &iperf_addr, 5201, 1, 20);
        println!("tun_one_stream_gbps={g:.3}");
        return;
    }
    let mut results: Vec<(String, f64)> = Vec::new();
    for streams in [1u32, 4] {
        let (mut direct, mut svcnet) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            direct.push(iperf(&lab, "198.18.0.1", 5202, streams, seconds));
            svcnet.push(iperf(&lab, &iperf_addr, 5201, streams, seconds));
        }
        let (d, s) = (median(&direct), median(&svcnet));
        let name = if streams == 1 {
            "one_stream"
        } else {
            "four_streams"
        };
        results.push((format!("direct_{name}_gbps"), d));
        results.push((format!("tun_{name}_gbps"), s));
        results.push((format!("tun_{name}_ratio"), s / d));
    }
    let latency = |target: &str| -> f64 {
        let out = lab.exec(1, &[me, "--latency-client", target, &pings.to_string()]);
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|_| {
                panic!(
                    "latency to {target}: {}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })
    };
    let direct_lat = latency("198.18.0.1:7001");
    let tun_lat = latency(&echo_target);
    // The QUIC datagram size the sending node used (path MTU discovery's result): a fall back
    // to 1,200 would show here.
    let status = lab.exec(
        1,
        &[
            svcnet_e2e::svcnet_bin().to_str().expect("utf-8 path"),
            "status",
            "--json",
            "--config",
            beta_cfg.to_str().expect("utf-8 path"),
        ],
    );
    let path_mtu = serde_json::from_slice::<serde_json::Value>(&status.stdout)
        .ok()
        .and_then(|s| s["peers"][0]["path_mtu"].as_u64())
        .unwrap_or(0);
    println!("mode={}", if quick { "quick" } else { "full" });
    for (k, v) in results {
        println!("{k}={v:.3}");
    }
    println!("direct_connect_latency_us={direct_lat:.1}");
    println!("tun_connect_latency_us={tun_lat:.1}");
    println!("tun_connect_latency_ratio={:.2}", tun_lat / direct_lat);
    println!("tun_path_mtu={path_mtu}");
}
