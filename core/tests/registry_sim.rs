//! Multi-node registry simulations: replication across hops, convergence after partitions,
//! lease expiry of crashed nodes, clean withdrawal, restarts, health, determinism.

mod registry_net;

use std::time::Duration;

use registry_net::{instance, req, role, Net};
use svcnet_core::registry::{RegistryConfig, RegistryEvent, RemovalReason, SwimScope};

/// Indices of the nodes whose couchdb instances node `i`'s lookup returns, sorted.
fn couch_holders(net: &Net, i: usize) -> Vec<usize> {
    let mut v: Vec<usize> = net.nodes[i]
        .lookup(&role("couchdb"), &req("*"))
        .iter()
        .map(|inst| net.ids.iter().position(|id| *id == inst.origin).unwrap())
        .collect();
    v.sort();
    v
}

/// Which nodes node `i` picks for 40 new connections to couchdb.
fn picked(net: &mut Net, i: usize) -> Vec<usize> {
    let now = net.now;
    let mut v: Vec<usize> = (0..40)
        .filter_map(|_| net.nodes[i].pick(&role("couchdb"), &req("*"), None, &[], now))
        .map(|inst| net.ids.iter().position(|id| *id == inst.origin).unwrap())
        .collect();
    v.sort();
    v.dedup();
    v
}

#[test]
fn instances_replicate_across_nodes_that_are_not_directly_connected() {
    let mut net = Net::new(4, RegistryConfig::default(), 1);
    net.chain(); // 0 - 1 - 2 - 3
    net.set_instances(0, vec![instance("couch", "couchdb@3.2.2")]);
    net.set_instances(3, vec![instance("couch", "couchdb@3.3.0")]);
    let took = net.run_until_true(Duration::from_secs(10), |n| {
        (0..4).all(|i| couch_holders(n, i) == vec![0, 3])
    });
    assert!(took.is_some(), "a chain of 4 did not replicate within 10 s");
    // Lookups at the far end are answered locally, ordered by origin id.
    let far = net.nodes[3].lookup(&role("couchdb"), &req("~3.2"));
    assert_eq!(far.len(), 1);
    assert_eq!(far[0].origin, net.ids[0]);
    assert_eq!(far[0].version, semver::Version::new(3, 2, 2));
    assert!(net.converged());
}

#[test]
fn convergence_after_a_partition_heals() {
    let mut net = Net::new(6, RegistryConfig::default(), 7);
    net.loss_per_mille = 50;
    net.full_mesh();
    for i in 0..6 {
        net.set_instances(i, vec![instance("db", &format!("db@1.{i}.0"))]);
    }
    assert!(
        net.run_until_true(Duration::from_secs(20), Net::converged)
            .is_some(),
        "no initial convergence"
    );
    net.partition(&[0, 1]);
    // Both sides change while apart.
    net.set_instances(0, vec![instance("db", "db@2.0.0")]);
    net.set_instances(
        4,
        vec![instance("db", "db@1.4.0"), instance("db2", "db@1.4.1")],
    );
    net.run_for(Duration::from_secs(20));
    assert!(!net.converged(), "the partition did not separate anything");
    // The minority has not seen node 4's second instance, the majority not node 0's 2.0.0.
    assert!(net.nodes[1].lookup(&role("db"), &req("=1.4.1")).is_empty());
    assert!(net.nodes[3].lookup(&role("db"), &req("2")).is_empty());
    net.heal();
    let took = net.run_until_true(Duration::from_secs(30), Net::converged);
    let took = took.expect("no convergence within 30 s of healing");
    assert!(
        took <= Duration::from_secs(15),
        "converged only after {took:?}"
    );
    // Same answers everywhere, including health (all healthy) and the new versions.
    let reference = net.nodes[0].lookup(&role("db"), &req("*"));
    assert_eq!(reference.len(), 7);
    // Membership may still be settling after the heal; wait for every node to see every
    // origin as alive, then compare lookups.
    let settled = net.run_until_true(Duration::from_secs(30), |n| {
        (0..6).all(|i| n.nodes[i].lookup(&role("db"), &req("*")) == reference)
    });
    assert!(settled.is_some(), "lookups differ after healing");
}

