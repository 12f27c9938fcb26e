//! `Config::lazy_relay`: on a graph with cycles, each replica pulls each
//! source's updates from one peer, so a payload crosses a link only where it
//! is needed, where eager relaying floods every link.

mod common;

use common::id;
use repred::{Config, Envelope, Event, Network, NodeId, Replica, Stamp, StreamOpts, Timestamp};
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

fn lazy(name: &str) -> Replica<Model> {
    Replica::with_config(id(name), Model::default(), Config::default().lazy_relay(true))
}

/// A frame as the wire carries it: length, kind, body.
fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = ((body.len() + 1) as u32).to_le_bytes().to_vec();
    out.push(kind);
    out.extend_from_slice(body);
    out
}

/// The kinds of the frames in `bytes`.
fn kinds(bytes: &[u8]) -> Vec<u8> {
    let mut kinds = Vec::new();
    let mut at = 0;
    while at + 5 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        kinds.push(bytes[at + 4]);
        at += 4 + len;
    }
    kinds
}

/// A stream on `r` from a peer calling itself `name`, its Hello handled.
fn raw_peer(r: &mut Replica<Model>, name: &str) -> repred::StreamId {
    let mut peer: Replica<Model> = Replica::new(id(name), Model::default());
    let p = peer.open(StreamOpts::default()).unwrap();
    let mut hello = Vec::new();
    peer.poll_transmit(p, &mut hello).unwrap();
    let s = r.open(StreamOpts::default()).unwrap();
    r.handle(s, Network::<Model>::EPOCH, &hello).unwrap();
    s
}

/// A relayed source reaches a replica that syncs once (no tail) with a lazy
/// peer: the peer announces it, so the stream must stay open for the pull.
#[test]
fn a_one_shot_sync_with_a_lazy_peer_gets_relayed_sources() {
    let mut net = Network::new();
    let w = net.add(lazy("w"));
    let l = net.add(lazy("l"));
    net.link(w, l);
    net.update(w, Model::set("w", "1")).unwrap();
    net.pump();
    for joiner in [lazy("j"), Replica::new(id("k"), Model::default())] {
        let j = net.add(joiner);
        net.link_with(j, StreamOpts::default().tail(false), l, StreamOpts::default());
        net.pump();
        assert!(net.errors().is_empty(), "{:?}", net.errors());
        assert_eq!(net[j].state().get("w"), Some("1"));
        assert_eq!(net[j].stream_count(), 0, "the one-shot stream closed");
    }
}

/// `Synced` says the peer's history arrived, also when it was announced and
/// pulled rather than pushed.
#[test]
fn synced_with_a_lazy_peer_means_its_history_arrived() {
    let mut net = Network::new();
    let w = net.add(lazy("w"));
    let l = net.add(lazy("l"));
    net.link(w, l);
    for i in 0..5 {
        net.update(w, Model::set(&format!("w{i}"), "1")).unwrap();
    }
    net.pump();
    let j = net.add(lazy("j"));
    net.link(j, l);
    let mut synced = false;
    while net.step() > 0 {
        while let Some(event) = net[j].poll_event() {
            if matches!(event, Event::Synced { .. }) {
                assert_eq!(net[j].state(), net[l].state(), "synced before the history came");
                synced = true;
            }
        }
    }
    assert!(synced);
}

/// A replica does not pick as a parent a peer that said it sends nothing:
/// that peer would never serve the Want, and the source would stall.
#[test]
fn a_parent_is_never_a_peer_that_does_not_send() {
    let mut net = Network::new();
    let [w, p, x, b] = ["w", "p", "x", "b"].map(|n| net.add(lazy(n)));
    net.link(w, p);
    let px = net.link(p, x);
    let wb = net.link(w, b);
    net.update(w, Model::set("a", "1")).unwrap();
    net.pump();
    assert_eq!(net[x].state().get("a"), Some("1"));
    // b (a backup, say) gets a=2 and shows x its clock, but sends nothing.
    net.update(w, Model::set("a", "2")).unwrap();
    net.flush(wb, 0);
    net.deliver(wb, 0, usize::MAX);
    assert_eq!(net[b].state().get("a"), Some("2"));
    let xb = net.link_with(x, StreamOpts::default(), b, StreamOpts::receive_only());
    net.flush(xb, 1);
    net.deliver(xb, 1, usize::MAX);
    net.cut(px);
    net.link(p, x);
    net.pump();
    assert!(net.errors().is_empty(), "{:?}", net.errors());
    assert_eq!(net[x].state().get("a"), Some("2"));
}

