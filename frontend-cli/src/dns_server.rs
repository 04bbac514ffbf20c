//! The daemon's DNS server: UDP on `[dns] listen` (default: the node's address on the TUN, port
//! 53). Answers come from the core's responder (`svcnet_core::dns`) with the node's view of
//! names; questions outside the zone are forwarded to `[dns] forward` when set, else REFUSED.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use svcnet_core::dns::{answer, Outcome, MAX_QUERY};
use tokio::net::UdpSocket;
use tracing::{debug, info};

use crate::node::Node;

/// How long a forwarded question may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(3);

/// Binds the DNS socket (a clear error if the address is taken or not local).
pub async fn bind(addr: SocketAddr) -> Result<UdpSocket, String> {
    UdpSocket::bind(addr)
        .await
        .map_err(|e| format!("cannot serve DNS on {addr} (config key `dns.listen`): {e}"))
}

/// Answers queries until the task is dropped.
pub async fn serve(socket: UdpSocket, node: Node) {
    let socket = Arc::new(socket);
    if let Ok(addr) = socket.local_addr() {
        info!(%addr, zone = %node.config().dns.zone, "serving DNS");
    }
    let mut buf = vec![0u8; MAX_QUERY + 1];
    loop {
        let Ok((n, client)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let query = &buf[..n];
        let config = node.config().clone();
        let outcome = answer(
            query,
            &config.dns.zone,
            config.dns.forward.is_some(),
            |name| node.lookup_name(name),
        );
        match outcome {
            Outcome::Reply(bytes) => {
                let _ = socket.send_to(&bytes, client).await;
            }
            Outcome::Forward => {
                let Some(upstream) = config.dns.forward else {
                    continue;
                };
                let socket = socket.clone();
                let query = query.to_vec();
                tokio::spawn(async move {
                    match forward(&query, upstream).await {
                        Ok(reply) => {
                            let _ = socket.send_to(&reply, client).await;
                        }
                        Err(e) => debug!(%upstream, error = %e, "DNS forward failed"),
                    }
                });
            }
            Outcome::Drop => {}
        }
    }
}

async fn forward(query: &[u8], upstream: SocketAddr) -> std::io::Result<Vec<u8>> {
    let bind: SocketAddr = if upstream.is_ipv6() {
        "[::]:0".parse().expect("literal")
    } else {
        "0.0.0.0:0".parse().expect("literal")
    };
    let socket = UdpSocket::bind(bind).await?;
    socket.connect(upstream).await?;
    socket.send(query).await?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(FORWARD_TIMEOUT, socket.recv(&mut buf))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    // The reply must answer this query (same id), or it is not ours.
    if n < 2 || query.len() < 2 || buf[..2] != query[..2] {
        return Err(std::io::ErrorKind::InvalidData.into());
    }
    buf.truncate(n);
    Ok(buf)
}
