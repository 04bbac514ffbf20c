//! Config tests: a full config, the defaults, and one test per family of mistakes, each checking
//! that the message names the key, the reason and (where known) the line.

use super::*;
use crate::sockopt::Keepalive;
use proptest::prelude::*;
use proptest::strategy::Strategy;
use std::net::{Ipv4Addr, Ipv6Addr};
use svcnet_core::service::{PortAllowList, TargetHost};

fn seed_b64(seed: u8) -> String {
    data_encoding::BASE64.encode(&[seed; 32])
}

fn id_of(seed: u8) -> NodeId {
    NodeKey::from_seed([seed; 32]).node_id()
}

fn base() -> String {
    format!("name = \"alpha\"\nprivate_key = \"{}\"\n", seed_b64(1))
}

fn load(extra: &str) -> Result<Config, ConfigError> {
    Config::from_toml(
        &format!("{}{extra}", base()),
        Path::new("/etc/svcnet/alpha.toml"),
    )
}

/// Loads `extra` after the base config and returns the error, checking its display form.
fn error(extra: &str) -> ConfigError {
    let err = load(extra).expect_err(extra);
    let text = err.to_string();
    assert!(text.starts_with("/etc/svcnet/alpha.toml: "), "{text}");
    if let Some(key) = &err.key {
        assert!(text.contains(&format!("key `{key}`: ")), "{text}");
    }
    err
}

fn assert_error(extra: &str, key: &str, reason_part: &str) -> ConfigError {
    let err = error(extra);
    assert_eq!(err.key.as_deref(), Some(key), "{err}");
    assert!(err.reason.contains(reason_part), "{err}");
    assert_eq!(err.kind, ConfigErrorKind::Invalid);
    err
}

#[test]
fn defaults() {
    let config = load("").unwrap();
    assert_eq!(config.name.as_str(), "alpha");
    assert_eq!(config.node_id(), id_of(1));
    assert_eq!(config.network, "svcnet");
    assert_eq!(config.listen, vec!["0.0.0.0:7700".parse().unwrap()]);
    assert!(config.peers.is_empty() && config.services.is_empty());
    assert_eq!(
        config.tun,
        TunConfig {
            enabled: true,
            name: "svcnet0".into(),
            mtu: 65520
        }
    );
    assert_eq!(config.dns.listen, None);
    assert_eq!(config.dns.zone, Zone::default());
    assert_eq!(config.dns.forward, None);
    assert_eq!(config.limits, Limits::default());
    assert_eq!(config.limits.keep_alive, Duration::from_secs(5));
    assert_eq!(config.transport.socket, SocketOptions::default());
    assert_eq!(config.proxy.socket, SocketOptions::default());
    assert_eq!(
        config.control.socket,
        PathBuf::from("/etc/svcnet/alpha.sock")
    );
    assert_eq!(config.metrics.listen, None);
    assert_eq!(config.threads, None);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(config.worker_threads(), (cpus / 2).max(1));
}

#[test]
fn threads_key() {
    let config = load("threads = 3\n").unwrap();
    assert_eq!((config.threads, config.worker_threads()), (Some(3), 3));
    assert_error("threads = 0\n", "threads", "0 is out of range: 1 to 1024");
    assert_error("threads = 5000\n", "threads", "out of range");
    assert_error("threads = \"auto\"\n", "threads", "expected an integer");
}