/// A Have (or a refused update) with a timestamp this replica would refuse
/// does not make its sender the parent: honest announcements still count.
#[test]
fn a_forged_announcement_does_not_starve_a_source() {
    let far = Timestamp::new(Network::<Model>::EPOCH + 3_600_000, 0);
    let forged_have = {
        let stamps = vec![Stamp { ts: far, source: id("w") }];
        frame(8, &postcard::to_allocvec(&stamps).unwrap())
    };
    let forged_update = {
        let stamp = Stamp { ts: far, source: id("w") };
        let env = Envelope::new(id("w"), far, Model::stamped("a", "forged", stamp));
        frame(2, &postcard::to_allocvec(&env).unwrap())
    };
    for forged in [forged_have, forged_update] {
        let mut net = Network::new();
        let [w, p] = ["w", "p"].map(|n| net.add(lazy(n)));
        let mut x = lazy("x");
        let m = raw_peer(&mut x, "m");
        x.handle(m, net.now(), &forged).unwrap();
        let x = net.add(x);
        net.link(w, p);
        net.link(p, x);
        net.update(w, Model::set("a", "1")).unwrap();
        net.pump();
        assert_eq!(net[x].state().get("a"), Some("1"));
    }
}

/// With an allow-list, announcements of other sources are not pulled.
#[test]
fn announcements_of_sources_not_allowed_are_not_wanted() {
    let mut x = Replica::with_config(
        id("x"),
        Model::default(),
        Config::default().lazy_relay(true).allow_only([id("m")]),
    );
    let m = raw_peer(&mut x, "m");
    let now = Network::<Model>::EPOCH;
    let stamps = vec![Stamp { ts: Timestamp::new(now, 0), source: id("other") }];
    x.handle(m, now, &frame(8, &postcard::to_allocvec(&stamps).unwrap())).unwrap();
    let mut out = Vec::new();
    while x.poll_transmit(m, &mut out).unwrap() > 0 {}
    assert!(!kinds(&out).contains(&9), "wanted a source it would refuse: {:?}", kinds(&out));
}

/// Once the source itself is a neighbour, the relay that pushed it before is
/// told to stop: each update then arrives once, not twice.
#[test]
fn a_neighbouring_origin_replaces_the_relay_as_parent() {
    let mut net = Network::new();
    let [w, p, x] = ["w", "p", "x"].map(|n| net.add(lazy(n)));
    net.link(w, p);
    net.link(p, x);
    net.update(w, Model::set("a", "0")).unwrap();
    net.pump();
    net.link(w, x);
    net.update(w, Model::set("a", "1")).unwrap();
    net.pump();
    let old = net[x].stats().old;
    for i in 2..12 {
        net.update(w, Model::set("a", &i.to_string())).unwrap();
        net.pump();
    }
    assert_eq!(net[x].state().get("a"), Some("11"));
    assert_eq!(net[x].stats().old, old, "the relay still pushes what the origin pushes");
}

/// A one-shot sync does not wait forever for an announced update that this
/// replica refuses on arrival (here: unsigned, and it requires signatures).
#[test]
fn a_one_shot_sync_does_not_wait_for_what_it_refuses() {
    let mut net = Network::new();
    let w = net.add(lazy("w"));
    let l = net.add(lazy("l"));
    net.link(w, l);
    net.update(w, Model::set("w", "1")).unwrap();
    net.pump();
    let config = Config::default().lazy_relay(true).require_signatures(true);
    let j = net.add(Replica::with_config(id("j"), Model::default(), config));
    net.link_with(j, StreamOpts::default().tail(false), l, StreamOpts::default());
    net.pump();
    assert!(net.errors().is_empty(), "{:?}", net.errors());
    assert_eq!(net[j].state().get("w"), None);
    assert_eq!(net[j].stream_count(), 0, "the one-shot stream closed");
}

