//! `Config::lazy_relay`: on a graph with cycles, each replica pulls each
//! source's updates from one peer, so a payload crosses a link only where it
//! is needed, where eager relaying floods every link.

mod common;

use common::id;
use repred::{Config, Network, NodeId, Replica};
use repred_suite::Model;

/// A ring of `n` with chords: every node has several paths to every other.
fn ring_with_chords(n: usize, lazy: bool) -> (Network<Model>, Vec<NodeId>, Vec<repred::LinkId>) {
    let mut net = Network::new();
    let nodes: Vec<NodeId> = (0..n)
        .map(|i| {
            let config = Config::default().lazy_relay(lazy);
            net.add(Replica::with_config(id(&format!("n{i}")), Model::default(), config))
        })
        .collect();
    let mut links = Vec::new();
    for i in 0..n {
        links.push(net.link(nodes[i], nodes[(i + 1) % n]));
        links.push(net.link(nodes[i], nodes[(i + 3) % n]));
    }
    net.pump();
    (net, nodes, links)
}

fn updates_sent(net: &Network<Model>, links: &[repred::LinkId]) -> u64 {
    links
        .iter()
        .flat_map(|&l| net.streams(l))
        .map(|(node, stream)| net[node].stream_stats(stream).map_or(0, |s| s.updates_sent))
        .sum()
}

#[test]
fn each_update_crosses_once_per_receiver_when_lazy() {
    let n = 10;
    for lazy in [false, true] {
        let (mut net, nodes, links) = ring_with_chords(n, lazy);
        for (i, &node) in nodes.iter().enumerate() {
            let value = "x".repeat(200);
            net.update(node, Model::set(&format!("k{i}"), &value)).unwrap();
        }
        net.pump();
        for &node in &nodes {
            assert_eq!(net[node].state(), net[nodes[0]].state());
            assert_eq!(net[node].clock(), net[nodes[0]].clock());
        }
        let sent = updates_sent(&net, &links);
        let needed = (n * (n - 1)) as u64;
        if lazy {
            assert_eq!(sent, needed, "one delivery per (update, other replica)");
        } else {
            assert!(sent > needed + needed / 2, "eager relaying floods: {sent} for {needed}");
        }
    }
}

#[test]
fn a_lazy_cluster_keeps_converging_after_a_parent_link_is_cut() {
    let (mut net, nodes, links) = ring_with_chords(8, true);
    net.update(nodes[0], Model::set("a", "1")).unwrap();
    net.pump();
    // Cut every link of node 4 but one, then write again at the origin.
    let of_4: Vec<_> = links
        .iter()
        .copied()
        .filter(|&l| net.streams(l).iter().any(|(n, _)| *n == nodes[4]))
        .collect();
    for &l in &of_4[1..] {
        net.cut(l);
    }
    net.update(nodes[0], Model::set("a", "2")).unwrap();
    net.pump();
    for &node in &nodes {
        assert_eq!(net[node].state().get("a"), Some("2"));
    }
}
