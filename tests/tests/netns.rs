//! End to end in network namespaces: real `svcnet daemon`s with TUN devices, a real HTTP server,
//! real clients (curl, glibc's resolver through python), a real resolver configuration.
//!
//! Hosts: 0 = alpha (serves `web` = python's http.server), 1 = beta (the client side), 2 = gamma
//! (a node alpha does not know). Waiting is always polling a condition with a deadline.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use svcnet_e2e::{lab_available, require_tools, Lab, NodeDef};

fn curl(lab: &Lab, host: usize, url: &str, timeout_s: u32) -> std::process::Output {
    lab.exec(
        host,
        &["curl", "-sS", "--max-time", &timeout_s.to_string(), url],
    )
}

/// Resolves `name` to IPv6 addresses with the system resolver of the host's namespace (glibc's
/// getaddrinfo via python, reading the namespace's resolv.conf): an AAAA lookup as any client
/// does it. Returns the address, or the resolver's error text.
fn resolve(lab: &Lab, host: usize, name: &str) -> Result<String, String> {
    let out = lab.exec(
        host,
        &[
            "python3",
            "-c",
            "import socket, sys; print(socket.getaddrinfo(sys.argv[1], 80, socket.AF_INET6)[0][4][0])",
            name,
        ],
    );
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn curl_by_name_between_namespaces() {
    if !lab_available("curl_by_name_between_namespaces") {
        return;
    }
    require_tools(&["ip", "curl", "python3"]);
    let mut lab = Lab::new("e2e", 3);
    let alpha = NodeDef {
        name: "alpha".into(),
        seed: 1,
    };
    let beta = NodeDef {
        name: "beta".into(),
        seed: 2,
    };
    let gamma = NodeDef {
        name: "gamma".into(),
        seed: 3,
    };

    // The service: python's http.server on alpha's loopback, with a small page and 100 MB.
    let www = lab.dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), "hello from alpha\n").unwrap();
    let big: Vec<u8> = (0..100u32 * 1024 * 1024)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(www.join("big.bin"), &big).unwrap();
    let http = |lab: &mut Lab| {
        lab.spawn(
            0,
            "http",
            &[
                "python3",
                "-m",
                "http.server",
                "8080",
                "--bind",
                "127.0.0.1",
            ],
            Some(&www),
        )
    };
    http(&mut lab);

    let alpha_cfg = lab.write_config(
        0,
        &alpha,
        &[(&beta, 1)],
        "[services.web]\ntarget = \"/tcp/8080\"\nrole = \"www@1.2.0\"",
    );
    let beta_cfg = lab.write_config(1, &beta, &[(&alpha, 0)], "");
    let gamma_cfg = lab.write_config(2, &gamma, &[(&alpha, 0)], "");
    lab.start_daemon(0, "alpha", &alpha_cfg);
    lab.start_daemon(1, "beta", &beta_cfg);
    lab.start_daemon(2, "gamma", &gamma_cfg);
    lab.set_resolver(1, IpAddr::V6(beta.node_address()));
    lab.set_resolver(2, IpAddr::V6(gamma.node_address()));

    // DNS through the namespace's resolver: AAAA for the service and the node, NXDOMAIN
    // ("not known") for a name of the zone that does not exist. (REFUSED outside the zone and
    // the other answers are covered by the responder's unit tests.)
    let web_address = alpha.service_address("web").to_string();
    Lab::wait_until(
        "beta's DNS answers web.alpha",
        Duration::from_secs(10),
        || resolve(&lab, 1, "web.alpha.svcnet") == Ok(web_address.clone()),
    );
    assert_eq!(
        resolve(&lab, 1, "alpha.svcnet"),
        Ok(alpha.node_address().to_string())
    );
    let err = resolve(&lab, 1, "nope.alpha.svcnet").unwrap_err();
    assert!(err.contains("not known"), "{err}");

    // curl by name, on the natural port and on any other port.
    Lab::wait_until(
        "curl http://web.alpha.svcnet/ works",
        Duration::from_secs(10),
        || {
            let out = curl(&lab, 1, "http://web.alpha.svcnet/", 3);
            out.status.success() && out.stdout == b"hello from alpha\n"
        },
    );
    let out = curl(&lab, 1, "http://web.alpha.svcnet:1234/", 5);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from alpha\n",
        "port-on-demand: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The same service as a role instance: by role name (any version) and by version label.
    for url in [
        "http://www.role.svcnet/",
        "http://v1.www.role.svcnet/",
        "http://v1-2.www.role.svcnet/",
    ] {
        Lab::wait_until(&format!("{url} works"), Duration::from_secs(10), || {
            let out = curl(&lab, 1, url, 3);
            out.status.success() && out.stdout == b"hello from alpha\n"
        });
    }
    let err = resolve(&lab, 1, "v2.www.role.svcnet").unwrap_err();
    assert!(err.contains("not known"), "no 2.x instance: {err}");

    // The daemon's status shows the TUN netstack and the registry replica.
    let out = std::process::Command::new(svcnet_e2e::svcnet_bin())
        .args(["status", "--json", "--config", beta_cfg.to_str().unwrap()])
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    assert_eq!(status["tun"]["interface"], "svcnet0", "{status}");
    assert_eq!(status["registry"]["instances"], 1, "{status}");

    // 200 parallel connections.
    let urls: Vec<String> = (0..200)
        .map(|i| format!("http://web.alpha.svcnet/?n={i}"))
        .collect();
    let mut args = vec![
        "curl",
        "-sS",
        "--max-time",
        "30",
        "--parallel",
        "--parallel-max",
        "200",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}\\n",
    ];
    args.extend(urls.iter().map(String::as_str));
    let out = lab.exec(1, &args);
    let codes = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        codes.lines().filter(|c| *c == "200").count(),
        200,
        "parallel: {codes}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // 100 MB with the checksum compared.
    let out = curl(&lab, 1, "http://web.alpha.svcnet/big.bin", 120);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout.len(), big.len());
    assert_eq!(blake3::hash(&out.stdout), blake3::hash(&big));

    // The target stops: connect fails promptly with ECONNREFUSED (curl exit code 7).
    lab.kill("http");
    Lab::wait_until("http.server is gone", Duration::from_secs(5), || {
        !lab.exec(
            0,
            &[
                "python3",
                "-c",
                "import socket; socket.create_connection(('127.0.0.1', 8080), 1)",
            ],
        )
        .status
        .success()
    });
    let start = Instant::now();
    let out = curl(&lab, 1, "http://web.alpha.svcnet/", 5);
    let took = start.elapsed();
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Couldn't connect")
            || String::from_utf8_lossy(&out.stderr).contains("refused"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(took < Duration::from_secs(2), "refusal took {took:?}");

    // Restart alpha's daemon: the service is reachable again within 5 s.
    http(&mut lab);
    Lab::wait_until("http.server is back", Duration::from_secs(5), || {
        lab.exec(
            0,
            &[
                "python3",
                "-c",
                "import socket; socket.create_connection(('127.0.0.1', 8080), 1)",
            ],
        )
        .status
        .success()
    });
    lab.kill("alpha");
    let restarted = Instant::now();
    lab.start_daemon(0, "alpha2", &alpha_cfg);
    Lab::wait_until(
        "web.alpha works after the restart",
        Duration::from_secs(5),
        || {
            let out = curl(&lab, 1, "http://web.alpha.svcnet/", 2);
            out.status.success() && out.stdout == b"hello from alpha\n"
        },
    );
    assert!(restarted.elapsed() < Duration::from_secs(5));

    // gamma is not in alpha's peer list: it gets nowhere.
    let out = curl(&lab, 2, "http://web.alpha.svcnet/", 3);
    assert!(!out.status.success(), "gamma reached alpha's service");
    let log = lab.log("alpha2");
    assert!(
        log.contains("not in [[peers]]"),
        "alpha did not log the refusal:\n{log}"
    );
}
