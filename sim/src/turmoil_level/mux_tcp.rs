//! The mux adapter ([`svcnet_core::mux::adapter`]) over turmoil TCP.
//!
//! Host `server` accepts one TCP connection and runs a server session over it; every stream it
//! accepts is an echo. Host `client` dials it, runs a client session, and opens the mix's
//! number of streams concurrently, each writing a seeded payload, closing, and reading the echo
//! to the end. The adapter reads simulated time through a [`Clock`] backed by turmoil's clock.
//! Faults: latency and jitter (turmoil TCP reorders nothing it delivers), stalls of the path
//! (`hold`/`release`), and — when the mix has crashes — the server host crashing, after which
//! every client stream must fail (the session sees the pipe end) rather than hang.
//! Invariant: a stream that completes echoes exactly its payload; at the end the client
//! session holds no streams.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use futures_util::io::{AsyncReadExt, AsyncWriteExt};
use svcnet_core::mux::adapter::{Clock, Connection, Sleep};
use svcnet_core::mux::{self, Role};
use svcnet_core::rng::SplitMix64;
use svcnet_core::time::Instant;
use tokio_util::compat::TokioAsyncReadCompatExt;

use crate::mix::{Knob, Mix, Profile};
use crate::trace::Trace;
use crate::{Defect, Outcome, RunOpts};

const PROFILE: Profile = Profile {
    reorder: Knob::Swarm,
    partitions: Knob::Swarm,
    crashes: Knob::Swarm,
    streams: (20, 120),
    ..Profile::QUIET
};

/// turmoil's simulated clock for the adapter.
struct SimClock;

impl Clock for SimClock {
    fn now(&self) -> Instant {
        super::node::now()
    }
    fn sleep_until(&self, deadline: Instant) -> Sleep {
        let d = deadline.saturating_duration_since(self.now());
        Box::pin(tokio::time::sleep(d))
    }
}

struct State {
    trace: Trace,
    /// Per stream: Ok(echo matched) or the error.
    results: BTreeMap<u64, Result<(), String>>,
    streams_left: u64,
    leak: Option<String>,
}

fn lock(s: &Arc<Mutex<State>>) -> std::sync::MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

fn config() -> mux::Config {
    mux::Config {
        keepalive_interval: Duration::from_secs(1),
        keepalive_timeout: Duration::from_secs(3),
        ..mux::Config::default()
    }
}

