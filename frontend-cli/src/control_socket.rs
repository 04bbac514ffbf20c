//! The daemon's control socket: a unix socket (mode 0600) answering one JSON request per line.
//!
//! Requests: `{"cmd":"status"}` and `{"cmd":"resolve","name":"web.alpha"}`. Answers are one JSON
//! object per line, with an `"error"` key on failure. `svcnet status` and `svcnet resolve` are
//! its clients; the format is documented in `docs/operations.md`.

use std::net::Ipv6Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use svcnet_core::addressing::{parse_name, Name, NetworkPrefix, ServiceName};
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
            while let Ok(Some(line)) = lines.next_line().await {
                let answer = if line.len() > MAX_REQUEST {
                    json!({"error": "request too long"})
                } else {
                    answer(&node, &line)
                };
                let mut text = answer.to_string();
                text.push('\n');
                if write.write_all(text.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
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
            Some(name) => match node.with_book(|book| resolve(node.config(), book, name)) {
                Ok(v) => v,
                Err(e) => json!({"error": e}),
            },
            None => json!({"error": "resolve needs \"name\""}),
        },
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
        .map(|(s, rtt, path)| {
            json!({
                "id": s.id.to_text(),
                "name": s.name.map(|n| n.to_string()),
                "state": s.state.as_str(),
                "connections": s.connections,
                "rtt_ms": rtt.map(|d| d.as_secs_f64() * 1000.0),
                "path": path.map(|p| p.to_string()),
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
    })
}

/// Resolves a svcnet name to its address with what `book` knows (config names, announced names).
pub fn resolve(config: &Config, book: &PeerBook, name: &str) -> Result<Value, String> {
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
    let (address, node): (Ipv6Addr, NodeId) = match &parsed {
        Name::Node { node } => {
            let id = book.resolve(node).map_err(|e| e.to_string())?;
            (prefix.node_address(&id), id)
        }
        Name::Service { service, node } => {
            let id = book.resolve(node).map_err(|e| e.to_string())?;
            check_service(config, book, &id, service)?;
            (prefix.service_address(&id, service), id)
        }
        Name::Role { .. } => {
            return Err(format!(
                "{fqdn} is a role name; role addresses need the service registry, which this build does not have yet"
            ))
        }
    };
    Ok(json!({
        "name": parsed.to_fqdn(zone),
        "address": address.to_string(),
        "node": node.to_text(),
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
    Ok(value)
}