#[test]
fn a_crashed_nodes_instances_leave_lookups_and_expire_after_the_lease() {
    let config = RegistryConfig::default();
    let lease = config.lease;
    let mut net = Net::new(4, config, 3);
    net.full_mesh();
    for i in 0..4 {
        net.set_instances(i, vec![instance("couch", "couchdb@3.2.2")]);
    }
    net.run_for(Duration::from_secs(5));
    assert_eq!(couch_holders(&net, 0), vec![0, 1, 2, 3]);
    let crash_at = net.now;
    net.crash(2);
    // SWIM declares it down within seconds: picks avoid it long before the lease ends.
    let hidden = net
        .run_until_true(Duration::from_secs(20), |n| {
            [0, 1, 3].iter().all(|&i| n.nodes[i].is_down(&n.ids[2]))
        })
        .expect("crashed node not declared down");
    assert!(hidden < lease / 2, "declared down only after {hidden:?}");
    for i in [0, 1, 3] {
        assert_eq!(
            picked(&mut net, i),
            vec![0, 1, 3],
            "node {i} still picks the crashed node"
        );
    }
    // Its entry stays (it may be a partition) until the lease runs out, then expires.
    net.run_until(crash_at + lease + Duration::from_secs(2));
    for i in [0, 1, 3] {
        assert!(
            net.nodes[i]
                .instances()
                .iter()
                .all(|x| x.origin != net.ids[2]),
            "node {i} still holds the crashed node's instance"
        );
        assert!(net.removals(i, 2).contains(&RemovalReason::Expired));
    }
    // The others keep renewing: nothing else expired.
    for i in [0, 1, 3] {
        assert_eq!(couch_holders(&net, i), vec![0, 1, 3]);
    }
}

#[test]
fn clean_withdrawal_removes_instances_at_once() {
    let mut net = Net::new(3, RegistryConfig::default(), 5);
    net.full_mesh();
    for i in 0..3 {
        net.set_instances(i, vec![instance("couch", "couchdb@3.2.2")]);
    }
    net.run_for(Duration::from_secs(3));
    let before = net.now;
    net.withdraw(1);
    net.crash(1); // the process exits right after flushing
    net.run_for(Duration::from_millis(50)); // 5 ms latency: delivered on the first hop
    for i in [0, 2] {
        assert_eq!(couch_holders(&net, i), vec![0, 2], "node {i}");
        assert!(net.removals(i, 1).contains(&RemovalReason::Withdrawn));
    }
    assert!(net.now - before <= Duration::from_millis(50));
}

#[test]
fn a_restarted_node_supersedes_its_old_announcements() {
    let mut net = Net::new(3, RegistryConfig::default(), 9);
    net.full_mesh();
    net.set_instances(2, vec![instance("api", "api@1.0.0")]);
    net.run_for(Duration::from_secs(3));
    net.crash(2);
    net.run_for(Duration::from_secs(1));
    // Restarts with a newer incarnation and a new version of the service.
    net.restart(2, 2, 99);
    net.set_instances(2, vec![instance("api", "api@1.1.0")]);
    let ok = net.run_until_true(Duration::from_secs(10), |n| {
        (0..2).all(|i| {
            let found = n.nodes[i].lookup(&role("api"), &req("*"));
            found.len() == 1 && found[0].version == semver::Version::new(1, 1, 0)
        })
    });
    assert!(ok.is_some(), "restart not seen");
    assert_eq!(net.nodes[0].stamp_of(&net.ids[2]).unwrap().incarnation, 2);
}

#[test]
fn failed_health_checks_hide_an_instance_and_recovery_brings_it_back() {
    let config = RegistryConfig {
        health_check_interval: Duration::from_secs(1),
        ..RegistryConfig::default()
    };
    let mut net = Net::new(3, config, 11);
    net.full_mesh();
    net.set_instances(1, vec![instance("couch", "couchdb@3.2.2")]);
    net.set_instances(2, vec![instance("couch", "couchdb@3.2.3")]);
    net.run_for(Duration::from_secs(2));
    assert_eq!(couch_holders(&net, 0), vec![1, 2]);
    let couch = svcnet_core::addressing::ServiceName::parse("couch").unwrap();
    net.health.insert((2, couch.clone()), false);
    // Two failed checks (1 s apart) then a pushed announcement.
    let hidden = net
        .run_until_true(Duration::from_secs(10), |n| couch_holders(n, 0) == vec![1])
        .expect("unhealthy instance still returned");
    assert!(hidden <= Duration::from_secs(3), "took {hidden:?}");
    // Still listed, as unhealthy.
    let all = net.nodes[0].instances();
    assert!(all.iter().any(|i| i.origin == net.ids[2] && !i.healthy));
    net.health.insert((2, couch), true);
    net.run_until_true(Duration::from_secs(5), |n| {
        couch_holders(n, 0) == vec![1, 2]
    })
    .expect("recovered instance not returned");
}

