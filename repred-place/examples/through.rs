//! How long a write through a replica takes to be acknowledged, on eight
//! durable repred-transport nodes over QUIC on 127.0.0.1 (k = 3), against
//! a write on a replica (back to back, and after pauses that keep writes
//! out of step with the replica's tick); and how long writes wait when the
//! replica in use is killed. Run with
//!
//!     cargo run --release -p repred-place --example through -- [WRITES]
//!
//! (default 200 writes of each kind). It prints a markdown table.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use repred::{GSet, SourceId};
use repred_place::transport::{Placer, PlacerConfig};
use repred_place::{ObjectKey, Placement, RouteConfig};
use repred_transport::repred_node::{MemberState, NodeConfig};
use repred_transport::{Builder, Node};

type Set = GSet<u64>;
const NODES: usize = 8;

/// As the QUIC tests: probes every 300 ms, down after 1.5 s, a full mesh.
fn builder(dir: &Path, listen: SocketAddr, bootstrap: Option<SocketAddr>) -> Builder {
    let config = NodeConfig::default()
        .announce_every(Duration::from_secs(2))
        .announce_down_every(Duration::from_secs(1))
        .dial_backoff(Duration::from_millis(100))
        .max_dial_backoff(Duration::from_millis(1_500));
    Node::builder()
        .data_dir(dir)
        .durable(true)
        .node_config(config)
        .heartbeat(Duration::from_millis(300))
        .down_after(Duration::from_millis(1_500))
        .rotate_every(Duration::from_secs(3_600))
        .dial_timeout(Duration::from_millis(1_500))
        .fanout(NODES - 1)
        .listen(listen)
        .bootstrap(bootstrap)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn row(what: &str, mut took: Vec<Duration>) {
    took.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "| {what} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
        took.len(),
        ms(percentile(&took, 0.5)),
        ms(percentile(&took, 0.9)),
        ms(percentile(&took, 0.99)),
        ms(*took.last().unwrap_or(&Duration::ZERO)),
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let writes: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(200);
    let dir = tempfile::tempdir()?;
    let sockets: Vec<std::net::UdpSocket> =
        (0..NODES).map(|_| std::net::UdpSocket::bind("127.0.0.1:0")).collect::<Result<_, _>>()?;
    let addrs: Vec<SocketAddr> =
        sockets.iter().map(|s| s.local_addr()).collect::<Result<_, _>>()?;
    drop(sockets);
    let mut nodes = vec![builder(dir.path(), addrs[0], None).spawn().await?];
    for addr in &addrs[1..] {
        nodes.push(builder(dir.path(), *addr, Some(addrs[0])).spawn().await?);
    }
    let ids: Vec<SourceId> = nodes.iter().map(Node::id).collect();
    let config = PlacerConfig::default().route(RouteConfig::default().ack_timeout_ms(3_000));
    let mut placers: Vec<Option<Placer<Set>>> = nodes
        .into_iter()
        .map(|n| Placer::spawn(n, config.clone()).map(Some))
        .collect::<Result<_, _>>()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while placers.iter().flatten().any(|p| {
        p.node().membership().iter().filter(|m| m.state != MemberState::Down).count() < NODES
    }) {
        assert!(Instant::now() < deadline, "membership did not converge in 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let doc = "doc";
    let mut placement = Placement::default();
    for id in &ids {
        placement.set(*id, true);
    }
    let list = placement.place(ObjectKey::of(doc.as_bytes()), 4).replicas;
    let at = |id: SourceId| ids.iter().position(|i| *i == id).expect("a member");
    let on: BTreeSet<usize> = list.iter().map(|id| at(*id)).collect();
    let primary = at(list[0]);
    let client = (0..NODES).find(|i| !on.contains(i)).expect("8 nodes, 4 on the list");
    placers[primary].as_ref().unwrap().create(doc)?;
    let handle = placers[client].as_ref().unwrap().open(doc)?;
    // Warm up: the first write waits for the copy's stream and the
    // replicas to take the object.
    handle.update(GSet::add(u64::MAX)).await?;

    let mut direct = Vec::new();
    let mut through = Vec::new();
    for i in 0..writes {
        let start = Instant::now();
        placers[primary].as_ref().unwrap().update(doc, GSet::add(i)).await?;
        direct.push(start.elapsed());
        let start = Instant::now();
        handle.update(GSet::add(1_000_000 + i)).await?;
        through.push(start.elapsed());
    }

    // The same with a pause of 0 to 99 ms before each write, so that
    // writes do not fall in step with the replica's tick.
    let mut paused = Vec::new();
    for i in 0..writes {
        tokio::time::sleep(Duration::from_millis(i * 37 % 100)).await;
        let start = Instant::now();
        handle.update(GSet::add(3_000_000 + i)).await?;
        paused.push(start.elapsed());
    }

    // Kill the replica in use; the next writes wait for the failover.
    let victim = at(handle.via().expect("attached"));
    let killed = Instant::now();
    drop(placers[victim].take());
    let mut after = Vec::new();
    for i in 0..writes.min(20) {
        let start = Instant::now();
        handle.update(GSet::add(2_000_000 + i)).await?;
        after.push(start.elapsed());
    }
    let first_after = after[0];
    let via = handle.via();

    println!("| writes | count | median (ms) | p90 (ms) | p99 (ms) | max (ms) |");
    println!("|---|---:|---:|---:|---:|---:|");
    row("on a replica (acknowledged on its disk)", direct);
    row("through a replica (acknowledged by its listed clock), back to back", through);
    row("through a replica, each after a pause of 0-99 ms", paused);
    row("through a replica, after the one in use was killed", after);
    println!();
    println!(
        "killed {:?}; the first write after it acknowledged in {:.2} s (through {:?}); {:.2} s from the kill to the last",
        ids[victim],
        first_after.as_secs_f64(),
        via,
        killed.elapsed().as_secs_f64()
    );
    for p in placers.into_iter().flatten() {
        p.shutdown().await;
    }
    Ok(())
}