#[test]
fn full_config() {
    let beta = id_of(2);
    let gamma = id_of(3);
    let text = format!(
        r#"
network = "corp"
listen = ["/ip4/0.0.0.0/udp/7700/quic-v1", "/ip6/::/udp/7701/quic-v1"]

[[peers]]
id = "{beta}"
name = "Beta"
addrs = ["/ip4/192.0.2.10/udp/7700/quic-v1", "/dns4/Beta.Example.com./udp/7700/quic-v1", "/ip6/2001:db8::1/udp/7700/quic-v1"]

[[peers]]
id = "{gamma_upper}"

[services]
web = "/tcp/8080"
other = "/ip4/10.0.0.4/tcp/9092"
passthrough = "/ip4/10.0.0.5"

[services.couch]
target = "/dns/couch.lan/tcp/5984"
role = "couchdb@3.2.2"
ports = [5984, "6984-6986", 80]

[services.couch.socket]
nodelay = true
keepalive_idle = "60s"
keepalive_interval = "10s"
keepalive_count = 6
connect_timeout = "2s"
user_timeout = "30s"

[tun]
enabled = false
name = "svc1"
mtu = 1500

[dns]
listen = "127.0.0.1:5353"
zone = "Corp.Svcnet."
forward = "127.0.0.53"

[limits]
max_peers = 10
max_streams_per_peer = 100
max_connections = 1000
connect_timeout = "1s 500ms"
handshake_timeout = "3s"
idle_timeout = "1m"
keep_alive = "15s"
header_timeout = "2s"

[transport.socket]
recv_buffer = 4194304
send_buffer = 1048576
reuseport = true
mark = 7

[proxy.socket]
nodelay = true
reuseaddr = true

[control]
socket = "run/alpha.ctl"

[metrics]
listen = "[::1]:9477"
"#,
        gamma_upper = gamma.to_string().to_uppercase()
    );
    let config = load(&text).unwrap();
    assert_eq!(config.network, "corp");
    assert_eq!(
        config.listen,
        vec![
            "0.0.0.0:7700".parse().unwrap(),
            "[::]:7701".parse().unwrap()
        ]
    );
    assert_eq!(config.peers.len(), 2);
    assert_eq!(config.peers[0].id, beta);
    assert_eq!(config.peers[0].name.as_ref().unwrap().as_str(), "beta");
    assert_eq!(
        config.peers[0].addrs,
        vec![
            PeerAddr::Ip("192.0.2.10:7700".parse().unwrap()),
            PeerAddr::Dns {
                host: "beta.example.com".into(),
                port: 7700
            },
            PeerAddr::Ip("[2001:db8::1]:7700".parse().unwrap()),
        ]
    );
    assert_eq!(
        config.peers[0].addrs[1].to_string(),
        "/dns/beta.example.com/udp/7700/quic-v1"
    );
    assert_eq!(config.peers[1].id, gamma);
    assert_eq!(config.peers[1].name, None);
    assert!(config.peers[1].addrs.is_empty());

    let names: Vec<&str> = config.services.keys().map(|s| s.as_str()).collect();
    assert_eq!(names, ["couch", "other", "passthrough", "web"]);
    let web = &config.services[&ServiceName::parse("web").unwrap()];
    assert_eq!(
        web.entry.resolve_dial(80),
        Ok((TargetHost::Ip(Ipv4Addr::LOCALHOST.into()), 8080))
    );
    assert_eq!(web.role, None);
    let pass = &config.services[&ServiceName::parse("passthrough").unwrap()];
    assert_eq!(
        pass.entry.resolve_dial(443),
        Ok((TargetHost::Ip(Ipv4Addr::new(10, 0, 0, 5).into()), 443))
    );
    let couch = &config.services[&ServiceName::parse("couch").unwrap()];
    assert_eq!(couch.role.as_deref(), Some("couchdb@3.2.2"));
    assert_eq!(
        couch.entry.allowed_ports,
        Some(PortAllowList::new([80..=80, 5984..=5984, 6984..=6986]).unwrap())
    );
    assert_eq!(couch.entry.target.to_string(), "/dns/couch.lan/tcp/5984");
    assert_eq!(
        couch.socket.keepalive,
        Some(Keepalive {
            idle: Duration::from_secs(60),
            interval: Duration::from_secs(10),
            count: 6
        })
    );
    assert_eq!(couch.socket.nodelay, Some(true));
    assert_eq!(couch.socket.connect_timeout, Some(Duration::from_secs(2)));
    assert_eq!(couch.socket.user_timeout, Some(Duration::from_secs(30)));

    assert_eq!(
        config.tun,
        TunConfig {
            enabled: false,
            name: "svc1".into(),
            mtu: 1500
        }
    );
    assert_eq!(config.dns.listen, Some("127.0.0.1:5353".parse().unwrap()));
    assert_eq!(config.dns.zone.as_str(), "corp.svcnet");
    assert_eq!(config.dns.forward, Some("127.0.0.53:53".parse().unwrap()));
    assert_eq!(
        config.limits,
        Limits {
            max_peers: 10,
            max_streams_per_peer: 100,
            max_connections: 1000,
            connect_timeout: Duration::from_millis(1500),
            handshake_timeout: Duration::from_secs(3),
            idle_timeout: Duration::from_secs(60),
            keep_alive: Duration::from_secs(15),
            header_timeout: Duration::from_secs(2),
        }
    );
    assert_eq!(config.transport.socket.recv_buffer, Some(4 << 20));
    assert_eq!(config.transport.socket.send_buffer, Some(1 << 20));
    assert_eq!(config.transport.socket.reuseport, Some(true));
    assert_eq!(config.transport.socket.mark, Some(7));
    assert_eq!(config.proxy.socket.nodelay, Some(true));
    assert_eq!(config.proxy.socket.reuseaddr, Some(true));
    assert_eq!(
        config.control.socket,
        PathBuf::from("/etc/svcnet/run/alpha.ctl")
    );
    assert_eq!(
        config.metrics.listen,
        Some(SocketAddr::new(Ipv6Addr::LOCALHOST.into(), 9477))
    );
}

