//! Walks the spanned TOML document and builds a [`Config`], one table at a time.
//!
//! Each table first checks its keys against the list it knows (so an unknown key is reported
//! before anything else in that table, with a suggestion), then reads its values in file order,
//! so that the first problem reported is the first one in the file.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use data_encoding::{BASE64, BASE64_NOPAD};
use multiaddr::{Multiaddr, Protocol};
use svcnet_core::addressing::{NodeName, RoleName, ServiceName, Zone};
use svcnet_core::identity::{NodeId, NodeKey};
use svcnet_core::registry::Strategy;
use svcnet_core::service::{validate_host_name, PortAllowList, ServiceEntry};
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::{
    parse_service_target, Config, ConfigError, ConfigErrorKind, ControlConfig, DnsConfig, Limits,
    MetricsConfig, PeerAddr, PeerConfig, ProxyConfig, RegistrySettings, ServiceConfig,
    TransportConfig, TunConfig, DEFAULT_LISTEN, DEFAULT_MTU, DEFAULT_NETWORK, DEFAULT_TUN_NAME,
    MAX_DURATION, MAX_THREADS, MIN_MTU,
};
use crate::sockopt::{
    check_ifname, Keepalive, SocketKind, SocketOptions, MAX_BUFFER, MAX_KEEPALIVE_COUNT, MIN_BUFFER,
};

type Value<'i> = Spanned<DeValue<'i>>;

const TOP_KEYS: &[&str] = &[
    "name",
    "private_key",
    "network",
    "listen",
    "peers",
    "services",
    "tun",
    "dns",
    "limits",
    "transport",
    "proxy",
    "control",
    "metrics",
    "registry",
    "threads",
];
const PEER_KEYS: &[&str] = &["id", "name", "addrs"];
const SERVICE_KEYS: &[&str] = &["target", "role", "health", "ports", "socket"];
const REGISTRY_KEYS: &[&str] = &["balance", "lease", "heartbeat", "health_interval"];
const TUN_KEYS: &[&str] = &["enabled", "name", "mtu"];
const DNS_KEYS: &[&str] = &["listen", "zone", "forward"];
const LIMIT_KEYS: &[&str] = &[
    "max_peers",
    "max_streams_per_peer",
    "max_connections",
    "connect_timeout",
    "handshake_timeout",
    "idle_timeout",
    "keep_alive",
    "header_timeout",
];
const SOCKET_TABLE_KEYS: &[&str] = &["socket"];
const CONTROL_KEYS: &[&str] = &["socket"];
const METRICS_KEYS: &[&str] = &["listen"];
const SOCKET_KEYS: &[&str] = &[
    "nodelay",
    "keepalive_idle",
    "keepalive_interval",
    "keepalive_count",
    "user_timeout",
    "send_buffer",
    "recv_buffer",
    "reuseaddr",
    "reuseport",
    "mark",
    "bind_device",
    "connect_timeout",
];

/// The document being read: its text (for positions) and its path (for errors).
struct Doc<'a> {
    text: &'a str,
    path: &'a Path,
}

impl Doc<'_> {
    fn error(
        &self,
        key: &str,
        span: Option<Range<usize>>,
        reason: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            path: self.path.to_path_buf(),
            key: (!key.is_empty()).then(|| key.to_string()),
            location: span.map(|s| position(self.text, s.start)),
            reason: reason.into(),
            kind: ConfigErrorKind::Invalid,
        }
    }

    fn at(&self, key: &str, value: &Value<'_>, reason: impl Into<String>) -> ConfigError {
        self.error(key, Some(value.span()), reason)
    }
}

/// 1-based line and column (in characters) of byte `offset`.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// One table of the document with the dotted path that leads to it.
struct Table<'a, 'i> {
    doc: &'a Doc<'a>,
    prefix: String,
    table: &'a DeTable<'i>,
}

