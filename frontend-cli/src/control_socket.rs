//! The daemon's control socket: a unix socket (mode 0600) answering one JSON request per line.
//!
//! Requests: `{"cmd":"status"}`, `{"cmd":"services"}`, `{"cmd":"resolve","name":"web.alpha"}` and
//! `{"cmd":"proxy","target":…,"listen":…}` (a forwarded port that lives as long as the requesting
//! connection). Answers are one JSON object per line, with an `"error"` key on failure.
//! `svcnet status`, `services`, `resolve` and `proxy` are its clients; the format is documented
//! in `docs/operations.md`.

use std::net::Ipv6Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use svcnet_core::addressing::{
    parse_name, Name, NetworkPrefix, RoleName, ServiceName, VersionLabel,
};
use svcnet_core::identity::NodeId;
use svcnet_core::peering::PeerBook;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::debug;

use crate::config::Config;
use crate::node::Node;

/// Largest request line accepted.
const MAX_REQUEST: usize = 4096;

/// Binds the control socket. A stale socket file (no daemon behind it) is replaced; a live one is
/// an error, so two daemons never share one config.
pub async fn bind(path: &Path) -> Result<UnixListener, String> {
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(format!(
                "control socket {} is in use: another svcnet daemon runs with this config (stop it, or set [control] socket)",
                path.display()
            ));
        }
        std::fs::remove_file(path)
            .map_err(|e| format!("removing stale control socket {}: {e}", path.display()))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| {
        format!(
            "cannot create control socket {}: {e} (set [control] socket to a writable path)",
            path.display()
        )
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("setting mode 0600 on {}: {e}", path.display()))?;
    Ok(listener)
}

/// Answers requests until the task is dropped.
pub async fn serve(listener: UnixListener, node: Node) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let node = node.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read.take(MAX_REQUEST as u64 * 16)).lines();
            // Proxies started by this client live as long as its connection.
            let mut proxies: Vec<tokio::task::JoinHandle<()>> = Vec::new();
            while let Ok(Some(line)) = lines.next_line().await {
                let answer = if line.len() > MAX_REQUEST {
                    json!({"error": "request too long"})
                } else {
                    match start_proxy(&node, &line) {
                        Some(Ok((answer, task))) => {
                            proxies.push(task);
                            answer
                        }
                        Some(Err(e)) => json!({"error": e}),
                        None => answer(&node, &line),
                    }
                };
                let mut text = answer.to_string();
                text.push('\n');
                if write.write_all(text.as_bytes()).await.is_err() {
                    break;
                }
            }
            for task in proxies {
                task.abort();
            }
        });
    }
}

/// `{"cmd":"proxy","target":"web.alpha","listen":"127.0.0.1:8080"}`: the daemon forwards a local
/// port for as long as the requesting connection stays open (`svcnet proxy` with a running
/// daemon). `None` if the line is not a proxy request.
fn start_proxy(
    node: &Node,
    line: &str,
) -> Option<Result<(Value, tokio::task::JoinHandle<()>), String>> {
    let request: Value = serde_json::from_str(line).ok()?;
    if request.get("cmd").and_then(Value::as_str) != Some("proxy") {
        return None;
    }
    Some((|| {
        let target = request
            .get("target")
            .and_then(Value::as_str)
            .ok_or("proxy needs \"target\"")?;
        let listen: std::net::SocketAddr = request
            .get("listen")
            .and_then(Value::as_str)
            .ok_or("proxy needs \"listen\"")?
            .parse()
            .map_err(|e| format!("bad listen address: {e}"))?;
        let target = crate::proxy::parse_target(target, &node.config().dns.zone)?;
        let listener = crate::proxy::bind(node, listen)?;
        let bound = listener.local_addr().map_err(|e| e.to_string())?;
        tracing::info!(%target, listen = %bound, "proxy started for a control client");
        let task = tokio::spawn(crate::proxy::run(node.clone(), target, listener));
        Ok((json!({"listen": bound.to_string()}), task))
    })())
}