#[test]
fn heartbeats_keep_instances_alive_far_beyond_one_lease() {
    let mut net = Net::new(3, RegistryConfig::default(), 13);
    net.loss_per_mille = 100;
    net.chain();
    net.set_instances(0, vec![instance("couch", "couchdb@3.2.2")]);
    for _ in 0..6 {
        net.run_for(Duration::from_secs(20));
        assert_eq!(couch_holders(&net, 2), vec![0], "lost at {:?}", net.now);
    }
    assert!(net.events.iter().all(|(_, _, e)| !matches!(
        e,
        RegistryEvent::InstanceRemoved {
            reason: RemovalReason::Expired,
            ..
        }
    )));
}

/// Links `n` nodes in a ring plus a chord from every fifth node across the ring (most pairs
/// are not directly connected), each node announcing one `web` instance.
fn ring_with_chords_serving_web(net: &mut Net, n: usize) {
    for i in 0..n {
        net.connect(i, (i + 1) % n);
    }
    for i in (0..n).step_by(5) {
        net.connect(i, (i + n / 2) % n);
    }
    for i in 0..n {
        net.set_instances(i, vec![instance("web", &format!("web@1.0.{i}"))]);
    }
}

fn sparse_topology(routed: bool, bound: Duration) {
    let n = 30;
    let config = RegistryConfig {
        // With routing every member is reachable: let SWIM cover them all.
        swim_scope: if routed {
            SwimScope::Everyone
        } else {
            SwimScope::Connected
        },
        ..RegistryConfig::default()
    };
    let mut net = Net::new(n, config, 17);
    net.loss_per_mille = 20;
    net.routed = routed;
    ring_with_chords_serving_web(&mut net, n);
    let took = net
        .run_until_true(Duration::from_secs(60), |net| {
            net.same_instances() && net.nodes[0].instances().len() == n
        })
        .expect("30 nodes did not converge within 60 s");
    assert!(took <= bound, "took {took:?}");
    let all = net.nodes[7].instances();
    assert_eq!(
        net.nodes[7].lookup(&role("web"), &req("1")).len(),
        n,
        "{all:?}"
    );
}

/// With routing (SWIM reaches every member), changes spread by eager push and gossip.
#[test]
fn thirty_nodes_in_a_sparse_routed_topology_converge() {
    sparse_topology(true, Duration::from_secs(5));
}

/// Without routing, only direct links carry anything: store-and-forward by eager push and
/// anti-entropy still reaches everyone.
#[test]
fn thirty_nodes_in_a_sparse_unrouted_topology_converge() {
    sparse_topology(false, Duration::from_secs(10));
}

#[test]
fn the_same_seed_gives_the_same_trace() {
    let run = |seed| {
        let mut net = Net::new(5, RegistryConfig::default(), seed);
        net.loss_per_mille = 100;
        net.full_mesh();
        for i in 0..5 {
            net.set_instances(i, vec![instance("db", "db@1.0.0")]);
        }
        net.run_for(Duration::from_secs(5));
        net.partition(&[0]);
        net.run_for(Duration::from_secs(10));
        net.heal();
        net.run_for(Duration::from_secs(10));
        (net.trace_hash(), net.delivered, net.dropped)
    };
    assert_eq!(run(21), run(21));
    assert_ne!(run(21).0, run(22).0);
}

/// A node that connects long after everything was announced (SWIM broadcasts long spent) gets
/// the full replica from the anti-entropy digest exchanged on connection.
#[test]
fn a_late_joiner_is_repaired_by_anti_entropy() {
    let mut net = Net::new(4, RegistryConfig::default(), 23);
    net.connect(0, 1);
    net.connect(1, 2);
    for i in 0..3 {
        net.set_instances(i, vec![instance("couch", "couchdb@3.2.2")]);
    }
    net.run_for(Duration::from_secs(60));
    assert!(net.nodes[3].instances().is_empty());
    net.connect(3, 2);
    let took = net
        .run_until_true(Duration::from_secs(5), |n| {
            couch_holders(n, 3) == vec![0, 1, 2]
        })
        .expect("late joiner not repaired");
    assert!(took <= Duration::from_millis(200), "took {took:?}");
}