#[test]
fn unknown_keys_are_named_with_a_suggestion() {
    let err = assert_error("nmae = 1\n", "nmae", "did you mean `name`?");
    assert_eq!(err.location, Some((3, 1)));
    assert!(err.to_string().ends_with("(line 3, column 1)"), "{err}");
    assert_error("colour = 1\n", "colour", "the keys allowed here are `name`");
    let peer = format!("[[peers]]\nid = \"{}\"\naddress = []\n", id_of(2));
    let err = assert_error(&peer, "peers[0].address", "did you mean `peers[0].addrs`?");
    assert_eq!(err.location, Some((5, 1)));
    assert_error(
        "[limits]\nkeepalive = \"5s\"\n",
        "limits.keepalive",
        "did you mean `limits.keep_alive`?",
    );
    assert_error(
        "[transport.socket]\nrecv-buffer = 4096\n",
        "transport.socket.recv-buffer",
        "did you mean `transport.socket.recv_buffer`?",
    );
    assert_error(
        "[services.web]\ntarget = \"/tcp/80\"\nport = [80]\n",
        "services.web.port",
        "did you mean `services.web.ports`?",
    );
    assert_error(
        "[tun]\nmtu = 1400\nnmae = \"x\"\n",
        "tun.nmae",
        "`tun.name`",
    );
}

#[test]
fn missing_and_mistyped_required_keys() {
    let path = Path::new("a.toml");
    let err = Config::from_toml("", path).unwrap_err();
    assert_eq!(err.key.as_deref(), Some("name"));
    assert!(err.reason.contains("is missing"), "{err}");
    assert_eq!(
        err.to_string(),
        format!("a.toml: key `name`: {}", err.reason)
    );

    let err = Config::from_toml("name = \"alpha\"\n", path).unwrap_err();
    assert_eq!(err.key.as_deref(), Some("private_key"));
    assert!(err.reason.contains("svcnet init"), "{err}");

    let err = Config::from_toml(
        &format!("name = \"role\"\nprivate_key = \"{}\"", seed_b64(1)),
        path,
    )
    .unwrap_err();
    assert_eq!(err.key.as_deref(), Some("name"));
    assert!(err.reason.contains("reserved"), "{err}");
    let err = Config::from_toml(
        &format!("name = 5\nprivate_key = \"{}\"", seed_b64(1)),
        path,
    )
    .unwrap_err();
    assert!(
        err.reason
            .contains("expected a string, found the integer 5"),
        "{err}"
    );
}

#[test]
fn private_key_errors_never_show_the_key() {
    let short = data_encoding::BASE64.encode(&[9u8; 16]);
    let err = Config::from_toml(
        &format!("name = \"a\"\nprivate_key = \"{short}\""),
        Path::new("a.toml"),
    )
    .unwrap_err();
    assert_eq!(err.key.as_deref(), Some("private_key"));
    assert!(err.reason.contains("decodes to 16 bytes"), "{err}");
    assert!(!err.to_string().contains(&short));
    let err = Config::from_toml(
        "name = \"a\"\nprivate_key = \"not base64!\"",
        Path::new("a.toml"),
    )
    .unwrap_err();
    assert!(err.reason.contains("is not base64"), "{err}");
    assert!(!err.to_string().contains("not base64!"));
    // Unpadded base64 is accepted too.
    let nopad = data_encoding::BASE64_NOPAD.encode(&[1u8; 32]);
    let config = Config::from_toml(
        &format!("name = \"a\"\nprivate_key = \"{nopad}\""),
        Path::new("a.toml"),
    )
    .unwrap();
    assert_eq!(config.node_id(), id_of(1));
}

