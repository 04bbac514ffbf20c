//! End-to-end test support for svcnet: a lab of network namespaces with real daemons.
//!
//! A [`Lab`] creates one namespace per host plus a hub namespace holding a bridge; every host gets
//! a veth into the bridge with an address in 198.18.0.0/24 (the benchmarking range, never routed
//! anywhere). Processes started in the lab and the namespaces themselves are removed when the lab
//! is dropped, also when a test panics. Nothing here touches the root namespace except creating
//! and deleting the lab's namespaces and their `/etc/netns/<name>` resolver files.
//!
//! Used by `tests/tests/netns.rs` and the `bench-tun` benchmark.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use svcnet_core::addressing::{NetworkPrefix, ServiceName};
use svcnet_core::identity::NodeKey;

/// Whether the lab can run here: root is needed for namespaces and TUN. Outside CI a missing
/// privilege skips (returns false, with a message); in CI (`CI=true`) it is a failure.
pub fn lab_available(test: &str) -> bool {
    let root = is_root();
    if root {
        return true;
    }
    if std::env::var("CI").map(|v| v == "true").unwrap_or(false) {
        panic!("{test}: end-to-end tests need root (network namespaces, TUN) and must run in CI");
    }
    eprintln!("{test}: skipped — needs root for network namespaces and TUN devices");
    false
}

fn is_root() -> bool {
    // The effective uid, from /proc (no libc binding needed).
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// The `svcnet` binary of this build (built on demand if `cargo test -p svcnet-e2e` ran alone).
pub fn svcnet_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> or target/<profile>/<bin>
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("svcnet");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "svcnet", "--bin", "svcnet"]);
        if dir.ends_with("release") {
            cmd.arg("--release");
        }
        let status = cmd
            .status()
            .expect("running cargo build for the svcnet binary");
        assert!(status.success(), "building the svcnet binary failed");
    }
    assert!(bin.exists(), "no svcnet binary at {}", bin.display());
    bin
}

/// Checks that the external tools a test uses exist; a clear failure otherwise.
pub fn require_tools(tools: &[&str]) {
    for tool in tools {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(
            found,
            "the end-to-end tests need `{tool}` (Debian: apt-get install iproute2 curl python3; bench-tun also iperf3)"
        );
    }
}

/// A host of the lab: its namespace and underlay address.
#[derive(Clone, Debug)]
pub struct Host {
    /// Namespace name.
    pub ns: String,
    /// Underlay IPv4 address (198.18.0.x).
    pub ip: String,
}

/// A node definition for a host.
pub struct NodeDef {
    /// Node name.
    pub name: String,
    /// Key seed (deterministic test identities).
    pub seed: u8,
}

impl NodeDef {
    /// The node's key.
    pub fn key(&self) -> NodeKey {
        NodeKey::from_seed([self.seed; 32])
    }

    /// The node id text.
    pub fn id(&self) -> String {
        self.key().node_id().to_text()
    }

    /// The base64 private key text of the config.
    pub fn key_b64(&self) -> String {
        data_encoding::BASE64.encode(&[self.seed; 32])
    }

    /// The node's address on the TUN (network "svcnet").
    pub fn node_address(&self) -> std::net::Ipv6Addr {
        NetworkPrefix::derive("svcnet").node_address(&self.key().node_id())
    }

    /// A service's address.
    pub fn service_address(&self, service: &str) -> std::net::Ipv6Addr {
        NetworkPrefix::derive("svcnet")
            .service_address(&self.key().node_id(), &ServiceName::parse(service).unwrap())
    }
}

/// Network namespaces joined by a bridge, with processes; all removed on drop.
pub struct Lab {
    hub: String,
    /// The hosts, in creation order (198.18.0.1, .2, …).
    pub hosts: Vec<Host>,
    procs: Vec<(String, Child)>,
    /// A scratch directory for configs and files.
    pub dir: PathBuf,
}

