//! Live counters and their Prometheus exposition.
//!
//! Counters are updated as bytes move (not when a connection closes, the complaint about frp), so
//! a scrape during a long transfer shows it progressing. Every counter is an atomic; the maps are
//! `BTreeMap`s so the exposition order is stable.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response};

/// Which side of a proxied connection a counter set describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Direction {
    /// Connections this node served for peers (to one of its own services).
    Served,
    /// Connections this node's clients opened to remote services.
    Proxied,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Direction::Served => "served",
            Direction::Proxied => "proxied",
        }
    }
}

/// Counters of one (direction, service) pair.
#[derive(Debug, Default)]
pub struct ServiceCounters {
    /// Bytes from the client toward the service.
    pub bytes_to_service: AtomicU64,
    /// Bytes from the service toward the client.
    pub bytes_to_client: AtomicU64,
    /// Connections opened (successfully dialed).
    pub connections_total: AtomicU64,
    /// Connections open now.
    pub connections_active: AtomicU64,
    /// Connections that failed to open or ended in a reset.
    pub errors_total: AtomicU64,
}

impl ServiceCounters {
    /// Marks a connection open; the guard marks it closed when dropped.
    pub fn open(self: &Arc<Self>) -> ActiveGuard {
        self.connections_total.fetch_add(1, Ordering::Relaxed);
        self.connections_active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(self.clone())
    }
}

/// Decrements the active-connection gauge on drop.
#[derive(Debug)]
pub struct ActiveGuard(Arc<ServiceCounters>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.connections_active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// All of a node's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    services: Mutex<BTreeMap<(Direction, String), Arc<ServiceCounters>>>,
    /// Incoming QUIC connections refused (unknown node, handshake failure).
    pub handshakes_refused: AtomicU64,
    /// Streams closed for a protocol error.
    pub protocol_errors: AtomicU64,
}

impl Metrics {
    /// The counters for `service` in `direction`, created on first use.
    pub fn service(&self, direction: Direction, service: &str) -> Arc<ServiceCounters> {
        let mut map = self.services.lock().expect("metrics lock");
        map.entry((direction, service.to_string()))
            .or_default()
            .clone()
    }

    /// A snapshot for status displays: (direction, service, counters).
    pub fn snapshot(&self) -> Vec<(&'static str, String, [u64; 5])> {
        let map = self.services.lock().expect("metrics lock");
        map.iter()
            .map(|((dir, name), c)| {
                (
                    dir.as_str(),
                    name.clone(),
                    [
                        c.bytes_to_service.load(Ordering::Relaxed),
                        c.bytes_to_client.load(Ordering::Relaxed),
                        c.connections_total.load(Ordering::Relaxed),
                        c.connections_active.load(Ordering::Relaxed),
                        c.errors_total.load(Ordering::Relaxed),
                    ],
                )
            })
            .collect()
    }

    /// The Prometheus text exposition (version 0.0.4). `peers` is (peer name, connected, rtt µs).
    pub fn render(&self, peers: &[(String, bool, Option<u64>)]) -> String {
        let mut out = String::new();
        let rows = self.snapshot();
        let families: [(&str, &str, &str, usize); 5] = [
            (
                "svcnet_service_bytes_to_service_total",
                "counter",
                "Bytes from clients toward the service.",
                0,
            ),
            (
                "svcnet_service_bytes_to_client_total",
                "counter",
                "Bytes from the service toward clients.",
                1,
            ),
            (
                "svcnet_service_connections_total",
                "counter",
                "Connections opened.",
                2,
            ),
            (
                "svcnet_service_connections_active",
                "gauge",
                "Connections open now.",
                3,
            ),
            (
                "svcnet_service_errors_total",
                "counter",
                "Connections refused, failed or reset.",
                4,
            ),
        ];
        for (name, kind, help, index) in families {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (dir, service, values) in &rows {
                let _ = writeln!(
                    out,
                    "{name}{{direction=\"{dir}\",service=\"{}\"}} {}",
                    escape(service),
                    values[index]
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP svcnet_peer_connected Whether a QUIC connection to the peer is up.\n# TYPE svcnet_peer_connected gauge"
        );
        for (peer, connected, _) in peers {
            let _ = writeln!(
                out,
                "svcnet_peer_connected{{peer=\"{}\"}} {}",
                escape(peer),
                u8::from(*connected)
            );
        }
        let _ = writeln!(
            out,
            "# HELP svcnet_peer_rtt_seconds Smoothed round-trip time to the peer.\n# TYPE svcnet_peer_rtt_seconds gauge"
        );
        for (peer, _, rtt) in peers {
            if let Some(us) = rtt {
                let _ = writeln!(
                    out,
                    "svcnet_peer_rtt_seconds{{peer=\"{}\"}} {:.6}",
                    escape(peer),
                    *us as f64 / 1e6
                );
            }
        }
        for (name, help, value) in [
            (
                "svcnet_handshakes_refused_total",
                "Incoming connections refused during the handshake.",
                &self.handshakes_refused,
            ),
            (
                "svcnet_protocol_errors_total",
                "Streams closed for a protocol error.",
                &self.protocol_errors,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        out
    }
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Serves `GET /metrics` on `listener` until the task is dropped. `render` produces the body.
pub async fn serve(
    listener: tokio::net::TcpListener,
    render: Arc<dyn Fn() -> String + Send + Sync>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let render = render.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let render = render.clone();
                async move {
                    let response = if req.uri().path() == "/metrics" {
                        Response::builder()
                            .header("content-type", "text/plain; version=0.0.4")
                            .body(Full::new(Bytes::from(render())))
                    } else {
                        Response::builder()
                            .status(404)
                            .body(Full::new(Bytes::from_static(b"try /metrics\n")))
                    };
                    Ok::<_, Infallible>(response.expect("static response parts are valid"))
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
    }
}

/// Binds the metrics listener (a clear error if the address is taken).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_live_values_and_escapes_labels() {
        let m = Metrics::default();
        let web = m.service(Direction::Served, "web");
        let guard = web.open();
        web.bytes_to_client.fetch_add(1234, Ordering::Relaxed);
        let text = m.render(&[("al\"pha".into(), true, Some(1500))]);
        assert!(text.contains(
            "svcnet_service_bytes_to_client_total{direction=\"served\",service=\"web\"} 1234"
        ));
        assert!(text
            .contains("svcnet_service_connections_active{direction=\"served\",service=\"web\"} 1"));
        assert!(text.contains("svcnet_peer_connected{peer=\"al\\\"pha\"} 1"));
        assert!(text.contains("svcnet_peer_rtt_seconds{peer=\"al\\\"pha\"} 0.001500"));
        drop(guard);
        let text = m.render(&[]);
        assert!(text
            .contains("svcnet_service_connections_active{direction=\"served\",service=\"web\"} 0"));
    }
}
