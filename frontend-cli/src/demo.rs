//! `svcnet demo`: a real two-node network on 127.0.0.1, no root and no config.
//!
//! Node `alpha` serves a real HTTP service as `web`; node `beta` reaches it by name (`web.alpha`)
//! through a userspace proxy on a local port, over real QUIC with pinned node keys. The demo
//! checks the path end to end once, prints the URL to `curl`, and stays up until Ctrl-C. Both
//! nodes use fresh identities and configs generated in memory and parsed by the real config
//! loader.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::Config;
use crate::node::{Mode, Node};
use crate::proxy;

/// A fresh node key, as the config's `private_key` text.
pub fn fresh_key() -> Result<String, String> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| format!("no OS randomness for a demo key: {e}"))?;
    Ok(data_encoding::BASE64.encode(&seed))
}

/// The node id text of a `private_key` text.
pub fn id_of(key: &str) -> Result<String, String> {
    let bytes = data_encoding::BASE64
        .decode(key.as_bytes())
        .map_err(|e| e.to_string())?;
    let seed: [u8; 32] = bytes.try_into().map_err(|_| "seed length")?;
    Ok(svcnet_core::identity::NodeKey::from_seed(seed)
        .node_id()
        .to_text())
}

/// The demo's HTTP service: answers every request with a short page and a request counter.
async fn serve_http(listener: tokio::net::TcpListener) {
    let hits = Arc::new(AtomicU64::new(0));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let hits = hits.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let n = hits.fetch_add(1, Ordering::Relaxed) + 1;
                async move {
                    let body = format!(
                        "Hello from the `web` service on node alpha, reached by name through svcnet.\n\
                         path: {}\nrequest number: {n}\n",
                        req.uri().path()
                    );
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The one peer of a loopback node: its name, id text, and QUIC port if this node dials it.
pub struct LoopbackPeer<'a> {
    /// The peer's name.
    pub name: &'a str,
    /// The peer's node id text.
    pub id: &'a str,
    /// The peer's QUIC port on 127.0.0.1 (`None`: wait to be dialed).
    pub port: Option<u16>,
}

/// A config for a node on 127.0.0.1 (ephemeral QUIC port, TUN off) with one peer, parsed by the
/// real loader. `services` is the body of `[services]`.
pub fn loopback_node_config(
    name: &str,
    key: &str,
    peer: &LoopbackPeer<'_>,
    services: &str,
) -> Result<Arc<Config>, String> {
    let addrs = match peer.port {
        Some(port) => format!("[\"/ip4/127.0.0.1/udp/{port}/quic-v1\"]"),
        None => "[]".to_string(),
    };
    let text = format!(
        "name = \"{name}\"\nprivate_key = \"{key}\"\nlisten = [\"/ip4/127.0.0.1/udp/0/quic-v1\"]\n\n\
         [[peers]]\nid = \"{}\"\nname = \"{}\"\naddrs = {addrs}\n\n\
         [services]\n{services}\n\n[tun]\nenabled = false\n",
        peer.id, peer.name
    );
    let path = Path::new("demo").join(format!("{name}.toml"));
    Config::from_toml(&text, &path)
        .map(Arc::new)
        .map_err(|e| format!("demo config for {name}: {e}"))
}

/// One HTTP GET through `addr`; returns the response's status line and body.
async fn fetch(addr: SocketAddr) -> Result<String, String> {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    stream
        .write_all(
            b"GET /self-check HTTP/1.1\r\nHost: web.alpha.svcnet\r\nConnection: close\r\n\r\n",
        )
        .await
        .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .map_err(|e| e.to_string())?;
    Ok(response)
}

/// Runs the demo. With `check`, exits after the self-check (for CI); otherwise waits for Ctrl-C.
pub async fn run(port: u16, check: bool) -> Result<(), String> {
    let http = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("binding the demo HTTP service: {e}"))?;
    let http_port = http.local_addr().map_err(|e| e.to_string())?.port();
    tokio::spawn(serve_http(http));

    let (alpha_key, beta_key) = (fresh_key()?, fresh_key()?);
    let (alpha_id, beta_id) = (id_of(&alpha_key)?, id_of(&beta_key)?);

    let alpha_config = loopback_node_config(
        "alpha",
        &alpha_key,
        &LoopbackPeer {
            name: "beta",
            id: &beta_id,
            port: None,
        },
        &format!("web = \"/tcp/{http_port}\""),
    )?;
    let alpha = Node::start(alpha_config, Mode::Daemon).await?;
    let alpha_port = alpha
        .local_addrs()
        .first()
        .map(|a| a.port())
        .ok_or("alpha has no QUIC endpoint")?;
    let beta_config = loopback_node_config(
        "beta",
        &beta_key,
        &LoopbackPeer {
            name: "alpha",
            id: &alpha_id,
            port: Some(alpha_port),
        },
        "",
    )?;
    let beta = Node::start(beta_config.clone(), Mode::Daemon).await?;

    let target = proxy::parse_target("web.alpha", &beta_config.dns.zone)?;
    let listener = match proxy::bind(&beta, SocketAddr::from(([127, 0, 0, 1], port))) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("svcnet demo: {e}; using a free port instead");
            proxy::bind(&beta, SocketAddr::from(([127, 0, 0, 1], 0)))?
        }
    };
    let proxy_addr = listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(proxy::run(beta.clone(), target, listener));

    println!("svcnet demo: two nodes on 127.0.0.1 over QUIC");
    println!("  alpha  {alpha_id}  QUIC 127.0.0.1:{alpha_port}  serves web = /tcp/{http_port} (a real HTTP server)");
    println!(
        "  beta   {beta_id}  QUIC {}  proxies web.alpha on {proxy_addr}",
        beta.local_addrs()
            .first()
            .map(|a| a.to_string())
            .unwrap_or_default()
    );
    let response = tokio::time::timeout(Duration::from_secs(10), fetch(proxy_addr))
        .await
        .map_err(|_| "self-check: no answer through svcnet within 10 s".to_string())??;
    let status_line = response.lines().next().unwrap_or_default().to_string();
    if !status_line.contains(" 200 ") || !response.contains("Hello from the `web` service") {
        return Err(format!(
            "self-check failed: unexpected answer through svcnet: {status_line:?}"
        ));
    }
    println!("self-check: GET http://web.alpha.svcnet/ through beta -> {status_line}");
    if check {
        beta.shutdown().await;
        alpha.shutdown().await;
        return Ok(());
    }
    println!("\nTry it:\n  curl http://{proxy_addr}/\n\nCtrl-C to stop.");
    let _ = tokio::signal::ctrl_c().await;
    beta.shutdown().await;
    alpha.shutdown().await;
    Ok(())
}