fn answer(node: &Node, line: &str) -> Value {
    let request: Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(e) => return json!({"error": format!("bad request: {e}")}),
    };
    debug!(%line, "control request");
    match request.get("cmd").and_then(Value::as_str) {
        Some("status") => status(node),
        Some("resolve") => match request.get("name").and_then(Value::as_str) {
            Some(name) => {
                let roles =
                    |role: &RoleName, label: Option<VersionLabel>| node.lookup_role(role, label);
                match node.with_book(|book| resolve(node.config(), book, name, roles)) {
                    Ok(v) => v,
                    Err(e) => json!({"error": e}),
                }
            }
            None => json!({"error": "resolve needs \"name\""}),
        },
        Some("services") => node.services_json(),
        Some(other) => json!({"error": format!("unknown command `{other}`")}),
        None => json!({"error": "missing \"cmd\""}),
    }
}

/// The node's status as JSON.
pub fn status(node: &Node) -> Value {
    let config = node.config();
    let prefix = NetworkPrefix::derive(&config.network);
    let peers: Vec<Value> = node
        .peer_status()
        .into_iter()
        .map(|(s, link)| {
            json!({
                "id": s.id.to_text(),
                "name": s.name.map(|n| n.to_string()),
                "state": s.state.as_str(),
                "connections": s.connections,
                "rtt_ms": link.map(|l| l.rtt.as_secs_f64() * 1000.0),
                "path": link.map(|l| l.path.to_string()),
                "path_mtu": link.map(|l| l.path_mtu),
                "failed_attempts": s.failed_attempts,
                "last_error": s.last_error,
                "services": s.services.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
                "address": prefix.node_address(&s.id).to_string(),
            })
        })
        .collect();
    let services: Vec<Value> = config
        .services
        .iter()
        .map(|(name, svc)| {
            json!({
                "name": name.to_string(),
                "target": svc.entry.target.to_string(),
                "address": prefix.service_address(&node.id(), name).to_string(),
                "fqdn": format!("{name}.{}.{}", config.name, config.dns.zone),
            })
        })
        .collect();
    let counters: Vec<Value> = node
        .metrics()
        .snapshot()
        .into_iter()
        .map(|(dir, name, v)| {
            json!({
                "direction": dir,
                "service": name,
                "bytes_to_service": v[0],
                "bytes_to_client": v[1],
                "connections_total": v[2],
                "connections_active": v[3],
                "errors_total": v[4],
            })
        })
        .collect();
    json!({
        "node": {
            "name": config.name.to_string(),
            "id": node.id().to_text(),
            "address": prefix.node_address(&node.id()).to_string(),
            "listen": node.local_addrs().iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "network": config.network,
            "zone": config.dns.zone.to_string(),
            "metrics": node.metrics_addr().map(|a| a.to_string()),
        },
        "peers": peers,
        "services": services,
        "counters": counters,
        "tun": node.tun_stats().map(|st| json!({
            "interface": config.tun.name,
            "mtu": config.tun.mtu,
            "connections": st.connections,
            "held_syns": st.held,
            "dropped_unserved": st.dropped_unserved,
            "dropped_invalid": st.dropped_invalid,
            "dropped_syn_rate": st.dropped_syn_rate,
        })),
        "registry": node.with_registry(|r| {
            let all = r.instances();
            json!({
                "instances": all.len(),
                "healthy": all.iter().filter(|i| i.healthy).count(),
                "origins": r.origins().len(),
            })
        }),
    })
}

