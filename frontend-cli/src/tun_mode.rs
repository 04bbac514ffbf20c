//! TUN mode: service addresses on a real interface, so `curl http://web.alpha.svcnet/` works.
//!
//! The TUN frontend (`svcnet-tun`) runs the core's netstack against the device; this module is
//! the policy around it: which addresses are served (this node's services and the services its
//! connected peers announced), and what a held SYN to one of them becomes — a QUIC stream to the
//! node that offers the service, whose dial reply decides whether the client's SYN is accepted or
//! refused (a faithful ECONNREFUSED), then bytes pumped both ways with backpressure.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use svcnet_core::addressing::{NetworkPrefix, ServiceName, PREFIX_LEN_BITS};
use svcnet_core::identity::NodeId;
use svcnet_core::netstack::{self, RefuseReason};
use svcnet_core::wire::stream::TargetRef;
use svcnet_tun::{PendingConnection, TunDevice, TunStack};
use tracing::{debug, info};

use crate::node::{pump_client_streams, Node, RoleStream, RoleTarget};

/// What a served address stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
enum AddressTarget {
    /// A service of one node.
    Service(NodeId, ServiceName),
    /// A role in a version range: balanced with failover over its healthy instances.
    Role(RoleTarget),
}

type Table = Arc<Mutex<BTreeMap<Ipv6Addr, AddressTarget>>>;

/// Every address the node can serve now: its services, the services connected peers announced,
/// and the role addresses of the roles in the registry's replica.
fn wanted_addresses(node: &Node) -> BTreeMap<Ipv6Addr, AddressTarget> {
    let mut wanted: BTreeMap<Ipv6Addr, AddressTarget> = node
        .service_addresses()
        .into_iter()
        .map(|(address, (id, service))| (address, AddressTarget::Service(id, service)))
        .collect();
    for (address, role) in node.role_addresses() {
        wanted.insert(address, AddressTarget::Role(role));
    }
    wanted
}

/// Creates the TUN device, starts the netstack and serves connections until the task is
/// dropped. Errors (no permission, bad name) say what to do.
pub fn start(node: &Node) -> Result<(), String> {
    let config = node.config();
    let prefix = NetworkPrefix::derive(&config.network);
    let node_address = prefix.node_address(&node.id());
    let device = TunDevice::open(
        &config.tun.name,
        config.tun.mtu,
        &[node_address],
        prefix.network_address(),
        PREFIX_LEN_BITS,
    )
    .map_err(|e| e.to_string())?;
    info!(interface = %config.tun.name, address = %node_address, prefix = %format!("{}/{}", prefix.network_address(), PREFIX_LEN_BITS), "TUN up");
    let netstack_config = netstack::Config {
        seed: u64::from_le_bytes(node.id().as_bytes()[8..16].try_into().expect("8 bytes")),
        mtu: usize::from(config.tun.mtu),
        max_connections: config.limits.max_connections,
        // Long enough for a remote dial (connect timeout) plus a QUIC connection coming up.
        hold_timeout: config.limits.connect_timeout + Duration::from_secs(2),
        ..netstack::Config::default()
    };
    netstack_config
        .validate()
        .map_err(|e| format!("TUN netstack settings: {e}"))?;
    let (stack, mut incoming) = TunStack::spawn(device, netstack_config);
    node.set_tun(stack.clone());
    let table: Table = Arc::default();
    tokio::spawn(sync_addresses(node.clone(), stack, table.clone()));
    let node = node.clone();
    tokio::spawn(async move {
        while let Some(pending) = incoming.recv().await {
            tokio::spawn(handle(node.clone(), table.clone(), pending));
        }
    });
    Ok(())
}

/// Keeps the netstack's served addresses equal to the node's reachable services.
async fn sync_addresses(node: Node, stack: TunStack, table: Table) {
    let mut changes = node.subscribe_changes();
    loop {
        let wanted = wanted_addresses(&node);
        {
            let mut current = table.lock().expect("table lock");
            for address in current.keys() {
                if !wanted.contains_key(address) {
                    stack.remove_address(IpAddr::V6(*address));
                }
            }
            for address in wanted.keys() {
                if !current.contains_key(address) {
                    stack.add_address(IpAddr::V6(*address));
                }
            }
            *current = wanted;
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

async fn handle(node: Node, table: Table, pending: PendingConnection) {
    let IpAddr::V6(address) = pending.address else {
        pending.refuse(RefuseReason::Refused);
        return;
    };
    let Some(target) = table.lock().expect("table lock").get(&address).cloned() else {
        pending.refuse(RefuseReason::Refused);
        return;
    };
    let port = pending.port;
    let client = pending.client;
    let (target_node, service) = match target {
        AddressTarget::Service(id, service) => (id, service),
        AddressTarget::Role(role) => {
            match node.open_role(&role, port, Some(client)).await {
                Ok((RoleStream::Remote(remote), _connection, _)) => {
                    let stream = pending.accept();
                    let reset = stream.reset_handle();
                    let (read, write) = stream.into_split();
                    // The halves live until the reset is requested: dropping the sending
                    // half first would queue a FIN ahead of the RST.
                    if let Some(_halves) = pump_client_streams(read, write, remote).await {
                        reset.reset();
                    }
                }
                Ok((RoleStream::Local(mut local), _connection, _)) => {
                    let mut stream = pending.accept();
                    let _ = tokio::io::copy_bidirectional(&mut stream, &mut local).await;
                }
                Err(e) => {
                    debug!(%role, port, %client, error = %e, "no instance answered");
                    pending.refuse(RefuseReason::Refused);
                }
            }
            return;
        }
    };
    if target_node == node.id() {
        match node.open_local(service.clone(), port).await {
            Ok(mut local) => {
                let mut stream = pending.accept();
                let _ = tokio::io::copy_bidirectional(&mut stream, &mut local).await;
            }
            Err(e) => {
                debug!(%service, port, error = %e, "local service refused");
                pending.refuse(RefuseReason::Refused);
            }
        }
        return;
    }
    match node
        .open(
            target_node,
            TargetRef::Service(service.clone()),
            port,
            Some(client),
        )
        .await
    {
        Ok(remote) => {
            let stream = pending.accept();
            let reset = stream.reset_handle();
            let (read, write) = stream.into_split();
            // The halves live until the reset is requested: dropping the sending half first
            // would queue a FIN ahead of the RST.
            if let Some(_halves) = pump_client_streams(read, write, remote).await {
                reset.reset();
            }
        }
        Err(e) => {
            debug!(%service, port, %client, error = %e, "connection refused");
            pending.refuse(RefuseReason::Refused);
        }
    }
}
