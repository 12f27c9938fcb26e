//! Objects on k of N nodes, on the simulator (issue 20's figures).
//!
//!     cargo run --release -p repred-sim --example placement -- [N ...]
//!
//! For each cluster size (default 100, 1,000 and 10,000): nodes join
//! through three seeds; then `PER_NODE` objects per node (default 100), each
//! holding one blob of `PAYLOAD` bytes (default 1,024), are created on their
//! primaries and placed on k = 3 replicas. Reported: objects and bytes per
//! node (mean and max/mean); one node joining, and one leaving gracefully
//! (it hands off first): objects copied and stream bytes sent, against the
//! floor (what the newcomer must take, or what the leaver held); one node
//! crashing: how long until every survivor marks it down, and how long
//! after that every object it held has k live, converged replicas again.
//! Where a join's and a leave's bytes go: the updates the replicas took in
//! that applied (new to them) and those they already had (duplicates, sent
//! by more than one old replica), each against the floor; the rest of the
//! bytes are session overhead (Hello with its clock, Sync, Close) and
//! packet headers. `SEED` changes the seed (default 42). Prints a markdown
//! table row per size.
//!
//! `PLACEMENT_ONLY=1` skips the simulation and prints, per size, only the
//! spread of `PER_NODE` objects per node placed by the pure function (for
//! sizes whose simulation does not fit in memory or time).
//!
//! On stderr, per size: how many distinct member lists the keepers hold
//! (keepers with equal lists share one) and the process's peak RSS.
//! `SHARE_LISTS=0` has every keeper keep its own list, as on the
//! transport, to measure what sharing saves.

use std::time::Instant;

use repred::GSet;
use repred_place::KeeperConfig;
use repred_sim::{NodeIx, ObjectId, Placer, Sim, SimConfig};

type Blobs = GSet<Vec<u8>>;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn blob(object: ObjectId, len: usize) -> Vec<u8> {
    let mut b = object.to_le_bytes().to_vec();
    b.resize(len.max(8), 0xAB);
    b
}

/// Bytes the replicas' streams sent, all nodes (the node cores' control
/// messages left out), packet overhead included.
fn stream_bytes(sim: &Sim<Blobs>) -> u64 {
    sim.node_ids()
        .map(|n| {
            let t = sim.node(n).traffic();
            t.stream_bytes - t.control_bytes
        })
        .sum()
}

/// Max/mean objects per node of `per_node * n` objects placed by the pure
/// function alone (no simulation: the figure at 100 objects per node
/// whatever `PER_NODE` is, for sizes whose simulation would not fit in
/// memory).
fn static_spread(n: u32, per_node: u64) -> f64 {
    let mut p = repred_place::Placement::default();
    let ids: Vec<repred::SourceId> = (0..n)
        .map(|i| {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&i.to_be_bytes());
            b[15] = 1;
            repred::SourceId::from_bytes(b).expect("valid")
        })
        .collect();
    let index: std::collections::HashMap<repred::SourceId, usize> =
        ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    for id in &ids {
        p.set(*id, true);
    }
    let mut load = vec![0u64; n as usize];
    for o in 0..per_node * u64::from(n) {
        for r in p.replicas(repred_place::ObjectKey::of(&o.to_be_bytes()), 3) {
            load[index[&r]] += 1;
        }
    }
    let max = *load.iter().max().unwrap_or(&0) as f64;
    let mean = load.iter().sum::<u64>() as f64 / f64::from(n);
    max / mean
}

/// Updates each live replica has taken in so far, by (node, object):
/// `(applied or merged as a snapshot, already had)`.
type Receipts = std::collections::HashMap<(NodeIx, ObjectId), (u64, u64)>;

fn receipts(sim: &Sim<Blobs>) -> Receipts {
    let mut sums = Receipts::new();
    for n in sim.up_nodes() {
        let node = sim.node(n);
        for o in node.objects() {
            if let Some(r) = node.replica(o) {
                let s = r.stats();
                sums.insert((n, o), (s.applied + s.unchanged + s.snapshots, s.old));
            }
        }
    }
    sums
}

/// What the replicas live at the end took in since `before` (a replica
/// dropped meanwhile is not counted: it only gave).
fn taken_since(sim: &Sim<Blobs>, before: &Receipts) -> (u64, u64) {
    let mut taken = (0, 0);
    for (pair, now) in receipts(sim) {
        let then = before.get(&pair).copied().unwrap_or((0, 0));
        taken.0 += now.0.saturating_sub(then.0);
        taken.1 += now.1.saturating_sub(then.1);
    }
    taken
}

