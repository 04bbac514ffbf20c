//! Lookups by semver range (every range form, prerelease rules of the semver crate), role
//! address labels, load-balancing distributions and failover.

mod registry_net;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use registry_net::{instance, key, req, role};
use svcnet_core::addressing::{NetworkPrefix, ServiceName, VersionLabel};
use svcnet_core::registry::range_label::{label_to_req, role_address};
use svcnet_core::registry::{InstanceKey, Registry, RegistryConfig, Strategy};
use svcnet_core::time::Instant;

const T0: Instant = Instant::from_millis(1_000);

/// Services `a`..`k` of role couchdb at these versions, plus a postgres at 3.2.2.
const VERSIONS: &[(&str, &str)] = &[
    ("a", "0.4.1"),
    ("b", "2.9.9"),
    ("c", "3.0.0"),
    ("d", "3.1.0"),
    ("e", "3.1.5"),
    ("f", "3.2.0"),
    ("g", "3.2.2"),
    ("h", "3.3.0-rc.1"),
    ("i", "3.3.0"),
    ("j", "4.0.0-beta.2"),
    ("k", "4.0.0"),
];

fn catalogue() -> Registry {
    let mut r = Registry::new(key(0), 1, RegistryConfig::default(), T0);
    let mut list: Vec<_> = VERSIONS
        .iter()
        .map(|(s, v)| instance(s, &format!("couchdb@{v}")))
        .collect();
    list.push(instance("pg", "postgres@3.2.2"));
    r.set_local_instances(list, T0).unwrap();
    r
}

fn services(r: &Registry, range: &semver::VersionReq) -> String {
    r.lookup(&role("couchdb"), range)
        .iter()
        .map(|i| i.service.as_str().to_string())
        .collect()
}

#[test]
fn every_range_form_selects_what_the_semver_crate_says() {
    let r = catalogue();
    // range, expected services (prereleases only where a comparator names the same
    // major.minor.patch with a prerelease).
    let table: &[(&str, &str)] = &[
        ("*", "abcdefgik"),
        ("3.x", "cdefgi"),
        ("3", "cdefgi"),
        ("3.2.x", "fg"),
        ("3.1.*", "de"),
        ("^3.1", "defgi"),
        ("^3.1.6", "fgi"),
        ("^0.4", "a"),
        ("~3.2", "fg"),
        ("~3", "cdefgi"),
        (">=3, <4", "cdefgi"),
        (">3.1.5", "fgik"),
        ("<3", "ab"),
        ("=3.2.2", "g"),
        (">=3.3.0-rc.1", "hik"),
        ("<4.0.0-beta.3", "abcdefgij"),
        (">=5", ""),
    ];
    for (range, expected) in table {
        assert_eq!(&services(&r, &req(range)), expected, "range {range}");
    }
    // Roles never mix.
    assert_eq!(r.lookup(&role("postgres"), &req("3.x")).len(), 1);
    assert!(r.lookup(&role("mysql"), &req("*")).is_empty());
}

#[test]
fn dns_version_labels_select_major_or_minor_series() {
    let r = catalogue();
    let label = |s: &str| Some(VersionLabel::parse(s).unwrap());
    assert_eq!(services(&r, &label_to_req(None)), "abcdefgik");
    assert_eq!(services(&r, &label_to_req(label("v3"))), "cdefgi");
    assert_eq!(services(&r, &label_to_req(label("v3-1"))), "de");
    assert_eq!(services(&r, &label_to_req(label("v3-2"))), "fg");
    assert_eq!(services(&r, &label_to_req(label("v0"))), "a");
    assert_eq!(services(&r, &label_to_req(label("v4"))), "k");
    // One stable address per (role, label), distinct across labels.
    let prefix = NetworkPrefix::derive("test");
    let couch = role("couchdb");
    let any = role_address(&prefix, &couch, None);
    assert_eq!(any, role_address(&prefix, &couch, None));
    assert_ne!(any, role_address(&prefix, &couch, label("v3")));
    assert_ne!(
        role_address(&prefix, &couch, label("v3")),
        role_address(&prefix, &couch, label("v3-2"))
    );
}

