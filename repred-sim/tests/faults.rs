//! Random faults on small simulated clusters (proptest over seeds and
//! schedules): whatever happens, once the network heals every node that is
//! up sees exactly the others that are up, and every replica converges with
//! each update applied once.

use proptest::prelude::*;
use repred::GSet;
use repred_sim::{NodeIx, Sim, SimConfig};

#[derive(Clone, Debug)]
enum Fault {
    Crash(u32),
    Restart { node: u32, keep_store: bool },
    Partition(u32),
    Heal,
    Write(u32),
    Run(u64),
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        (0..64u32).prop_map(Fault::Crash),
        (0..64u32, any::<bool>())
            .prop_map(|(node, keep_store)| Fault::Restart { node, keep_store }),
        any::<u32>().prop_map(Fault::Partition),
        Just(Fault::Heal),
        (0..64u32).prop_map(Fault::Write),
        (100..20_000u64).prop_map(Fault::Run),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn clusters_converge_after_any_faults(
        seed in any::<u64>(),
        n in 6u32..24,
        loss in 0.0f64..0.10,
        duplicate in 0.0f64..0.05,
        latency in 1u64..40,
        faults in proptest::collection::vec(fault(), 0..12),
    ) {
        let config = SimConfig::new(seed).loss(loss).duplicate(duplicate).latency(1, latency);
        let mut sim = Sim::new(config, GSet::<u64>::default);
        for i in 0..n {
            sim.add_node(&[0, 1]);
            sim.replicate(i, 0);
        }
        sim.run_for(5_000);
        let mut written = 0u64;
        for f in &faults {
            match *f {
                Fault::Crash(i) => {
                    // Keep a seed up, so that restarts have someone to join.
                    let node = i % n;
                    if node != 0 {
                        sim.crash(node);
                    }
                }
                Fault::Restart { node, keep_store } => {
                    let node = node % n;
                    if !sim.node(node).is_up() {
                        sim.restart(node, keep_store, &[0]);
                    }
                }
                Fault::Partition(mask) => sim.partition(|x: NodeIx| (mask >> (x % 32)) & 1),
                Fault::Heal => sim.heal(),
                Fault::Write(i) => {
                    let node = i % n;
                    if sim.node(node).is_up() {
                        sim.update(node, 0, GSet::add(written)).unwrap();
                        written += 1;
                    }
                }
                Fault::Run(ms) => sim.run_for(ms),
            }
        }
        sim.heal();
        let took = sim.run_until(600_000, 1_000, |s| {
            s.membership_converged().is_ok() && s.objects_converged(0).is_ok()
        });
        prop_assert!(
            took.is_some(),
            "seed {seed}: {:?} / {:?}",
            sim.membership_converged(),
            sim.objects_converged(0)
        );
        // Updates made on a node that then crashed without its store, before
        // any peer had them, are lost with it: count what survived.
        let held = sim.node(sim.up_nodes()[0]).replica(0).unwrap().state().len();
        for node in sim.up_nodes() {
            let replica = sim.node(node).replica(0).unwrap();
            let stats = replica.stats();
            prop_assert_eq!(replica.state().len(), held);
            if stats.snapshots == 0 {
                prop_assert!(
                    (stats.local + stats.applied) as usize <= held,
                    "seed {}: node {} counted an update twice: {:?}", seed, node, stats
                );
            }
        }
        prop_assert!(held as u64 <= written);
    }
}

/// Found by the property test above (seed 11287258634487721): after a
/// partition heals, the two nodes of the small side each learn that the
/// big side declared them down, both renew at once, and each waits for the
/// other to speak to its new identity. The node core asks members it knows
/// to take it in while its membership protocol is stopped, so they meet.
#[test]
fn nodes_that_renew_at_once_after_a_partition_find_each_other() {
    let config = SimConfig::new(11287258634487721).latency(1, 1);
    let mut sim = Sim::new(config, GSet::<u64>::default);
    for i in 0..6 {
        sim.add_node(&[0, 1]);
        sim.replicate(i, 0);
    }
    sim.run_for(5_000);
    sim.partition(|x: NodeIx| u32::from(x == 0 || x == 3));
    sim.run_for(10_001);
    sim.heal();
    let took = sim.run_until(60_000, 1_000, |s| s.membership_converged().is_ok());
    assert!(took.is_some(), "{:?}", sim.membership_converged());
}