/// Records dropped from a full history that a lazy stream only announced
/// cost no snapshot: the peer pulls them elsewhere, and a Want for one that
/// is gone gets the snapshot then. (Every eviction used to send one.)
#[test]
fn a_full_history_does_not_make_lazy_streams_send_snapshots() {
    let mut net = Network::new();
    let config = Config::default().lazy_relay(true).history_limit(16);
    let nodes: Vec<NodeId> = (0..6)
        .map(|i| {
            net.add(Replica::with_config(id(&format!("n{i}")), Model::default(), config.clone()))
        })
        .collect();
    let mut links = Vec::new();
    for i in 0..6 {
        links.push(net.link(nodes[i], nodes[(i + 1) % 6]));
        links.push(net.link(nodes[i], nodes[(i + 2) % 6]));
    }
    net.pump();
    for k in 0..300 {
        let update = Model::set(&format!("k{}", k % 10), &k.to_string());
        net.update(nodes[k % 6], update).unwrap();
        net.step();
    }
    net.pump();
    for &node in &nodes {
        assert_eq!(net[node].state(), net[nodes[0]].state());
        assert_eq!(net[node].clock(), net[nodes[0]].clock());
    }
    let snapshots: u64 = links
        .iter()
        .flat_map(|&l| net.streams(l))
        .map(|(node, s)| net[node].stream_stats(s).map_or(0, |s| s.snapshots_sent))
        .sum();
    assert_eq!(snapshots, 0, "snapshots sent for announced records");
}

/// A snapshot merged in mid-line still travels on: its effects have no
/// records to announce, so a lazy stream sends the snapshot on.
#[test]
fn a_merged_snapshot_still_reaches_the_far_end_of_a_lazy_line() {
    let mut net = Network::new();
    let config = Config::default().lazy_relay(true).history_limit(2);
    let [a, x, b] = ["a", "x", "b"]
        .map(|n| net.add(Replica::with_config(id(n), Model::default(), config.clone())));
    for i in 0..5 {
        net.update(a, Model::set(&format!("a{i}"), "1")).unwrap();
    }
    net.link(x, b);
    net.pump();
    net.link(a, x);
    net.pump();
    assert_eq!(net[b].state(), net[a].state());
    assert_eq!(net[b].clock(), net[a].clock());
}

/// Two relays took the same two concurrent updates in opposite orders, so
/// each found part (or all) of its second one done already. A replica that
/// takes one update from each (as a lazy relay does, pulling each source
/// from its own parent) must still end with both effects whole: a relay
/// forwards an update as its origin wrote it, never cut down to what was
/// new to the relay, and never as a bare clock advance, or the receiver's
/// clock would claim what its state lacks, for good.
#[test]
fn relays_forward_updates_whole_so_two_paths_cannot_leave_a_gap() {
    use repred::{Clock, GSet};
    let t = |ms: u64| Timestamp::new(Network::<GSet<u8>>::EPOCH + ms, 0);
    let (a, b) = (id("a"), id("b"));
    for (u, v) in [
        // Overlapping: each relay cut its second update down.
        (GSet::from([b'x', b'y']), GSet::from([b'y', b'z'])),
        // The same: each relay's second update changed nothing.
        (GSet::from([b'y']), GSet::from([b'y'])),
    ] {
        let u = Envelope::new(a, t(1), u);
        let v = Envelope::new(b, t(2), v);
        let now = Network::<GSet<u8>>::EPOCH + 10;
        let mut r1: Replica<GSet<u8>> = Replica::new(id("r1"), GSet::default());
        let mut r2: Replica<GSet<u8>> = Replica::new(id("r2"), GSet::default());
        let mut seen = r1.subscribe();
        r1.apply(now, u.clone());
        r1.apply(now, v.clone());
        // Subscribers still see what changed here, not the whole update.
        let changed: Vec<GSet<u8>> = r1
            .changes(&mut seen)
            .filter_map(|d| match d {
                repred::Delivery::Change(c) => Some(c.change.clone()),
                repred::Delivery::Lagged { .. } => None,
            })
            .collect();
        let new_in_v: GSet<u8> =
            v.change.iter().filter(|x| !u.change.contains(x)).copied().collect();
        let mut expected = vec![u.change.clone()];
        if !new_in_v.is_empty() {
            expected.push(new_in_v);
        }
        assert_eq!(changed, expected);
        r2.apply(now, v.clone());
        r2.apply(now, u.clone());
        // a's update from r2, b's from r1.
        let from = |r: &Replica<GSet<u8>>, source| -> Envelope<GSet<u8>> {
            let relayed = r.history(&Clock::new());
            let found = relayed.into_iter().find(|e| e.source == source);
            found.expect("the relay forwards every new update").clone()
        };
        let mut x: Replica<GSet<u8>> = Replica::new(id("x"), GSet::default());
        x.apply(now, from(&r2, a));
        x.apply(now, from(&r1, b));
        assert_eq!(x.clock(), r1.clock());
        assert_eq!(x.state(), r1.state(), "the clocks agree, so must the states");
        assert_eq!(r1.state(), r2.state());
    }
}
