//! Property tests: whatever the topology, delivery order, duplication, cuts
//! and history limit, replicas that end up connected converge to equal
//! states and clocks, and no update is applied twice.

mod common;

use common::id;
use proptest::prelude::*;
use repred::{Clock, Config, LinkId, Network, NodeId, Replica, SessionError, StreamOpts};
use repred_suite::Model;

#[derive(Clone, Debug)]
enum Topology {
    Line,
    Ring,
    Star,
    Random(Vec<(usize, usize)>),
}

#[derive(Clone, Debug)]
enum Op {
    /// A local write on a node.
    Write { node: usize, key: u8, value: u16 },
    /// One hop on every link.
    Step,
    /// One end of one link writes out, and part of it is delivered.
    Trickle { link: usize, side: usize, max: usize },
    /// A link is cut mid-flight, losing what was in flight.
    Cut { link: usize },
    /// A cut link is made again.
    Relink { link: usize },
    /// Everything `from` has is applied to `to` directly: a second path.
    Replay { from: usize, to: usize },
    /// Time passes.
    Advance { millis: u64 },
    /// `from` syncs once with `to` over a stream without tail, which closes
    /// itself once synced.
    OneShot { from: usize, to: usize },
}

fn op(nodes: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..nodes, 0u8..6, any::<u16>()).prop_map(|(node, key, value)| Op::Write { node, key, value }),
        2 => Just(Op::Step),
        3 => (0..16usize, 0..2usize, 1..200usize).prop_map(|(link, side, max)| Op::Trickle { link, side, max }),
        1 => (0..16usize).prop_map(|link| Op::Cut { link }),
        1 => (0..16usize).prop_map(|link| Op::Relink { link }),
        1 => (0..nodes, 0..nodes).prop_map(|(from, to)| Op::Replay { from, to }),
        1 => (0u64..50).prop_map(|millis| Op::Advance { millis }),
        1 => (0..nodes, 0..nodes).prop_map(|(from, to)| Op::OneShot { from, to }),
    ]
}

fn scenario() -> impl Strategy<Value = (usize, Topology, usize, bool, Vec<Op>)> {
    (2usize..6).prop_flat_map(|n| {
        let topology = prop_oneof![
            Just(Topology::Line),
            Just(Topology::Ring),
            Just(Topology::Star),
            prop::collection::vec((0..n, 0..n), 1..8).prop_map(Topology::Random),
        ];
        let limit = prop_oneof![Just(3usize), Just(8), Just(65_536)];
        // Many sources make Hellos carry clock digests instead of clocks.
        let many_sources = any::<bool>();
        (Just(n), topology, limit, many_sources, prop::collection::vec(op(n), 1..80))
    })
}

fn edges(n: usize, topology: &Topology) -> Vec<(usize, usize)> {
    let mut edges: Vec<(usize, usize)> = match topology {
        Topology::Line => (1..n).map(|i| (i - 1, i)).collect(),
        Topology::Ring => (0..n).map(|i| (i, (i + 1) % n)).collect(),
        Topology::Star => (1..n).map(|i| (0, i)).collect(),
        Topology::Random(pairs) => pairs.clone(),
    };
    // Keep the graph connected so that convergence is owed: a spanning line.
    edges.extend((1..n).map(|i| (i - 1, i)));
    edges.retain(|(a, b)| a != b);
    edges.sort();
    edges.dedup();
    edges
}