impl<'a, 'i> Table<'a, 'i> {
    /// Checks that every key is one of `known`, in file order.
    fn new(
        doc: &'a Doc<'a>,
        prefix: String,
        table: &'a DeTable<'i>,
        known: &[&str],
    ) -> Result<Table<'a, 'i>, ConfigError> {
        let mut keys: Vec<_> = table.iter().map(|(k, _)| k).collect();
        keys.sort_by_key(|k| k.span().start);
        for key in keys {
            let name: &str = key.get_ref();
            if !known.contains(&name) {
                let full = join(&prefix, name);
                let hint = match closest(name, known) {
                    Some(close) => format!("did you mean `{}`?", join(&prefix, close)),
                    None => format!(
                        "the keys allowed here are {}",
                        known
                            .iter()
                            .map(|k| format!("`{k}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                };
                return Err(doc.error(
                    &full,
                    Some(key.span()),
                    format!("unknown key; {hint} (see docs/config.md)"),
                ));
            }
        }
        Ok(Table { doc, prefix, table })
    }

    fn key(&self, name: &str) -> String {
        join(&self.prefix, name)
    }

    fn get(&self, name: &str) -> Option<&'a Value<'i>> {
        self.table.get(name)
    }

    fn missing(&self, name: &str, what: &str) -> ConfigError {
        let key = self.key(name);
        self.doc.error(&key, None, format!("is missing; {what}"))
    }

    fn string(&self, name: &str) -> Result<Option<&'a str>, ConfigError> {
        self.get(name)
            .map(|v| expect_str(self.doc, &self.key(name), v))
            .transpose()
    }

    fn bool(&self, name: &str) -> Result<Option<bool>, ConfigError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => match v.get_ref() {
                DeValue::Boolean(b) => Ok(Some(*b)),
                other => Err(self.doc.at(
                    &self.key(name),
                    v,
                    format!("expected true or false, found {}", describe(other)),
                )),
            },
        }
    }

    /// An integer in `min..=max`.
    fn int(&self, name: &str, min: u64, max: u64) -> Result<Option<u64>, ConfigError> {
        self.get(name)
            .map(|v| expect_int(self.doc, &self.key(name), v, min, max))
            .transpose()
    }

    fn duration(&self, name: &str) -> Result<Option<Duration>, ConfigError> {
        self.get(name)
            .map(|v| expect_duration(self.doc, &self.key(name), v))
            .transpose()
    }

    /// A sub-table (`[a.b]` or an inline table) checked against `known`.
    fn table(&self, name: &str, known: &[&str]) -> Result<Option<Table<'a, 'i>>, ConfigError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => {
                let table = expect_table(self.doc, &self.key(name), v)?;
                Table::new(self.doc, self.key(name), table, known).map(Some)
            }
        }
    }

    fn socket_addr(
        &self,
        name: &str,
        default_port: Option<u16>,
    ) -> Result<Option<SocketAddr>, ConfigError> {
        let Some(value) = self.get(name) else {
            return Ok(None);
        };
        let key = self.key(name);
        let text = expect_str(self.doc, &key, value)?;
        if let Ok(addr) = SocketAddr::from_str(text) {
            return Ok(Some(addr));
        }
        if let (Some(port), Ok(ip)) = (default_port, IpAddr::from_str(text)) {
            return Ok(Some(SocketAddr::new(ip, port)));
        }
        let example = if default_port.is_some() {
            "\"127.0.0.1:53\", \"[::1]:53\" or an address alone for port 53"
        } else {
            "\"127.0.0.1:9477\" or \"[::1]:9477\""
        };
        Err(self.doc.at(
            &key,
            value,
            format!("{text:?} is not an IP address and port; write e.g. {example}"),
        ))
    }
}

fn describe(value: &DeValue<'_>) -> String {
    match value {
        DeValue::String(s) => format!("the string {s:?}"),
        DeValue::Integer(i) => format!("the integer {i}"),
        DeValue::Float(f) => format!("the number {f}"),
        DeValue::Boolean(b) => format!("{b}"),
        DeValue::Datetime(d) => format!("the date {d}"),
        DeValue::Array(_) => "an array".to_string(),
        DeValue::Table(_) => "a table".to_string(),
    }
}

fn expect_str<'a>(doc: &Doc<'_>, key: &str, value: &'a Value<'_>) -> Result<&'a str, ConfigError> {
    match value.get_ref() {
        DeValue::String(s) => Ok(s),
        other => Err(doc.at(
            key,
            value,
            format!("expected a string, found {}", describe(other)),
        )),
    }
}

fn expect_table<'a, 'i>(
    doc: &Doc<'_>,
    key: &str,
    value: &'a Value<'i>,
) -> Result<&'a DeTable<'i>, ConfigError> {
    match value.get_ref() {
        DeValue::Table(t) => Ok(t),
        other => Err(doc.at(
            key,
            value,
            format!("expected a table (`[{key}]`), found {}", describe(other)),
        )),
    }
}

