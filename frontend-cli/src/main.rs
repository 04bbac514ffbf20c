//! The `svcnet` command.
//!
//! This binary will hold the daemon (QUIC transport with quinn, config, control socket, metrics),
//! the user commands (`init`, `id`, `daemon`, `status`, `resolve`, `proxy`) and the gateways. Until
//! the daemon issue lands it offers the commands that the core already supports.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--version") | Some("-V") => {
            println!("svcnet {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        None | Some("--help") | Some("-h") | Some("help") => {
            println!(
                "svcnet {} — a peer-to-peer service network\n\n\
                 The daemon and its commands are not built yet. To see the multiplexer at work run:\n  \
                 cargo run --release -p svcnet-bench --bin bench-mux\n",
                env!("CARGO_PKG_VERSION")
            );
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("svcnet: unknown command `{other}`; run `svcnet --help` for the list");
            ExitCode::from(2)
        }
    }
}
