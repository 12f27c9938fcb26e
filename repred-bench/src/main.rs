//! Scenario benchmarks that print markdown tables: repred's paths, and
//! repred against chitchat 0.13 in the same run.
//!
//!     cargo run --release -p repred-bench -- <scenario>
//!
//! (The binary is `bench`: `target/release/bench <scenario>` under a
//! profiler.) Scenarios: `memory` (10M updates over 1,000 keys into one
//! replica: RSS and history size per million), `digest` (bytes of one
//! anti-entropy exchange between equal replicas at 10 to 100,000 sources),
//! `gossip` (repred against chitchat: a cluster converging on every node's
//! keys), `idle` (bytes per node per second after convergence), `join` (a
//! late joiner), `catchup` (a fresh node pulls 1M updates over loopback
//! QUIC, against raw quinn), `catchup2p` (the same with the source and the
//! fresh node in two processes, each pinned to its own core), `resync`
//! (equal replicas over QUIC), `fanout` (one writer, 16 subscribers over
//! QUIC), `swim` (membership on real sockets: repred-transport clusters
//! beside chitchat over UDP, idle bytes, failure detection, false
//! positives), `tombstones` (1M inserts and 1M
//! deletes on three replicas, then collection: tombstones and RSS),
//! `bigstate` (a state of 20M keys, over a gigabyte, to a fresh node over
//! loopback QUIC), `bigstore` (the same state saved to a repred-store
//! file and loaded back: time and peak RSS), `all` (every one of them). Each
//! scenario's environment variables are documented where it is.

mod bigstate;
mod bigstore;
mod catchup2p;
mod cluster;
mod gossip;
mod quic;
mod swim;
mod tombstones;

use std::process::ExitCode;
use std::time::Instant;

use repred::{Config, Envelope, LatticeMap, Max, Network, Replica, SourceId, Timestamp};

const NOW: u64 = 1_700_000_000_000;

/// key -> largest value: a map of max registers, from the stock lattices.
type Registers = LatticeMap<u64, Max<u64>>;

fn write(key: u64, value: u64) -> std::collections::BTreeMap<u64, Max<u64>> {
    Registers::update(key, Max::new(value))
}

/// Starts the peak resident set size (VmHWM) over from the current one,
/// so that a phase's peak is its own (`/proc/self/clear_refs`, Linux 4.0+).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// (current, peak) resident set size in KiB, from /proc.
fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn memory() {
    println!("### memory: 10,000,000 updates over 1,000 keys into one replica\n");
    println!("`cargo run --release -p repred-bench -- memory` (default history limit)\n");
    println!("| updates | RSS (MiB) | peak RSS (MiB) | history records | seconds |");
    println!("|---:|---:|---:|---:|---:|");
    let mut r = Replica::new(
        SourceId::new("writer").unwrap_or_else(|_| SourceId::random()),
        Registers::default(),
    );
    let start = Instant::now();
    let (_, base_peak) = rss_kib();
    let mut first_peak = 0;
    let mut last_peak = 0;
    for million in 1..=10u64 {
        for i in 0..1_000_000u64 {
            let n = (million - 1) * 1_000_000 + i + 1;
            let _ = r.update(NOW + n / 10_000, write(n % 1_000, n));
        }
        let (rss, peak) = rss_kib();
        if million == 1 {
            first_peak = peak;
        }
        last_peak = peak;
        println!(
            "| {million}M | {:.1} | {:.1} | {} | {:.2} |",
            rss as f64 / 1024.0,
            peak as f64 / 1024.0,
            r.history_len(),
            start.elapsed().as_secs_f64()
        );
    }
    println!(
        "\npeak growth from 1M to 10M updates: {:.1} MiB (process start: {:.1} MiB)\n",
        (last_peak - first_peak) as f64 / 1024.0,
        base_peak as f64 / 1024.0
    );
}

fn digest() {
    println!("### digest: one anti-entropy exchange between equal replicas\n");
    println!("`cargo run --release -p repred-bench -- digest`\n");
    println!(
        "chitchat: two nodes that know the same `sources` other nodes (one key each), one Syn / SynAck / Ack after a warm-up, protocol V1 (compressed digest); \"fits\" is whether it goes through a 65,507-byte datagram (`ChannelTransport::with_mtu`), the bytes are counted without that limit.\n"
    );
    println!(
        "| sources | repred frames | repred bytes both ways | repred bytes per source | chitchat bytes (3 messages) | chitchat bytes per source | chitchat fits a datagram |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---|");
    let all = [10usize, 100, 1_000, 10_000, 100_000];
    let (theirs, v0_limit, v1_limit) = gossip::chitchat_digest(&all);
    for (i, sources) in all.into_iter().enumerate() {
        let mut net = Network::new();
        let config = Config::default();
        let a =
            net.add(Replica::with_config(SourceId::random(), Registers::default(), config.clone()));
        let b = net.add(Replica::with_config(SourceId::random(), Registers::default(), config));
        for s in 0..sources {
            let source = SourceId::random();
            let e = Envelope::new(
                source,
                Timestamp::new(NOW, 1),
                write(s as u64 % 1_000, s as u64 + 1),
            );
            net[a].apply(NOW, e.clone());
            net[b].apply(NOW, e);
        }
        let link = net.link(a, b);
        net.pump();
        let [(_, sa), (_, sb)] = net.streams(link);
        let (x, y) = (
            net[a].stream_stats(sa).unwrap_or_default(),
            net[b].stream_stats(sb).unwrap_or_default(),
        );
        let bytes = x.bytes_sent + y.bytes_sent;
        let (cbytes, fits) = &theirs[i];
        println!(
            "| {sources} | {} | {bytes} | {:.3} | {cbytes} | {:.1} | {} |",
            x.frames_sent + y.frames_sent,
            bytes as f64 / sources as f64,
            *cbytes as f64 / sources as f64,
            fits
        );
    }
    println!(
        "\nchitchat's largest cluster whose exchange fits a datagram: {v0_limit} other nodes with protocol V0, {v1_limit} with V1.\n"
    );
}

fn main() -> ExitCode {
    let scenario = std::env::args().nth(1).unwrap_or_default();
    match scenario.as_str() {
        "memory" => memory(),
        "digest" => digest(),
        "gossip" => gossip::gossip(),
        "idle" => gossip::idle(),
        "join" => gossip::join(),
        "catchup" => quic::catchup(),
        "catchup2p" => return catchup2p::catchup2p(),
        catchup2p::SENDER_ROLE => return catchup2p::sender(),
        catchup2p::RECEIVER_ROLE => return catchup2p::receiver(),
        "resync" => quic::resync(),
        "fanout" => quic::fanout(),
        "swim" => swim::swim(),
        "tombstones" => tombstones::tombstones(),
        "bigstate" => bigstate::bigstate(),
        "bigstore" => bigstore::bigstore(),
        "all" => {
            digest();
            memory();
            gossip::gossip();
            gossip::idle();
            gossip::join();
            quic::catchup();
            if catchup2p::catchup2p() != ExitCode::SUCCESS {
                return ExitCode::FAILURE;
            }
            quic::resync();
            quic::fanout();
            swim::swim();
            tombstones::tombstones();
            bigstate::bigstate();
            bigstore::bigstore();
        }
        other => {
            eprintln!(
                "unknown scenario {other:?}; one of: memory, digest, gossip, idle, join, catchup, catchup2p, resync, fanout, swim, tombstones, bigstate, bigstore, all"
            );
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}
