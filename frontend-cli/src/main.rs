//! The `svcnet` command: argument parsing, logging and exit codes. Everything else lives in the
//! library (`svcnet::…`) and the core; this file stays thin.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};
use svcnet::config::Config;
use svcnet::node::{Mode, Node};
use svcnet::{control_socket, demo, metrics, proxy};
use svcnet_core::addressing::NodeName;

/// glibc's allocator returns freed stream buffers to the kernel and faults them back in under
/// streaming loads; mimalloc keeps them (measured in docs/architecture.md §4).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "svcnet",
    version,
    about = "A peer-to-peer service network: reach any TCP service on any node by name.",
    long_about = "A peer-to-peer service network: every TCP service on every node becomes reachable \
                  from the other nodes by name (web.alpha.svcnet), over mutually authenticated QUIC.\n\n\
                  Start with `svcnet demo` (no root, no config), or `svcnet init --config alpha.toml`."
)]
struct Cli {
    #[command(flatten)]
    log: LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug)]
struct LogArgs {
    /// More log output (-v: debug, -vv: trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Log filter: a level (error, warn, info, debug, trace) or a tracing directive list
    /// (e.g. `svcnet=debug,quinn=warn`). Overrides -v.
    #[arg(long, global = true, value_name = "FILTER", env = "SVCNET_LOG")]
    log_level: Option<String>,
}