fn run(
    n: usize,
    topology: Topology,
    limit: usize,
    many_sources: bool,
    ops: Vec<Op>,
    lazy: bool,
) -> Result<(), TestCaseError> {
    let mut net = Network::new();
    let nodes: Vec<NodeId> = (0..n)
        .map(|i| {
            let config = Config::default().history_limit(limit).lazy_relay(lazy);
            net.add(Replica::with_config(id(&format!("n{i}")), Model::default(), config))
        })
        .collect();
    if many_sources {
        // Forty other writers, seen by some nodes only.
        let now = net.now();
        for s in 0..40u64 {
            let source = id(&format!("w{s}"));
            let ts = repred::Timestamp::new(now, 1);
            let stamp = repred::Stamp { ts, source };
            let update = Model::stamped(&format!("w{}", s % 5), "x", stamp);
            let node = nodes[(s as usize) % n];
            net[node].apply(now, repred::Envelope::new(source, ts, update));
        }
    }
    let edges = edges(n, &topology);
    let mut links: Vec<(usize, usize, LinkId)> =
        edges.iter().map(|&(a, b)| (a, b, net.link(nodes[a], nodes[b]))).collect();
    let mut written = vec![0u64; n];
    let mut one_shots = Vec::new();
    for op in ops {
        match op {
            Op::Write { node, key, value } => {
                let update = Model::set(&format!("k{key}"), &value.to_string());
                if net.update(nodes[node], update).expect("not disposed").is_some() {
                    written[node] += 1;
                }
            }
            Op::Step => {
                net.step();
            }
            Op::Trickle { link, side, max } => {
                let l = links[link % links.len()].2;
                net.flush(l, side);
                net.deliver(l, side, max);
            }
            Op::Cut { link } => {
                let l = links[link % links.len()].2;
                net.cut(l);
            }
            Op::Relink { link } => {
                let i = link % links.len();
                let (a, b, l) = links[i];
                if !net.is_up(l) {
                    links[i].2 = net.link(nodes[a], nodes[b]);
                }
            }
            // Only a complete history may be replayed: per source, updates
            // must arrive in order, and one with gaps below its horizon would
            // skip some (a stream sends a snapshot instead).
            Op::Replay { from, to }
                if net[nodes[to]].clock().covers(net[nodes[from]].horizon()) =>
            {
                let history: Vec<_> =
                    net[nodes[from]].history(&Clock::new()).into_iter().cloned().collect();
                let now = net.now();
                for e in history {
                    net[nodes[to]].apply(now, e);
                }
            }
            Op::Replay { .. } => {}
            Op::Advance { millis } => net.advance(millis),
            Op::OneShot { from, to } if from != to => {
                let once = StreamOpts::default().tail(false);
                one_shots.push(net.link_with(nodes[from], once, nodes[to], StreamOpts::default()));
            }
            Op::OneShot { .. } => {}
        }
    }
    for (a, b, l) in &mut links {
        if !net.is_up(*l) {
            *l = net.link(nodes[*a], nodes[*b]);
        }
    }
    net.pump();
    // A one-shot stream closes after its sync, so what its peer still sends
    // finds it gone.
    let errors: Vec<_> = net
        .errors()
        .iter()
        .filter(|(l, _, e)| !(one_shots.contains(l) && matches!(e, SessionError::NotOpen(_))))
        .collect();
    prop_assert!(errors.is_empty(), "protocol errors: {:?}", errors);
    // A one-shot sync ends, also when its peer announced instead of pushing.
    for l in one_shots {
        let [(a, once), _] = net.streams(l);
        prop_assert!(!net[a].open_streams().any(|s| s == once), "one-shot stream still open");
    }
    let seeded = if many_sources { 40 } else { 0 };
    let total: u64 = written.iter().sum::<u64>() + seeded;
    for (i, &node) in nodes.iter().enumerate() {
        let r = &net[node];
        prop_assert_eq!(r.state(), net[nodes[0]].state(), "state of n{}", i);
        prop_assert_eq!(r.clock(), net[nodes[0]].clock(), "clock of n{}", i);
        let stats = r.stats();
        // Each remote update is taken in at most once; the rest is old data.
        prop_assert!(stats.applied + stats.unchanged <= total - written[i]);
        prop_assert_eq!(stats.local, written[i]);
        prop_assert!(r.history_len() <= limit);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn replicas_converge_under_any_delivery((n, topology, limit, many, ops) in scenario()) {
        run(n, topology, limit, many, ops, false)?;
    }

    /// The same with `Config::lazy_relay`: other sources' updates are
    /// announced and pulled from one parent per source.
    #[test]
    fn lazy_relay_converges_under_any_delivery((n, topology, limit, many, ops) in scenario()) {
        run(n, topology, limit, many, ops, true)?;
    }
}