/// Resolves a svcnet name to its address with what `book` knows (config names, announced names)
/// and, for role names, what `roles` finds (the address if the role has an instance in range).
pub fn resolve(
    config: &Config,
    book: &PeerBook,
    name: &str,
    roles: impl Fn(&RoleName, Option<VersionLabel>) -> Option<Ipv6Addr>,
) -> Result<Value, String> {
    let zone = &config.dns.zone;
    let fqdn = if name
        .trim_end_matches('.')
        .to_ascii_lowercase()
        .ends_with(&format!(".{zone}"))
    {
        name.to_string()
    } else {
        format!("{}.{zone}", name.trim_end_matches('.'))
    };
    let parsed = parse_name(zone, &fqdn).map_err(|e| format!("{fqdn}: {e}"))?;
    let prefix = NetworkPrefix::derive(&config.network);
    let (address, node): (Ipv6Addr, Option<NodeId>) = match &parsed {
        Name::Node { node } => {
            let id = book.resolve(node).map_err(|e| e.to_string())?;
            (prefix.node_address(&id), Some(id))
        }
        Name::Service { service, node } => {
            let id = book.resolve(node).map_err(|e| e.to_string())?;
            check_service(config, book, &id, service)?;
            (prefix.service_address(&id, service), Some(id))
        }
        Name::Role {
            role,
            version_label,
        } => {
            let address = roles(role, *version_label).ok_or_else(|| {
                format!("{fqdn}: no instance of role `{role}` in this version range is known (see `svcnet services`)")
            })?;
            (address, None)
        }
    };
    Ok(json!({
        "name": parsed.to_fqdn(zone),
        "address": address.to_string(),
        "node": node.map(|n| n.to_text()),
    }))
}

fn check_service(
    config: &Config,
    book: &PeerBook,
    node: &NodeId,
    service: &ServiceName,
) -> Result<(), String> {
    if *node == config.key.node_id() {
        if config.services.contains_key(service) {
            return Ok(());
        }
        return Err(format!(
            "this node has no service `{service}` (see [services])"
        ));
    }
    // A peer's services are known once it said hello; before that the name is trusted.
    match book.status().into_iter().find(|s| s.id == *node) {
        Some(s) if s.connections > 0 && !s.services.contains(service) => Err(format!(
            "node {} does not offer `{service}` (it offers: {})",
            s.name
                .map(|n| n.to_string())
                .unwrap_or_else(|| node.short()),
            s.services
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )),
        _ => Ok(()),
    }
}

/// Sends one request to the daemon behind `path` and returns its answer.
pub async fn request(path: &Path, request: &Value) -> Result<Value, String> {
    held_request(path, request).await.map(|(value, _)| value)
}

/// A control connection kept open after its request (a daemon-run proxy lives as long as it).
pub struct HeldConnection {
    _write: tokio::net::unix::OwnedWriteHalf,
    lines: tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
}

impl HeldConnection {
    /// Completes when the daemon closes the connection (it stopped).
    pub async fn closed(&mut self) {
        while let Ok(Some(_)) = self.lines.next_line().await {}
    }
}

/// Sends one request and returns the answer with the still-open connection.
pub async fn held_request(path: &Path, request: &Value) -> Result<(Value, HeldConnection), String> {
    let stream = tokio::time::timeout(Duration::from_secs(2), UnixStream::connect(path))
        .await
        .map_err(|_| format!("connecting to {} timed out", path.display()))?
        .map_err(|e| {
            format!(
                "cannot reach the daemon at {}: {e} (is `svcnet daemon` running with this config?)",
                path.display()
            )
        })?;
    let (read, mut write) = stream.into_split();
    let mut line = request.to_string();
    line.push('\n');
    write
        .write_all(line.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut lines = BufReader::new(read).lines();
    let answer = tokio::time::timeout(Duration::from_secs(5), lines.next_line())
        .await
        .map_err(|_| "the daemon did not answer within 5 s".to_string())?
        .map_err(|e| e.to_string())?
        .ok_or("the daemon closed the control connection")?;
    let value: Value = serde_json::from_str(&answer).map_err(|e| e.to_string())?;
    if let Some(error) = value.get("error").and_then(Value::as_str) {
        return Err(error.to_string());
    }
    Ok((
        value,
        HeldConnection {
            _write: write,
            lines,
        },
    ))
}
