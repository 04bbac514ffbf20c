//! Integration tests with real `svcnet` processes on 127.0.0.1: daemons, proxies, a real HTTP
//! server (python3 -m http.server) and a raw TCP echo service, over real QUIC.
//!
//! Waiting is done by polling a condition with a deadline (daemon status, a successful connect),
//! never by sleeping a fixed time and hoping.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use svcnet_core::identity::NodeKey;

const BIN: &str = env!("CARGO_BIN_EXE_svcnet");

/// A child process killed when the test ends, pass or fail.
struct Proc(Child, &'static str);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    /// Stops with SIGTERM (clean shutdown) and waits.
    fn terminate(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        panic!("{} did not exit within 5 s of SIGTERM", self.1);
    }
}

fn tempdir(tag: &str) -> PathBuf {
    static N: AtomicU16 = AtomicU16::new(0);
    let dir = std::env::temp_dir().join(format!(
        "svcnet-test-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct NodeDef {
    name: &'static str,
    seed: u8,
}

impl NodeDef {
    fn key_b64(&self) -> String {
        data_encoding::BASE64.encode(&[self.seed; 32])
    }
    fn id(&self) -> String {
        NodeKey::from_seed([self.seed; 32]).node_id().to_text()
    }
}

const ALPHA: NodeDef = NodeDef {
    name: "alpha",
    seed: 11,
};
const BETA: NodeDef = NodeDef {
    name: "beta",
    seed: 22,
};
const GAMMA: NodeDef = NodeDef {
    name: "gamma",
    seed: 33,
};

/// Writes a config for `me` listening on `port` (0: none), knowing `peers` (def, dial port).
fn write_config(
    dir: &Path,
    me: &NodeDef,
    port: u16,
    peers: &[(&NodeDef, Option<u16>)],
    services: &str,
) -> PathBuf {
    let mut text = format!(
        "name = \"{}\"\nprivate_key = \"{}\"\n",
        me.name,
        me.key_b64()
    );
    if port != 0 {
        text.push_str(&format!(
            "listen = [\"/ip4/127.0.0.1/udp/{port}/quic-v1\"]\n"
        ));
    }
    text.push_str("\n[metrics]\nlisten = \"127.0.0.1:0\"\n");
    for (peer, dial) in peers {
        let addrs = match dial {
            Some(p) => format!("[\"/ip4/127.0.0.1/udp/{p}/quic-v1\"]"),
            None => "[]".into(),
        };
        text.push_str(&format!(
            "\n[[peers]]\nid = \"{}\"\nname = \"{}\"\naddrs = {addrs}\n",
            peer.id(),
            peer.name
        ));
    }
    text.push_str(&format!(
        "\n[services]\n{services}\n\n[tun]\nenabled = false\n"
    ));
    let path = dir.join(format!("{}.toml", me.name));
    std::fs::write(&path, text).unwrap();
    path
}

fn spawn(args: &[&str], what: &'static str) -> Proc {
    let child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {what}: {e}"));
    Proc(child, what)
}

fn daemon(config: &Path) -> Proc {
    spawn(
        &[
            "daemon",
            "--userspace",
            "--config",
            config.to_str().unwrap(),
        ],
        "daemon",
    )
}

fn proxy(config: &Path, target: &str, listen: SocketAddr) -> Proc {
    let p = spawn(
        &[
            "proxy",
            target,
            "--listen",
            &listen.to_string(),
            "--config",
            config.to_str().unwrap(),
        ],
        "proxy",
    );
    wait_until("the proxy listens", Duration::from_secs(10), || {
        TcpStream::connect(listen).is_ok()
    });
    p
}

fn status_json(config: &Path) -> Option<serde_json::Value> {
    let out = Command::new(BIN)
        .args(["status", "--json", "--config", config.to_str().unwrap()])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if cond() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting until {what}"
        );
        thread::sleep(Duration::from_millis(25));
    }
}