fn expect_array<'a, 'i>(
    doc: &Doc<'_>,
    key: &str,
    value: &'a Value<'i>,
) -> Result<&'a [Value<'i>], ConfigError> {
    match value.get_ref() {
        DeValue::Array(a) => Ok(a),
        other => Err(doc.at(
            key,
            value,
            format!("expected an array, found {}", describe(other)),
        )),
    }
}

fn expect_int(
    doc: &Doc<'_>,
    key: &str,
    value: &Value<'_>,
    min: u64,
    max: u64,
) -> Result<u64, ConfigError> {
    let DeValue::Integer(int) = value.get_ref() else {
        return Err(doc.at(
            key,
            value,
            format!("expected an integer, found {}", describe(value.get_ref())),
        ));
    };
    let parsed = i128::from_str_radix(int.as_str(), int.radix()).ok();
    match parsed {
        Some(n) if n >= i128::from(min) && n <= i128::from(max) => Ok(n as u64),
        _ => Err(doc.at(key, value, format!("{int} is out of range: {min} to {max}"))),
    }
}

fn expect_duration(doc: &Doc<'_>, key: &str, value: &Value<'_>) -> Result<Duration, ConfigError> {
    let text = match value.get_ref() {
        DeValue::String(s) => s,
        DeValue::Integer(i) => {
            return Err(doc.at(
                key,
                value,
                format!("a duration needs a unit: write e.g. \"{i}s\" or \"{i}ms\""),
            ))
        }
        other => {
            return Err(doc.at(
                key,
                value,
                format!(
                    "expected a duration such as \"5s\", found {}",
                    describe(other)
                ),
            ))
        }
    };
    let duration = humantime::parse_duration(text).map_err(|e| {
        doc.at(
            key,
            value,
            format!("{text:?} is not a duration ({e}); write e.g. \"500ms\", \"5s\" or \"2m\""),
        )
    })?;
    if duration.is_zero() {
        return Err(doc.at(key, value, "must be longer than zero"));
    }
    if duration > MAX_DURATION {
        return Err(doc.at(key, value, format!("{text:?} is too long: at most 24h")));
    }
    Ok(duration)
}

/// The known key closest to `name` (edit distance at most 2, or a prefix relation), if any.
fn closest<'k>(name: &str, known: &[&'k str]) -> Option<&'k str> {
    let name = name.to_ascii_lowercase().replace('-', "_");
    known
        .iter()
        .map(|k| (edit_distance(&name, k), *k))
        .filter(|(d, k)| {
            *d <= 2 || (name.len() >= 3 && (k.starts_with(&name) || name.starts_with(k)))
        })
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance over characters (keys are short, so the O(n·m) table is fine).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous[j] + usize::from(ca != *cb);
            current[j + 1] = substitute.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
}

pub(super) fn read(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let doc = Doc { text, path };
    let root = DeTable::parse(text).map_err(|e| ConfigError {
        path: path.to_path_buf(),
        key: None,
        location: e.span().map(|s| position(text, s.start)),
        reason: format!("not valid TOML: {}", e.message()),
        kind: ConfigErrorKind::Syntax,
    })?;
    let top = Table::new(&doc, String::new(), root.get_ref(), TOP_KEYS)?;

    let name_value = top
        .get("name")
        .ok_or_else(|| top.missing("name", "give this node a name, e.g. name = \"alpha\""))?;
    let name = NodeName::parse(expect_str(&doc, "name", name_value)?)
        .map_err(|e| doc.at("name", name_value, e.to_string()))?;

    let key = read_private_key(&doc, &top)?;
    let own_id = key.node_id();

    let network = match top.get("network") {
        None => DEFAULT_NETWORK.to_string(),
        Some(v) => {
            let s = expect_str(&doc, "network", v)?;
            if s.is_empty() || s.len() > 255 || s.chars().any(char::is_control) {
                return Err(doc.at(
                    "network",
                    v,
                    "must be 1 to 255 bytes of printable text; every node of the network uses the same",
                ));
            }
            s.to_string()
        }
    };

    let listen = read_listen(&doc, &top)?;
    let peers = read_peers(&doc, &top, own_id, &name)?;
    let services = read_services(&doc, &top)?;
    let tun = read_tun(&top)?;
    let dns = read_dns(&top)?;
    let limits = read_limits(&top)?;

    let transport = TransportConfig {
        socket: read_socket_holder(&top, "transport", SocketKind::Udp)?,
    };
    let proxy = ProxyConfig {
        socket: read_socket_holder(&top, "proxy", SocketKind::TcpListen)?,
    };

    let mut control = ControlConfig {
        socket: path.with_extension("sock"),
    };
    if let Some(table) = top.table("control", CONTROL_KEYS)? {
        if let Some(value) = table.get("socket") {
            let socket = expect_str(&doc, "control.socket", value)?;
            if socket.is_empty() {
                return Err(doc.at("control.socket", value, "the path is empty"));
            }
            // Relative paths are relative to the config file, not to the daemon's working dir.
            control.socket = path.parent().unwrap_or(Path::new("")).join(socket);
        }
    }

    let mut metrics = MetricsConfig::default();
    if let Some(table) = top.table("metrics", METRICS_KEYS)? {
        metrics.listen = table.socket_addr("listen", None)?;
    }

    let registry = read_registry(&doc, &top)?;
    let threads = top.int("threads", 1, MAX_THREADS)?.map(|n| n as usize);

    Ok(Config {
        path: path.to_path_buf(),
        name,
        key,
        network,
        listen,
        peers,
        services,
        tun,
        dns,
        limits,
        transport,
        proxy,
        control,
        metrics,
        registry,
        threads,
    })
}