/// A registry with `n` healthy api@1.0.0 instances `s0`…
fn pool(n: usize, config: RegistryConfig) -> Registry {
    let mut r = Registry::new(key(0), 1, config, T0);
    r.set_local_instances(
        (0..n)
            .map(|i| instance(&format!("s{i}"), "api@1.0.0"))
            .collect(),
        T0,
    )
    .unwrap();
    r
}

fn pick(
    r: &mut Registry,
    s: Strategy,
    client: Option<IpAddr>,
    exclude: &[InstanceKey],
) -> Option<String> {
    r.pick_with(s, &role("api"), &req("1"), client, exclude, T0)
        .map(|i| i.service.as_str().to_string())
}

#[test]
fn round_robin_is_exact() {
    let mut r = pool(4, RegistryConfig::default());
    let picks: Vec<String> = (0..400)
        .map(|_| pick(&mut r, Strategy::RoundRobin, None, &[]).unwrap())
        .collect();
    assert_eq!(&picks[..5], ["s0", "s1", "s2", "s3", "s0"]);
    let mut counts = BTreeMap::new();
    for p in &picks {
        *counts.entry(p.clone()).or_insert(0) += 1;
    }
    assert!(counts.values().all(|&c| c == 100), "{counts:?}");
}

fn key_of(r: &Registry, service: &str) -> InstanceKey {
    InstanceKey {
        origin: r.node_id(),
        service: ServiceName::parse(service).unwrap(),
    }
}

#[test]
fn least_outstanding_prefers_idle_instances() {
    let mut r = pool(4, RegistryConfig::default());
    for s in ["s0", "s1", "s3"] {
        let k = key_of(&r, s);
        r.connection_started(&k);
    }
    assert_eq!(
        pick(&mut r, Strategy::LeastOutstanding, None, &[]).unwrap(),
        "s2"
    );
    // Keep opening connections: the spread never exceeds one.
    for _ in 0..97 {
        let s = pick(&mut r, Strategy::LeastOutstanding, None, &[]).unwrap();
        let k = key_of(&r, &s);
        r.connection_started(&k);
        let loads: Vec<u32> = (0..4)
            .map(|i| r.outstanding(&key_of(&r, &format!("s{i}"))))
            .collect();
        assert!(
            loads.iter().max().unwrap() - loads.iter().min().unwrap() <= 1,
            "{loads:?}"
        );
    }
    // Ending connections on s1 makes it the choice.
    let s1 = key_of(&r, "s1");
    for _ in 0..3 {
        r.connection_ended(&s1);
    }
    assert_eq!(
        pick(&mut r, Strategy::LeastOutstanding, None, &[]).unwrap(),
        "s1"
    );
}

#[test]
fn power_of_two_choices_balances_within_bounds() {
    let mut r = pool(5, RegistryConfig::default());
    // Without load, the choice is uniform.
    let mut counts = BTreeMap::new();
    for _ in 0..10_000 {
        *counts
            .entry(pick(&mut r, Strategy::PowerOfTwo, None, &[]).unwrap())
            .or_insert(0) += 1;
    }
    assert_eq!(counts.len(), 5);
    assert!(
        counts.values().all(|&c| (1700..=2300).contains(&c)),
        "{counts:?}"
    );
    // With long-lived connections (each lives for 50 picks, 10 per instance on average), the
    // load stays close together: uniform random choice would spread it by about 2·√10 ≈ 6
    // on average, the power of two choices keeps it near 2.
    let mut open = std::collections::VecDeque::new();
    let (mut worst, mut total) = (0, 0);
    for _ in 0..5_000 {
        let s = pick(&mut r, Strategy::PowerOfTwo, None, &[]).unwrap();
        let k = key_of(&r, &s);
        r.connection_started(&k);
        open.push_back(k);
        if open.len() > 50 {
            let k = open.pop_front().unwrap();
            r.connection_ended(&k);
        }
        let loads: Vec<u32> = (0..5)
            .map(|i| r.outstanding(&key_of(&r, &format!("s{i}"))))
            .collect();
        let spread = loads.iter().max().unwrap() - loads.iter().min().unwrap();
        worst = worst.max(spread);
        total += spread;
    }
    let mean = f64::from(total) / 5000.0;
    assert!(mean <= 3.0, "mean load spread {mean}");
    assert!(worst <= 12, "load spread reached {worst}");
}