/// A TCP echo server on a thread per connection; echoes until EOF, then closes its side.
fn echo_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if stream.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = stream.shutdown(Shutdown::Write);
            });
        }
    });
    port
}

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Sends `data` through `addr` while reading the echo concurrently; returns the echo.
fn echo_roundtrip(addr: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut reader = stream.try_clone().unwrap();
    let reader = thread::spawn(move || {
        let mut out = Vec::new();
        reader.read_to_end(&mut out).map(|_| out)
    });
    stream.write_all(data).unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    reader.join().unwrap().expect("echo read failed")
}

struct Net {
    dir: PathBuf,
    alpha_config: PathBuf,
    beta_config: PathBuf,
    alpha_port: u16,
    _alpha: Option<Proc>,
}

/// alpha serves `services`; beta knows alpha's address (alpha knows beta without one).
fn two_nodes(tag: &str, services: &str) -> Net {
    let dir = tempdir(tag);
    let alpha_port = free_udp_port();
    let alpha_config = write_config(&dir, &ALPHA, alpha_port, &[(&BETA, None)], services);
    let beta_config = write_config(&dir, &BETA, 0, &[(&ALPHA, Some(alpha_port))], "");
    let alpha = daemon(&alpha_config);
    wait_until(
        "alpha's control socket answers",
        Duration::from_secs(10),
        || status_json(&alpha_config).is_some(),
    );
    Net {
        dir,
        alpha_config,
        beta_config,
        alpha_port,
        _alpha: Some(alpha),
    }
}

