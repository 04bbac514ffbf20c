//! The service registry in the running node: its timer loop, message carriage, health checks,
//! and connections to roles with load balancing and failover.
//!
//! The core's `Registry` decides (who holds which instance, which instance a connection goes to);
//! this module drives it: registry messages travel as REGISTRY frames on the control streams
//! (`docs/protocol.md` §5), health checks are real TCP connects or HTTP GETs of the local targets,
//! and a connection to a role tries instances one after the other — each a real dial on the
//! serving node — until one answers, before the client hears anything (`docs/registry.md` §9).

use std::net::{Ipv6Addr, SocketAddr};
use std::time::Duration;

use semver::VersionReq;
use serde_json::{json, Value};
use svcnet_core::addressing::{NetworkPrefix, RoleName, ServiceName, VersionLabel};
use svcnet_core::registry::{Instance, InstanceKey, LocalInstance, Registry, RegistryEvent};
use svcnet_core::service::TargetHost;
use svcnet_core::wire::control::ControlMessage;
use svcnet_core::wire::stream::{DialReply, DialStatus, TargetRef};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use super::{Node, OpenError, ServiceStream};
use crate::config::Config;
use crate::sockopt;

/// A role and a version range, as `svcnet proxy couchdb@^3.1` names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleTarget {
    /// The role.
    pub role: RoleName,
    /// The version range (`*` when none was given).
    pub req: VersionReq,
}

impl RoleTarget {
    /// Parses `ROLE@RANGE` (any semver range: `3.x`, `^3.1`, `~3.2`, `>=3, <4`, `*`).
    pub fn parse(text: &str) -> Result<RoleTarget, String> {
        let (role, range) = text.split_once('@').unwrap_or((text, "*"));
        let role = RoleName::parse(role).map_err(|e| {
            format!("`{role}` is not a role name: {e}; write ROLE@RANGE, e.g. couchdb@^3.1")
        })?;
        let req = VersionReq::parse(range).map_err(|e| {
            format!("`{range}` is not a semver range ({e}); e.g. 3.x, ^3.1, ~3.2, \">=3, <4\" or *")
        })?;
        Ok(RoleTarget { role, req })
    }
}

impl std::fmt::Display for RoleTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.role, self.req)
    }
}

/// Holds one outstanding connection to an instance; the count drops when this does.
pub struct RoleConnection {
    node: Node,
    key: InstanceKey,
}

impl Drop for RoleConnection {
    fn drop(&mut self) {
        let key = self.key.clone();
        self.node.with_registry(|r| r.connection_ended(&key));
    }
}

/// Where a role connection went.
pub enum RoleStream {
    /// To an instance on another node.
    Remote(ServiceStream),
    /// To an instance on this node (dialed directly).
    Local(TcpStream),
}

/// The local role instances a config declares.
pub(super) fn local_instances(config: &Config) -> Vec<LocalInstance> {
    config
        .services
        .iter()
        .filter_map(|(name, svc)| {
            let (role, version) = svc.role_version()?;
            Some(LocalInstance {
                service: name.clone(),
                role,
                version,
                port: svc.entry.target.port,
                http_path: svc.health.clone(),
            })
        })
        .collect()
}

impl Node {
    /// Runs `f` on the registry and wakes its loop (the call may have queued output).
    pub fn with_registry<R>(&self, f: impl FnOnce(&mut Registry) -> R) -> R {
        let result = f(&mut self.inner.registry.lock().expect("registry lock"));
        self.inner.registry_wake.notify_one();
        result
    }

