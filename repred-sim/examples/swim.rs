//! Membership and spread at scale, on the simulator (issue 15's figures).
//!
//!     cargo run --release -p repred-sim --example swim -- [N ...]
//!
//! For each cluster size (default 32, 1,000 and 10,000): nodes join through
//! three seeds; then a minute idle (bytes each node sends per second); one
//! update of `PAYLOAD` bytes (default 1,024) spread from one node (time,
//! hops, copies of the payload each node received, all bytes against the
//! payload floor); 1% of the nodes crash at once (how long until each live node
//! marks each of them down); and `LOSS_MINUTES` simulated minutes (default
//! 10) at 5% datagram loss, counting live members marked down. Prints a
//! markdown table row per size. `SEED` changes the seed (default 42).

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;
use std::time::Instant;

use repred::GSet;
use repred_sim::{NodeIx, Sim, SimConfig, Traffic};

type Blobs = GSet<Vec<u8>>;

/// Per node, when it got the update and over how many hops.
type Arrivals = Rc<RefCell<Vec<Option<(u32, u64)>>>>;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn totals(sim: &Sim<Blobs>) -> Vec<Traffic> {
    sim.node_ids().map(|n| sim.node(n).traffic()).collect()
}

fn main() {
    let sizes: Vec<u32> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let sizes = if sizes.is_empty() { vec![32, 1_000, 10_000] } else { sizes };
    let seed = env("SEED", 42);
    let loss_minutes = env("LOSS_MINUTES", 10);
    println!(
        "| N | join (s) | idle B/s per node: mean (max) | of which membership | keep-alives (model) | spread: all have it (ms) | hops max (mean) | payload copies per node | bytes / floor | detection p50 / p99 (s) | false downs at 5% loss in {loss_minutes} min | real time (s) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for n in sizes {
        run(n, seed, loss_minutes);
    }
}