fn read_registry(doc: &Doc<'_>, top: &Table<'_, '_>) -> Result<RegistrySettings, ConfigError> {
    let mut settings = RegistrySettings::default();
    let Some(table) = top.table("registry", REGISTRY_KEYS)? else {
        return Ok(settings);
    };
    if let Some(value) = table.get("balance") {
        let text = expect_str(doc, "registry.balance", value)?;
        settings.balance = match text {
            "p2c" | "power-of-two" => Strategy::PowerOfTwo,
            "round-robin" => Strategy::RoundRobin,
            "least-outstanding" => Strategy::LeastOutstanding,
            "sticky" => Strategy::Sticky,
            other => {
                return Err(doc.at(
                    "registry.balance",
                    value,
                    format!(
                        "{other:?} is not a strategy; use \"p2c\" (default), \"round-robin\", \"least-outstanding\" or \"sticky\""
                    ),
                ))
            }
        };
    }
    settings.lease = table.duration("lease")?;
    settings.heartbeat = table.duration("heartbeat")?;
    settings.health_interval = table.duration("health_interval")?;
    if let Err(reason) = settings.core_config(0).validate() {
        return Err(doc.error("registry", None, reason));
    }
    Ok(settings)
}

fn read_private_key(doc: &Doc<'_>, top: &Table<'_, '_>) -> Result<NodeKey, ConfigError> {
    let value = top.get("private_key").ok_or_else(|| {
        top.missing(
            "private_key",
            "`svcnet init --config <new file>` writes a config with a fresh key; copy its \
             private_key line here",
        )
    })?;
    let text = expect_str(doc, "private_key", value)?.trim();
    // The secret never appears in a message: only its length.
    let bytes = BASE64
        .decode(text.as_bytes())
        .or_else(|_| BASE64_NOPAD.decode(text.as_bytes()))
        .map_err(|_| {
            doc.at(
                "private_key",
                value,
                "is not base64; expected the standard base64 of a 32-byte ed25519 seed \
                 (44 characters ending in '='), as `svcnet init` writes it",
            )
        })?;
    let seed: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
        doc.at(
            "private_key",
            value,
            format!(
                "decodes to {} bytes, but a key is a 32-byte ed25519 seed (44 base64 characters)",
                bytes.len()
            ),
        )
    })?;
    Ok(NodeKey::from_seed(seed))
}

/// The components of a multiaddr, or an error naming `key`.
fn multiaddr_protocols(
    doc: &Doc<'_>,
    key: &str,
    value: &Value<'_>,
    text: &str,
    example: &str,
) -> Result<Vec<Protocol<'static>>, ConfigError> {
    let addr = Multiaddr::from_str(text).map_err(|e| {
        doc.at(
            key,
            value,
            format!("{text:?} is not a multiaddr ({e}); write e.g. {example}"),
        )
    })?;
    Ok(addr.iter().map(|p| p.acquire()).collect())
}

