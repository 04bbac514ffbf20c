//! Socket options from the config, validated per kind of socket and applied with `socket2`.
//!
//! Three kinds of sockets take options (the `socket` tables of `docs/config.md`):
//!
//! - [`SocketKind::Udp`]: the QUIC transport's UDP sockets (`[transport.socket]`);
//! - [`SocketKind::TcpListen`]: the proxy's listeners and the client connections they accept
//!   (`[proxy.socket]`);
//! - [`SocketKind::TcpDial`]: the connections a node dials to its services' targets
//!   (`[services.<name>.socket]`).
//!
//! An option that means nothing for a kind (`nodelay` on UDP, `connect_timeout` on a listener) is
//! a config error rather than silently ignored: somebody who wrote it expected an effect.
//! Options are applied before `bind`/`connect`, so that the ones the kernel reads at that moment
//! (buffer sizes for the TCP window scale, `SO_BINDTODEVICE`, `SO_MARK` for routing) take effect.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};

/// Smallest accepted socket buffer size.
pub const MIN_BUFFER: usize = 1024;
/// Largest accepted socket buffer size.
pub const MAX_BUFFER: usize = 256 * 1024 * 1024;
/// Largest `TCP_KEEPCNT` Linux accepts.
pub const MAX_KEEPALIVE_COUNT: u32 = 127;
/// Largest `TCP_KEEPIDLE` / `TCP_KEEPINTVL` Linux accepts, in seconds.
pub const MAX_KEEPALIVE_SECS: u64 = 32_767;
/// Longest accepted `connect_timeout` and `user_timeout`.
pub const MAX_SOCKET_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);
/// Longest interface name (`IFNAMSIZ` − 1).
pub const MAX_IFNAME_LEN: usize = 15;
/// Backlog of the listeners made by [`listen_tcp`].
pub const LISTEN_BACKLOG: i32 = 1024;

/// TCP keep-alive parameters; all three are set together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keepalive {
    /// Idle time before the first probe (`TCP_KEEPIDLE`), whole seconds.
    pub idle: Duration,
    /// Time between probes (`TCP_KEEPINTVL`), whole seconds.
    pub interval: Duration,
    /// Unanswered probes before the connection is dropped (`TCP_KEEPCNT`).
    pub count: u32,
}

/// Options for one kind of socket. `None` leaves the operating system's default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SocketOptions {
    /// `TCP_NODELAY`.
    pub nodelay: Option<bool>,
    /// `SO_KEEPALIVE` with `TCP_KEEPIDLE`, `TCP_KEEPINTVL`, `TCP_KEEPCNT`.
    pub keepalive: Option<Keepalive>,
    /// `TCP_USER_TIMEOUT` (millisecond resolution).
    pub user_timeout: Option<Duration>,
    /// `SO_SNDBUF` in bytes (the kernel doubles it and caps it at `net.core.wmem_max`).
    pub send_buffer: Option<usize>,
    /// `SO_RCVBUF` in bytes (the kernel doubles it and caps it at `net.core.rmem_max`).
    pub recv_buffer: Option<usize>,
    /// `SO_REUSEADDR`.
    pub reuseaddr: Option<bool>,
    /// `SO_REUSEPORT`.
    pub reuseport: Option<bool>,
    /// `SO_MARK` (needs `CAP_NET_ADMIN`).
    pub mark: Option<u32>,
    /// `SO_BINDTODEVICE` (needs `CAP_NET_RAW` on kernels before 5.7).
    pub bind_device: Option<String>,
    /// How long a dial may take before it fails with [`io::ErrorKind::TimedOut`].
    pub connect_timeout: Option<Duration>,
}

/// The kind of socket options are validated and applied for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocketKind {
    /// A TCP connection this node dials (to a service target).
    TcpDial,
    /// A TCP listener; its connection options are inherited by the connections it accepts and can
    /// be applied to them again with [`SocketOptions::apply_to_stream`].
    TcpListen,
    /// A UDP socket (the QUIC transport).
    Udp,
}