#[test]
fn init_writes_a_config_that_id_reads_and_refuses_to_overwrite() {
    let dir = tempdir("init");
    let path = dir.join("n.toml");
    let out = Command::new(BIN)
        .args(["init", "--config", path.to_str().unwrap(), "--name", "n1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(id.len(), 56);
    let out = Command::new(BIN)
        .args(["id", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), id);
    let again = Command::new(BIN)
        .args(["init", "--config", path.to_str().unwrap(), "--name", "n1"])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn startup_failures_exit_non_zero_with_a_reason() {
    let dir = tempdir("startup");
    // Unreadable config.
    let out = Command::new(BIN)
        .args([
            "daemon",
            "--userspace",
            "--config",
            "/nonexistent/svcnet.toml",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/svcnet.toml"));
    // Port taken.
    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let config = write_config(&dir, &ALPHA, port, &[], "");
    let out = Command::new(BIN)
        .args([
            "daemon",
            "--userspace",
            "--config",
            config.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&port.to_string()) && stderr.contains("listen"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn proxies_a_real_http_server() {
    let www = tempdir("www");
    std::fs::write(www.join("hello.txt"), "hello through svcnet\n").unwrap();
    let http_port = free_tcp_port();
    let _http = Proc(
        Command::new("python3")
            .args([
                "-m",
                "http.server",
                &http_port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .current_dir(&www)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 is needed for this test"),
        "http.server",
    );
    wait_until("http.server listens", Duration::from_secs(10), || {
        TcpStream::connect(("127.0.0.1", http_port)).is_ok()
    });
    let net = two_nodes("http", &format!("web = \"/tcp/{http_port}\""));
    let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, free_tcp_port()));
    let _proxy = proxy(&net.beta_config, "web.alpha", listen);
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            &format!("http://{listen}/hello.txt"),
        ])
        .output()
        .expect("curl is needed for this test");
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello through svcnet\n"
    );

    // The served side counts the connection and its bytes while the daemon runs.
    let status = status_json(&net.alpha_config).unwrap();
    let served = status["counters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["direction"] == "served" && c["service"] == "web")
        .expect("a served counter for web");
    assert!(served["connections_total"].as_u64().unwrap() >= 1);
    assert!(served["bytes_to_client"].as_u64().unwrap() > 20);
    let _ = std::fs::remove_dir_all(&www);
    let _ = std::fs::remove_dir_all(&net.dir);
}

#[test]
fn echo_parallel_large_and_half_close() {
    let echo_port = echo_server();
    let net = two_nodes("echo", &format!("echo = \"/tcp/{echo_port}\""));
    let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, free_tcp_port()));
    let _proxy = proxy(&net.beta_config, "echo.alpha", listen);

    // Half-close: our FIN reaches the service, its answer still comes back, then its FIN.
    let echoed = echo_roundtrip(listen, b"ping");
    assert_eq!(echoed, b"ping");

    // 100 parallel connections, each with its own data.
    let handles: Vec<_> = (0..100u64)
        .map(|i| {
            thread::spawn(move || {
                let data = pseudo_random(20_000 + i as usize * 37, i);
                let back = echo_roundtrip(listen, &data);
                assert_eq!(blake3::hash(&back), blake3::hash(&data), "connection {i}");
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }

    // 100 MB through one connection, checksum compared.
    let data = pseudo_random(100 * 1024 * 1024, 7);
    let back = echo_roundtrip(listen, &data);
    assert_eq!(back.len(), data.len());
    assert_eq!(blake3::hash(&back), blake3::hash(&data));

    // Live status: the proxy's peer shows up as connected at alpha.
    let status = status_json(&net.alpha_config).unwrap();
    let beta = &status["peers"][0];
    assert_eq!(beta["name"], "beta");
    assert_eq!(beta["state"], "connected");
    // Loopback carries jumbo datagrams: path MTU discovery went past Ethernet's 1,452, and the
    // bulk transfer did not make quinn fall back to 1,200 (architecture.md §6.7).
    let mtu = beta["path_mtu"].as_u64().unwrap_or(0);
    assert!(mtu > 1452, "path MTU {mtu} after 100 MB over loopback");
    let _ = std::fs::remove_dir_all(&net.dir);
}

#[test]
fn target_down_is_refused_promptly_and_unknown_nodes_are_rejected() {
    let closed_port = free_tcp_port(); // nothing listens here
    let net = two_nodes("refuse", &format!("down = \"/tcp/{closed_port}\""));
    let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, free_tcp_port()));
    let _proxy = proxy(&net.beta_config, "down.alpha", listen);
    let start = Instant::now();
    let mut stream = TcpStream::connect(listen).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 16];
    let result = stream.read(&mut buf);
    assert!(
        matches!(&result, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "expected a reset, got {result:?}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "refusal took {:?}",
        start.elapsed()
    );

    // gamma is not in alpha's peer list: its proxy cannot get through.
    let gamma_config = write_config(&net.dir, &GAMMA, 0, &[(&ALPHA, Some(net.alpha_port))], "");
    let gamma_listen = SocketAddr::from((Ipv4Addr::LOCALHOST, free_tcp_port()));
    let _gamma = proxy(&gamma_config, "down.alpha", gamma_listen);
    let mut stream = TcpStream::connect(gamma_listen).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    assert!(matches!(stream.read(&mut buf), Err(_) | Ok(0)));
    let status = status_json(&net.alpha_config).unwrap();
    assert!(
        status["peers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["id"] != GAMMA.id()),
        "gamma must not appear as a peer"
    );
    let metrics_refused = wait_until(
        "alpha counts the refused handshake",
        Duration::from_secs(10),
        || {
            metrics_value(&net.alpha_config, "svcnet_handshakes_refused_total").unwrap_or(0.0)
                >= 1.0
        },
    );
    let _ = metrics_refused;
    let _ = std::fs::remove_dir_all(&net.dir);
}

/// Reads one metric from the daemon's Prometheus endpoint (address from `status`).
fn metrics_value(config: &Path, name: &str) -> Option<f64> {
    let status = status_json(config)?;
    let addr: SocketAddr = status["node"]["metrics"].as_str()?.parse().ok()?;
    let mut stream = TcpStream::connect(addr).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    text.lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn daemon_restart_is_reconnected_within_five_seconds() {
    let echo_port = echo_server();
    let mut net = two_nodes("restart", &format!("echo = \"/tcp/{echo_port}\""));
    let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, free_tcp_port()));
    let _proxy = proxy(&net.beta_config, "echo.alpha", listen);
    assert_eq!(echo_roundtrip(listen, b"before"), b"before");

    net._alpha.take().unwrap().terminate();
    let restarted = Instant::now();
    let _alpha = daemon(&net.alpha_config);
    let works = || {
        TcpStream::connect(listen)
            .and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                s.write_all(b"after")?;
                s.shutdown(Shutdown::Write)?;
                let mut out = Vec::new();
                s.read_to_end(&mut out)?;
                Ok(out == b"after")
            })
            .unwrap_or(false)
    };
    wait_until("the service works again", Duration::from_secs(5), works);
    assert!(restarted.elapsed() < Duration::from_secs(5));
    let _ = std::fs::remove_dir_all(&net.dir);
}

/// A service that reads a little, then resets the connection (SO_LINGER 0).
fn resetting_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            thread::spawn(move || {
                let mut buf = [0u8; 5];
                if stream.read_exact(&mut buf).is_ok() {
                    let _ = stream.write_all(b"partial");
                    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                }
            });
        }
    });
    port
}

