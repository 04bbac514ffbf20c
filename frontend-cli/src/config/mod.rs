//! The node's configuration file (`svcnet.toml`): loading, validation and `svcnet init`.
//!
//! [`Config::load`] reads a TOML file and returns a fully validated [`Config`]: every default is
//! filled in, every value is parsed into its type, and cross-field rules are checked, so that the
//! daemon never meets a half-valid value later. Every error is a [`ConfigError`] that names the
//! file, the dotted key (`peers[1].addrs[0]`, `services.web.ports`), the reason and what to write
//! instead, plus the line and column when known. Unknown keys are errors, with the closest valid
//! key suggested: a typo must not silently fall back to a default.
//!
//! The document is read from `toml`'s spanned document tree rather than through serde, because
//! the tree keeps the position of every key and value, which the error messages need.
//!
//! Submodules: `read` walks the document and builds the `Config`; `template` writes the
//! commented config of `svcnet init` ([`write_new_config`]). The reference of every key is
//! `docs/config.md`.

mod read;
mod template;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use multiaddr::{Multiaddr, Protocol};
use svcnet_core::addressing::{NodeName, RoleName, ServiceName, Zone};
use svcnet_core::identity::{NodeId, NodeKey};
use svcnet_core::registry::{RegistryConfig, Strategy};
use svcnet_core::service::{ServiceEntry, ServiceTarget, TargetComponent, TargetError};

use crate::sockopt::SocketOptions;

pub use template::{write_new_config, InitError};

/// Default of `network`.
pub const DEFAULT_NETWORK: &str = "svcnet";
/// Default of `listen`.
pub const DEFAULT_LISTEN: &str = "/ip4/0.0.0.0/udp/7700/quic-v1";
/// Default of `tun.name`.
pub const DEFAULT_TUN_NAME: &str = "svcnet0";
/// Default of `tun.mtu`.
pub const DEFAULT_MTU: u16 = 65520;
/// Smallest `tun.mtu`: the IPv6 minimum link MTU (RFC 8200).
pub const MIN_MTU: u16 = 1280;
/// Longest accepted duration anywhere in the config.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// The validated configuration of one node. Every field is resolved: defaults are filled in,
/// relative paths are made relative to the config file's directory.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file the config was loaded from.
    pub path: PathBuf,
    /// `name`: this node's name, a DNS label unique in the network.
    pub name: NodeName,
    /// `private_key`: this node's secret key (base64 of the 32-byte ed25519 seed).
    pub key: NodeKey,
    /// `network`: the network's name, hashed into its address prefix.
    pub network: String,
    /// `listen`: the QUIC socket addresses.
    pub listen: Vec<SocketAddr>,
    /// `[[peers]]`: the nodes this node knows and accepts.
    pub peers: Vec<PeerConfig>,
    /// `[services]`: the services this node offers.
    pub services: BTreeMap<ServiceName, ServiceConfig>,
    /// `[tun]`
    pub tun: TunConfig,
    /// `[dns]`
    pub dns: DnsConfig,
    /// `[limits]`
    pub limits: Limits,
    /// `[transport]`
    pub transport: TransportConfig,
    /// `[proxy]`
    pub proxy: ProxyConfig,
    /// `[control]`
    pub control: ControlConfig,
    /// `[metrics]`
    pub metrics: MetricsConfig,
    /// `[registry]`.
    pub registry: RegistrySettings,
    /// `threads`: worker threads of the daemon's runtime, if set; see [`Config::worker_threads`].
    pub threads: Option<usize>,
}

/// The most worker threads `threads` may ask for.
pub const MAX_THREADS: u64 = 1024;

impl Config {
    /// The daemon's worker threads: `threads` if set, otherwise half the CPUs (at least one).
    /// Every byte the daemon carries is also written or read by a local application through the
    /// kernel's TCP, on the same CPUs, at about the daemon's own cost; a daemon with a worker
    /// per CPU competes with them and hands its tasks between threads more often. On 2 CPUs one
    /// worker moved 5.0–5.3 Gbit/s through a TUN connection where two moved 4.6–4.8
    /// (`docs/architecture.md` §7.4).
    pub fn worker_threads(&self) -> usize {
        self.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| (n.get() / 2).max(1))
                .unwrap_or(1)
        })
    }
}

/// One `[[peers]]` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerConfig {
    /// `id`: the peer's node id (text form); the key its QUIC handshake must prove.
    pub id: NodeId,
    /// `name`: the peer's name, if known in advance.
    pub name: Option<NodeName>,
    /// `addrs`: where to dial the peer; empty = only accept its inbound connections.
    pub addrs: Vec<PeerAddr>,
}