fn read_listen(doc: &Doc<'_>, top: &Table<'_, '_>) -> Result<Vec<SocketAddr>, ConfigError> {
    let example = "\"/ip4/0.0.0.0/udp/7700/quic-v1\" or \"/ip6/::/udp/7700/quic-v1\"";
    let Some(value) = top.get("listen") else {
        return Ok(vec![
            quic_socket_addr(DEFAULT_LISTEN).expect("the default is valid")
        ]);
    };
    let items = expect_array(doc, "listen", value)?;
    if items.is_empty() {
        return Err(doc.at(
            "listen",
            value,
            format!(
                "needs at least one address: the QUIC socket also dials from it (remove the key \
                 for the default {DEFAULT_LISTEN})"
            ),
        ));
    }
    let mut seen = BTreeSet::new();
    let mut listen = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let key = format!("listen[{i}]");
        let text = expect_str(doc, &key, item)?;
        let protocols = multiaddr_protocols(doc, &key, item, text, example)?;
        let addr = match protocols.as_slice() {
            [Protocol::Ip4(ip), Protocol::Udp(port), Protocol::QuicV1] => {
                SocketAddr::new((*ip).into(), *port)
            }
            [Protocol::Ip6(ip), Protocol::Udp(port), Protocol::QuicV1] => {
                SocketAddr::new((*ip).into(), *port)
            }
            _ => {
                return Err(doc.at(
                    &key,
                    item,
                    format!(
                        "{text:?} is not a QUIC listen address; expected \
                         /ip4|ip6/<address>/udp/<port>/quic-v1, e.g. {example}"
                    ),
                ))
            }
        };
        if !seen.insert(addr) {
            return Err(doc.at(&key, item, format!("{text:?} is listed twice")));
        }
        listen.push(addr);
    }
    Ok(listen)
}

/// `/ip4|ip6/<a>/udp/<p>/quic-v1` as a socket address (used for the default).
fn quic_socket_addr(text: &str) -> Option<SocketAddr> {
    let addr = Multiaddr::from_str(text).ok()?;
    match addr.iter().collect::<Vec<_>>().as_slice() {
        [Protocol::Ip4(ip), Protocol::Udp(port), Protocol::QuicV1] => {
            Some(SocketAddr::new((*ip).into(), *port))
        }
        [Protocol::Ip6(ip), Protocol::Udp(port), Protocol::QuicV1] => {
            Some(SocketAddr::new((*ip).into(), *port))
        }
        _ => None,
    }
}

fn read_peers(
    doc: &Doc<'_>,
    top: &Table<'_, '_>,
    own_id: NodeId,
    own_name: &NodeName,
) -> Result<Vec<PeerConfig>, ConfigError> {
    let Some(value) = top.get("peers") else {
        return Ok(Vec::new());
    };
    let items = expect_array(doc, "peers", value)?;
    let mut peers: Vec<PeerConfig> = Vec::new();
    let mut ids: BTreeMap<NodeId, usize> = BTreeMap::new();
    let mut names: BTreeMap<NodeName, usize> = BTreeMap::new();
    for (i, item) in items.iter().enumerate() {
        let prefix = format!("peers[{i}]");
        let table = expect_table(doc, &prefix, item)?;
        let table = Table::new(doc, prefix.clone(), table, PEER_KEYS)?;

        let id_value = table.get("id").ok_or_else(|| {
            doc.error(
                &table.key("id"),
                Some(item.span()),
                "is missing; give the peer's node id (`svcnet id --config <its config>` prints it)",
            )
        })?;
        let id_text = expect_str(doc, &table.key("id"), id_value)?;
        let id = NodeId::parse_text(id_text.trim())
            .map_err(|e| doc.at(&table.key("id"), id_value, e.to_string()))?;
        if id == own_id {
            return Err(doc.at(
                &table.key("id"),
                id_value,
                "is this node's own id (from private_key); list other nodes here",
            ));
        }
        if let Some(first) = ids.insert(id, i) {
            return Err(doc.at(
                &table.key("id"),
                id_value,
                format!(
                    "the same node id is already given by peers[{first}]; merge the two entries"
                ),
            ));
        }

        let name = match table.get("name") {
            None => None,
            Some(v) => {
                let key = table.key("name");
                let n = NodeName::parse(expect_str(doc, &key, v)?)
                    .map_err(|e| doc.at(&key, v, e.to_string()))?;
                if &n == own_name {
                    return Err(doc.at(
                        &key,
                        v,
                        format!("{n:?} is this node's own name; names are unique in a network"),
                    ));
                }
                if let Some(first) = names.insert(n.clone(), i) {
                    return Err(doc.at(
                        &key,
                        v,
                        format!("peers[{first}] already has the name \"{n}\"; names are unique in a network"),
                    ));
                }
                Some(n)
            }
        };

        let mut addrs = Vec::new();
        if let Some(v) = table.get("addrs") {
            let list = expect_array(doc, &table.key("addrs"), v)?;
            for (j, a) in list.iter().enumerate() {
                let key = format!("{prefix}.addrs[{j}]");
                let addr = read_peer_addr(doc, &key, a)?;
                if addrs.contains(&addr) {
                    return Err(doc.at(&key, a, "this address is listed twice"));
                }
                addrs.push(addr);
            }
        }
        peers.push(PeerConfig { id, name, addrs });
    }
    Ok(peers)
}