#[test]
fn bad_multiaddrs() {
    assert_error(
        "listen = [\"/ip4/0.0.0.0/tcp/7700\"]\n",
        "listen[0]",
        "expected /ip4|ip6/<address>/udp/<port>/quic-v1",
    );
    assert_error(
        "listen = [\"0.0.0.0:7700\"]\n",
        "listen[0]",
        "is not a multiaddr",
    );
    assert_error("listen = []\n", "listen", "needs at least one address");
    assert_error(
        "listen = [\"/ip4/0.0.0.0/udp/1/quic-v1\", \"/ip4/0.0.0.0/udp/1/quic-v1\"]\n",
        "listen[1]",
        "listed twice",
    );
    let peer = |addr: &str| format!("[[peers]]\nid = \"{}\"\naddrs = [\"{addr}\"]\n", id_of(2));
    assert_error(
        &peer("/ip4/1.2.3.4/udp/0/quic-v1"),
        "peers[0].addrs[0]",
        "port 0",
    );
    assert_error(
        &peer("/ip4/1.2.3.4/udp/7700"),
        "peers[0].addrs[0]",
        "is not a peer address",
    );
    assert_error(
        &peer("/ip4/1.2.3.999/udp/7700/quic-v1"),
        "peers[0].addrs[0]",
        "is not a multiaddr",
    );
    assert_error(
        &peer("/dns/a..b/udp/7700/quic-v1"),
        "peers[0].addrs[0]",
        "invalid DNS host name",
    );

    let err = assert_error(
        "[services]\nweb = \"/udp/53\"\n",
        "services.web",
        "TCP only",
    );
    assert_eq!(err.location, Some((4, 7)));
    assert_error(
        "[services]\nweb = \"tcp/80\"\n",
        "services.web",
        "not a multiaddr",
    );
    assert_error(
        "[services]\nweb = \"/tcp/80/http\"\n",
        "services.web",
        "nothing may follow",
    );
    assert_error(
        "[services]\nweb = \"/unix/x.sock\"\n",
        "services.web",
        "TCP only",
    );
    assert_error("[services]\nweb = \"/tcp/0\"\n", "services.web", "port 0");
    assert_error(
        "[services.web]\ntarget = \"/ip4/1.2.3.4/ip4/1.2.3.5\"\n",
        "services.web.target",
        "two hosts",
    );
    assert_error(
        "[services.web]\nrole = \"web@1\"\n",
        "services.web.target",
        "is missing",
    );
    assert_error(
        "[services]\nweb = 80\n",
        "services.web",
        "expected a target string",
    );
}