impl SocketKind {
    fn describe(self) -> &'static str {
        match self {
            SocketKind::TcpDial => "TCP connections dialed to a service target",
            SocketKind::TcpListen => "TCP listeners",
            SocketKind::Udp => "the QUIC UDP socket",
        }
    }
}

/// A socket option that is invalid: its full config key and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OptionError {
    /// The dotted key, e.g. `transport.socket.nodelay`.
    pub key: String,
    /// What is wrong and what to do instead.
    pub reason: String,
}

impl fmt::Display for OptionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key `{}`: {}", self.key, self.reason)
    }
}

impl std::error::Error for OptionError {}

impl SocketOptions {
    /// Checks every option's range and that it applies to `kind`. `key_prefix` is the table the
    /// options came from (e.g. `transport.socket`) and is used to name the offending key.
    pub fn validate(&self, kind: SocketKind, key_prefix: &str) -> Result<(), OptionError> {
        let err = |name: &str, reason: String| OptionError {
            key: if key_prefix.is_empty() {
                name.to_string()
            } else {
                format!("{key_prefix}.{name}")
            },
            reason,
        };
        let not_for = |name: &str, option: &str| {
            err(
                name,
                format!(
                    "{option} does not apply to {}; remove this key",
                    kind.describe()
                ),
            )
        };
        let tcp = matches!(kind, SocketKind::TcpDial | SocketKind::TcpListen);
        if self.nodelay.is_some() && !tcp {
            return Err(not_for("nodelay", "TCP_NODELAY"));
        }
        if let Some(keepalive) = &self.keepalive {
            if !tcp {
                return Err(not_for("keepalive_idle", "TCP keep-alive"));
            }
            for (name, value) in [
                ("keepalive_idle", keepalive.idle),
                ("keepalive_interval", keepalive.interval),
            ] {
                if value.subsec_nanos() != 0 || value.is_zero() {
                    return Err(err(
                        name,
                        format!(
                            "{} is not a whole, positive number of seconds (the kernel counts \
                             keep-alive times in seconds), e.g. \"30s\"",
                            humantime::format_duration(value)
                        ),
                    ));
                }
                if value.as_secs() > MAX_KEEPALIVE_SECS {
                    return Err(err(
                        name,
                        format!("at most {MAX_KEEPALIVE_SECS}s (about 9 hours) is allowed"),
                    ));
                }
            }
            if !(1..=MAX_KEEPALIVE_COUNT).contains(&keepalive.count) {
                return Err(err(
                    "keepalive_count",
                    format!(
                        "{} is out of range: 1 to {MAX_KEEPALIVE_COUNT} probes",
                        keepalive.count
                    ),
                ));
            }
        }
        if let Some(timeout) = self.user_timeout {
            if !tcp {
                return Err(not_for("user_timeout", "TCP_USER_TIMEOUT"));
            }
            check_timeout(timeout).map_err(|reason| err("user_timeout", reason))?;
        }
        for (name, size) in [
            ("send_buffer", self.send_buffer),
            ("recv_buffer", self.recv_buffer),
        ] {
            if let Some(size) = size {
                if !(MIN_BUFFER..=MAX_BUFFER).contains(&size) {
                    return Err(err(
                        name,
                        format!(
                            "{size} bytes is out of range: 1024 (1 KiB) to 268435456 (256 MiB)"
                        ),
                    ));
                }
            }
        }
        if self.reuseaddr.is_some() && kind == SocketKind::TcpDial {
            return Err(not_for(
                "reuseaddr",
                "SO_REUSEADDR (dialed sockets are not bound to a local port)",
            ));
        }
        if self.reuseport.is_some() && kind == SocketKind::TcpDial {
            return Err(not_for(
                "reuseport",
                "SO_REUSEPORT (dialed sockets are not bound to a local port)",
            ));
        }
        if let Some(device) = &self.bind_device {
            check_ifname(device).map_err(|reason| err("bind_device", reason))?;
        }
        if let Some(timeout) = self.connect_timeout {
            if kind != SocketKind::TcpDial {
                return Err(not_for(
                    "connect_timeout",
                    "connect_timeout (nothing is dialed)",
                ));
            }
            check_timeout(timeout).map_err(|reason| err("connect_timeout", reason))?;
        }
        Ok(())
    }