/// The process's peak resident set (`VmHWM`), as Linux reports it.
fn peak_rss() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).map(|l| l[6..].trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string())
}

fn settled(placer: &Placer, sim: &Sim<Blobs>) -> bool {
    sim.up_nodes().iter().all(|&n| placer.keeper(n).is_none_or(|k| k.is_settled()))
}

/// Whether each of `objects` is on every one of its live replicas (as node
/// `judge` sees them), all with the same clock.
fn restored(placer: &Placer, sim: &Sim<Blobs>, judge: NodeIx, objects: &[ObjectId]) -> bool {
    objects.iter().all(|&o| {
        let replicas = placer.replicas(judge, o);
        let mut clocks =
            replicas.iter().map(|&r| sim.node(r).replica(o).map(|x| x.clock().clone()));
        let Some(Some(first)) = clocks.next() else { return false };
        replicas.len() == 3 && clocks.all(|c| c.as_ref() == Some(&first))
    })
}

/// Runs until the keepers are settled and no stream bytes moved for two
/// seconds; returns the virtual ms it took.
fn quiesce(placer: &mut Placer, sim: &mut Sim<Blobs>, limit: u64) -> u64 {
    let start = sim.now();
    let mut last = stream_bytes(sim);
    let mut quiet = 0;
    while sim.now() - start < limit {
        placer.run_for(sim, 500);
        let now = stream_bytes(sim);
        // Idle streams send nothing; a few bytes of membership repair do
        // not count (they are control bytes, not stream bytes).
        if now == last && settled(placer, sim) {
            quiet += 500;
            if quiet >= 2_000 {
                break;
            }
        } else {
            quiet = 0;
        }
        last = now;
    }
    sim.now() - start
}

fn main() {
    let sizes: Vec<u32> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let sizes = if sizes.is_empty() { vec![100, 1_000, 10_000] } else { sizes };
    let seed = env("SEED", 42);
    let per_node = env("PER_NODE", 100);
    let payload = env("PAYLOAD", 1024) as usize;
    if env("PLACEMENT_ONLY", 0) == 1 {
        println!("| N | objects per node (k = 3) | max/mean objects per node (placement alone) |");
        println!("|---:|---:|---:|");
        for n in sizes {
            println!("| {n} | {} | {:.2} |", 3 * per_node, static_spread(n, per_node));
        }
        return;
    }
    println!(
        "| N | objects (k = 3) | objects per node: mean (max/mean) | max/mean at 100 per node (placement alone) | KiB per node: mean (max/mean) | place all (s) | join: copies / floor | join: bytes / floor | join: updates taken new / again, per floor | leave: copies / floor | leave: bytes / floor | leave: updates taken new / again, per leaver's object | crash: all mark it down (s) | k live replicas again after that (s) | data links per node: mean (max) | real time (s) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for n in sizes {
        run(n, seed, per_node, payload);
    }
}