/// A peer's address, from `/ip4|ip6|dns|dns4|dns6/<host>/udp/<port>/quic-v1`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PeerAddr {
    /// An IP address and UDP port.
    Ip(SocketAddr),
    /// A DNS name (lowercase, no trailing dot) and UDP port, resolved when dialing.
    Dns {
        /// The host name.
        host: String,
        /// The UDP port.
        port: u16,
    },
}

impl fmt::Display for PeerAddr {
    /// The multiaddr text.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerAddr::Ip(SocketAddr::V4(a)) => {
                write!(f, "/ip4/{}/udp/{}/quic-v1", a.ip(), a.port())
            }
            PeerAddr::Ip(SocketAddr::V6(a)) => {
                write!(f, "/ip6/{}/udp/{}/quic-v1", a.ip(), a.port())
            }
            PeerAddr::Dns { host, port } => write!(f, "/dns/{host}/udp/{port}/quic-v1"),
        }
    }
}

/// One service of `[services]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceConfig {
    /// `target` (or the short form's string) and `ports`.
    pub entry: ServiceEntry,
    /// `role`: the registry role this service instance announces, `name@version`, kept as written
    /// (its semver is checked by the registry).
    pub role: Option<String>,
    /// `health`: an HTTP path the registry's health check requests (expecting 2xx); without it
    /// the check is a TCP connect to the target. Only with `role`.
    pub health: Option<String>,
    /// `[services.<name>.socket]`: options for the connections dialed to the target.
    pub socket: SocketOptions,
}

impl ServiceConfig {
    /// The role and version this service announces, if it has a `role`.
    pub fn role_version(&self) -> Option<(RoleName, semver::Version)> {
        let (role, version) = self.role.as_deref()?.split_once('@')?;
        Some((
            RoleName::parse(role).ok()?,
            semver::Version::parse(version).ok()?,
        ))
    }
}

/// `[registry]`: the service registry's settings (defaults from the core's `RegistryConfig`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegistrySettings {
    /// `balance`: `p2c` (default), `round-robin`, `least-outstanding` or `sticky`.
    pub balance: Strategy,
    /// `lease`: how long other nodes keep this node's instances without news (default 30s).
    pub lease: Option<Duration>,
    /// `heartbeat`: how often this node re-announces (default 10s, well under `lease`).
    pub heartbeat: Option<Duration>,
    /// `health_interval`: how often each role instance is checked (default 5s).
    pub health_interval: Option<Duration>,
}

impl RegistrySettings {
    /// The core's registry config with these settings and `seed`.
    pub fn core_config(&self, seed: u64) -> RegistryConfig {
        let mut config = RegistryConfig {
            strategy: self.balance,
            seed,
            ..RegistryConfig::default()
        };
        if let Some(lease) = self.lease {
            config.lease = lease;
        }
        if let Some(heartbeat) = self.heartbeat {
            config.heartbeat_interval = heartbeat;
        }
        if let Some(interval) = self.health_interval {
            config.health_check_interval = interval;
        }
        config
    }
}

/// `[tun]`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TunConfig {
    /// `enabled` (default true): create the TUN device; false = proxy/embedding mode only.
    pub enabled: bool,
    /// `name` (default `svcnet0`): the interface name, at most 15 bytes.
    pub name: String,
    /// `mtu` (default 65520): 1280 to 65535. Only kernel↔netstack segments use it (no packet crosses
    /// the network), so it can be as large as loopback's.
    pub mtu: u16,
}

/// `[dns]`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsConfig {
    /// `listen`: where the DNS server listens; `None` = on the TUN address, port 53.
    pub listen: Option<SocketAddr>,
    /// `zone` (default `svcnet`).
    pub zone: Zone,
    /// `forward`: where questions outside the zone go; `None` = answer REFUSED.
    pub forward: Option<SocketAddr>,
}