    /// Applies the options to `socket`, which must not be bound or connected yet. Fails with
    /// [`io::ErrorKind::InvalidInput`] if the options do not [validate](Self::validate) for
    /// `kind`, or with the operating system's error, naming the option (`SO_MARK` and
    /// `SO_BINDTODEVICE` need `CAP_NET_ADMIN` / `CAP_NET_RAW`).
    pub fn apply(&self, socket: &Socket, kind: SocketKind) -> io::Result<()> {
        self.validate(kind, "")
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        self.apply_connection_options(socket)?;
        if let Some(reuse) = self.reuseaddr {
            socket
                .set_reuse_address(reuse)
                .map_err(|e| context(e, format!("setting SO_REUSEADDR={reuse}")))?;
        }
        #[cfg(target_os = "linux")]
        if let Some(reuse) = self.reuseport {
            socket
                .set_reuse_port(reuse)
                .map_err(|e| context(e, format!("setting SO_REUSEPORT={reuse}")))?;
        }
        #[cfg(target_os = "linux")]
        if let Some(mark) = self.mark {
            socket.set_mark(mark).map_err(|e| {
                context(
                    e,
                    format!(
                        "setting SO_MARK={mark} (needs CAP_NET_ADMIN: run as root or grant it)"
                    ),
                )
            })?;
        }
        #[cfg(target_os = "linux")]
        if let Some(device) = &self.bind_device {
            socket.bind_device(Some(device.as_bytes())).map_err(|e| {
                context(
                    e,
                    format!(
                        "setting SO_BINDTODEVICE={device} (the interface must exist; older kernels \
                         need CAP_NET_RAW)"
                    ),
                )
            })?;
        }
        #[cfg(not(target_os = "linux"))]
        if self.reuseport.is_some() || self.mark.is_some() || self.bind_device.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "reuseport, mark and bind_device are only supported on Linux",
            ));
        }
        Ok(())
    }

    /// Applies the per-connection options (nodelay, keep-alive, user timeout, buffers) to an
    /// accepted connection. Linux copies them from the listener already; calling this makes that
    /// explicit and portable.
    pub fn apply_to_stream(&self, stream: &tokio::net::TcpStream) -> io::Result<()> {
        self.apply_connection_options(&SockRef::from(stream))
    }

    fn apply_connection_options(&self, socket: &Socket) -> io::Result<()> {
        if let Some(nodelay) = self.nodelay {
            socket
                .set_tcp_nodelay(nodelay)
                .map_err(|e| context(e, format!("setting TCP_NODELAY={nodelay}")))?;
        }
        if let Some(k) = &self.keepalive {
            socket
                .set_keepalive(true)
                .map_err(|e| context(e, "setting SO_KEEPALIVE".into()))?;
            let params = TcpKeepalive::new()
                .with_time(k.idle)
                .with_interval(k.interval);
            #[cfg(target_os = "linux")]
            let params = params.with_retries(k.count);
            socket.set_tcp_keepalive(&params).map_err(|e| {
                context(
                    e,
                    "setting TCP_KEEPIDLE/TCP_KEEPINTVL/TCP_KEEPCNT".to_string(),
                )
            })?;
        }
        #[cfg(target_os = "linux")]
        if let Some(timeout) = self.user_timeout {
            socket
                .set_tcp_user_timeout(Some(timeout))
                .map_err(|e| context(e, format!("setting TCP_USER_TIMEOUT={timeout:?}")))?;
        }
        if let Some(size) = self.send_buffer {
            socket
                .set_send_buffer_size(size)
                .map_err(|e| context(e, format!("setting SO_SNDBUF={size}")))?;
        }
        if let Some(size) = self.recv_buffer {
            socket
                .set_recv_buffer_size(size)
                .map_err(|e| context(e, format!("setting SO_RCVBUF={size}")))?;
        }
        Ok(())
    }
}