fn run(n: u32, seed: u64, per_node: u64, payload: usize) {
    let started = Instant::now();
    let config = SimConfig::new(seed).latency(1, 10);
    let mut sim = Sim::new(config, Blobs::default);
    for i in 0..n {
        let seeds: Vec<NodeIx> = (0..3).filter(|&s| s < i).collect();
        sim.add_node(&seeds);
        if i % 10 == 9 {
            sim.run_for(50);
        }
    }
    sim.run_until(600_000, 1_000, |s| s.membership_converged().is_ok())
        .expect("membership converges");
    let share = env("SHARE_LISTS", 1) == 1;
    let mut placer = Placer::new(KeeperConfig::default(), 250).share_member_lists(share);
    placer.adopt(&sim);
    let (lists, members) = placer.member_lists();
    eprintln!("N = {n}: keepers adopted, {lists} member lists, {members} members in all");

    // Place every object.
    let objects = per_node * u64::from(n);
    let t0 = sim.now();
    for object in 0..objects {
        let primary = placer.replicas(0, object)[0];
        placer.create(&mut sim, primary, object);
        placer.write(&mut sim, primary, object, GSet::add(blob(object, payload))).unwrap();
    }
    quiesce(&mut placer, &mut sim, 300_000);
    let place_s = (sim.now() - t0) as f64 / 1000.0;
    if n <= 1_000 {
        let report = placer.check(&sim);
        assert!(report.is_settled(), "N = {n}: not settled: {report:?}");
    }
    let held: Vec<f64> =
        sim.up_nodes().iter().map(|&i| sim.node(i).objects().count() as f64).collect();
    let mean = held.iter().sum::<f64>() / held.len() as f64;
    let max = held.iter().copied().fold(0.0, f64::max);
    let kib = mean * payload as f64 / 1024.0;

    // One node joins.
    let copies0 = placer.stats().copies;
    let bytes0 = stream_bytes(&sim);
    let taken0 = receipts(&sim);
    let newcomer = sim.add_node(&[0, 1, 2]);
    placer.adopt(&sim);
    sim.run_until(120_000, 500, |s| s.membership_converged().is_ok())
        .expect("the newcomer is seen");
    quiesce(&mut placer, &mut sim, 120_000);
    let floor = 3.0 * objects as f64 / f64::from(n + 1);
    let join_copies = (placer.stats().copies - copies0) as f64 / floor;
    let join_bytes = (stream_bytes(&sim) - bytes0) as f64 / (floor * payload as f64);
    let taken = taken_since(&sim, &taken0);
    let join_new = taken.0 as f64 / floor;
    let join_again = taken.1 as f64 / floor;
    let _ = newcomer;

    // One node leaves gracefully.
    let leaver: NodeIx = n / 2;
    let leaver_held = sim.node(leaver).objects().count() as f64;
    let copies0 = placer.stats().copies;
    let bytes0 = stream_bytes(&sim);
    let taken0 = receipts(&sim);
    placer.start_leave(&sim, leaver);
    placer.run_until(&mut sim, 120_000, 500, |p, _| !p.is_leaving(leaver));
    quiesce(&mut placer, &mut sim, 120_000);
    let leave_copies = (placer.stats().copies - copies0) as f64 / leaver_held;
    let leave_bytes = (stream_bytes(&sim) - bytes0) as f64 / (leaver_held * payload as f64);
    let taken = taken_since(&sim, &taken0);
    let leave_new = taken.0 as f64 / leaver_held;
    let leave_again = taken.1 as f64 / leaver_held;

    // One node crashes.
    let victim: NodeIx = n / 3;
    let victim_id = sim.node(victim).id();
    let affected: Vec<ObjectId> = sim.node(victim).objects().collect();
    let crash_at = sim.now();
    placer.crash(&mut sim, victim);
    let survivors = sim.up_nodes().len();
    let judge = sim.up_nodes()[0];
    let mut detected_at = None;
    let mut restored_at = None;
    while sim.now() - crash_at < 120_000 {
        placer.run_for(&mut sim, 100);
        if detected_at.is_none() {
            let seen = sim.detections().latencies.get(&victim_id).map_or(0, Vec::len);
            if seen >= survivors {
                detected_at = Some(sim.now());
            }
        }
        if detected_at.is_some() && restored(&placer, &sim, judge, &affected) {
            restored_at = Some(sim.now());
            break;
        }
    }
    let detect_s = detected_at.map_or(f64::NAN, |t| (t - crash_at) as f64 / 1000.0);
    let restore_s = match (detected_at, restored_at) {
        (Some(d), Some(r)) => (r - d) as f64 / 1000.0,
        _ => f64::NAN,
    };
    let links: Vec<usize> = sim.up_nodes().iter().map(|&i| sim.node(i).link_count()).collect();
    let links_mean = links.iter().sum::<usize>() as f64 / links.len() as f64;
    let links_max = links.iter().copied().max().unwrap_or(0);
    let (lists, members) = placer.member_lists();
    eprintln!(
        "N = {n}: at the end {lists} member lists, {members} members in all; peak RSS {}",
        peak_rss()
    );
    println!(
        "| {n} | {objects} | {mean:.0} ({:.2}) | {:.2} | {kib:.1} ({:.2}) | {place_s:.1} | {join_copies:.2} | {join_bytes:.2} | {join_new:.2} / {join_again:.2} | {leave_copies:.2} | {leave_bytes:.2} | {leave_new:.2} / {leave_again:.2} | {detect_s:.2} | {restore_s:.2} | {links_mean:.1} ({links_max}) | {:.0} |",
        max / mean,
        static_spread(n, 100),
        max / mean,
        started.elapsed().as_secs_f64()
    );
}