    pub(super) async fn registry_loop(self) {
        let mut shutdown = self.inner.shutdown.subscribe();
        loop {
            let now = self.now();
            let (transmits, events, next) = {
                let mut registry = self.inner.registry.lock().expect("registry lock");
                if registry.poll_timeout().is_some_and(|at| at <= now) {
                    registry.handle_timeout(now);
                }
                let transmits: Vec<_> = std::iter::from_fn(|| registry.poll_transmit()).collect();
                let events: Vec<_> = std::iter::from_fn(|| registry.poll_event()).collect();
                (transmits, events, registry.poll_timeout())
            };
            for (peer, message) in transmits {
                self.send_control(&peer, ControlMessage::Registry(message).encode());
            }
            for event in events {
                self.handle_registry_event(event);
            }
            let sleep = next
                .map(|at| at.saturating_duration_since(self.now()))
                .unwrap_or(Duration::from_secs(3600));
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                _ = self.inner.registry_wake.notified() => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    fn handle_registry_event(&self, event: RegistryEvent) {
        match event {
            RegistryEvent::HealthCheckDue { service, http_path } => {
                let node = self.clone();
                tokio::spawn(async move {
                    let healthy = node.health_check(&service, http_path.as_deref()).await;
                    let now = node.now();
                    node.with_registry(|r| r.handle_health_result(&service, healthy, now));
                });
            }
            RegistryEvent::InstanceAdded(key) => {
                debug!(service = %key.service, node = %key.origin.short(), "instance added");
                self.inner.changes.send_modify(|v| *v += 1);
            }
            RegistryEvent::InstanceRemoved { key, reason } => {
                info!(service = %key.service, node = %key.origin.short(), ?reason, "instance removed");
                self.inner.changes.send_modify(|v| *v += 1);
            }
            RegistryEvent::MemberUp(id) => debug!(node = %id.short(), "registry member up"),
            RegistryEvent::MemberDown(id) => info!(node = %id.short(), "registry member down"),
        }
    }

    /// A TCP connect to the service's target, or an HTTP GET of `http_path` expecting 2xx.
    async fn health_check(&self, service: &ServiceName, http_path: Option<&str>) -> bool {
        let Some(svc) = self.inner.config.services.get(service) else {
            return false;
        };
        // A target without a port passes the dialed port through; check its first allowed port,
        // else 80.
        let port = svc.entry.target.port.unwrap_or_else(|| {
            svc.entry
                .allowed_ports
                .as_ref()
                .and_then(|p| p.ranges().first().map(|r| *r.start()))
                .unwrap_or(80)
        });
        let host = match &svc.entry.target.host {
            TargetHost::Ip(ip) => Some(SocketAddr::new(*ip, port)),
            TargetHost::Dns(name) => tokio::net::lookup_host((name.as_str(), port))
                .await
                .ok()
                .and_then(|mut a| a.next()),
        };
        let Some(addr) = host else {
            return false;
        };
        let timeout = self.inner.config.limits.connect_timeout;
        let check = async {
            let mut stream = sockopt::dial_tcp(addr, &svc.socket, timeout).await.ok()?;
            let Some(path) = http_path else {
                return Some(true);
            };
            let request = format!(
                "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: svcnet-health\r\nConnection: close\r\n\r\n"
            );
            stream.write_all(request.as_bytes()).await.ok()?;
            let mut head = [0u8; 12];
            stream.read_exact(&mut head).await.ok()?;
            // "HTTP/1.1 2xx"
            Some(head.starts_with(b"HTTP/1.") && head[9] == b'2')
        };
        let healthy = tokio::time::timeout(timeout, check)
            .await
            .ok()
            .flatten()
            .unwrap_or(false);
        if !healthy {
            debug!(%service, %addr, "health check failed");
        }
        healthy
    }

    /// Opens a connection to an instance of `target`: picks one, dials it (remotely over QUIC,
    /// or directly when it is on this node), and on any failure picks another, until one
    /// answers or none is left.
    pub async fn open_role(
        &self,
        target: &RoleTarget,
        port: u16,
        client: Option<SocketAddr>,
    ) -> Result<(RoleStream, RoleConnection, Instance), OpenError> {
        let mut tried: Vec<InstanceKey> = Vec::new();
        let mut last: Option<OpenError> = None;
        loop {
            let now = self.now();
            let picked = self.with_registry(|r| {
                let instance = r.pick(
                    &target.role,
                    &target.req,
                    client.map(|c| c.ip()),
                    &tried,
                    now,
                )?;
                r.connection_started(&instance.key());
                Some(instance)
            });
            let Some(instance) = picked else {
                return Err(last.unwrap_or_else(|| {
                    OpenError::Refused(DialReply::new(
                        DialStatus::NoSuchService,
                        &format!("no healthy instance of {target}"),
                    ))
                }));
            };
            let guard = RoleConnection {
                node: self.clone(),
                key: instance.key(),
            };
            let result = if instance.origin == self.id() {
                self.open_local(instance.service.clone(), port)
                    .await
                    .map(RoleStream::Local)
            } else {
                self.open(
                    instance.origin,
                    TargetRef::Service(instance.service.clone()),
                    port,
                    client,
                )
                .await
                .map(RoleStream::Remote)
            };
            match result {
                Ok(stream) => return Ok((stream, guard, instance)),
                Err(e) => {
                    warn!(role = %target, service = %instance.service, node = %instance.origin.short(), error = %e, "instance failed; trying another");
                    let now = self.now();
                    let key = instance.key();
                    drop(guard);
                    self.with_registry(|r| r.report_failure(&key, now));
                    tried.push(key);
                    last = Some(e);
                }
            }
        }
    }

    /// The address of a role name, if some instance in the replica answers to its label
    /// (`Registry::resolve_role`).
    pub fn lookup_role(&self, role: &RoleName, label: Option<VersionLabel>) -> Option<Ipv6Addr> {
        let prefix = NetworkPrefix::derive(&self.inner.config.network);
        // Not `with_registry`: a lookup queues no output, so the registry loop need not wake.
        self.inner
            .registry
            .lock()
            .expect("registry lock")
            .resolve_role(&prefix, role, label)
    }

    /// Every role address worth serving now, with the role and range it stands for
    /// (`Registry::role_addresses`: any version, `vMAJOR`, `vMAJOR-MINOR`).
    pub fn role_addresses(&self) -> Vec<(Ipv6Addr, RoleTarget)> {
        let prefix = NetworkPrefix::derive(&self.inner.config.network);
        let targets = self
            .inner
            .registry
            .lock()
            .expect("registry lock")
            .role_addresses(&prefix);
        targets
            .into_iter()
            .map(|(address, target)| {
                (
                    address,
                    RoleTarget {
                        req: target.req(),
                        role: target.role,
                    },
                )
            })
            .collect()
    }

    /// The local replica as JSON, for `svcnet services`.
    pub fn services_json(&self) -> Value {
        let prefix = NetworkPrefix::derive(&self.inner.config.network);
        let now = self.now();
        // Gather under the registry lock, then look names up in the peer book: never hold both
        // (elsewhere the book is locked first).
        let (rows, stats) = {
            let registry = self.inner.registry.lock().expect("registry lock");
            let rows: Vec<_> = registry
                .instances()
                .into_iter()
                .map(|i| {
                    let lease = if i.origin == self.id() {
                        None
                    } else {
                        registry.lease_remaining(&i.origin, now)
                    };
                    let outstanding = registry.outstanding(&i.key());
                    let down = registry.is_down(&i.origin);
                    (i, lease, outstanding, down)
                })
                .collect();
            (rows, registry.stats())
        };
        let rows: Vec<Value> = rows
            .into_iter()
            .map(|(i, lease, outstanding, down)| {
                json!({
                    "role": i.role.to_string(),
                    "version": i.version.to_string(),
                    "node": self
                        .node_name(&i.origin)
                        .map(|n| n.to_string())
                        .unwrap_or_else(|| i.origin.short()),
                    "node_id": i.origin.to_text(),
                    "service": i.service.to_string(),
                    "address": prefix.service_address(&i.origin, &i.service).to_string(),
                    "healthy": i.healthy,
                    "lease_s": lease.map(|d| d.as_secs_f64()),
                    "outstanding": outstanding,
                    "down": down,
                })
            })
            .collect();
        json!({
            "instances": rows,
            "accepted": stats.accepted,
            "unauthorized_messages": stats.unauthorized_messages,
            "malformed_messages": stats.malformed_messages,
            "swim_errors": stats.swim_errors,
        })
    }

    /// Clean shutdown: withdraw this node's instances and give the control writers a moment to
    /// send the withdrawal before the connections close.
    pub(super) async fn withdraw_registry(&self) {
        let now = self.now();
        let transmits: Vec<_> = {
            let mut registry = self.inner.registry.lock().expect("registry lock");
            registry.withdraw(now);
            std::iter::from_fn(|| registry.poll_transmit()).collect()
        };
        for (peer, message) in transmits {
            self.send_control(&peer, ControlMessage::Registry(message).encode());
        }
        let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
        while !self.control_queues_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