fn check_timeout(timeout: Duration) -> Result<(), String> {
    if timeout < Duration::from_millis(1) {
        return Err("must be at least 1ms (millisecond resolution)".into());
    }
    if timeout > MAX_SOCKET_TIMEOUT {
        return Err(format!(
            "{} is too long: at most 24h",
            humantime::format_duration(timeout)
        ));
    }
    Ok(())
}

/// Checks a network interface name as Linux does: 1 to 15 bytes, no `/`, whitespace or `:`.
pub(crate) fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the interface name is empty".into());
    }
    if name.len() > MAX_IFNAME_LEN {
        return Err(format!(
            "{name:?} has {} bytes; Linux interface names have at most {MAX_IFNAME_LEN}",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not a valid interface name"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| *c == '/' || *c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "{name:?} contains {c:?}, which interface names cannot contain"
        ));
    }
    Ok(())
}

fn context(error: io::Error, what: String) -> io::Error {
    io::Error::new(error.kind(), format!("{what}: {error}"))
}

fn new_socket(addr: SocketAddr, ty: Type, protocol: Protocol) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), ty, Some(protocol))?;
    // Each configured address means exactly its family: `[::]` does not also take the IPv4
    // port, so that `0.0.0.0:7700` and `[::]:7700` can both be listed.
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    Ok(socket)
}

/// Dials `addr` over TCP with `opts` applied before `connect`. The dial fails with
/// [`io::ErrorKind::TimedOut`] after `opts.connect_timeout`, or `default_connect_timeout` when
/// that is not set. Must be called inside a tokio runtime.
pub async fn dial_tcp(
    addr: SocketAddr,
    opts: &SocketOptions,
    default_connect_timeout: Duration,
) -> io::Result<tokio::net::TcpStream> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    opts.apply(&socket, SocketKind::TcpDial)?;
    socket.set_nonblocking(true)?;
    let socket = tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(socket));
    let timeout = opts.connect_timeout.unwrap_or(default_connect_timeout);
    with_connect_timeout(addr, timeout, socket.connect(addr)).await
}

/// Runs `connect` with a deadline: an elapsed deadline becomes [`io::ErrorKind::TimedOut`], an
/// error of `connect` gets the address added.
async fn with_connect_timeout<T>(
    addr: SocketAddr,
    timeout: Duration,
    connect: impl Future<Output = io::Result<T>>,
) -> io::Result<T> {
    match tokio::time::timeout(timeout, connect).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(context(e, format!("connecting to {addr}"))),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "connecting to {addr} timed out after {}",
                humantime::format_duration(timeout)
            ),
        )),
    }
}

/// Binds a TCP listener on `addr` with `opts` applied before `bind`. IPv6 listeners are IPv6-only.
/// Must be called inside a tokio runtime.
pub fn listen_tcp(addr: SocketAddr, opts: &SocketOptions) -> io::Result<tokio::net::TcpListener> {
    let socket = new_socket(addr, Type::STREAM, Protocol::TCP)?;
    opts.apply(&socket, SocketKind::TcpListen)?;
    socket
        .bind(&addr.into())
        .map_err(|e| context(e, format!("binding TCP {addr}")))?;
    socket.listen(LISTEN_BACKLOG)?;
    socket.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(socket.into())
}