fn read_peer_addr(doc: &Doc<'_>, key: &str, value: &Value<'_>) -> Result<PeerAddr, ConfigError> {
    let example =
        "\"/ip4/192.0.2.10/udp/7700/quic-v1\" or \"/dns/beta.example.com/udp/7700/quic-v1\"";
    let text = expect_str(doc, key, value)?;
    let protocols = multiaddr_protocols(doc, key, value, text, example)?;
    let (addr, port) = match protocols.as_slice() {
        [Protocol::Ip4(ip), Protocol::Udp(port), Protocol::QuicV1] => {
            (PeerAddr::Ip(SocketAddr::new((*ip).into(), *port)), *port)
        }
        [Protocol::Ip6(ip), Protocol::Udp(port), Protocol::QuicV1] => {
            (PeerAddr::Ip(SocketAddr::new((*ip).into(), *port)), *port)
        }
        [Protocol::Dns(host) | Protocol::Dns4(host) | Protocol::Dns6(host), Protocol::Udp(port), Protocol::QuicV1] =>
        {
            let host = validate_host_name(host).map_err(|e| doc.at(key, value, e.to_string()))?;
            (PeerAddr::Dns { host, port: *port }, *port)
        }
        _ => {
            return Err(doc.at(
                key,
                value,
                format!(
                    "{text:?} is not a peer address; expected \
                     /ip4|ip6|dns|dns4|dns6/<host>/udp/<port>/quic-v1, e.g. {example}"
                ),
            ))
        }
    };
    if port == 0 {
        return Err(doc.at(
            key,
            value,
            "port 0 cannot be dialed; give the peer's listen port",
        ));
    }
    Ok(addr)
}

fn read_services(
    doc: &Doc<'_>,
    top: &Table<'_, '_>,
) -> Result<BTreeMap<ServiceName, ServiceConfig>, ConfigError> {
    let mut services = BTreeMap::new();
    let Some(value) = top.get("services") else {
        return Ok(services);
    };
    let table = expect_table(doc, "services", value)?;
    let mut entries: Vec<_> = table.iter().collect();
    entries.sort_by_key(|(k, _)| k.span().start);
    for (raw_name, value) in entries {
        let raw_name: &str = raw_name.get_ref();
        let prefix = format!("services.{raw_name}");
        let name = ServiceName::parse(raw_name)
            .map_err(|e| doc.at(&prefix, value, format!("is not a valid service name: {e}")))?;
        let service = match value.get_ref() {
            DeValue::String(text) => ServiceConfig {
                entry: ServiceEntry {
                    target: parse_service_target(text)
                        .map_err(|e| doc.at(&prefix, value, e.to_string()))?,
                    allowed_ports: None,
                },
                role: None,
                health: None,
                socket: SocketOptions::default(),
            },
            DeValue::Table(t) => read_service_table(
                doc,
                Table::new(doc, prefix.clone(), t, SERVICE_KEYS)?,
                value,
            )?,
            other => {
                return Err(doc.at(
                    &prefix,
                    value,
                    format!(
                        "expected a target string (e.g. \"/tcp/8080\") or a table with `target`, \
                         found {}",
                        describe(other)
                    ),
                ))
            }
        };
        if services.insert(name.clone(), service).is_some() {
            return Err(doc.at(
                &prefix,
                value,
                format!("the service \"{name}\" is defined twice (names are case-insensitive)"),
            ));
        }
    }
    Ok(services)
}