#[test]
fn sticky_is_stable_and_moves_only_the_removed_instances_clients() {
    let mut r = pool(4, RegistryConfig::default());
    let clients: Vec<IpAddr> = (0..1000u32)
        .map(|i| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)))
        .collect();
    let first: Vec<String> = clients
        .iter()
        .map(|c| pick(&mut r, Strategy::Sticky, Some(*c), &[]).unwrap())
        .collect();
    let again: Vec<String> = clients
        .iter()
        .map(|c| pick(&mut r, Strategy::Sticky, Some(*c), &[]).unwrap())
        .collect();
    assert_eq!(first, again, "a client changed instance without any change");
    let mut counts = BTreeMap::new();
    for s in &first {
        *counts.entry(s.clone()).or_insert(0) += 1;
    }
    assert!(
        counts.values().all(|&c| (180..=320).contains(&c)),
        "{counts:?}"
    );
    // s2 goes away.
    r.set_local_instances(
        ["s0", "s1", "s3"]
            .iter()
            .map(|s| instance(s, "api@1.0.0"))
            .collect(),
        T0,
    )
    .unwrap();
    let after: Vec<String> = clients
        .iter()
        .map(|c| pick(&mut r, Strategy::Sticky, Some(*c), &[]).unwrap())
        .collect();
    for (before, now) in first.iter().zip(&after) {
        if before == "s2" {
            assert_ne!(now, "s2");
        } else {
            assert_eq!(before, now, "a client of a remaining instance moved");
        }
    }
}

#[test]
fn failover_tries_every_healthy_instance_then_gives_up() {
    let mut r = pool(3, RegistryConfig::default());
    for strategy in [
        Strategy::RoundRobin,
        Strategy::LeastOutstanding,
        Strategy::PowerOfTwo,
        Strategy::Sticky,
    ] {
        let client = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let mut tried = Vec::new();
        while let Some(s) = pick(&mut r, strategy, client, &tried) {
            let k = key_of(&r, &s);
            assert!(!tried.contains(&k), "{strategy:?} picked {s} twice");
            tried.push(k);
        }
        assert_eq!(tried.len(), 3, "{strategy:?}");
    }
}

#[test]
fn failed_instances_are_avoided_for_a_while_but_remain_a_last_resort() {
    let config = RegistryConfig {
        suspect_for: Duration::from_secs(10),
        ..RegistryConfig::default()
    };
    let mut r = pool(3, config);
    // s0 and s1 refuse. Each connection fails over until it reaches s2, before the client
    // notices; a refusing instance is tried at most once, then avoided while suspect.
    let refusing = [key_of(&r, "s0"), key_of(&r, "s1")];
    let mut failures = 0;
    for n in 0..10 {
        let t = T0 + Duration::from_millis(n * 100);
        let mut tried = Vec::new();
        let chosen = loop {
            let i = r
                .pick_with(
                    Strategy::RoundRobin,
                    &role("api"),
                    &req("*"),
                    None,
                    &tried,
                    t,
                )
                .expect("a healthy instance is left");
            if refusing.contains(&i.key()) {
                r.report_failure(&i.key(), t);
                failures += 1;
                tried.push(i.key());
            } else {
                break i;
            }
        };
        assert_eq!(chosen.service.as_str(), "s2");
    }
    assert!(
        failures <= 2,
        "{failures} failed dials for 2 refusing instances"
    );
    let t = T0 + Duration::from_secs(5);
    // If s2 fails too, the suspects are still tried rather than refusing the client.
    let s2 = key_of(&r, "s2");
    r.report_failure(&s2, t);
    assert!(r
        .pick_with(
            Strategy::RoundRobin,
            &role("api"),
            &req("*"),
            None,
            std::slice::from_ref(&s2),
            t
        )
        .is_some());
    // After the suspicion ends, everyone is picked again.
    let later = T0 + Duration::from_secs(16);
    r.handle_timeout(later);
    let mut seen: Vec<String> = (0..6)
        .map(|_| {
            r.pick_with(
                Strategy::RoundRobin,
                &role("api"),
                &req("*"),
                None,
                &[],
                later,
            )
            .unwrap()
            .service
            .as_str()
            .to_string()
        })
        .collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen, ["s0", "s1", "s2"]);
}

