//! `svcnet proxy`: a local TCP listener whose connections reach a remote service over QUIC.
//!
//! No TUN and no root: each accepted local connection opens one service stream to the node that
//! offers the service; the dial reply decides whether the local connection is pumped or reset
//! (with RST, so the client sees the failure at once rather than a hang or an empty reply).

use std::net::SocketAddr;
use std::time::Duration;

use svcnet_core::addressing::{parse_name, Name, NodeLabel, ServiceName, Zone};
use svcnet_core::wire::stream::TargetRef;
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use crate::node::{pump_client, Node};
use crate::sockopt;

/// What a proxy forwards to: a service on a node, and the port to request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyTarget {
    /// The service.
    pub service: ServiceName,
    /// The node offering it.
    pub node: NodeLabel,
    /// The destination port to request (`None`: the local listen port).
    pub port: Option<u16>,
}

impl std::fmt::Display for ProxyTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.service, self.node)?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        Ok(())
    }
}

/// Parses `SERVICE.NODE[.ZONE][:PORT]` (NODE is a node name or id).
pub fn parse_target(text: &str, zone: &Zone) -> Result<ProxyTarget, String> {
    let (name, port) = match text.rsplit_once(':') {
        Some((name, port)) => (
            name,
            Some(
                port.parse::<u16>()
                    .map_err(|_| format!("`{port}` in `{text}` is not a port number (1-65535)"))?,
            ),
        ),
        None => (text, None),
    };
    if text.contains('@') {
        return Err(format!(
            "`{text}` names a role; role targets need the service registry, which this build does not have yet — name a service as SERVICE.NODE"
        ));
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    let fqdn = if name.to_ascii_lowercase().ends_with(&format!(".{zone}")) {
        name.to_string()
    } else {
        format!("{name}.{zone}")
    };
    match parse_name(zone, &fqdn) {
        Ok(Name::Service { service, node }) => Ok(ProxyTarget {
            service,
            node,
            port: port.filter(|p| *p != 0),
        }),
        Ok(_) => Err(format!(
            "`{text}` is not a service name; expected SERVICE.NODE, e.g. web.alpha"
        )),
        Err(e) => Err(format!(
            "`{text}`: {e}; expected SERVICE.NODE, e.g. web.alpha"
        )),
    }
}

/// Accepts on `listen` and forwards every connection to `target` until the task is dropped.
pub async fn run(node: Node, target: ProxyTarget, listener: tokio::net::TcpListener) {
    let listen = listener.local_addr().ok();
    loop {
        let (client, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let node = node.clone();
        let target = target.clone();
        let port = target.port.or(listen.map(|a| a.port())).unwrap_or(0);
        tokio::spawn(async move {
            forward(node, target, port, client, peer).await;
        });
    }
}

async fn forward(node: Node, target: ProxyTarget, port: u16, client: TcpStream, peer: SocketAddr) {
    let node_id = match node.resolve_node(&target.node) {
        Ok(id) => id,
        Err(e) => {
            warn!(%target, error = %e, "cannot resolve proxy target");
            reset(client);
            return;
        }
    };
    if node_id == node.id() {
        match node.open_local(target.service.clone(), port).await {
            Ok(local) => {
                let _ = tokio::io::copy_bidirectional(&mut { client }, &mut { local }).await;
            }
            Err(e) => {
                info!(%target, error = %e, "local service refused");
                reset(client);
            }
        }
        return;
    }
    match node
        .open(
            node_id,
            TargetRef::Service(target.service.clone()),
            port,
            Some(peer),
        )
        .await
    {
        Ok(stream) => {
            debug!(%target, client = %peer, "proxying");
            pump_client(client, stream).await;
        }
        Err(e) => {
            info!(%target, client = %peer, error = %e, "connection refused");
            reset(client);
        }
    }
}

/// Closes `client` with a TCP RST so the failure is immediate and visible.
fn reset(client: TcpStream) {
    let _ = socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO));
    drop(client);
}

/// Binds the proxy listener with the `[proxy] socket` options.
pub fn bind(node: &Node, listen: SocketAddr) -> Result<tokio::net::TcpListener, String> {
    sockopt::listen_tcp(listen, &node.config().proxy.socket).map_err(|e| {
        format!("cannot listen on {listen}: {e}; choose another address with --listen")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone() -> Zone {
        Zone::new("svcnet").unwrap()
    }

    #[test]
    fn targets_parse_with_and_without_zone_and_port() {
        let t = parse_target("web.alpha", &zone()).unwrap();
        assert_eq!(t.service.as_str(), "web");
        assert_eq!(t.node, NodeLabel::parse("alpha").unwrap());
        assert_eq!(t.port, None);
        assert_eq!(parse_target("web.alpha.svcnet", &zone()).unwrap(), t);
        assert_eq!(
            parse_target("WEB.Alpha.svcnet.", &zone()).unwrap().port,
            None
        );
        assert_eq!(
            parse_target("web.alpha:8443", &zone()).unwrap().port,
            Some(8443)
        );
        assert_eq!(t.to_string(), "web.alpha");
    }

    #[test]
    fn bad_targets_say_what_is_expected() {
        for bad in ["alpha", "a.b.c.d", "web.alpha:http", "web.-x", "couchdb@^3"] {
            let err = parse_target(bad, &zone()).unwrap_err();
            assert!(err.contains(bad) || err.contains("port"), "{bad}: {err}");
        }
        assert!(parse_target("alpha", &zone())
            .unwrap_err()
            .contains("SERVICE.NODE"));
    }
}