fn read_service_table(
    doc: &Doc<'_>,
    table: Table<'_, '_>,
    whole: &Value<'_>,
) -> Result<ServiceConfig, ConfigError> {
    let target_value = table.get("target").ok_or_else(|| {
        doc.error(
            &table.key("target"),
            Some(whole.span()),
            "is missing; give the address to forward to, e.g. target = \"/tcp/8080\"",
        )
    })?;
    let key = table.key("target");
    let target = parse_service_target(expect_str(doc, &key, target_value)?)
        .map_err(|e| doc.at(&key, target_value, e.to_string()))?;

    let role = match table.get("role") {
        None => None,
        Some(v) => {
            let key = table.key("role");
            let text = expect_str(doc, &key, v)?;
            check_role(text).map_err(|reason| doc.at(&key, v, reason))?;
            Some(text.to_string())
        }
    };

    let health = match table.get("health") {
        None => None,
        Some(v) => {
            let key = table.key("health");
            let text = expect_str(doc, &key, v)?;
            if !text.starts_with('/')
                || text.len() > 1024
                || text.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(doc.at(
                    &key,
                    v,
                    "must be an HTTP path starting with `/` and without spaces, e.g. \"/healthz\"",
                ));
            }
            if role.is_none() {
                return Err(doc.at(
                    &key,
                    v,
                    "health checks are for role instances; add `role = \"name@version\"` or remove this key",
                ));
            }
            Some(text.to_string())
        }
    };

    let allowed_ports = match table.get("ports") {
        None => None,
        Some(v) => {
            let key = table.key("ports");
            let items = expect_array(doc, &key, v)?;
            let mut ranges = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let item_key = format!("{key}[{i}]");
                let range = match item.get_ref() {
                    DeValue::Integer(_) => {
                        let p = expect_int(doc, &item_key, item, 1, 65535)? as u16;
                        p..=p
                    }
                    DeValue::String(s) => PortAllowList::parse_range(s)
                        .map_err(|e| doc.at(&item_key, item, e.to_string()))?,
                    other => {
                        return Err(doc.at(
                            &item_key,
                            item,
                            format!(
                                "expected a port (80) or a range (\"8000-8100\"), found {}",
                                describe(other)
                            ),
                        ))
                    }
                };
                ranges.push(range);
            }
            Some(PortAllowList::new(ranges).map_err(|e| doc.at(&key, v, e.to_string()))?)
        }
    };

    let socket = match table.table("socket", SOCKET_KEYS)? {
        None => SocketOptions::default(),
        Some(t) => read_socket(&t, SocketKind::TcpDial)?,
    };
    Ok(ServiceConfig {
        entry: ServiceEntry {
            target,
            allowed_ports,
        },
        role,
        health,
        socket,
    })
}

/// A role: `<role name>@<semantic version>` (semver 2.0, as the `semver` crate parses it).
fn check_role(text: &str) -> Result<(), String> {
    let example = "write <role>@<version>, e.g. \"couchdb@3.2.2\"";
    let Some((role, version)) = text.split_once('@') else {
        return Err(format!("{text:?} has no version; {example}"));
    };
    RoleName::parse(role).map_err(|e| format!("bad role name: {e}; {example}"))?;
    semver::Version::parse(version)
        .map_err(|e| format!("{version:?} is not a semantic version ({e}); {example}"))?;
    Ok(())
}

fn read_tun(top: &Table<'_, '_>) -> Result<TunConfig, ConfigError> {
    let mut tun = TunConfig {
        enabled: true,
        name: DEFAULT_TUN_NAME.to_string(),
        mtu: DEFAULT_MTU,
    };
    if let Some(t) = top.table("tun", TUN_KEYS)? {
        if let Some(enabled) = t.bool("enabled")? {
            tun.enabled = enabled;
        }
        if let Some(value) = t.get("name") {
            let name = expect_str(t.doc, "tun.name", value)?;
            check_ifname(name).map_err(|reason| t.doc.at("tun.name", value, reason))?;
            tun.name = name.to_string();
        }
        if let Some(mtu) = t.int("mtu", u64::from(MIN_MTU), 65535)? {
            tun.mtu = mtu as u16;
        }
    }
    Ok(tun)
}

fn read_dns(top: &Table<'_, '_>) -> Result<DnsConfig, ConfigError> {
    let mut dns = DnsConfig {
        listen: None,
        zone: Zone::default(),
        forward: None,
    };
    if let Some(t) = top.table("dns", DNS_KEYS)? {
        dns.listen = t.socket_addr("listen", Some(53))?;
        if let Some(value) = t.get("zone") {
            let zone = expect_str(t.doc, "dns.zone", value)?;
            dns.zone = Zone::new(zone).map_err(|e| t.doc.at("dns.zone", value, e.to_string()))?;
        }
        dns.forward = t.socket_addr("forward", Some(53))?;
    }
    Ok(dns)
}