#[test]
fn resets_propagate_in_both_directions() {
    let reset_port = resetting_server();
    let echo_port = echo_server();
    let net = two_nodes(
        "reset",
        &format!("rst = \"/tcp/{reset_port}\"\necho = \"/tcp/{echo_port}\""),
    );
    // The service resets: the client gets the bytes sent before, then a reset (not a clean EOF).
    let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, free_tcp_port()));
    let _proxy = proxy(&net.beta_config, "rst.alpha", listen);
    let mut stream = TcpStream::connect(listen).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(b"hello").unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    let end = loop {
        match stream.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => break Err(e),
        }
    };
    assert!(
        matches!(&end, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "expected a reset after {got:?}, got {end:?}"
    );

    // The client resets: the served connection is counted as an error at alpha, promptly.
    let echo_listen = SocketAddr::from((Ipv4Addr::LOCALHOST, free_tcp_port()));
    let _echo_proxy = proxy(&net.beta_config, "echo.alpha", echo_listen);
    let mut stream = TcpStream::connect(echo_listen).unwrap();
    stream.write_all(b"abc").unwrap();
    let mut three = [0u8; 3];
    stream.read_exact(&mut three).unwrap();
    socket2::SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(stream);
    wait_until("alpha sees the reset", Duration::from_secs(5), || {
        status_json(&net.alpha_config)
            .and_then(|s| {
                s["counters"].as_array().and_then(|c| {
                    c.iter()
                        .find(|c| c["direction"] == "served" && c["service"] == "echo")
                        .map(|c| {
                            c["errors_total"].as_u64() == Some(1)
                                && c["connections_active"].as_u64() == Some(0)
                        })
                })
            })
            .unwrap_or(false)
    });
    let _ = std::fs::remove_dir_all(&net.dir);
}