#[derive(Args, Debug)]
struct ConfigArg {
    /// The node's config file.
    #[arg(short, long, value_name = "PATH", env = "SVCNET_CONFIG")]
    config: PathBuf,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Write a new identity and a commented config file (refuses to overwrite).
    Init {
        #[command(flatten)]
        config: ConfigArg,
        /// The node's name (a DNS label); default: this host's name.
        #[arg(long)]
        name: Option<String>,
    },
    /// Print this node's id.
    Id {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Run the node.
    Daemon {
        #[command(flatten)]
        config: ConfigArg,
        /// Run without a TUN device (proxies, relays, registries); no root needed.
        #[arg(long)]
        userspace: bool,
    },
    /// Show the running daemon's peers, services and counters.
    Status {
        #[command(flatten)]
        config: ConfigArg,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show the registry's replica: role instances on every node, with health and lease.
    Services {
        #[command(flatten)]
        config: ConfigArg,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print the address of a svcnet name (node, service.node, [vLABEL.]role.role).
    Resolve {
        /// The name, e.g. web.alpha or web.alpha.svcnet.
        name: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Forward a local TCP port to a remote service (no TUN, no root).
    Proxy {
        /// SERVICE.NODE[:PORT], e.g. web.alpha (PORT: the port to request; default: the listen port).
        target: String,
        /// Local address to listen on.
        #[arg(long, short)]
        listen: SocketAddr,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Run a two-node network on 127.0.0.1 with a real HTTP service, reachable by name.
    Demo {
        /// Local port of the demo's proxy (falls back to a free port if taken).
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Run the self-check and exit instead of staying up.
        #[arg(long)]
        check: bool,
    },
}

fn init_logging(log: &LogArgs, default: &str) {
    let filter = match &log.log_level {
        Some(f) => f.clone(),
        None => match log.verbose {
            0 => default.to_string(),
            1 => "debug,quinn=info,rustls=info".to_string(),
            _ => "trace".to_string(),
        },
    };
    let filter = match tracing_subscriber::EnvFilter::try_new(&filter) {
        Ok(f) => f,
        Err(e) => {
            eprintln!(
                "svcnet: bad --log-level `{filter}`: {e}; use error, warn, info, debug or trace"
            );
            std::process::exit(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn load(path: &Path) -> Result<Arc<Config>, String> {
    Config::load(path).map(Arc::new).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Daemon { .. } | Command::Demo { .. } | Command::Proxy { .. } => "info",
        _ => "warn",
    };
    init_logging(&cli.log, default_level);
    let outcome = match cli.command {
        // The daemon's runtime is sized by its config (`threads`), so the config is read first.
        Command::Daemon { config, userspace } => load(&config.config).and_then(|config| {
            let threads = config.worker_threads();
            runtime(Some(threads))?.block_on(async {
                tracing::info!(threads, "async runtime started");
                daemon(config, userspace).await
            })
        }),
        command => runtime(None).and_then(|rt| rt.block_on(run(command))),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("svcnet: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The async runtime: `threads` workers, or one per CPU.
fn runtime(threads: Option<usize>) -> Result<tokio::runtime::Runtime, String> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = threads {
        builder.worker_threads(threads);
    }
    builder
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

async fn run(command: Command) -> Result<(), String> {
    match command {
        Command::Init { config, name } => {
            let name = match name {
                Some(n) => n,
                None => default_name(),
            };
            let name = NodeName::parse(&name).map_err(|e| {
                format!("`{name}` cannot be a node name: {e}; pass --name with a DNS label such as alpha")
            })?;
            let id = svcnet::config::write_new_config(&config.config, &name)
                .map_err(|e| e.to_string())?;
            println!("{id}");
            eprintln!(
                "wrote {} (node `{name}`); give the id above to your peers, add them under [[peers]], then run `svcnet daemon --config {}`",
                config.config.display(),
                config.config.display()
            );
            Ok(())
        }
        Command::Id { config } => {
            let config = load(&config.config)?;
            println!("{}", config.key.node_id());
            Ok(())
        }
        Command::Daemon { config, userspace } => {
            let config = load(&config.config)?;
            daemon(config, userspace).await
        }
        Command::Status { config, json } => {
            let config = load(&config.config)?;
            let status =
                control_socket::request(&config.control.socket, &json!({"cmd": "status"})).await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&status).map_err(|e| e.to_string())?
                );
            } else {
                print_status(&status);
            }
            Ok(())
        }
        Command::Services { config, json } => {
            let config = load(&config.config)?;
            let answer =
                control_socket::request(&config.control.socket, &json!({"cmd": "services"}))
                    .await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&answer).map_err(|e| e.to_string())?
                );
            } else {
                print_services(&answer);
            }
            Ok(())
        }
        Command::Resolve { name, config } => {
            let config = load(&config.config)?;
            let request = json!({"cmd": "resolve", "name": name});
            let answer = match control_socket::request(&config.control.socket, &request).await {
                Ok(answer) => answer,
                // Without a daemon, names from the config still resolve.
                Err(e) if e.starts_with("cannot reach the daemon") => {
                    // Role addresses are derived from the name; without the daemon's replica
                    // nothing says whether an instance exists, so the address is given as is.
                    let book = svcnet::node::offline_book(&config);
                    let prefix = svcnet_core::addressing::NetworkPrefix::derive(&config.network);
                    control_socket::resolve(&config, &book, &name, |role, label| {
                        Some(prefix.role_address(role, label))
                    })?
                }
                Err(e) => return Err(e),
            };
            println!("{}", answer["address"].as_str().unwrap_or_default());
            Ok(())
        }
        Command::Proxy {
            target,
            listen,
            config,
        } => {
            let config = load(&config.config)?;
            let parsed = proxy::parse_target(&target, &config.dns.zone)?;
            // With the daemon of this config running, it runs the forwarder (one node per
            // identity, and its registry replica serves role targets); otherwise this process
            // runs a client-only node of its own.
            let request = json!({"cmd": "proxy", "target": target, "listen": listen.to_string()});
            match control_socket::held_request(&config.control.socket, &request).await {
                Ok((answer, mut held)) => {
                    eprintln!(
                        "svcnet: the daemon forwards {} to {parsed}; Ctrl-C to stop",
                        answer["listen"].as_str().unwrap_or("?")
                    );
                    tokio::select! {
                        _ = held.closed() => return Err("the daemon stopped".into()),
                        _ = tokio::signal::ctrl_c() => {}
                    }
                    return Ok(());
                }
                Err(e) if e.starts_with("cannot reach the daemon") => {}
                Err(e) => return Err(e),
            }
            let node = Node::start(config, Mode::ClientOnly).await?;
            let listener = proxy::bind(&node, listen)?;
            eprintln!(
                "svcnet: forwarding {} to {parsed}; Ctrl-C to stop",
                listener.local_addr().map_err(|e| e.to_string())?
            );
            tokio::select! {
                _ = proxy::run(node.clone(), parsed, listener) => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            node.shutdown().await;
            Ok(())
        }
        Command::Demo { port, check } => demo::run(port, check).await,
    }
}

async fn daemon(config: Arc<Config>, userspace: bool) -> Result<(), String> {
    let tun = config.tun.enabled && !userspace;
    let control = control_socket::bind(&config.control.socket).await?;
    let metrics_listener = match config.metrics.listen {
        Some(addr) => Some(metrics::bind(addr).await.map_err(|e| {
            format!("cannot listen for metrics on {addr} (config key `metrics.listen`): {e}")
        })?),
        None => None,
    };
    let node = Node::start(config.clone(), Mode::Daemon).await?;
    if tun {
        if let Err(e) = svcnet::tun_mode::start(&node) {
            node.shutdown().await;
            return Err(e);
        }
    }
    let dns_listen = config.dns.listen.or_else(|| {
        tun.then(|| {
            let prefix = svcnet_core::addressing::NetworkPrefix::derive(&config.network);
            SocketAddr::from((prefix.node_address(&node.id()), 53))
        })
    });
    if let Some(addr) = dns_listen {
        match svcnet::dns_server::bind(addr).await {
            Ok(socket) => {
                tokio::spawn(svcnet::dns_server::serve(socket, node.clone()));
            }
            Err(e) => {
                node.shutdown().await;
                return Err(e);
            }
        }
    }
    tracing::info!(
        name = %config.name,
        id = %node.id(),
        control = %config.control.socket.display(),
        "svcnet daemon running"
    );
    tokio::spawn(control_socket::serve(control, node.clone()));
    if let Some(listener) = metrics_listener {
        if let Ok(addr) = listener.local_addr() {
            node.set_metrics_addr(addr);
            tracing::info!(%addr, "metrics on http://{addr}/metrics");
        }
        let n = node.clone();
        tokio::spawn(metrics::serve(
            listener,
            Arc::new(move || svcnet::node::render_metrics(&n)),
        ));
    }
    wait_for_signal().await;
    tracing::info!("shutting down");
    node.shutdown().await;
    let _ = std::fs::remove_file(&config.control.socket);
    Ok(())
}

async fn wait_for_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match term.as_mut() {
                Some(t) => { t.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
}

fn default_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_ascii_lowercase())
        .unwrap_or_else(|_| "node".into())
}

fn print_services(answer: &Value) {
    println!(
        "{:<16} {:<12} {:<10} {:<12} {:<9} {:<8} ADDRESS",
        "ROLE", "VERSION", "NODE", "SERVICE", "HEALTH", "LEASE"
    );
    for i in answer["instances"].as_array().into_iter().flatten() {
        let health = match (i["healthy"].as_bool(), i["down"].as_bool()) {
            (_, Some(true)) => "down",
            (Some(true), _) => "healthy",
            _ => "unhealthy",
        };
        let lease = i["lease_s"]
            .as_f64()
            .map(|s| format!("{s:.0}s"))
            .unwrap_or_else(|| "local".into());
        println!(
            "{:<16} {:<12} {:<10} {:<12} {:<9} {:<8} {}",
            i["role"].as_str().unwrap_or("?"),
            i["version"].as_str().unwrap_or("?"),
            i["node"].as_str().unwrap_or("?"),
            i["service"].as_str().unwrap_or("?"),
            health,
            lease,
            i["address"].as_str().unwrap_or("?")
        );
    }
}

fn print_status(status: &Value) {
    let node = &status["node"];
    println!(
        "node     {} ({})\naddress  {}\nlisten   {}",
        node["name"].as_str().unwrap_or("?"),
        node["id"].as_str().unwrap_or("?"),
        node["address"].as_str().unwrap_or("?"),
        node["listen"]
            .as_array()
            .map(|a| a
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", "))
            .unwrap_or_default()
    );
    match status["tun"].as_object() {
        Some(tun) => println!(
            "tun      {} (mtu {}): {} connections, {} SYNs held",
            tun["interface"].as_str().unwrap_or("?"),
            tun["mtu"],
            tun["connections"],
            tun["held_syns"]
        ),
        None => println!("tun      off (userspace mode)"),
    }
    println!(
        "registry {} role instances ({} healthy) from {} nodes; `svcnet services` lists them",
        status["registry"]["instances"],
        status["registry"]["healthy"],
        status["registry"]["origins"]
    );
    println!("\nPEER        STATE       RTT       PATH                    SERVICES");
    for p in status["peers"].as_array().into_iter().flatten() {
        let name = p["name"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| p["id"].as_str().unwrap_or("?")[..8].to_string());
        let rtt = p["rtt_ms"]
            .as_f64()
            .map(|ms| format!("{ms:.2}ms"))
            .unwrap_or_else(|| "-".into());
        let services = p["services"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        println!(
            "{:<11} {:<11} {:<9} {:<23} {}",
            name,
            p["state"].as_str().unwrap_or("?"),
            rtt,
            p["path"].as_str().unwrap_or("-"),
            services
        );
        if let Some(err) = p["last_error"].as_str() {
            println!("            last error: {err}");
        }
    }
    println!("\nSERVICE     TARGET                  ADDRESS");
    for s in status["services"].as_array().into_iter().flatten() {
        println!(
            "{:<11} {:<23} {}",
            s["name"].as_str().unwrap_or("?"),
            s["target"].as_str().unwrap_or("?"),
            s["address"].as_str().unwrap_or("?")
        );
    }
    println!("\nDIRECTION  SERVICE              CONNS  ACTIVE  ERRORS  TO SERVICE   TO CLIENT");
    for c in status["counters"].as_array().into_iter().flatten() {
        println!(
            "{:<10} {:<20} {:>5}  {:>6}  {:>6}  {:>10}  {:>10}",
            c["direction"].as_str().unwrap_or("?"),
            c["service"].as_str().unwrap_or("?"),
            c["connections_total"],
            c["connections_active"],
            c["errors_total"],
            c["bytes_to_service"],
            c["bytes_to_client"]
        );
    }
}
