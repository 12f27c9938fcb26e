//! Objects on k of N nodes (issue 20), on the simulator: a thousand nodes
//! running the production node core and replicas, each with a placement
//! keeper fed by its core's member list. Every failure names its seed;
//! `SIM_SEED=<seed>` replays it. `PLACE_OBJECTS` sets how many objects the
//! default tests place (see each test); the `#[ignore]`d ones run the full
//! 100,000.

use std::collections::BTreeMap;
use std::time::Instant;

use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use repred::GSet;
use repred_place::{KeeperConfig, RouteConfig};
use repred_sim::{NodeIx, ObjectId, Placer, Sim, SimConfig};

type S = Sim<GSet<u64>>;

fn seed(default: u64) -> u64 {
    std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

fn objects(default: u64) -> u64 {
    std::env::var("PLACE_OBJECTS").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// `n` nodes joining through three seeds, ten every 50 ms; run until
/// everyone sees everyone; then a keeper on each.
fn cluster(n: u32, config: SimConfig) -> (S, Placer) {
    let mut sim = Sim::new(config, GSet::<u64>::default);
    for i in 0..n {
        let seeds: Vec<NodeIx> = (0..3).filter(|&s| s < i).collect();
        sim.add_node(&seeds);
        if i % 10 == 9 {
            sim.run_for(50);
        }
    }
    let took = sim.run_until(180_000, 1_000, |s| s.membership_converged().is_ok());
    assert!(took.is_some(), "membership did not converge: {:?}", sim.membership_converged());
    let mut placer = Placer::new(KeeperConfig::default(), 250);
    placer.adopt(&sim);
    (sim, placer)
}

/// Creates `count` objects, each on its primary as node 0 sees it (where a
/// client would route it), each with one write: its own id.
fn populate(sim: &mut S, placer: &mut Placer, count: u64) {
    for object in 0..count {
        let primary = placer.replicas(0, object)[0];
        placer.create(sim, primary, object);
        placer.write(sim, primary, object, GSet::add(object)).unwrap();
    }
}

/// Runs until every object is held by exactly its k live replicas, all
/// converged; how long it took (virtual ms).
/// The first four nodes on `object`'s preference list (its k = 3
/// replicas and the next, which would stand in for one), as node 0 sees it.
fn first_four(placer: &Placer, object: ObjectId) -> Vec<NodeIx> {
    let keeper = placer.keeper(0).unwrap();
    keeper.place(&object, Some(4)).replicas.iter().filter_map(|id| placer.node_of(*id)).collect()
}

fn settle(sim: &mut S, placer: &mut Placer, limit: u64) -> u64 {
    let took = placer.run_until(sim, limit, 2_000, |p, s| p.check(s).is_settled());
    let report = placer.check(sim);
    took.unwrap_or_else(|| panic!("seed {}: not settled: {report:?}", sim.seed()))
}

/// Every value written to an object is in every replica of it.
fn assert_nothing_lost(sim: &S, written: &BTreeMap<ObjectId, Vec<u64>>) {
    let mut holders: BTreeMap<ObjectId, Vec<NodeIx>> = BTreeMap::new();
    for node in sim.up_nodes() {
        for object in sim.node(node).objects() {
            holders.entry(object).or_default().push(node);
        }
    }
    for (object, values) in written {
        let held = holders.get(object).map_or(&[][..], Vec::as_slice);
        assert_eq!(held.len(), 3, "seed {}: object {object} on {held:?}", sim.seed());
        for &node in held {
            let state = sim.node(node).replica(*object).unwrap().state();
            for v in values {
                assert!(
                    state.contains(v),
                    "seed {}: object {object} lost {v} on node {node}",
                    sim.seed()
                );
            }
        }
    }
}

/// Each node keeps O(k) data links: its ring neighbours, whatever N.
fn assert_few_links(sim: &S) {
    let most = sim.up_nodes().iter().map(|&n| sim.node(n).link_count()).max().unwrap_or(0);
    assert!(most <= 8, "seed {}: a node holds {most} data links", sim.seed());
}

fn initial_writes(count: u64) -> BTreeMap<ObjectId, Vec<u64>> {
    (0..count).map(|o| (o, vec![o])).collect()
}

/// A thousand nodes; objects created on their primaries reach exactly
/// their k = 3 replicas; then 10% of the nodes crash at once: every object
/// with a surviving replica regains k live replicas (the next live nodes on
/// its list stand in) with nothing lost; objects whose every replica
/// crashed come back when those nodes restart with their stores, and the
/// stand-ins hand back to the returning owners, leaving each object on
/// exactly its k owners again.
fn crash_ten_percent(count: u64) {
    let clock = Instant::now();
    let config = SimConfig::new(seed(20)).latency(1, 20);
    let (mut sim, mut placer) = cluster(1_000, config);
    let joined = clock.elapsed();
    populate(&mut sim, &mut placer, count);
    let placed = settle(&mut sim, &mut placer, 120_000);
    assert_few_links(&sim);
    let written = initial_writes(count);
    assert_nothing_lost(&sim, &written);
    let settled = clock.elapsed();

    let mut rng = Xoshiro256PlusPlus::seed_from_u64(sim.seed());
    let mut crashed: Vec<NodeIx> = Vec::new();
    while crashed.len() < 100 {
        let n = rng.random_range(3..1_000u32);
        if !crashed.contains(&n) {
            crashed.push(n);
        }
    }
    for &n in &crashed {
        placer.crash(&mut sim, n);
    }
    let crashed_at = clock.elapsed();
    // Every object with a surviving holder regains k live replicas.
    let restored = placer.run_until(&mut sim, 120_000, 1_000, |p, s| {
        let r = p.check(s);
        r.misplaced_count == 0 && r.diverged == 0
    });
    let report = placer.check(&sim);
    assert!(restored.is_some(), "seed {}: not restored: {report:?}", sim.seed());
    let lost_for_now = report.unavailable;
    assert!(
        lost_for_now <= count as usize / 200,
        "seed {}: {lost_for_now} objects had every replica crash",
        sim.seed()
    );
    let survivors: BTreeMap<ObjectId, Vec<u64>> = written
        .iter()
        .filter(|(o, _)| sim.up_nodes().iter().any(|&n| sim.node(n).replica(**o).is_some()))
        .map(|(o, v)| (*o, v.clone()))
        .collect();
    assert_nothing_lost(&sim, &survivors);
    let hints: usize =
        sim.up_nodes().iter().filter_map(|&n| placer.keeper(n)).map(|k| k.hints().count()).sum();
    assert!(hints > 0, "seed {}: no stand-in holds anything", sim.seed());

    // The crashed nodes come back with their stores: the stand-ins hand
    // back and every object is on exactly its owners.
    let restored_at = clock.elapsed();
    for &n in &crashed {
        placer.restart(&mut sim, n, true, &[0, 1, 2]);
    }
    let back = settle(&mut sim, &mut placer, 180_000);
    assert_nothing_lost(&sim, &written);
    let hints: usize =
        sim.up_nodes().iter().filter_map(|&n| placer.keeper(n)).map(|k| k.hints().count()).sum();
    assert_eq!(hints, 0, "seed {}: stand-ins still hold hints", sim.seed());
    assert_few_links(&sim);
    println!(
        "{count} objects: joined in {:.1?}, placed in {placed} ms (settled at {:.1?}, crash at {crashed_at:.1?}, restored at {restored_at:.1?}), restored in {} ms after the crash ({lost_for_now} unavailable), handed back in {back} ms; {:?}; real {:.1?}",
        joined,
        settled,
        restored.unwrap_or(0),
        placer.stats(),
        clock.elapsed()
    );
}

#[test]
fn objects_live_on_k_of_a_thousand_nodes_and_survive_ten_percent_crashing() {
    crash_ten_percent(objects(20_000));
}

#[test]
#[ignore = "the full size: 100,000 objects (several minutes); cargo test --release -p repred-sim --test placement -- --ignored"]
fn full_size_objects_live_on_k_of_a_thousand_nodes_and_survive_ten_percent_crashing() {
    crash_ten_percent(100_000);
}

/// Nodes join and leave (gracefully: a leaver hands everything off first)
/// while clients write through the replicas: no write is lost, and every
/// object ends on exactly its k replicas.
#[test]
fn joins_and_leaves_under_writes_lose_nothing() {
    let count = objects(20_000).min(5_000);
    let config = SimConfig::new(seed(21)).latency(1, 20);
    let (mut sim, mut placer) = cluster(1_000, config);
    populate(&mut sim, &mut placer, count);
    settle(&mut sim, &mut placer, 120_000);
    let mut written = initial_writes(count);
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(sim.seed());
    let mut value = 1_000_000u64;
    for round in 0..10 {
        if round % 2 == 0 {
            sim.add_node(&[0, 1, 2]);
            placer.adopt(&sim);
        } else {
            let up = sim.up_nodes();
            let node = up[rng.random_range(3..up.len())];
            placer.start_leave(&sim, node);
        }
        for _ in 0..6 {
            // Clients on random nodes write through the first replica
            // that holds the object, as their own member list has it.
            for _ in 0..20 {
                let up = sim.up_nodes();
                let client = up[rng.random_range(0..up.len())];
                let object = rng.random_range(0..count);
                let Some(&via) = placer
                    .replicas(client, object)
                    .iter()
                    .find(|&&r| sim.node(r).is_up() && sim.node(r).replica(object).is_some())
                else {
                    continue;
                };
                placer.write(&mut sim, via, object, GSet::add(value)).unwrap();
                written.entry(object).or_default().push(value);
                value += 1;
            }
            placer.run_for(&mut sim, 500);
        }
    }
    let took = settle(&mut sim, &mut placer, 120_000);
    assert_nothing_lost(&sim, &written);
    assert_few_links(&sim);
    println!("churn: settled {took} ms after the last change; {:?}", placer.stats());
}

/// A 50/50 partition: each side's replicas (stand-ins for the other side's)
/// take writes; once healed, every object is on exactly its k replicas
/// with every write.
#[test]
fn a_partition_heals_with_every_replica_set_converged() {
    let count = objects(20_000).min(5_000);
    let config = SimConfig::new(seed(22)).latency(1, 20);
    let (mut sim, mut placer) = cluster(1_000, config);
    populate(&mut sim, &mut placer, count);
    settle(&mut sim, &mut placer, 120_000);
    let mut written = initial_writes(count);
    sim.partition(|n| n % 2);
    placer.run_for(&mut sim, 15_000);
    let mut value = 1_000_000u64;
    for object in (0..count).step_by(7) {
        // A client on each side writes through the first replica on its
        // side that holds the object.
        for client in [0u32, 1] {
            let Some(&via) = placer
                .replicas(client, object)
                .iter()
                .find(|&&r| r % 2 == client && sim.node(r).replica(object).is_some())
            else {
                continue;
            };
            placer.write(&mut sim, via, object, GSet::add(value)).unwrap();
            written.entry(object).or_default().push(value);
            value += 1;
        }
    }
    placer.run_for(&mut sim, 10_000);
    sim.heal();
    let took = settle(&mut sim, &mut placer, 180_000);
    assert_nothing_lost(&sim, &written);
    println!("partition: healed and settled in {took} ms; {:?}", placer.stats());
}

/// A node that holds no replica opens an object and writes through the
/// first replica; that replica crashes in the middle of the writes. The
/// route moves to the next live replica, the writes the crashed one never
/// took reach it by the ordinary sync, every write is acknowledged, and
/// every acknowledged write ends on the object's k live replicas, whose
/// state the node's copy reads too.
#[test]
fn a_non_replica_writes_through_a_replica_and_fails_over_when_it_crashes() {
    let config = SimConfig::new(seed(23)).latency(1, 20);
    let (mut sim, mut placer) = cluster(30, config);
    populate(&mut sim, &mut placer, 10);
    settle(&mut sim, &mut placer, 60_000);
    let object = 0;
    let replicas = placer.replicas(0, object);
    // Not the node that would stand in for the crashed replica either (it
    // would become a replica, and its copy the replica's).
    let next = first_four(&placer, object);
    let client = sim.up_nodes().into_iter().find(|n| !next.contains(n)).unwrap();
    let first = placer.open(&mut sim, client, object).expect("a live replica");
    assert_eq!(first, replicas[0], "seed {}: the first replica on the list", sim.seed());

    let mut values: BTreeMap<repred::Stamp, u64> = BTreeMap::new();
    for v in 0..40u64 {
        if v == 20 {
            placer.crash(&mut sim, first);
        }
        let stamp = placer.write(&mut sim, client, object, GSet::add(1_000 + v)).unwrap();
        values.insert(stamp.expect("a new value changes the state"), 1_000 + v);
        placer.run_for(&mut sim, 100);
    }
    // Bounded: SWIM takes about 4 s to declare the crash, the route's ack
    // timeout 5 s; whichever comes first moves it.
    let took = placer.run_until(&mut sim, 60_000, 500, |p, s| {
        p.acknowledged(client, object).len() == values.len() && p.check(s).is_settled()
    });
    let role = placer.keeper(client).and_then(|k| k.role(&object));
    let route = placer.route(client, object).unwrap_or_else(|| {
        panic!("seed {}: client {client} no longer routes; its role {role:?}", sim.seed())
    });
    assert!(
        took.is_some(),
        "seed {}: {} of {} acknowledged ({} expired), via {:?}, {:?}",
        sim.seed(),
        placer.acknowledged(client, object).len(),
        values.len(),
        placer.expired(client, object).len(),
        placer.via(client, object),
        placer.check(&sim)
    );
    let via = placer.via(client, object).unwrap();
    assert_ne!(via, first, "seed {}: still through the crashed replica", sim.seed());
    assert!(route.stats().failovers >= 1);
    let now_replicas = placer.replicas(client, object);
    assert!(now_replicas.contains(&via));
    assert_eq!(now_replicas.len(), 3);
    let mine = sim.node(client).replica(object).unwrap().state().clone();
    for &r in &now_replicas {
        let state = sim.node(r).replica(object).unwrap().state();
        for stamp in placer.acknowledged(client, object) {
            assert!(
                state.contains(&values[stamp]),
                "seed {}: node {r} lacks {stamp:?}",
                sim.seed()
            );
        }
        assert_eq!(
            state,
            &mine,
            "seed {}: the client's copy reads what replica {r} has",
            sim.seed()
        );
    }
    println!(
        "write-through: settled {took:?} ms after the last write; via {first} then {via}; {:?}",
        route.stats()
    );
}

/// The node that opened an object is the next on its list: when the
/// replica it goes through crashes, it stands in for it, and its copy,
/// with every write it took, becomes that replica.
#[test]
fn a_non_replica_that_must_stand_in_makes_its_copy_the_replica() {
    let config = SimConfig::new(seed(24)).latency(1, 20);
    let (mut sim, mut placer) = cluster(30, config);
    populate(&mut sim, &mut placer, 10);
    settle(&mut sim, &mut placer, 60_000);
    let object = 0;
    let list = first_four(&placer, object);
    let client = list[3];
    let first = placer.open(&mut sim, client, object).expect("a live replica");
    assert_eq!(first, list[0]);
    let mut values = Vec::new();
    for v in 0..40u64 {
        if v == 20 {
            placer.crash(&mut sim, first);
        }
        placer.write(&mut sim, client, object, GSet::add(v)).unwrap();
        values.push(v);
        placer.run_for(&mut sim, 100);
    }
    let took = placer.run_until(&mut sim, 60_000, 500, |p, s| p.check(s).is_settled());
    assert!(took.is_some(), "seed {}: not settled: {:?}", sim.seed(), placer.check(&sim));
    assert!(placer.route(client, object).is_none(), "seed {}: still a copy", sim.seed());
    let role = placer.keeper(client).and_then(|k| k.role(&object));
    assert!(
        matches!(role, Some(repred_place::Role::StandIn { .. })),
        "seed {}: the client stands in: {role:?}",
        sim.seed()
    );
    let replicas = placer.replicas(client, object);
    assert!(replicas.contains(&client));
    for &r in &replicas {
        let state = sim.node(r).replica(object).unwrap().state();
        for v in &values {
            assert!(state.contains(v), "seed {}: node {r} lacks {v}", sim.seed());
        }
    }
}

/// A node that opens an object streams its copy with the replica its route
/// goes through and with no other, even when it is connected to every
/// replica (as the transport's placer does with `Node::set_peers`). When
/// that replica crashes, the route moves on once the copy's stream with it
/// ends with the connection (noticed here after 500 ms), before the
/// client's member list drops the replica and long before the
/// acknowledgement timeout (10 minutes here).
#[test]
fn a_copy_streams_with_the_replica_in_use_alone() {
    let config = SimConfig::new(seed(25)).latency(1, 20).conn_timeout(500);
    let (mut sim, placer) = cluster(30, config);
    let routes = RouteConfig::default().ack_timeout_ms(600_000).write_timeout_ms(1_200_000);
    let mut placer = placer.with_routes(routes);
    populate(&mut sim, &mut placer, 10);
    settle(&mut sim, &mut placer, 60_000);
    let object = 0;
    let list = first_four(&placer, object);
    let client = sim.up_nodes().into_iter().find(|n| !list.contains(n)).unwrap();
    let via = placer.open(&mut sim, client, object).expect("a live replica");
    let replicas = placer.replicas(client, object);
    // Connected to every replica: links of its own, beside whatever its
    // node core keeps.
    for &r in &replicas {
        sim.link(client, r);
    }
    sim.run_for(200);
    for &r in &replicas {
        assert!(sim.connected(client, r), "seed {}: not linked to {r}", sim.seed());
        assert_eq!(
            sim.is_streaming(client, object, r),
            r == via,
            "seed {}: the copy streams with {r}, the route goes through {via}",
            sim.seed()
        );
    }
    assert_eq!(sim.node(client).replica(object).unwrap().stream_count(), 1);
    for v in 0..10u64 {
        placer.write(&mut sim, client, object, GSet::add(2_000 + v)).unwrap();
        placer.run_for(&mut sim, 100);
    }
    let took =
        placer.run_until(&mut sim, 30_000, 100, |p, _| p.acknowledged(client, object).len() == 10);
    assert!(took.is_some(), "seed {}: not all acknowledged", sim.seed());
    assert_eq!(placer.via(client, object), Some(via), "seed {}: it stayed", sim.seed());
    assert_eq!(sim.node(client).replica(object).unwrap().stream_count(), 1);

    placer.crash(&mut sim, via);
    let moved = placer.run_until(&mut sim, 10_000, 50, |p, _| p.via(client, object) != Some(via));
    assert!(moved.is_some(), "seed {}: still through the crashed replica", sim.seed());
    assert!(
        placer.replicas(client, object).contains(&via),
        "seed {}: the member list dropped the crashed replica first",
        sim.seed()
    );
    let now = placer.via(client, object).expect("a live replica");
    // A link to it, if the cores keep no connection, is up a round trip
    // later.
    placer.run_for(&mut sim, 500);
    assert_eq!(placer.via(client, object), Some(now));
    for &r in &replicas {
        let streams = r == now;
        assert!(
            r == via || sim.is_streaming(client, object, r) == streams,
            "seed {}: after the failover the copy streams with {now} alone",
            sim.seed()
        );
    }
    println!("failover {moved:?} ms after the crash, through {now}");
}