fn run(args: &[&str]) -> Output {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Lab {
    /// Creates `hosts` namespaces named after `tag` (short: interface names are derived from it).
    pub fn new(tag: &str, hosts: usize) -> Lab {
        static N: AtomicU32 = AtomicU32::new(0);
        let unique = format!(
            "{}{}",
            std::process::id() % 100_000,
            N.fetch_add(1, Ordering::Relaxed)
        );
        let hub = format!("svn-{tag}-{unique}-hub");
        let dir = std::env::temp_dir().join(format!("svcnet-lab-{tag}-{unique}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("lab dir");
        let mut lab = Lab {
            hub: hub.clone(),
            hosts: Vec::new(),
            procs: Vec::new(),
            dir,
        };
        run(&["ip", "netns", "add", &hub]);
        run(&["ip", "-n", &hub, "link", "add", "br0", "type", "bridge"]);
        run(&["ip", "-n", &hub, "link", "set", "br0", "up"]);
        for i in 0..hosts {
            let ns = format!("svn-{tag}-{unique}-{i}");
            run(&["ip", "netns", "add", &ns]);
            lab.hosts.push(Host {
                ns: ns.clone(),
                ip: format!("198.18.0.{}", i + 1),
            });
            let hub_end = format!("h{i}");
            run(&[
                "ip", "-n", &hub, "link", "add", &hub_end, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ]);
            run(&[
                "ip", "-n", &hub, "link", "set", &hub_end, "master", "br0", "up",
            ]);
            run(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("198.18.0.{}/24", i + 1),
                "dev",
                "eth0",
            ]);
            run(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
            run(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        }
        lab
    }

    /// Runs a command in host `i`'s namespace and waits for it.
    pub fn exec(&self, i: usize, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.hosts[i].ns])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running {args:?} in {}: {e}", self.hosts[i].ns))
    }

    /// Starts a long-running process in host `i`'s namespace; returns its key for [`Lab::kill`].
    pub fn spawn(&mut self, i: usize, name: &str, args: &[&str], cwd: Option<&Path>) -> String {
        let log = std::fs::File::create(self.dir.join(format!("{name}.log"))).expect("log file");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.hosts[i].ns])
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        if let Some(cwd) = cwd {
            cmd.current_dir(cwd);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {args:?}: {e}"));
        self.procs.push((name.to_string(), child));
        name.to_string()
    }

    /// Stops a process started with [`Lab::spawn`]: SIGTERM, then SIGKILL after 5 s.
    pub fn kill(&mut self, name: &str) {
        if let Some(pos) = self.procs.iter().position(|(n, _)| n == name) {
            let (_, mut child) = self.procs.remove(pos);
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The log of a process started with [`Lab::spawn`].
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Points host `i`'s resolver (for processes started with `ip netns exec`) at `server`.
    pub fn set_resolver(&self, i: usize, server: std::net::IpAddr) {
        let dir = PathBuf::from("/etc/netns").join(&self.hosts[i].ns);
        std::fs::create_dir_all(&dir).expect("/etc/netns dir");
        let mut f = std::fs::File::create(dir.join("resolv.conf")).expect("resolv.conf");
        writeln!(f, "nameserver {server}\noptions timeout:1 attempts:2")
            .expect("write resolv.conf");
    }

    /// Writes a TUN-mode config for `node` on host `i` knowing `peers` (def, host index) and
    /// serving `services` (the body of `[services]`). Returns its path.
    pub fn write_config(
        &self,
        i: usize,
        node: &NodeDef,
        peers: &[(&NodeDef, usize)],
        services: &str,
    ) -> PathBuf {
        let mut text = format!(
            "name = \"{}\"\nprivate_key = \"{}\"\nlisten = [\"/ip4/{}/udp/7700/quic-v1\"]\n",
            node.name,
            node.key_b64(),
            self.hosts[i].ip
        );
        for (peer, host) in peers {
            text.push_str(&format!(
                "\n[[peers]]\nid = \"{}\"\nname = \"{}\"\naddrs = [\"/ip4/{}/udp/7700/quic-v1\"]\n",
                peer.id(),
                peer.name,
                self.hosts[*host].ip
            ));
        }
        text.push_str(&format!("\n[services]\n{services}\n"));
        let path = self.dir.join(format!("{}.toml", node.name));
        std::fs::write(&path, text).expect("write config");
        path
    }

    /// Starts `svcnet daemon --config <config>` in host `i`, as process `name`.
    pub fn start_daemon(&mut self, i: usize, name: &str, config: &Path) {
        let bin = svcnet_bin();
        let args = [
            bin.to_str().expect("utf-8 path"),
            "daemon",
            "--config",
            config.to_str().expect("utf-8 path"),
        ];
        self.spawn(i, name, &args, None);
    }

    /// Polls `cond` every 50 ms until it holds; panics with `what` after `limit`.
    pub fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Duration {
        let start = Instant::now();
        loop {
            if cond() {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < limit,
                "timed out after {limit:?} waiting until {what}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (_, child) in &mut self.procs {
            let _ = child.kill();
            let _ = child.wait();
        }
        for host in &self.hosts {
            let _ = Command::new("ip").args(["netns", "del", &host.ns]).status();
            let _ = std::fs::remove_dir_all(PathBuf::from("/etc/netns").join(&host.ns));
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.hub])
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