#[test]
fn parse_service_target_forms() {
    for (text, display) in [
        ("/tcp/8080", "/ip4/127.0.0.1/tcp/8080"),
        ("/ip4/10.0.0.4/tcp/9092", "/ip4/10.0.0.4/tcp/9092"),
        ("/ip6/::1/tcp/80", "/ip6/::1/tcp/80"),
        ("/dns/host/tcp/80", "/dns/host/tcp/80"),
        ("/dns4/host/tcp/80", "/dns/host/tcp/80"),
        ("/dns6/host/tcp/80", "/dns/host/tcp/80"),
        ("/ip4/10.0.0.4", "/ip4/10.0.0.4"),
    ] {
        let target = parse_service_target(text).unwrap();
        assert_eq!(target.to_string(), display);
        // The display form parses back to the same target.
        assert_eq!(parse_service_target(display).unwrap(), target);
    }
    for bad in [
        "",
        "/",
        "/udp/53",
        "/ip4/1.2.3.4/udp/53",
        "/tcp/80/tcp/81",
        "/tcp/99999",
        "/unix/a",
    ] {
        assert!(parse_service_target(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn bad_node_ids_and_duplicate_peers() {
    let mut typo: Vec<char> = id_of(2).to_string().chars().collect();
    typo[10] = if typo[10] == 'a' { 'b' } else { 'a' };
    let typo: String = typo.into_iter().collect();
    assert_error(
        &format!("[[peers]]\nid = \"{typo}\"\n"),
        "peers[0].id",
        "bad checksum",
    );
    assert_error("[[peers]]\nid = \"abc\"\n", "peers[0].id", "wrong length");
    assert_error("[[peers]]\nname = \"beta\"\n", "peers[0].id", "is missing");

    let two = |a: &str, b: &str| format!("[[peers]]\n{a}\n[[peers]]\n{b}\n");
    let (beta, gamma) = (id_of(2), id_of(3));
    let err = assert_error(
        &two(&format!("id = \"{beta}\""), &format!("id = \"{beta}\"")),
        "peers[1].id",
        "already given by peers[0]",
    );
    assert_eq!(err.location.map(|l| l.0), Some(6));
    assert_error(
        &two(
            &format!("id = \"{beta}\"\nname = \"b\""),
            &format!("id = \"{gamma}\"\nname = \"B\""),
        ),
        "peers[1].name",
        "peers[0] already has the name \"b\"",
    );
    assert_error(
        &format!("[[peers]]\nid = \"{}\"\n", id_of(1)),
        "peers[0].id",
        "this node's own id",
    );
    assert_error(
        &format!("[[peers]]\nid = \"{beta}\"\nname = \"ALPHA\"\n"),
        "peers[0].name",
        "this node's own name",
    );
    assert_error("peers = 3\n", "peers", "expected an array");
}

#[test]
fn bad_durations_and_limits() {
    assert_error(
        "[limits]\nidle_timeout = \"30 parsecs\"\n",
        "limits.idle_timeout",
        "is not a duration",
    );
    assert_error(
        "[limits]\nidle_timeout = 30\n",
        "limits.idle_timeout",
        "needs a unit: write e.g. \"30s\"",
    );
    assert_error(
        "[limits]\nconnect_timeout = \"0s\"\n",
        "limits.connect_timeout",
        "longer than zero",
    );
    assert_error(
        "[limits]\nconnect_timeout = \"2days\"\n",
        "limits.connect_timeout",
        "at most 24h",
    );
    let err = assert_error(
        "[limits]\nidle_timeout = \"5s\"\n",
        "limits.keep_alive",
        "must be shorter than `limits.idle_timeout` (5s)",
    );
    assert_eq!(err.location.map(|l| l.0), Some(4));
    assert_error(
        "[limits]\nkeep_alive = \"30s\"\n",
        "limits.keep_alive",
        "shorter than",
    );
    assert_error(
        "[limits]\nmax_peers = 0\n",
        "limits.max_peers",
        "0 is out of range: 1 to",
    );
    assert_error(
        "[limits]\nmax_peers = -3\n",
        "limits.max_peers",
        "out of range",
    );
    assert_error(
        "[limits]\nmax_peers = \"10\"\n",
        "limits.max_peers",
        "expected an integer",
    );
    assert_error("[tun]\nmtu = 1000\n", "tun.mtu", "1280 to 65535");
    assert_error(
        "[tun]\nname = \"a-very-long-tun-name\"\n",
        "tun.name",
        "at most 15",
    );
    assert_error(
        "[tun]\nenabled = \"yes\"\n",
        "tun.enabled",
        "expected true or false",
    );
    assert_error(
        "[dns]\nzone = \"bad_zone\"\n",
        "dns.zone",
        "invalid character",
    );
    assert_error(
        "[dns]\nlisten = \"localhost:53\"\n",
        "dns.listen",
        "is not an IP address and port",
    );
    assert_error(
        "[metrics]\nlisten = \"127.0.0.1\"\n",
        "metrics.listen",
        "is not an IP address and port",
    );
    assert_error("tun = 1\n", "tun", "expected a table (`[tun]`)");
    assert_error("network = \"\"\n", "network", "1 to 255 bytes");
}

#[test]
fn socket_table_errors() {
    let err = assert_error(
        "[services.web]\ntarget = \"/tcp/80\"\n[services.web.socket]\nkeepalive_idle = \"30s\"\nkeepalive_count = 3\n",
        "services.web.socket.keepalive_idle",
        "`services.web.socket.keepalive_interval` is missing",
    );
    assert!(err.reason.contains("all three"), "{err}");
    assert_error(
        "[proxy.socket]\nkeepalive_count = 3\n",
        "proxy.socket.keepalive_count",
        "`proxy.socket.keepalive_idle` and `proxy.socket.keepalive_interval` are missing",
    );
    let err = assert_error(
        "[transport.socket]\nnodelay = true\n",
        "transport.socket.nodelay",
        "TCP_NODELAY does not apply to the QUIC UDP socket",
    );
    assert_eq!(err.location, Some((4, 11)));
    assert_error(
        "[proxy.socket]\nconnect_timeout = \"1s\"\n",
        "proxy.socket.connect_timeout",
        "does not apply to TCP listeners",
    );
    assert_error(
        "[services.web]\ntarget = \"/tcp/80\"\nsocket = { reuseport = true }\n",
        "services.web.socket.reuseport",
        "not bound to a local port",
    );
    assert_error(
        "[transport.socket]\nrecv_buffer = 10\n",
        "transport.socket.recv_buffer",
        "10 is out of range: 1024 to 268435456",
    );
    assert_error(
        "[proxy.socket]\nkeepalive_idle = \"1s\"\nkeepalive_interval = \"1s\"\nkeepalive_count = 200\n",
        "proxy.socket.keepalive_count",
        "200 is out of range: 1 to 127",
    );
    assert_error(
        "[transport.socket]\nmark = -1\n",
        "transport.socket.mark",
        "out of range",
    );
    assert_error(
        "[proxy.socket]\nkeepalive_idle = \"1500ms\"\nkeepalive_interval = \"1s\"\nkeepalive_count = 3\n",
        "proxy.socket.keepalive_idle",
        "whole, positive number of seconds",
    );
    assert_error(
        "[transport]\nsockets = {}\n",
        "transport.sockets",
        "did you mean `transport.socket`?",
    );
}

#[test]
fn service_table_errors() {
    assert_error(
        "[services]\n\"bad name\" = \"/tcp/80\"\n",
        "services.bad name",
        "not a valid service name",
    );
    assert_error(
        "[services]\nweb = \"/tcp/80\"\nWEB = \"/tcp/81\"\n",
        "services.WEB",
        "defined twice",
    );
    let svc = |extra: &str| format!("[services.couch]\ntarget = \"/tcp/5984\"\n{extra}\n");
    assert_error(
        &svc("role = \"couchdb\""),
        "services.couch.role",
        "has no version",
    );
    assert_error(
        &svc("role = \"couch db@1\""),
        "services.couch.role",
        "bad role name",
    );
    assert_error(
        &svc("role = \"couchdb@latest\""),
        "services.couch.role",
        "not a semantic version",
    );
    assert_error(
        &svc("role = \"couchdb@3.2\""),
        "services.couch.role",
        "not a semantic version",
    );
    assert_error(
        &svc("health = \"healthz\"\nrole = \"couchdb@3.2.2\""),
        "services.couch.health",
        "starting with `/`",
    );
    assert_error(
        &svc("health = \"/healthz\""),
        "services.couch.health",
        "add `role",
    );
    assert_error(&svc("ports = []"), "services.couch.ports", "empty");
    assert_error(
        &svc("ports = [0]"),
        "services.couch.ports[0]",
        "out of range: 1 to 65535",
    );
    assert_error(
        &svc("ports = [80, \"90-85\"]"),
        "services.couch.ports[1]",
        "reversed",
    );
    assert_error(
        &svc("ports = [\"http\"]"),
        "services.couch.ports[0]",
        "not a port or a port range",
    );
    assert_error(
        &svc("ports = [1.5]"),
        "services.couch.ports[0]",
        "expected a port",
    );
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    for text in [
        format!("listen = {}", "[".repeat(100_000)),
        format!("x = {}1{}", "[".repeat(5_000), "]".repeat(5_000)),
        format!("x = {}", "{ a = ".repeat(5_000)),
    ] {
        assert!(Config::from_toml(&text, Path::new("a.toml")).is_err());
    }
}

#[test]
fn syntax_errors_have_a_position() {
    let err =
        Config::from_toml("name = \"alpha\"\nname = \"beta\"\n", Path::new("a.toml")).unwrap_err();
    assert_eq!(err.kind, ConfigErrorKind::Syntax);
    assert_eq!(err.key, None);
    assert!(err.reason.starts_with("not valid TOML"), "{err}");
    assert_eq!(err.location.map(|l| l.0), Some(2));
    let err = Config::from_toml("name = \n", Path::new("a.toml")).unwrap_err();
    assert_eq!(err.kind, ConfigErrorKind::Syntax);
    assert!(
        err.to_string().starts_with("a.toml: not valid TOML"),
        "{err}"
    );
}

/// A fresh, empty directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("svcnet-config-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn init_writes_a_config_that_loads_back_and_never_overwrites() {
    let dir = TempDir::new("init");
    let path = dir.0.join("alpha.toml");
    let name = NodeName::parse("alpha").unwrap();
    let id = write_new_config(&path, &name).unwrap();

    let config = Config::load(&path).unwrap();
    assert_eq!(config.node_id(), id);
    assert_eq!(config.name, name);
    assert_eq!(config.control.socket, dir.0.join("alpha.sock"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.contains(&id.to_string()),
        "the node id is shown in a comment"
    );
    for section in [
        "[services]",
        "[tun]",
        "[dns]",
        "[limits]",
        "[transport.socket]",
        "[proxy.socket]",
        "[control]",
        "[metrics]",
        "# [[peers]]",
        "# [services.couch]",
    ] {
        assert!(
            text.contains(section),
            "{section} missing from the template"
        );
    }

    // A second call refuses and leaves the file alone.
    let err = write_new_config(&path, &NodeName::parse("beta").unwrap()).unwrap_err();
    assert!(
        matches!(err, InitError::Exists(ref p) if p == &path),
        "{err}"
    );
    assert!(err.to_string().contains("already exists"), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);

    // A second node gets another key.
    let other =
        write_new_config(&dir.0.join("beta.toml"), &NodeName::parse("beta").unwrap()).unwrap();
    assert_ne!(other, id);

    // No parent directories are created.
    let nested = dir.0.join("missing").join("gamma.toml");
    let err = write_new_config(&nested, &NodeName::parse("gamma").unwrap()).unwrap_err();
    assert!(
        matches!(err, InitError::ParentMissing(ref p) if p == &dir.0.join("missing")),
        "{err}"
    );
    assert!(err.to_string().contains("does not exist"), "{err}");
    assert!(!dir.0.join("missing").exists());
}

#[test]
fn template_with_uncommented_examples_loads() {
    // Uncommenting the examples of the template gives a valid config, too (docs stay honest).
    let key = NodeKey::from_seed([4; 32]);
    let text = Config::template(&NodeName::parse("alpha").unwrap(), &key);
    let peer = id_of(5).to_string();
    let uncommented: String = text
        .lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest)
                if rest.starts_with('[')
                    || rest.split_once(" = ").is_some_and(|(key, _)| {
                        key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    }) =>
            {
                rest.replace("<the peer's 56-character node id>", &peer)
            }
            _ => line.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let config = Config::from_toml(&uncommented, Path::new("alpha.toml"))
        .unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
    assert_eq!(config.node_id(), key.node_id());
    assert_eq!(config.peers.len(), 1);
    assert_eq!(config.services.len(), 3);
    assert_eq!(
        config.metrics.listen,
        Some("127.0.0.1:9477".parse().unwrap())
    );
}

#[test]
fn load_reports_a_missing_file() {
    let err = Config::load(Path::new("/nonexistent/svcnet.toml")).unwrap_err();
    assert_eq!(err.kind, ConfigErrorKind::Io(io::ErrorKind::NotFound));
    assert!(
        err.to_string()
            .contains("svcnet init --config /nonexistent/svcnet.toml"),
        "{err}"
    );
}

proptest! {
    #[test]
    fn random_text_never_panics(text in "\\PC{0,200}") {
        if let Err(err) = Config::from_toml(&text, Path::new("x.toml")) {
            prop_assert!(!err.to_string().is_empty());
        }
    }

    #[test]
    fn random_values_never_panic(
        key in prop::sample::select(vec!["listen", "peers", "services", "tun", "dns", "limits", "transport", "proxy", "control", "metrics", "network"]),
        value in prop_oneof![
            "\\PC{0,40}".prop_map(|s| format!("{s:?}")),
            any::<i64>().prop_map(|n| n.to_string()),
            "\\[\\PC{0,30}\\]",
            "\\{\\PC{0,30}\\}",
            Just("[\"/ip4/1.2.3.4/udp/1/quic-v1\", 5]".to_string()),
            Just("{ socket = { nodelay = true, mark = 99999999999 } }".to_string()),
            Just("[{ id = 1 }]".to_string()),
        ],
    ) {
        let text = format!("{}{key} = {value}\n", base());
        if let Err(err) = Config::from_toml(&text, Path::new("x.toml")) {
            prop_assert!(!err.to_string().is_empty());
        }
    }

    #[test]
    fn random_scalars_in_every_table_never_panic(
        key in prop::sample::select(vec![
            "limits.idle_timeout", "limits.max_peers", "tun.mtu", "tun.name", "dns.zone",
            "dns.listen", "proxy.socket.user_timeout", "proxy.socket.mark",
            "proxy.socket.keepalive_idle", "transport.socket.bind_device", "control.socket",
            "services.web.ports", "services.web.role", "services.web.target",
        ]),
        value in prop_oneof![
            "[0-9]{1,30}[a-zµ ]{0,6}".prop_map(|s| format!("{s:?}")),
            "\\PC{0,30}".prop_map(|s| format!("{s:?}")),
            any::<i64>().prop_map(|n| n.to_string()),
            "[0-9]{1,30}-[0-9]{1,30}".prop_map(|s| format!("[{s:?}]")),
        ],
    ) {
        let (table, leaf) = key.rsplit_once('.').unwrap();
        let target = if table == "services.web" && leaf != "target" { "target = \"/tcp/80\"\n" } else { "" };
        let text = format!("{}[{table}]\n{target}{leaf} = {value}\n", base());
        if let Err(err) = Config::from_toml(&text, Path::new("x.toml")) {
            prop_assert!(err.to_string().contains(leaf) || err.kind == ConfigErrorKind::Syntax, "{}", err);
        }
    }

    #[test]
    fn random_targets_never_panic(text in "(/[a-z0-9]{0,6}(/[\\PC]{0,10})?){0,4}") {
        let _ = parse_service_target(&text);
        let doc = format!("{}[services]\nweb = {text:?}\n", base());
        let _ = Config::from_toml(&doc, Path::new("x.toml"));
    }
}

#[test]
fn the_complete_example_of_the_reference_loads() {
    let reference = include_str!("../../../docs/config.md");
    let section = reference
        .split("## A complete example")
        .nth(1)
        .expect("docs/config.md has a complete example");
    let example = section
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the example is a toml block");
    let config = Config::from_toml(example, Path::new("/etc/svcnet/alpha.toml"))
        .unwrap_or_else(|e| panic!("docs/config.md example: {e}"));
    assert_eq!(config.node_id(), id_of(1));
    assert_eq!(config.listen.len(), 2);
    assert_eq!(config.services.len(), 3);
    assert_eq!(
        config.peers[0].name.as_ref().map(|n| n.as_str()),
        Some("beta")
    );
    assert!(config.proxy.socket.keepalive.is_some());
}

#[test]
fn registry_settings() {
    let config =
        load("[registry]\nbalance = \"sticky\"\nlease = \"60s\"\nheartbeat = \"5s\"\n").unwrap();
    assert_eq!(
        config.registry.balance,
        svcnet_core::registry::Strategy::Sticky
    );
    assert_eq!(config.registry.lease, Some(Duration::from_secs(60)));
    assert_error(
        "[registry]\nbalance = \"random\"\n",
        "registry.balance",
        "not a strategy",
    );
    // A heartbeat that does not fit the lease is named.
    let err = error("[registry]\nlease = \"5s\"\nheartbeat = \"10s\"\n");
    assert_eq!(err.key.as_deref(), Some("registry"), "{err}");
}