fn read_limits(top: &Table<'_, '_>) -> Result<Limits, ConfigError> {
    let mut limits = Limits::default();
    let Some(t) = top.table("limits", LIMIT_KEYS)? else {
        return Ok(limits);
    };
    if let Some(n) = t.int("max_peers", 1, 1 << 20)? {
        limits.max_peers = n as usize;
    }
    if let Some(n) = t.int("max_streams_per_peer", 1, 1 << 24)? {
        limits.max_streams_per_peer = n as u32;
    }
    if let Some(n) = t.int("max_connections", 1, 1 << 24)? {
        limits.max_connections = n as usize;
    }
    for (name, field) in [
        ("connect_timeout", &mut limits.connect_timeout),
        ("handshake_timeout", &mut limits.handshake_timeout),
        ("idle_timeout", &mut limits.idle_timeout),
        ("keep_alive", &mut limits.keep_alive),
        ("header_timeout", &mut limits.header_timeout),
    ] {
        if let Some(d) = t.duration(name)? {
            *field = d;
        }
    }
    if limits.keep_alive >= limits.idle_timeout {
        let span = t
            .get("keep_alive")
            .or(t.get("idle_timeout"))
            .map(|v| v.span());
        return Err(t.doc.error(
            "limits.keep_alive",
            span,
            format!(
                "{} must be shorter than `limits.idle_timeout` ({}), or idle connections close \
                 between two keep-alives; lower keep_alive or raise idle_timeout",
                humantime::format_duration(limits.keep_alive),
                humantime::format_duration(limits.idle_timeout)
            ),
        ));
    }
    Ok(limits)
}

/// `[<holder>.socket]` of `[transport]` or `[proxy]`.
fn read_socket_holder(
    top: &Table<'_, '_>,
    holder: &str,
    kind: SocketKind,
) -> Result<SocketOptions, ConfigError> {
    let Some(t) = top.table(holder, SOCKET_TABLE_KEYS)? else {
        return Ok(SocketOptions::default());
    };
    match t.table("socket", SOCKET_KEYS)? {
        None => Ok(SocketOptions::default()),
        Some(socket) => read_socket(&socket, kind),
    }
}

fn read_socket(t: &Table<'_, '_>, kind: SocketKind) -> Result<SocketOptions, ConfigError> {
    let mut opts = SocketOptions {
        nodelay: t.bool("nodelay")?,
        user_timeout: t.duration("user_timeout")?,
        send_buffer: t
            .int("send_buffer", MIN_BUFFER as u64, MAX_BUFFER as u64)?
            .map(|n| n as usize),
        recv_buffer: t
            .int("recv_buffer", MIN_BUFFER as u64, MAX_BUFFER as u64)?
            .map(|n| n as usize),
        reuseaddr: t.bool("reuseaddr")?,
        reuseport: t.bool("reuseport")?,
        mark: t.int("mark", 0, u64::from(u32::MAX))?.map(|n| n as u32),
        bind_device: t.string("bind_device")?.map(str::to_string),
        connect_timeout: t.duration("connect_timeout")?,
        keepalive: None,
    };
    let idle = t.duration("keepalive_idle")?;
    let interval = t.duration("keepalive_interval")?;
    let count = t.int("keepalive_count", 1, u64::from(MAX_KEEPALIVE_COUNT))?;
    opts.keepalive = match (idle, interval, count) {
        (None, None, None) => None,
        (Some(idle), Some(interval), Some(count)) => Some(Keepalive {
            idle,
            interval,
            count: count as u32,
        }),
        _ => {
            let missing: Vec<String> = [
                ("keepalive_idle", idle.is_none()),
                ("keepalive_interval", interval.is_none()),
                ("keepalive_count", count.is_none()),
            ]
            .iter()
            .filter(|(_, m)| *m)
            .map(|(k, _)| format!("`{}`", t.key(k)))
            .collect();
            let given = ["keepalive_idle", "keepalive_interval", "keepalive_count"]
                .into_iter()
                .find(|k| t.get(k).is_some())
                .unwrap_or("keepalive_idle");
            return Err(t.doc.error(
                &t.key(given),
                t.get(given).map(|v| v.span()),
                format!(
                    "TCP keep-alive needs all three of keepalive_idle, keepalive_interval and \
                     keepalive_count; {} missing",
                    if missing.len() == 1 {
                        format!("{} is", missing[0])
                    } else {
                        format!("{} are", missing.join(" and "))
                    }
                ),
            ));
        }
    };
    opts.validate(kind, &t.prefix).map_err(|e| {
        let name = e.key.rsplit('.').next().unwrap_or_default();
        t.doc.error(&e.key, t.get(name).map(|v| v.span()), e.reason)
    })?;
    Ok(opts)
}