/// `[limits]`: resource limits and timeouts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// `max_peers` (default 256): connected peers at once.
    pub max_peers: usize,
    /// `max_streams_per_peer` (default 1024): concurrent streams one peer may open.
    pub max_streams_per_peer: u32,
    /// `max_connections` (default 4096): proxied TCP connections at once, in total.
    pub max_connections: usize,
    /// `connect_timeout` (default 5s): dialing a service target.
    pub connect_timeout: Duration,
    /// `handshake_timeout` (default 10s): a QUIC handshake with a peer.
    pub handshake_timeout: Duration,
    /// `idle_timeout` (default 30s): a peer connection with no traffic is closed.
    pub idle_timeout: Duration,
    /// `keep_alive` (default 5s, less than `idle_timeout`): keep-alive interval on peer connections.
    pub keep_alive: Duration,
    /// `header_timeout` (default 10s): how long a new stream may take to send its header.
    pub header_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_peers: 256,
            max_streams_per_peer: 1024,
            max_connections: 4096,
            connect_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(5),
            header_timeout: Duration::from_secs(10),
        }
    }
}

/// `[transport]`
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TransportConfig {
    /// `[transport.socket]`: options of the QUIC UDP socket(s).
    pub socket: SocketOptions,
}

/// `[proxy]`
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyConfig {
    /// `[proxy.socket]`: options of proxy listeners and the client connections they accept.
    pub socket: SocketOptions,
}

/// `[control]`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlConfig {
    /// `socket`: the control socket's path (default: the config path with extension `sock`).
    pub socket: PathBuf,
}

/// `[metrics]`
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetricsConfig {
    /// `listen`: where Prometheus metrics are served over HTTP; `None` = off.
    pub listen: Option<SocketAddr>,
}

/// What kind of problem a [`ConfigError`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigErrorKind {
    /// The file could not be read.
    Io(io::ErrorKind),
    /// The file is not valid TOML.
    Syntax,
    /// A key is unknown, missing, or has a bad value.
    Invalid,
}

/// A config problem, for people: the file, the key, the reason and what to do.
///
/// Displays as ``<file>: key `<dotted.key>`: <reason> (line L, column C)``; the key part is left
/// out for problems of the whole file and the position when it is not known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The config file.
    pub path: PathBuf,
    /// The dotted key, e.g. `peers[0].addrs[1]` or `limits.keep_alive`.
    pub key: Option<String>,
    /// 1-based line and column of the offending key or value.
    pub location: Option<(usize, usize)>,
    /// What is wrong and what to do instead.
    pub reason: String,
    /// The kind of problem.
    pub kind: ConfigErrorKind,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.path.display())?;
        if let Some(key) = &self.key {
            write!(f, "key `{key}`: ")?;
        }
        f.write_str(&self.reason)?;
        if let Some((line, column)) = self.location {
            write!(f, " (line {line}, column {column})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: path.to_path_buf(),
            key: None,
            location: None,
            reason: match e.kind() {
                io::ErrorKind::NotFound => format!(
                    "cannot read the config: {e}; create one with `svcnet init --config {}`",
                    path.display()
                ),
                io::ErrorKind::InvalidData => {
                    "cannot read the config: it is not UTF-8 text".to_string()
                }
                _ => format!("cannot read the config: {e}"),
            },
            kind: ConfigErrorKind::Io(e.kind()),
        })?;
        Config::from_toml(&text, path)
    }

    /// Validates a config given as text; `path` is where it came from (used in errors and as the
    /// base of relative and default paths).
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        read::read(text, path)
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.key.node_id()
    }

    /// The commented config that `svcnet init` writes for `name` with the secret `key`.
    pub fn template(name: &NodeName, key: &NodeKey) -> String {
        template::render(name, key)
    }
}

/// Parses a service target in the seed's multiaddr form (`/tcp/8080`, `/ip4/10.0.0.4/tcp/9092`,
/// `/dns/db.lan/tcp/5432`, `/ip4/10.0.0.4`); the grammar itself is
/// [`ServiceTarget::from_components`] in the core.
pub fn parse_service_target(text: &str) -> Result<ServiceTarget, TargetError> {
    let addr = Multiaddr::from_str(text).map_err(|e| TargetError::Syntax {
        reason: e.to_string(),
    })?;
    ServiceTarget::from_components(addr.iter().map(|p| match p {
        Protocol::Ip4(ip) => TargetComponent::Ip4(ip),
        Protocol::Ip6(ip) => TargetComponent::Ip6(ip),
        Protocol::Dns(name) => TargetComponent::Dns(name.into_owned()),
        Protocol::Dns4(name) => TargetComponent::Dns4(name.into_owned()),
        Protocol::Dns6(name) => TargetComponent::Dns6(name.into_owned()),
        Protocol::Tcp(port) => TargetComponent::Tcp(port),
        other => TargetComponent::Other(other.to_string()),
    }))
}
