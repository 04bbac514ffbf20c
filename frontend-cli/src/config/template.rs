//! `svcnet init`: a fresh identity and a commented config that documents itself.
//!
//! The written file has every section, each key with a one-line explanation and its default as a
//! comment, so that a user can discover the options without the reference at hand; the only
//! active keys are `name` and `private_key`. A test checks that the template loads back.

use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use data_encoding::BASE64;
use svcnet_core::addressing::NodeName;
use svcnet_core::identity::{NodeId, NodeKey};

use super::{Config, ConfigError};

/// Why `svcnet init` could not write a config.
#[derive(Debug)]
pub enum InitError {
    /// The file already exists; it is never overwritten.
    Exists(PathBuf),
    /// The directory the file would go into does not exist.
    ParentMissing(PathBuf),
    /// The operating system gave no random bytes for the key.
    Random(String),
    /// Creating or writing the file failed.
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The written config does not load back (a bug in the template).
    Invalid(Box<ConfigError>),
}

impl fmt::Display for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InitError::Exists(path) => write!(
                f,
                "{} already exists and is never overwritten (it holds a node's secret key); \
                 choose another path, or move the old file away first",
                path.display()
            ),
            InitError::ParentMissing(dir) => write!(
                f,
                "the directory {} does not exist; create it first (e.g. `mkdir -p {}`)",
                dir.display(),
                dir.display()
            ),
            InitError::Random(e) => write!(f, "cannot draw a random key from the OS: {e}"),
            InitError::Io { path, source } => {
                write!(f, "{}: cannot write: {source}", path.display())
            }
            InitError::Invalid(e) => write!(f, "the new config does not load back (a bug): {e}"),
        }
    }
}

impl std::error::Error for InitError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            InitError::Io { source, .. } => Some(source),
            InitError::Invalid(e) => Some(e.as_ref()),
            _ => None,
        }
    }
}

/// Writes a new config for a node called `name` with a fresh key drawn from the OS to `path`
/// (mode 0600), and returns the new node id. Refuses to overwrite an existing file and does not
/// create missing directories.
pub fn write_new_config(path: &Path, name: &NodeName) -> Result<NodeId, InitError> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        return Err(InitError::ParentMissing(parent.to_path_buf()));
    }
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| InitError::Random(e.to_string()))?;
    let key = NodeKey::from_seed(seed);
    seed.fill(0);
    let text = render(name, &key);
    // Check before writing, so a broken template never leaves a file behind.
    Config::from_toml(&text, path).map_err(|e| InitError::Invalid(Box::new(e)))?;

    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(|source| match source.kind() {
        io::ErrorKind::AlreadyExists => InitError::Exists(path.to_path_buf()),
        io::ErrorKind::NotFound => InitError::ParentMissing(parent.to_path_buf()),
        _ => InitError::Io {
            path: path.to_path_buf(),
            source,
        },
    })?;
    let written = file
        .write_all(text.as_bytes())
        .and_then(|()| file.sync_all());
    if let Err(source) = written {
        // A half-written key file is worse than none.
        drop(file);
        let _ = std::fs::remove_file(path);
        return Err(InitError::Io {
            path: path.to_path_buf(),
            source,
        });
    }
    Ok(key.node_id())
}

/// The commented config text for `name` and `key`.
pub(super) fn render(name: &NodeName, key: &NodeKey) -> String {
    let id = key.node_id();
    let secret = BASE64.encode(&key.to_seed_bytes());
    let sock = format!("{name}.sock");
    format!(
        r#"# svcnet node configuration, written by `svcnet init`.
# Reference of every key: docs/config.md. Lines starting with '#' show defaults and examples.

# This node's name: a DNS label (a-z, 0-9, '-'), unique in the network. The node answers as
# {name}.svcnet and its services as <service>.{name}.svcnet.
name = "{name}"

# This node's secret key: the standard base64 of its 32-byte ed25519 seed. Whoever has it can act
# as this node, so keep this file private (it was written with mode 0600).
# The node id that other nodes put in their [[peers]] is (`svcnet id --config <this file>`):
#   {id}
private_key = "{secret}"

# The network's name, hashed into its IPv6 prefix: every node of one network uses the same.
# network = "svcnet"

# QUIC listen addresses (multiaddrs /ip4|ip6/<address>/udp/<port>/quic-v1).
# listen = ["/ip4/0.0.0.0/udp/7700/quic-v1"]

# Worker threads of the daemon; default: half the CPUs, at least one (the applications whose
# traffic the daemon carries need the other half).
# threads = 2

# The nodes this node talks to. Only the node ids listed here may connect. `name` is optional;
# `addrs` are where to dial the peer (leave them out to only accept its connections).
# [[peers]]
# id = "<the peer's 56-character node id>"
# name = "beta"
# addrs = ["/ip4/192.0.2.10/udp/7700/quic-v1", "/dns/beta.example.com/udp/7700/quic-v1"]

# The services this node offers, each a name and a target multiaddr. A client connecting to any
# port of <service>.{name}.svcnet reaches the target. /tcp/<port> means 127.0.0.1:<port>; a target
# without /tcp passes the dialed port through.
[services]
# web = "/tcp/8080"
# kafka = "/ip4/10.0.0.4/tcp/9092"
#
# The table form adds a registry role, a port allow-list and socket options:
# [services.couch]
# target = "/tcp/5984"
# role = "couchdb@3.2.2"
# ports = [5984, "6984-6986"]
# [services.couch.socket]
# nodelay = true
# connect_timeout = "2s"

# The TUN device that carries service addresses into the kernel.
[tun]
# enabled = true        # false: no TUN device; use `svcnet proxy` instead
# name = "svcnet0"      # at most 15 bytes
# mtu = 65520           # 1280 to 65535; large is fast: no packet leaves this host

# The DNS server for the zone.
[dns]
# listen = "127.0.0.1:53"   # default: the TUN address, port 53
# zone = "svcnet"
# forward = "127.0.0.53:53" # where names outside the zone go; default: answer REFUSED

# Resource limits and timeouts (durations: "500ms", "5s", "2m").
[limits]
# max_peers = 256
# max_streams_per_peer = 1024
# max_connections = 4096        # proxied TCP connections in total
# connect_timeout = "5s"        # dialing a service target
# handshake_timeout = "10s"     # QUIC handshake with a peer
# idle_timeout = "30s"          # a silent peer connection is closed
# keep_alive = "5s"             # must be shorter than idle_timeout
# header_timeout = "10s"        # a new stream must send its header within this

# Socket options of the QUIC UDP socket(s): send_buffer, recv_buffer (bytes), reuseaddr,
# reuseport, mark (needs CAP_NET_ADMIN), bind_device. See docs/config.md for the table.
[transport.socket]
# recv_buffer = 4194304
# send_buffer = 4194304

# Socket options of the `svcnet proxy` listeners and the connections they accept: nodelay,
# keepalive_idle + keepalive_interval + keepalive_count, user_timeout, buffers, reuseaddr,
# reuseport, mark, bind_device.
[proxy.socket]
# nodelay = true
# keepalive_idle = "60s"
# keepalive_interval = "10s"
# keepalive_count = 6

# The control socket that `svcnet status` talks to (relative to this file's directory).
[control]
# socket = "{sock}"

# Prometheus metrics over HTTP; off unless listen is set.
[metrics]
# listen = "127.0.0.1:9477"
"#
    )
}
