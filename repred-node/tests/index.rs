//! The indexes that keep a node's work per message flat in N (issue 15):
//! foca's member list looked up by address (the vendored foca's
//! `Foca::member_at`), and the node core's view fingerprint kept up to date
//! as members come and go (`NodeCore::live_digest`). Each is checked
//! against the linear scan it replaces, under random updates.

use std::collections::BTreeMap;
use std::time::Duration;

use foca::{AccumulatingRuntime, Config, Foca, Member, PostcardCodec, State, Timer};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use repred::SourceId;
use repred_node::{LiveDigest, NodeConfig, NodeCore, Peer};

fn id(n: u32) -> SourceId {
    SourceId::new(format!("node-{n}")).expect("a valid id")
}

/// Random updates about 300 addresses (new members, suspicions, downs,
/// new lives at a known address, removals of down members, picks): after
/// each, a lookup by address finds what a scan of the member list finds.
#[test]
fn member_lookup_by_address_agrees_with_a_scan() {
    for seed in 0..4u64 {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let me = Peer { id: Some(id(1_000_000)), addr: 1_000_000u32, bump: 1 };
        let mut config = Config::simple();
        config.remove_down_after = Some(Duration::from_secs(1));
        let mut swim =
            Foca::new(me, config, Xoshiro256PlusPlus::seed_from_u64(seed), PostcardCodec);
        let mut runtime = AccumulatingRuntime::new();
        for _ in 0..3_000 {
            let addr = rng.random_range(0..300u32);
            let peer = Peer { id: Some(id(addr)), addr, bump: rng.random_range(1..4u64) };
            match rng.random_range(0..10u8) {
                0..=6 => {
                    let state = [State::Alive, State::Suspect, State::Down][rng.random_range(0..3)];
                    let member = Member::new(peer, rng.random_range(0..3u16), state);
                    swim.apply_many(std::iter::once(member), rng.random_bool(0.5), &mut runtime)
                        .expect("applied");
                }
                7 => {
                    let _ = swim.handle_timer(Timer::RemoveDown(peer), &mut runtime);
                }
                _ => {
                    let _ = swim.gossip(&mut runtime);
                }
            }
            while runtime.to_send().is_some() {}
            while runtime.to_schedule().is_some() {}
            while runtime.to_notify().is_some() {}
            for probe in [addr, (addr + 1) % 300, 299 - addr] {
                let scan = swim.iter_membership_state().find(|m| m.id().addr == probe);
                assert_eq!(swim.member_at(&probe), scan, "seed {seed}: member at {probe}");
            }
        }
        let mut addrs: Vec<u32> = swim.iter_membership_state().map(|m| m.id().addr).collect();
        let len = addrs.len();
        addrs.sort_unstable();
        addrs.dedup();
        assert_eq!(addrs.len(), len, "seed {seed}: one member per address");
    }
}

/// A small cluster on a lossless network driven by hand, with nodes
/// crashing and coming back in new lives, and some coming back under
/// another node id at the same address (which makes the core count its
/// view again): each node's incremental digest always equals the digest of
/// its live members counted from scratch.
#[test]
fn live_digest_agrees_with_the_live_members() {
    const N: u32 = 24;
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(5);
    let config = NodeConfig::default();
    let mut names: Vec<u32> = (0..N).collect();
    let mut nodes: Vec<Option<NodeCore<u32>>> =
        (0..N).map(|i| Some(NodeCore::new(id(i), i, 1, config.clone(), u64::from(i), 0))).collect();
    for node in nodes.iter_mut().flatten().skip(1) {
        node.bootstrap(0, [0]);
    }
    let mut now = 0u64;
    let mut lives = 1u64;
    let mut checks = 0;
    while now < 40_000 {
        // Carry datagrams at once; drop what goes to a crashed node.
        let mut sent = Vec::new();
        for node in nodes.iter_mut().flatten() {
            while let Some(d) = node.poll_transmit() {
                sent.push(d);
            }
            while node.poll_command().is_some() {}
            while node.poll_event().is_some() {}
        }
        for d in sent {
            if let Some(node) = nodes[d.to as usize].as_mut() {
                let _ = node.handle_datagram(now, &d.bytes);
            }
        }
        now += 50;
        for node in nodes.iter_mut().flatten() {
            if node.poll_timeout().is_some_and(|due| due <= now) {
                node.handle_timeout(now);
            }
        }
        // Now and then a node crashes, and a crashed one restarts: in a new
        // life, sometimes as another node at the same address.
        if now.is_multiple_of(2_000) && now < 30_000 {
            let victim = rng.random_range(1..N) as usize;
            if nodes[victim].is_some() {
                nodes[victim] = None;
            } else {
                lives += 1;
                if rng.random_bool(0.5) {
                    names[victim] += 1_000;
                }
                let mut node = NodeCore::new(
                    id(names[victim]),
                    victim as u32,
                    lives,
                    config.clone(),
                    lives,
                    now,
                );
                node.bootstrap(now, [0]);
                nodes[victim] = Some(node);
            }
        }
        for node in nodes.iter().flatten() {
            let live: BTreeMap<SourceId, u32> = node.live();
            assert_eq!(
                node.live_digest(),
                LiveDigest::of(live.keys().copied()),
                "{now} ms: node {:?}",
                node.identity()
            );
            checks += 1;
        }
    }
    assert!(checks > 10_000);
    // And the cluster settled: every node up sees every node up.
    let up = LiveDigest::of(nodes.iter().flatten().map(|n| n.id()));
    for node in nodes.iter().flatten() {
        assert_eq!(node.live_digest(), up, "node {:?} settled", node.identity());
    }
}