pub fn run(seed: u64, opts: &RunOpts) -> Outcome {
    let mix = Mix::derive(seed, &PROFILE);
    let mut rng = SplitMix64::new(seed);
    let state = Arc::new(Mutex::new(State {
        trace: Trace::new(opts.keep_log),
        results: BTreeMap::new(),
        streams_left: u64::from(mix.streams),
        leak: None,
    }));
    let sizes: Vec<u64> = (0..mix.streams)
        .map(|_| match rng.below(3) {
            0 => rng.below(100),
            1 => rng.below(30_000),
            _ => rng.below(300_000),
        })
        .collect();
    let mut sim = turmoil::Builder::new()
        .epoch(UNIX_EPOCH + Duration::from_secs(1_750_000_000))
        .rng_seed(seed)
        .simulation_duration(Duration::from_secs(120))
        .min_message_latency(Duration::from_millis(mix.latency_ms))
        .max_message_latency(Duration::from_millis(mix.latency_ms + mix.jitter_ms))
        .tcp_capacity(super::TCP_CAPACITY)
        .build();
    sim.host("server", || async {
        let listener = turmoil::net::TcpListener::bind(("0.0.0.0", 9000)).await?;
        let (tcp, _) = listener.accept().await?;
        let (conn, driver) =
            Connection::new(tcp.compat(), Role::Server, config(), Arc::new(SimClock));
        tokio::spawn(driver);
        while let Some(mut stream) = conn.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) => {
                            let _ = stream.close().await;
                            return;
                        }
                        Ok(n) => {
                            if stream.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                        Err(_) => return,
                    }
                }
            });
        }
        Ok(())
    });
    let st = state.clone();
    let defect = opts.defect;
    sim.client("client", async move {
        let server = (turmoil::lookup("server"), 9000);
        let tcp = turmoil::net::TcpStream::connect(server).await?;
        let (conn, driver) =
            Connection::new(tcp.compat(), Role::Client, config(), Arc::new(SimClock));
        tokio::spawn(driver);
        let mut tasks = Vec::new();
        for (id, size) in sizes.into_iter().enumerate() {
            let id = id as u64;
            let conn = conn.clone();
            let st = st.clone();
            tasks.push(tokio::spawn(async move {
                let mut g = SplitMix64::new(seed ^ id.wrapping_mul(0x9e37_79b9));
                let payload: Vec<u8> = (0..size).map(|_| g.next_u64() as u8).collect();
                // Self-test: the first stream's writer skips its first 50 bytes.
                let skip = if defect == Some(Defect::DropOneWrite) && id == 0 && size > 100 {
                    50
                } else {
                    0
                };
                let result = async {
                    let stream = conn.open().await.map_err(|e| e.to_string())?;
                    let (mut r, mut w) = stream.split();
                    let write = async {
                        w.write_all(&payload[skip..]).await?;
                        w.close().await
                    };
                    let read = async {
                        let mut back = Vec::new();
                        r.read_to_end(&mut back).await.map(|_| back)
                    };
                    let (wr, back) = futures_util::future::join(write, read).await;
                    wr.map_err(|e| e.to_string())?;
                    let back = back.map_err(|e| e.to_string())?;
                    if back != payload {
                        return Err(format!(
                            "INTEGRITY: echo of {} bytes came back as {} different bytes",
                            payload.len(),
                            back.len()
                        ));
                    }
                    Ok(())
                }
                .await;
                let mut s = lock(&st);
                s.trace.record(
                    super::node::now().as_micros(),
                    "mux-stream-end",
                    &[id, size, u64::from(result.is_ok())],
                );
                s.results.insert(id, result);
                s.streams_left -= 1;
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        // Every stream ended: the session must hold none (give FIN/RESET bookkeeping a moment).
        tokio::time::sleep(Duration::from_millis(500)).await;
        let stats = conn.stats();
        if conn.closed().is_none() && stats.streams != 0 {
            lock(&st).leak = Some(format!(
                "leak: client session holds {} streams after every stream ended",
                stats.streams
            ));
        }
        Ok(())
    });
    let mut violations = Vec::new();
    // Faults: a stall (hold, release) and possibly a server crash, at seeded times.
    let stall_at = Duration::from_millis(200 + rng.below(2000));
    let stall_for = Duration::from_millis(100 + rng.below(2500));
    let crash_at = Duration::from_millis(500 + rng.below(3000));
    let (mut stalled, mut released, mut crashed) = (false, false, false);
    loop {
        let t = sim.elapsed();
        if mix.partitions && !stalled && t >= stall_at {
            stalled = true;
            sim.hold("client", "server");
            lock(&state).trace.record(t.as_micros() as u64, "hold", &[]);
        }
        if stalled && !released && t >= stall_at + stall_for {
            released = true;
            sim.release("client", "server");
            lock(&state)
                .trace
                .record(t.as_micros() as u64, "release", &[]);
        }
        if mix.crashes && !crashed && t >= crash_at {
            crashed = true;
            sim.crash("server");
            lock(&state)
                .trace
                .record(t.as_micros() as u64, "crash", &[]);
        }
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => {
                violations.push(format!("hang or error: {e}"));
                break;
            }
        }
    }
    let sim_millis = sim.elapsed().as_millis() as u64;
    drop(sim);
    let mut s = lock(&state);
    let mut counters = BTreeMap::new();
    for (id, r) in &s.results {
        match r {
            Ok(()) => *counters.entry("streams_ok").or_default() += 1,
            Err(e) => {
                *counters.entry("streams_failed").or_default() += 1;
                if e.starts_with("INTEGRITY") {
                    violations.push(format!("integrity: stream {id}: {e}"));
                } else if !crashed {
                    violations.push(format!(
                        "stream {id} failed without any fault that explains it: {e}"
                    ));
                }
            }
        }
    }
    if s.streams_left != 0 {
        violations.push(format!("hang: {} streams never ended", s.streams_left));
    }
    if let Some(l) = s.leak.take() {
        violations.push(l);
    }
    Outcome {
        scenario: "node-mux-tcp",
        seed,
        mix: mix.to_string(),
        trace_hash: s.trace.hash_hex(),
        events: s.trace.events(),
        sim_millis,
        violations,
        counters,
        log: s.trace.take_log(),
    }
}
