//! `svcnet proxy`: a local TCP listener whose connections reach a remote service over QUIC.
//!
//! No TUN and no root: each accepted local connection opens one service stream to the node that
//! offers the service; the dial reply decides whether the local connection is pumped or reset
//! (with RST, so the client sees the failure at once rather than a hang or an empty reply).

use std::net::SocketAddr;
use std::time::Duration;

use svcnet_core::addressing::{parse_name, Name, NodeLabel, ServiceName, Zone};
use svcnet_core::registry::range_label::label_to_req;
use svcnet_core::wire::stream::TargetRef;
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use crate::node::{pump_client, Node, RoleStream, RoleTarget};
use crate::sockopt;

/// What a proxy forwards to: a service on a node, or a role (balanced, with failover).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// A service of one node.
    Service {
        /// The service.
        service: ServiceName,
        /// The node offering it.
        node: NodeLabel,
    },
    /// Any healthy instance of a role in a version range.
    Role(RoleTarget),
}

/// A proxy target: where, and the destination port to request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyTarget {
    /// Where connections go.
    pub destination: Destination,
    /// The destination port to request (`None`: the local listen port).
    pub port: Option<u16>,
}

impl std::fmt::Display for ProxyTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.destination {
            Destination::Service { service, node } => write!(f, "{service}.{node}")?,
            Destination::Role(role) => write!(f, "{role}")?,
        }
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        Ok(())
    }
}

/// Parses `SERVICE.NODE[.ZONE][:PORT]` (NODE is a node name or id), `ROLE@RANGE[:PORT]`, or a
/// role name `[vLABEL.]ROLE.role[.ZONE][:PORT]`.
pub fn parse_target(text: &str, zone: &Zone) -> Result<ProxyTarget, String> {
    // A port suffix is `:` and digits only (semver ranges never contain `:`).
    let (name, port) = match text.rsplit_once(':') {
        Some((name, port)) if !text.contains('@') || port.chars().all(|c| c.is_ascii_digit()) => (
            name,
            Some(
                port.parse::<u16>()
                    .map_err(|_| format!("`{port}` in `{text}` is not a port number (1-65535)"))?,
            ),
        ),
        _ => (text, None),
    };
    let port = port.filter(|p| *p != 0);
    if name.contains('@') {
        return Ok(ProxyTarget {
            destination: Destination::Role(RoleTarget::parse(name)?),
            port,
        });
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    let fqdn = if name.to_ascii_lowercase().ends_with(&format!(".{zone}")) {
        name.to_string()
    } else {
        format!("{name}.{zone}")
    };
    let expected = "expected SERVICE.NODE (e.g. web.alpha) or ROLE@RANGE (e.g. couchdb@^3.1)";
    match parse_name(zone, &fqdn) {
        Ok(Name::Service { service, node }) => Ok(ProxyTarget {
            destination: Destination::Service { service, node },
            port,
        }),
        Ok(Name::Role {
            role,
            version_label,
        }) => Ok(ProxyTarget {
            destination: Destination::Role(RoleTarget {
                role,
                req: label_to_req(version_label),
            }),
            port,
        }),
        Ok(Name::Node { .. }) => Err(format!("`{text}` names a node, not a service; {expected}")),
        Err(e) => Err(format!("`{text}`: {e}; {expected}")),
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
    let (service, node_label) = match &target.destination {
        Destination::Service { service, node } => (service.clone(), node.clone()),
        Destination::Role(role) => {
            match node.open_role(role, port, Some(peer)).await {
                Ok((RoleStream::Remote(stream), _connection, instance)) => {
                    debug!(%target, service = %instance.service, node = %instance.origin.short(), "proxying");
                    pump_client(client, stream).await;
                }
                Ok((RoleStream::Local(mut local), _connection, _)) => {
                    let _ = tokio::io::copy_bidirectional(&mut { client }, &mut local).await;
                }
                Err(e) => {
                    info!(%target, client = %peer, error = %e, "no instance answered");
                    reset(client);
                }
            }
            return;
        }
    };
    let node_id = match node.resolve_node(&node_label) {
        Ok(id) => id,
        Err(e) => {
            warn!(%target, error = %e, "cannot resolve proxy target");
            reset(client);
            return;
        }
    };
    if node_id == node.id() {
        match node.open_local(service, port).await {
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
        .open(node_id, TargetRef::Service(service), port, Some(peer))
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

    fn service(t: &ProxyTarget) -> (&str, String) {
        match &t.destination {
            Destination::Service { service, node } => (service.as_str(), node.to_string()),
            other => panic!("not a service: {other:?}"),
        }
    }

    #[test]
    fn targets_parse_with_and_without_zone_and_port() {
        let t = parse_target("web.alpha", &zone()).unwrap();
        assert_eq!(service(&t), ("web", "alpha".to_string()));
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
    fn role_targets_take_any_semver_range_or_a_role_name() {
        let t = parse_target("couchdb@^3.1", &zone()).unwrap();
        let Destination::Role(role) = &t.destination else {
            panic!("{t:?}")
        };
        assert_eq!(role.role.as_str(), "couchdb");
        assert!(role.req.matches(&semver::Version::parse("3.4.0").unwrap()));
        assert!(!role.req.matches(&semver::Version::parse("4.0.0").unwrap()));
        let t = parse_target("couchdb@>=3, <4:5984", &zone()).unwrap();
        assert_eq!(t.port, Some(5984));
        let t = parse_target("couchdb", &zone());
        assert!(t.is_err(), "a bare label is a node name, not a role");
        let t = parse_target("v3.couchdb.role", &zone()).unwrap();
        let Destination::Role(role) = &t.destination else {
            panic!("{t:?}")
        };
        assert!(role.req.matches(&semver::Version::parse("3.9.1").unwrap()));
        assert!(!role.req.matches(&semver::Version::parse("2.9.1").unwrap()));
        let t = parse_target("couchdb.role.svcnet", &zone()).unwrap();
        assert_eq!(t.to_string(), "couchdb@*");
        assert!(parse_target("couchdb@^x", &zone())
            .unwrap_err()
            .contains("semver range"));
    }

    #[test]
    fn bad_targets_say_what_is_expected() {
        for bad in ["alpha", "a.b.c.d", "web.alpha:http", "web.-x"] {
            let err = parse_target(bad, &zone()).unwrap_err();
            assert!(err.contains(bad) || err.contains("port"), "{bad}: {err}");
        }
        assert!(parse_target("alpha", &zone())
            .unwrap_err()
            .contains("SERVICE.NODE"));
    }
}