fn run(n: u32, seed: u64, loss_minutes: u64) {
    let started = Instant::now();
    let mut node = repred_node::NodeConfig::default();
    if let Some(ms) = std::env::var("PROBE_MS").ok().and_then(|v| v.parse().ok()) {
        node = node
            .probe_period(std::time::Duration::from_millis(ms))
            .probe_rtt(std::time::Duration::from_millis(ms * 2 / 5));
    }
    if let Some(ms) = std::env::var("SUSPECT_MS").ok().and_then(|v| v.parse().ok()) {
        node = node.suspect_timeout(std::time::Duration::from_millis(ms));
    }
    let config = SimConfig::new(seed).latency(1, 10).node(node);
    let keepalive_bytes = 2 * config.packet_overhead + 2 * 3;
    let mut sim = Sim::new(config, Blobs::default);
    for i in 0..n {
        let seeds: Vec<NodeIx> = (0..3).filter(|&s| s < i).collect();
        sim.add_node(&seeds);
        sim.replicate(i, 0);
        if i % 10 == 9 {
            sim.run_for(50);
        }
    }
    let join_start = sim.now() - u64::from(n / 10) * 50;
    let joined = sim.run_until(600_000, 1_000, |s| s.membership_converged().is_ok());
    let join_s = match joined {
        Some(_) => (sim.now() - join_start) as f64 / 1000.0,
        None => f64::NAN,
    };
    sim.run_for(30_000);

    // Idle: what each node sends per second with nothing to say.
    let before = totals(&sim);
    let idle_ms = 60_000;
    sim.run_for(idle_ms);
    let after = totals(&sim);
    let per_node: Vec<f64> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| (a.sent() - b.sent()) as f64 * 1000.0 / idle_ms as f64)
        .collect();
    let membership: f64 = before
        .iter()
        .zip(&after)
        .map(|(b, a)| {
            (a.datagram_bytes - b.datagram_bytes + a.control_bytes - b.control_bytes) as f64
        })
        .sum::<f64>()
        * 1000.0
        / idle_ms as f64
        / f64::from(n);
    let mean = per_node.iter().sum::<f64>() / per_node.len() as f64;
    let max = per_node.iter().copied().fold(0.0, f64::max);
    // QUIC keep-alives on each connection (not simulated): a PING and its
    // ACK per keep-alive interval, from each end (the transport keeps
    // connections alive every 15 s: SWIM, not the connections, detects
    // failures, and the core closes connections to members declared down).
    let degree =
        sim.node_ids().map(|i| sim.node(i).connection_count()).sum::<usize>() as f64 / f64::from(n);
    let keepalive = degree * keepalive_bytes as f64 / 15.0;

    // One 1 KiB update from node 0: when and over how many hops each node
    // gets it, and the bytes it costs everyone.
    let hops: Arrivals = Rc::new(RefCell::new(vec![None; n as usize]));
    let payload_len = env("PAYLOAD", 1024) as usize;
    let payload = vec![7u8; payload_len];
    let old_before: u64 =
        sim.node_ids().filter_map(|i| sim.node(i).replica(0)).map(|r| r.stats().old).sum();
    {
        let hops = hops.clone();
        let payload = payload.clone();
        sim.observe_with(Box::new(move |now, node, peer, _object, replica| {
            let mut hops = hops.borrow_mut();
            if hops[node as usize].is_none() && replica.state().contains(&payload) {
                let from = hops[peer as usize].map_or(0, |(h, _)| h);
                hops[node as usize] = Some((from + 1, now));
            }
        }));
    }
    let before = totals(&sim);
    let t0 = sim.now();
    hops.borrow_mut()[0] = Some((0, t0));
    sim.update(0, 0, GSet::add(payload.clone())).unwrap();
    let _ = sim.run_until(60_000, 10, |s| {
        s.up_nodes()
            .iter()
            .all(|&i| s.node(i).replica(0).is_some_and(|r| r.state().contains(&payload)))
    });
    sim.run_for(2_000);
    let after = totals(&sim);
    sim.observe_with(Box::new(|_, _, _, _, _| {}));
    let arrivals: Vec<(u32, u64)> = hops.borrow().iter().flatten().copied().collect();
    let all_have = arrivals.iter().map(|(_, t)| t - t0).max().unwrap_or(0);
    let max_hops = arrivals.iter().map(|(h, _)| *h).max().unwrap_or(0);
    let mean_hops =
        arrivals.iter().map(|(h, _)| f64::from(*h)).sum::<f64>() / arrivals.len().max(1) as f64;
    let object_bytes: u64 = before
        .iter()
        .zip(&after)
        .map(|(b, a)| (a.stream_bytes - a.control_bytes) - (b.stream_bytes - b.control_bytes))
        .sum();
    // The floor: every other node receives the update once, in a frame of
    // its own, with the packet overhead (1 KiB and ~40 bytes of stamp).
    let frame = payload_len as u64
        + 48
        + sim.config().packet_overhead * (payload_len as u64 + 48).div_ceil(1_200);
    let floor = frame * u64::from(n - 1);
    let old_after: u64 =
        sim.node_ids().filter_map(|i| sim.node(i).replica(0)).map(|r| r.stats().old).sum();
    // Copies of the payload each node received: one, plus duplicates.
    let copies = 1.0 + (old_after - old_before) as f64 / f64::from(n - 1);

    // Crashes: 1% of the nodes (at least one) at once.
    let crash: BTreeSet<NodeIx> =
        (0..n).filter(|i| i % 100 == 37 % n.min(100)).take((n as usize / 100).max(1)).collect();
    let false_before = sim.detections().false_downs;
    for &c in &crash {
        sim.crash(c);
    }
    let _ = sim.run_until(120_000, 500, |s| s.membership_converged().is_ok());
    let mut latencies: Vec<u64> = sim.detections().latencies.values().flatten().copied().collect();
    latencies.sort_unstable();
    let survivors = sim.up_nodes().len();
    let complete = latencies.len() >= survivors * crash.len();

    // Loss: live members marked down over some minutes at 5% loss.
    sim.set_loss(0.05);
    let false_mid = sim.detections().false_downs;
    sim.run_for(loss_minutes * 60_000);
    let false_downs = sim.detections().false_downs - false_mid;
    let _ = false_before;

    println!(
        "| {n} | {join_s:.1} | {mean:.0} ({max:.0}) | {membership:.0} | {keepalive:.0} | {all_have} | {max_hops} ({mean_hops:.1}) | {copies:.2} | {:.2} | {:.1} / {:.1}{} | {false_downs} | {:.0} |",
        object_bytes as f64 / floor as f64,
        percentile(&latencies, 0.5) as f64 / 1000.0,
        percentile(&latencies, 0.99) as f64 / 1000.0,
        if complete { "" } else { " (incomplete)" },
        started.elapsed().as_secs_f64()
    );
}