/// Binds a UDP socket on `addr` with `opts` applied before `bind`, in non-blocking mode (as quinn
/// and tokio expect). IPv6 sockets are IPv6-only.
pub fn bind_udp(addr: SocketAddr, opts: &SocketOptions) -> io::Result<std::net::UdpSocket> {
    let socket = new_socket(addr, Type::DGRAM, Protocol::UDP)?;
    opts.apply(&socket, SocketKind::Udp)?;
    socket
        .bind(&addr.into())
        .map_err(|e| context(e, format!("binding UDP {addr}")))?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, SocketAddrV4};

    fn loopback(port: u16) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
    }

    fn keepalive() -> Keepalive {
        Keepalive {
            idle: Duration::from_secs(42),
            interval: Duration::from_secs(7),
            count: 5,
        }
    }

    fn tcp_options() -> SocketOptions {
        SocketOptions {
            nodelay: Some(true),
            keepalive: Some(keepalive()),
            user_timeout: Some(Duration::from_millis(12_345)),
            send_buffer: Some(64 * 1024),
            recv_buffer: Some(96 * 1024),
            mark: Some(0x5e),
            ..SocketOptions::default()
        }
    }

    fn check_tcp_options(socket: &Socket) {
        assert!(socket.tcp_nodelay().unwrap());
        assert!(socket.keepalive().unwrap());
        assert_eq!(
            socket.tcp_keepalive_time().unwrap(),
            Duration::from_secs(42)
        );
        assert_eq!(
            socket.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(7)
        );
        assert_eq!(socket.tcp_keepalive_retries().unwrap(), 5);
        assert_eq!(
            socket.tcp_user_timeout().unwrap(),
            Some(Duration::from_millis(12_345))
        );
        // Linux doubles the requested sizes for its bookkeeping (socket(7)).
        assert_eq!(socket.send_buffer_size().unwrap(), 2 * 64 * 1024);
        assert_eq!(socket.recv_buffer_size().unwrap(), 2 * 96 * 1024);
        // SO_MARK needs CAP_NET_ADMIN; the tests run as root (see docs/config.md).
        assert_eq!(socket.mark().unwrap(), 0x5e);
    }

    #[tokio::test]
    async fn listener_options_read_back_and_dial_options_apply() {
        let listen_opts = SocketOptions {
            reuseaddr: Some(true),
            reuseport: Some(true),
            ..tcp_options()
        };
        let listener = listen_tcp(loopback(0), &listen_opts).unwrap();
        let sock = SockRef::from(&listener);
        check_tcp_options(&sock);
        assert!(sock.reuse_address().unwrap());
        assert!(sock.reuse_port().unwrap());
        let addr = listener.local_addr().unwrap();

        let dial_opts = SocketOptions {
            connect_timeout: Some(Duration::from_secs(5)),
            ..tcp_options()
        };
        let (dialed, accepted) = tokio::join!(
            dial_tcp(addr, &dial_opts, Duration::from_secs(1)),
            listener.accept()
        );
        let dialed = dialed.unwrap();
        check_tcp_options(&SockRef::from(&dialed));
        let (accepted, _) = accepted.unwrap();
        // Linux clones accepted sockets from the listener; apply_to_stream sets them anyway.
        listen_opts.apply_to_stream(&accepted).unwrap();
        let accepted = SockRef::from(&accepted);
        assert!(accepted.tcp_nodelay().unwrap());
        assert_eq!(accepted.tcp_keepalive_retries().unwrap(), 5);
    }

    #[tokio::test]
    async fn udp_options_read_back() {
        let opts = SocketOptions {
            send_buffer: Some(32 * 1024),
            recv_buffer: Some(48 * 1024),
            reuseaddr: Some(true),
            reuseport: Some(true),
            mark: Some(7),
            bind_device: Some("lo".into()),
            ..SocketOptions::default()
        };
        let udp = bind_udp(loopback(0), &opts).unwrap();
        let sock = SockRef::from(&udp);
        assert_eq!(sock.send_buffer_size().unwrap(), 64 * 1024);
        assert_eq!(sock.recv_buffer_size().unwrap(), 96 * 1024);
        assert!(sock.reuse_address().unwrap());
        assert!(sock.reuse_port().unwrap());
        assert_eq!(sock.mark().unwrap(), 7);
        assert_eq!(sock.device().unwrap().as_deref(), Some(&b"lo"[..]));
        assert!(sock.nonblocking().unwrap());
        // IPv6 sockets are IPv6-only.
        let v6 = bind_udp("[::1]:0".parse().unwrap(), &SocketOptions::default()).unwrap();
        assert!(SockRef::from(&v6).only_v6().unwrap());
    }

    #[test]
    fn apply_reports_os_errors_with_the_option() {
        let socket = Socket::new(Domain::IPV4, Type::DGRAM, None).unwrap();
        let opts = SocketOptions {
            bind_device: Some("nosuchdev0".into()),
            ..SocketOptions::default()
        };
        let err = opts.apply(&socket, SocketKind::Udp).unwrap_err();
        assert!(
            err.to_string().contains("SO_BINDTODEVICE=nosuchdev0"),
            "{err}"
        );
        // Options that do not fit the kind are refused before touching the socket.
        let err = tcp_options().apply(&socket, SocketKind::Udp).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("TCP_NODELAY"), "{err}");
    }

    #[tokio::test]
    async fn dial_closed_port_is_refused() {
        // Bind, learn the port, close: nothing listens there any more.
        let port = {
            let l = std::net::TcpListener::bind(loopback(0)).unwrap();
            l.local_addr().unwrap().port()
        };
        let err = dial_tcp(
            loopback(port),
            &SocketOptions::default(),
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
        assert!(
            err.to_string().contains(&format!("127.0.0.1:{port}")),
            "{err}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn connect_timeout_fires_on_a_dial_that_never_completes() {
        let started = tokio::time::Instant::now();
        let err = with_connect_timeout(
            loopback(9),
            Duration::from_millis(1500),
            std::future::pending::<io::Result<()>>(),
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(err.to_string().contains("1s 500ms"), "{err}");
        assert_eq!(started.elapsed(), Duration::from_millis(1500));
        // A dial that finishes in time is passed through.
        let ok = with_connect_timeout(loopback(9), Duration::from_secs(1), async { Ok(5) }).await;
        assert_eq!(ok.unwrap(), 5);
    }

    #[test]
    fn validate_names_the_key_and_the_reason() {
        let cases: Vec<(SocketOptions, SocketKind, &str, &str)> = vec![
            (
                SocketOptions {
                    nodelay: Some(true),
                    ..Default::default()
                },
                SocketKind::Udp,
                "transport.socket.nodelay",
                "TCP_NODELAY does not apply to the QUIC UDP socket",
            ),
            (
                SocketOptions {
                    connect_timeout: Some(Duration::from_secs(1)),
                    ..Default::default()
                },
                SocketKind::TcpListen,
                "transport.socket.connect_timeout",
                "does not apply to TCP listeners",
            ),
            (
                SocketOptions {
                    reuseport: Some(true),
                    ..Default::default()
                },
                SocketKind::TcpDial,
                "transport.socket.reuseport",
                "not bound to a local port",
            ),
            (
                SocketOptions {
                    send_buffer: Some(512),
                    ..Default::default()
                },
                SocketKind::Udp,
                "transport.socket.send_buffer",
                "1024 (1 KiB) to 268435456",
            ),
            (
                SocketOptions {
                    keepalive: Some(Keepalive {
                        count: 0,
                        ..keepalive()
                    }),
                    ..Default::default()
                },
                SocketKind::TcpDial,
                "transport.socket.keepalive_count",
                "1 to 127",
            ),
            (
                SocketOptions {
                    keepalive: Some(Keepalive {
                        idle: Duration::from_millis(1500),
                        ..keepalive()
                    }),
                    ..Default::default()
                },
                SocketKind::TcpDial,
                "transport.socket.keepalive_idle",
                "whole, positive number of seconds",
            ),
            (
                SocketOptions {
                    user_timeout: Some(Duration::from_micros(10)),
                    ..Default::default()
                },
                SocketKind::TcpDial,
                "transport.socket.user_timeout",
                "at least 1ms",
            ),
            (
                SocketOptions {
                    bind_device: Some("a-very-long-ifname".into()),
                    ..Default::default()
                },
                SocketKind::Udp,
                "transport.socket.bind_device",
                "at most 15",
            ),
        ];
        for (opts, kind, key, reason) in cases {
            let err = opts.validate(kind, "transport.socket").unwrap_err();
            assert_eq!(err.key, key);
            assert!(err.reason.contains(reason), "{key}: {}", err.reason);
            assert!(err.to_string().starts_with(&format!("key `{key}`: ")));
        }
        tcp_options().validate(SocketKind::TcpDial, "x").unwrap();
        tcp_options().validate(SocketKind::TcpListen, "x").unwrap();
    }
}