#[test]
fn unhealthy_instances_are_never_picked() {
    let mut r = pool(3, RegistryConfig::default());
    let s1 = ServiceName::parse("s1").unwrap();
    r.handle_health_result(&s1, false, T0);
    // One failure is tolerated (unhealthy_after = 2)…
    assert_eq!(r.lookup(&role("api"), &req("*")).len(), 3);
    r.handle_health_result(&s1, false, T0);
    // …two are not.
    assert_eq!(r.lookup(&role("api"), &req("*")).len(), 2);
    for _ in 0..50 {
        assert_ne!(pick(&mut r, Strategy::PowerOfTwo, None, &[]).unwrap(), "s1");
    }
    r.handle_health_result(&s1, true, T0);
    assert_eq!(r.lookup(&role("api"), &req("*")).len(), 3);
    // Status views.
    let local = r.local_instances();
    assert_eq!(local.len(), 3);
    assert!(local.iter().all(|(_, healthy)| *healthy));
    let k = key_of(&r, "s1");
    assert_eq!(r.instance(&k).map(|i| i.service), Some(k.service.clone()));
    assert_eq!(r.instance(&key_of(&r, "nope")), None);
}

#[test]
fn role_addresses_resolve_and_map_back_to_their_range() {
    let mut r = catalogue();
    let prefix = NetworkPrefix::derive("test");
    let couch = role("couchdb");
    let label = |s: &str| Some(VersionLabel::parse(s).unwrap());
    // Labels with instances resolve; others are NXDOMAIN.
    for l in [
        None,
        label("v3"),
        label("v3-2"),
        label("v0"),
        label("v0-4"),
        label("v4"),
    ] {
        let address = r.resolve_role(&prefix, &couch, l).expect("resolves");
        assert_eq!(address, role_address(&prefix, &couch, l));
        let target = r.role_at(&prefix, address).expect("maps back");
        assert_eq!((target.role.clone(), target.label), (couch.clone(), l));
        assert_eq!(target.req(), label_to_req(l));
    }
    for l in [label("v5"), label("v3-9"), label("v1")] {
        assert_eq!(r.resolve_role(&prefix, &couch, l), None);
    }
    assert_eq!(r.resolve_role(&prefix, &role("mysql"), None), None);
    // v3-3 exists only through 3.3.0 (3.3.0-rc.1 gives no labelled address).
    assert!(r.resolve_role(&prefix, &couch, label("v3-3")).is_some());
    // The table lists each address once; when instances go, their addresses go.
    let all = r.role_addresses(&prefix);
    assert!(all.iter().any(|(_, t)| t.role == role("postgres")));
    r.set_local_instances(vec![instance("g", "couchdb@3.2.2")], T0)
        .unwrap();
    assert!(r.resolve_role(&prefix, &couch, label("v3-2")).is_some());
    assert_eq!(r.resolve_role(&prefix, &couch, label("v4")), None);
    assert_eq!(r.resolve_role(&prefix, &role("postgres"), None), None);
    assert_eq!(r.role_addresses(&prefix).len(), 3);
}
