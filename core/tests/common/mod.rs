//! Helpers shared by the adapter tests: a wall clock for the adapter on any executor, and a
//! bound on waits so that a regression fails instead of hanging.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::future::{select, Either};
use svcnet_core::mux::adapter::Clock;
use svcnet_core::time::Instant;

/// The adapter's clock from the wall clock, with timers from `futures-timer` (no runtime).
pub struct TimerClock(pub std::time::Instant);

impl Clock for TimerClock {
    fn now(&self) -> Instant {
        Instant::from_micros(self.0.elapsed().as_micros() as u64)
    }
    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let wait = deadline - self.now();
        Box::pin(futures_timer::Delay::new(wait))
    }
}

/// A fresh [`TimerClock`].
#[allow(dead_code)] // not every test file uses it
pub fn clock() -> Arc<dyn Clock> {
    Arc::new(TimerClock(std::time::Instant::now()))
}

/// `f`'s output, or `None` if it takes longer than `secs`.
#[allow(dead_code)] // not every test file uses it
pub async fn within<F: Future>(secs: f64, f: F) -> Option<F::Output> {
    let d = futures_timer::Delay::new(Duration::from_secs_f64(secs));
    match select(Box::pin(f), d).await {
        Either::Left((v, _)) => Some(v),
        Either::Right(_) => None,
    }
}

/// A two-thread `futures` executor (no tokio anywhere).
#[allow(dead_code)] // not every test file uses it
pub fn pool() -> futures::executor::ThreadPool {
    futures::executor::ThreadPool::builder()
        .pool_size(2)
        .create()
        .expect("thread pool")
}

/// What a spawned driver finally returns.
pub type DriverResult = futures::future::RemoteHandle<std::io::Result<()>>;

/// A client session over `a` and a server session over `b`, their drivers running on `pool`.
/// Keep the returned handles alive while the test runs (dropping one cancels its driver) or
/// await them for the drivers' results.
#[allow(dead_code)] // not every test file uses it
pub fn spawn_pair<A, B>(
    pool: &futures::executor::ThreadPool,
    a: A,
    client_cfg: svcnet_core::mux::Config,
    b: B,
    server_cfg: svcnet_core::mux::Config,
) -> (
    svcnet_core::mux::adapter::Connection,
    svcnet_core::mux::adapter::Connection,
    DriverResult,
    DriverResult,
)
where
    A: futures::io::AsyncRead + futures::io::AsyncWrite + Unpin + Send + 'static,
    B: futures::io::AsyncRead + futures::io::AsyncWrite + Unpin + Send + 'static,
{
    use futures::task::SpawnExt;
    use svcnet_core::mux::adapter::Connection;
    use svcnet_core::mux::Role;
    let clock = clock();
    let (client, cd) = Connection::new(a, Role::Client, client_cfg, clock.clone());
    let (server, sd) = Connection::new(b, Role::Server, server_cfg, clock);
    let cd = pool.spawn_with_handle(cd).expect("spawn client driver");
    let sd = pool.spawn_with_handle(sd).expect("spawn server driver");
    (client, server, cd, sd)
}
