//! A thousand nodes on the simulator: the production node core and
//! replicas, on virtual time (issue 15). Every failure names its seed;
//! `SIM_SEED=<seed>` replays it.

use repred::GSet;
use repred_sim::{NodeIx, Sim, SimConfig};

const OBJECT: u64 = 0;

fn seed(default: u64) -> u64 {
    std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// `n` nodes joining through three seeds, ten every 50 ms, each holding
/// the object; run until everyone sees everyone.
fn cluster(n: u32, config: SimConfig) -> Sim<GSet<u64>> {
    let mut sim = Sim::new(config, GSet::<u64>::default);
    for i in 0..n {
        let seeds: Vec<NodeIx> = (0..3).filter(|&s| s < i).collect();
        sim.add_node(&seeds);
        sim.replicate(i, OBJECT);
        if i % 10 == 9 {
            sim.run_for(50);
        }
    }
    let took = sim.run_until(180_000, 1_000, |s| s.membership_converged().is_ok());
    if took.is_none() {
        panic!("membership did not converge: {:?}", sim.membership_converged());
    }
    sim
}

/// Writes `count` distinct values from nodes spread over the cluster.
fn write(sim: &mut Sim<GSet<u64>>, first_value: u64, count: u64) {
    let up = sim.up_nodes();
    for i in 0..count {
        let node = up[(i as usize * 37) % up.len()];
        sim.update(node, OBJECT, GSet::add(first_value + i)).unwrap();
    }
}

/// Converged, and each node took each update in exactly once: what it
/// holds is what it wrote plus what it applied (nothing missing, nothing
/// counted twice).
fn assert_converged(sim: &mut Sim<GSet<u64>>, values: usize) {
    let took = sim.run_until(120_000, 1_000, |s| {
        s.membership_converged().is_ok() && s.objects_converged(OBJECT).is_ok()
    });
    assert!(
        took.is_some(),
        "not converged: {:?} / {:?}",
        sim.membership_converged(),
        sim.objects_converged(OBJECT)
    );
    for node in sim.up_nodes() {
        let replica = sim.node(node).replica(OBJECT).unwrap();
        let stats = replica.stats();
        assert_eq!(replica.state().len(), values, "seed {}: node {node}", sim.seed());
        if stats.snapshots == 0 {
            assert_eq!(
                (stats.local + stats.applied) as usize,
                values,
                "seed {}: node {node} applied {stats:?}",
                sim.seed()
            );
        }
    }
}

/// Each node holds O(log N) connections whatever the cluster's size.
fn assert_log_degree(sim: &Sim<GSet<u64>>) {
    let up = sim.up_nodes();
    let want = sim.config().node.active_view(up.len());
    let degrees: Vec<usize> = up.iter().map(|&n| sim.node(n).connection_count()).collect();
    let max = *degrees.iter().max().unwrap();
    let mean = degrees.iter().sum::<usize>() as f64 / degrees.len() as f64;
    assert!(max <= 2 * want + 4, "seed {}: a node holds {max} connections", sim.seed());
    assert!(mean <= 2.0 * want as f64, "seed {}: {mean} connections on average", sim.seed());
}

/// A thousand nodes join from three seeds over 5% datagram loss, converge
/// on membership and on a replicated object; 10% crash and every survivor
/// marks each of them down; some restart (with and without their store)
/// and rejoin; everything converges again, each update applied once per
/// node.
#[test]
fn a_thousand_nodes_survive_loss_crashes_and_restarts() {
    let config = SimConfig::new(seed(15)).loss(0.05).latency(1, 20);
    let mut sim = cluster(1_000, config);
    assert_log_degree(&sim);
    write(&mut sim, 0, 50);
    assert_converged(&mut sim, 50);

    let crashed: Vec<NodeIx> = (0..1_000).filter(|n| n % 10 == 7).collect();
    for &n in &crashed {
        sim.crash(n);
    }
    let took = sim.run_until(60_000, 500, |s| s.membership_converged().is_ok());
    assert!(took.is_some(), "crashes not detected: {:?}", sim.membership_converged());
    let survivors = sim.up_nodes().len();
    for &n in &crashed {
        let id = sim.node(n).id();
        let seen = sim.detections().latencies.get(&id).map_or(0, Vec::len);
        assert!(
            seen >= survivors,
            "seed {}: node {n} marked down by {seen} of {survivors}",
            sim.seed()
        );
    }
    assert_eq!(sim.detections().false_downs, 0, "seed {}", sim.seed());

    // Ten come back: half with their store, half without (fresh writers).
    for (i, &n) in crashed.iter().take(10).enumerate() {
        sim.restart(n, i % 2 == 0, &[0, 1, 2]);
    }
    write(&mut sim, 1_000, 20);
    assert_converged(&mut sim, 70);
    assert_log_degree(&sim);
}

/// A 50/50 partition of a thousand nodes: each side marks the other down
/// and takes writes; once healed, the halves find each other again (nodes
/// announce to members they believe down) and converge, each update
/// applied once per node.
#[test]
fn a_thousand_node_partition_heals() {
    let config = SimConfig::new(seed(16)).latency(1, 20);
    let mut sim = cluster(1_000, config);
    write(&mut sim, 0, 10);
    assert_converged(&mut sim, 10);
    sim.partition(|n| n % 2);
    for i in 0..20u64 {
        let node = (i * 13 % 1_000) as NodeIx;
        sim.update(node, OBJECT, GSet::add(100 + i)).unwrap();
    }
    sim.run_for(15_000);
    let a_view = sim.node(0).core().live().len();
    assert!(a_view <= 600, "seed {}: the partition was not noticed ({a_view} live)", sim.seed());
    sim.heal();
    assert_converged(&mut sim, 30);
}