/// The lease a forwarder had left is carried along: a chain of forwarders cannot keep a dead
/// node's instances alive for one lease per hop.
#[test]
fn forwarded_leases_do_not_stretch_along_a_chain() {
    let config = RegistryConfig::default();
    let lease = config.lease;
    let mut net = Net::new(5, config, 29);
    for i in 1..4 {
        net.connect(i - 1, i);
    }
    net.set_instances(0, vec![instance("couch", "couchdb@3.2.2")]);
    net.run_for(Duration::from_secs(2));
    assert_eq!(couch_holders(&net, 3), vec![0]);
    let crash_at = net.now;
    net.crash(0);
    // Node 4 joins two thirds into the lease and receives the announcement from node 3, with
    // a third of the lease left.
    net.run_until(crash_at + lease * 2 / 3);
    net.connect(3, 4);
    net.run_for(Duration::from_millis(100));
    assert!(net.nodes[4]
        .instances()
        .iter()
        .any(|i| i.origin == net.ids[0]));
    net.run_until(crash_at + lease + Duration::from_secs(3));
    for i in 1..5 {
        assert!(
            net.nodes[i].instances().is_empty(),
            "node {i} still holds it"
        );
    }
}

#[test]
fn events_report_health_checks_and_instance_changes() {
    let mut net = Net::new(2, RegistryConfig::default(), 31);
    net.full_mesh();
    let mut couch = instance("couch", "couchdb@3.2.2");
    couch.http_path = Some("/_up".into());
    net.set_instances(0, vec![couch]);
    net.run_for(Duration::from_secs(6));
    let checks = net
        .events
        .iter()
        .filter(|(_, i, e)| {
            *i == 0
                && matches!(e, RegistryEvent::HealthCheckDue { http_path: Some(p), .. } if p == "/_up")
        })
        .count();
    // At once, then every 5 s.
    assert_eq!(checks, 2);
    assert!(net.events.iter().any(|(_, i, e)| *i == 1
        && matches!(e, RegistryEvent::InstanceAdded(k) if k.origin == net.ids[0])));
    assert!(net
        .events
        .iter()
        .any(|(_, i, e)| *i == 1 && matches!(e, RegistryEvent::MemberUp(id) if *id == net.ids[0])));
}

/// A hundred nodes, each linked to two others (routed): everything converges at once and
/// heartbeats keep all of it alive past more than one lease, with 2 % loss.
#[test]
fn a_hundred_nodes_converge_and_stay_converged() {
    let n = 100;
    let config = RegistryConfig {
        swim_scope: SwimScope::Everyone,
        ..RegistryConfig::default()
    };
    let mut net = Net::new(n, config, 37);
    net.routed = true;
    net.loss_per_mille = 20;
    for i in 0..n {
        net.connect(i, (i + 1) % n);
        net.connect(i, (i * 7 + 3) % n);
    }
    for i in 0..n {
        net.set_instances(i, vec![instance("web", &format!("web@1.0.{i}"))]);
    }
    let full = |net: &Net| net.same_instances() && net.nodes[0].instances().len() == n;
    let took = net
        .run_until_true(Duration::from_secs(20), full)
        .expect("100 nodes did not converge");
    assert!(took <= Duration::from_secs(2), "took {took:?}");
    net.run_for(Duration::from_secs(40));
    assert!(full(&net));
    assert!(!net.events.iter().any(|(_, _, e)| matches!(
        e,
        RegistryEvent::InstanceRemoved { .. } | RegistryEvent::MemberDown(_)
    )));
}

/// Without routing, SWIM limited to connected peers (the default) never declares a live node
/// down and no lease lapses over four leases; SWIM over every member, whose probes to
/// unreachable nodes are dropped, churns — which is why `Connected` is the default.
#[test]
fn swim_scope_connected_avoids_false_downs_without_routing() {
    let run = |scope| {
        let n = 30;
        let config = RegistryConfig {
            swim_scope: scope,
            ..RegistryConfig::default()
        };
        let mut net = Net::new(n, config, 17);
        ring_with_chords_serving_web(&mut net, n);
        net.run_for(Duration::from_secs(120));
        let count =
            |f: fn(&RegistryEvent) -> bool| net.events.iter().filter(|(_, _, e)| f(e)).count();
        (
            count(|e| matches!(e, RegistryEvent::MemberDown(_))),
            count(|e| matches!(e, RegistryEvent::InstanceRemoved { .. })),
            net.same_instances() && net.nodes[0].instances().len() == n,
        )
    };
    assert_eq!(run(SwimScope::Connected), (0, 0, true));
    let (downs, _, _) = run(SwimScope::Everyone);
    assert!(
        downs > 100,
        "expected SWIM churn over unreachable members, got {downs} downs"
    );
}