#[test]
fn tun_mode_without_cap_net_admin_exits_with_a_hint() {
    // Dropping privileges needs root; as a normal user the test itself is the unprivileged case.
    let root = std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false);
    let dir = tempdir("nocap");
    let config = write_config(&dir, &ALPHA, 0, &[], "");
    // TUN on (the default), and world-readable so an unprivileged user can load it.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("[tun]\nenabled = false\n", "");
    std::fs::write(&config, text).unwrap();
    let mut perms = std::fs::metadata(&dir).unwrap().permissions();
    // The unprivileged daemon creates its control socket next to the config.
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o777);
    std::fs::set_permissions(&dir, perms).unwrap();
    let mut perms = std::fs::metadata(&config).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
    std::fs::set_permissions(&config, perms).unwrap();
    let mut cmd = if root {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN]);
        c
    } else {
        Command::new(BIN)
    };
    let out = cmd
        .args(["daemon", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("CAP_NET_ADMIN") && stderr.contains("--userspace"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn max_peers_is_enforced() {
    let echo_port = echo_server();
    let dir = tempdir("maxpeers");
    let alpha_port = free_udp_port();
    let alpha_config = write_config(
        &dir,
        &ALPHA,
        alpha_port,
        &[(&BETA, None), (&GAMMA, None)],
        &format!("echo = \"/tcp/{echo_port}\""),
    );
    let mut text = std::fs::read_to_string(&alpha_config).unwrap();
    text.push_str("\n[limits]\nmax_peers = 1\n");
    std::fs::write(&alpha_config, text).unwrap();
    let beta_config = write_config(&dir, &BETA, 0, &[(&ALPHA, Some(alpha_port))], "");
    let gamma_config = write_config(&dir, &GAMMA, 0, &[(&ALPHA, Some(alpha_port))], "");
    let _alpha = daemon(&alpha_config);
    wait_until(
        "alpha's control socket answers",
        Duration::from_secs(10),
        || status_json(&alpha_config).is_some(),
    );
    let beta_listen = SocketAddr::from((Ipv4Addr::LOCALHOST, free_tcp_port()));
    let _beta = proxy(&beta_config, "echo.alpha", beta_listen);
    assert_eq!(echo_roundtrip(beta_listen, b"first"), b"first");

    // A second distinct peer does not fit: gamma's connections are closed at once.
    let gamma_listen = SocketAddr::from((Ipv4Addr::LOCALHOST, free_tcp_port()));
    let _gamma = proxy(&gamma_config, "echo.alpha", gamma_listen);
    let mut stream = TcpStream::connect(gamma_listen).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let _ = stream.write_all(b"second");
    let mut buf = [0u8; 16];
    assert!(matches!(stream.read(&mut buf), Err(_) | Ok(0)));
    let status = status_json(&alpha_config).unwrap();
    let connected: Vec<_> = status["peers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["state"] == "connected")
        .map(|p| p["name"].clone())
        .collect();
    assert_eq!(connected, vec![serde_json::json!("beta")]);
    // beta still works.
    assert_eq!(echo_roundtrip(beta_listen, b"again"), b"again");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A server that answers every connection with `name` and closes; dropping the returned
/// listener handle stops it (later connections are refused).
fn whoami_server(name: &'static str) -> (u16, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = stop.clone();
    thread::spawn(move || {
        for stream in listener.incoming() {
            if stopped.load(Ordering::SeqCst) {
                // Refuse from now on: the listener closes when this thread ends.
                return;
            }
            if let Ok(mut stream) = stream {
                let _ = stream.write_all(name.as_bytes());
            }
        }
    });
    (port, stop)
}

fn ask_whoami(addr: SocketAddr) -> Result<String, String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    stream.read_to_string(&mut out).map_err(|e| e.to_string())?;
    if out.is_empty() {
        return Err("empty answer (connection reset or closed)".into());
    }
    Ok(out)
}

#[test]
fn roles_are_replicated_balanced_and_fail_over() {
    let dir = tempdir("roles");
    let (p1, stop1) = whoami_server("couch-a");
    let (p2, _stop2) = whoami_server("couch-g3");
    let (p3, _stop3) = whoami_server("couch-g4");
    let fast = "\n[registry]\nlease = \"3s\"\nheartbeat = \"1s\"\nhealth_interval = \"1s\"\nbalance = \"round-robin\"\n";
    let (alpha_port, gamma_port) = (free_udp_port(), free_udp_port());
    let write = |me: &NodeDef, port, peers: &[(&NodeDef, Option<u16>)], services: &str| {
        let path = write_config(&dir, me, port, peers, services);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str(fast);
        std::fs::write(&path, text).unwrap();
        path
    };
    // alpha and gamma authorize each other but neither dials the other (no addresses); beta
    // dials both. Replication between alpha and gamma goes through beta.
    let alpha_config = write(
        &ALPHA,
        alpha_port,
        &[(&BETA, None), (&GAMMA, None)],
        &format!("[services.couch]\ntarget = \"/tcp/{p1}\"\nrole = \"couchdb@3.2.2\"\n"),
    );
    let gamma_config = write(
        &GAMMA,
        gamma_port,
        &[(&BETA, None), (&ALPHA, None)],
        &format!(
            "[services.couch]\ntarget = \"/tcp/{p2}\"\nrole = \"couchdb@3.4.0\"\n\
             [services.couch4]\ntarget = \"/tcp/{p3}\"\nrole = \"couchdb@4.0.0\"\n"
        ),
    );
    let beta_port = free_udp_port();
    let beta_config = write(
        &BETA,
        beta_port,
        &[(&ALPHA, Some(alpha_port)), (&GAMMA, Some(gamma_port))],
        "",
    );
    let _alpha = daemon(&alpha_config);
    let gamma = daemon(&gamma_config);
    let _beta = daemon(&beta_config);
    let instances = |config: &Path| -> Vec<(String, String, bool)> {
        let out = Command::new(BIN)
            .args(["services", "--json", "--config", config.to_str().unwrap()])
            .output()
            .unwrap();
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
            return Vec::new();
        };
        let mut rows: Vec<_> = v["instances"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|i| {
                (
                    i["node"].as_str().unwrap_or("").to_string(),
                    i["version"].as_str().unwrap_or("").to_string(),
                    i["healthy"].as_bool().unwrap_or(false),
                )
            })
            .collect();
        rows.sort();
        rows
    };
    // Every node holds the full replica, alpha's included (relayed by beta).
    wait_until(
        "alpha sees gamma's instances",
        Duration::from_secs(15),
        || instances(&alpha_config).len() == 3,
    );
    wait_until("beta sees all instances", Duration::from_secs(15), || {
        instances(&beta_config).len() == 3
    });
    assert_eq!(
        metrics_value(&beta_config, "svcnet_registry_instances"),
        Some(3.0),
        "the replica size is exported live"
    );

    // A role proxy on beta (run by beta's daemon): ^3.1 balances over both 3.x instances, never 4.
    let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, free_tcp_port()));
    let _proxy = proxy(&beta_config, "couchdb@^3.1", listen);
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..10 {
        *seen.entry(ask_whoami(listen).unwrap()).or_insert(0) += 1;
    }
    assert_eq!(
        seen.keys().cloned().collect::<Vec<_>>(),
        vec!["couch-a".to_string(), "couch-g3".to_string()],
        "{seen:?}"
    );
    // Round robin spreads them (its exact rotation is a unit test of the core's balancer; here
    // a replica update between picks may restart the cursor).
    assert!(
        seen.values().all(|n| *n >= 3),
        "round robin spreads: {seen:?}"
    );

    // Role names resolve to the stable role address.
    let out = Command::new(BIN)
        .args([
            "resolve",
            "v3.couchdb.role",
            "--config",
            beta_config.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let expected = svcnet_core::addressing::NetworkPrefix::derive("svcnet").role_address(
        &svcnet_core::addressing::RoleName::parse("couchdb").unwrap(),
        Some(svcnet_core::addressing::VersionLabel {
            major: 3,
            minor: None,
        }),
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        expected.to_string()
    );

    // alpha's target stops: every connection still succeeds (failover before the client
    // notices), and alpha's health check soon marks it unhealthy.
    stop1.store(true, Ordering::SeqCst);
    let _ = TcpStream::connect(("127.0.0.1", p1)); // wakes the accept loop so it exits
    for i in 0..10 {
        assert_eq!(
            ask_whoami(listen),
            Ok("couch-g3".to_string()),
            "connection {i}"
        );
    }
    wait_until(
        "alpha's instance is unhealthy at beta",
        Duration::from_secs(10),
        || {
            instances(&beta_config)
                .iter()
                .any(|(node, _, healthy)| node == "alpha" && !healthy)
        },
    );

    // gamma crashes (no withdrawal): its instances expire after the lease.
    drop(gamma);
    wait_until(
        "gamma's instances expire at beta",
        Duration::from_secs(15),
        || {
            instances(&beta_config)
                .iter()
                .all(|(node, _, _)| node != "gamma")
        },
    );
    let _ = std::fs::remove_dir_all(&dir);
}
