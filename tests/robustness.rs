//! Bytes from a peer cannot panic a replica or corrupt it.

mod common;

use common::{NOW, drain, id, replica};
use proptest::prelude::*;
use repred::{Network, Replica, StreamOpts};
use repred_suite::Model;

/// A replica with some state and a valid session transcript from a peer.
fn setup() -> (Replica<Model>, Vec<u8>) {
    let mut r: Replica<Model> = replica("me");
    r.update(NOW, Model::set("mine", "1")).unwrap();
    let mut peer: Replica<Model> = replica("peer");
    for i in 0..5 {
        peer.update(NOW, Model::set(&format!("k{i}"), "v")).unwrap();
    }
    let s = peer.open(StreamOpts::send_only()).unwrap();
    let transcript = drain(&mut peer, s);
    (r, transcript)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Arbitrary bytes, in arbitrary pieces: never a panic, and since no
    /// valid Hello can come of them, never a change.
    #[test]
    fn random_bytes_never_change_the_replica(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
        split in 0usize..512,
    ) {
        let (mut r, _) = setup();
        let before = (r.state().clone(), r.clock().clone(), r.history_len());
        let s = r.open(StreamOpts::default()).unwrap();
        let split = split.min(bytes.len());
        let first = r.handle(s, NOW, &bytes[..split]);
        if first.is_ok() {
            let _ = r.handle(s, NOW, &bytes[split..]);
        }
        // A Hello from random bytes is possible in principle; anything after
        // it would then be a real update. Neither happens in 512 bytes of
        // noise often enough to matter, but the check is exact.
        if r.stats().applied == 0 && r.stats().snapshots == 0 {
            prop_assert_eq!(before, (r.state().clone(), r.clock().clone(), r.history_len()));
        }
        let mut out = Vec::new();
        let _ = r.poll_transmit(s, &mut out);
        // The replica stays usable.
        prop_assert!(r.update(NOW, Model::set("after", "ok")).unwrap().is_some());
    }

    /// A valid transcript with bytes flipped, cut or inserted: never a
    /// panic; whatever did apply is consistent (clock and history agree) and
    /// the replica still converges with an honest peer afterwards.
    #[test]
    fn mutated_frames_leave_a_consistent_replica(
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let (mut r, mut transcript) = setup();
        for (at, byte) in flips {
            let i = at.index(transcript.len());
            transcript[i] ^= byte | 1;
        }
        transcript.truncate(cut.index(transcript.len() + 1));
        let s = r.open(StreamOpts::default()).unwrap();
        let _ = r.handle(s, NOW, &transcript);
        for e in r.history(&repred::Clock::new()) {
            prop_assert!(r.clock().has(e.source, e.ts));
        }
        let mut net = Network::new();
        let a = net.add(r);
        let honest = net.add(Replica::new(id("honest"), Model::default()));
        net.update(honest, Model::set("h", "1")).unwrap();
        net.link(a, honest);
        net.pump();
        prop_assert_eq!(net[a].state().get("h"), Some("1"));
        prop_assert_eq!(net[honest].state().get("mine"), Some("1"));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Lazy relay's frames (Have, Want, Unwant) with any body, after a valid
    /// Hello, on a lazy or an eager replica: a typed error or nothing, never
    /// a panic, and the replica still converges with an honest peer.
    #[test]
    fn lazy_relay_frames_with_any_body_are_harmless(
        kind in 8u8..=10,
        body in prop::collection::vec(any::<u8>(), 0..256),
        lazy in any::<bool>(),
    ) {
        let config = repred::Config::default().lazy_relay(lazy);
        let mut r = Replica::with_config(id("me"), Model::default(), config);
        r.update(NOW, Model::set("mine", "1")).unwrap();
        let mut peer: Replica<Model> = replica("peer");
        let p = peer.open(StreamOpts::default()).unwrap();
        let mut bytes = Vec::new();
        peer.poll_transmit(p, &mut bytes).unwrap();
        bytes.extend_from_slice(&((body.len() + 1) as u32).to_le_bytes());
        bytes.push(kind);
        bytes.extend_from_slice(&body);
        let s = r.open(StreamOpts::default()).unwrap();
        match r.handle(s, NOW, &bytes) {
            Ok(()) => {}
            Err(repred::SessionError::Peer(_)) => prop_assert_eq!(r.stream_count(), 0),
            Err(other) => prop_assert!(false, "untyped error {other:?}"),
        }
        let mut out = Vec::new();
        for _ in 0..1000 {
            if r.poll_transmit(s, &mut out).unwrap_or(0) == 0 {
                break;
            }
        }
        let mut net = Network::new();
        let a = net.add(r);
        let honest = net.add(Replica::new(id("honest"), Model::default()));
        net.update(honest, Model::set("h", "1")).unwrap();
        net.link(a, honest);
        net.pump();
        prop_assert_eq!(net[a].state().get("h"), Some("1"));
        prop_assert_eq!(net[honest].state().get("mine"), Some("1"));
    }

    /// Well-formed Have, Want and Unwant frames naming any sources and
    /// timestamps: never a panic or an error, and the replica converges.
    #[test]
    fn lazy_relay_frames_naming_anything_are_harmless(
        frames in prop::collection::vec(
            (8u8..=10, prop::collection::vec((0u8..4, prop_oneof![
                any::<u64>(),
                // Near now, so that some pass the skew check.
                (0u64..120_000).prop_map(|d| repred::Timestamp::new(NOW - 60_000 + d, 0).to_raw()),
            ]), 0..8)),
            1..8,
        ),
    ) {
        let config = repred::Config::default().lazy_relay(true);
        let mut r = Replica::with_config(id("me"), Model::default(), config);
        r.update(NOW, Model::set("mine", "1")).unwrap();
        let mut peer: Replica<Model> = replica("peer");
        let p = peer.open(StreamOpts::default()).unwrap();
        let mut bytes = Vec::new();
        peer.poll_transmit(p, &mut bytes).unwrap();
        let names = ["me", "peer", "honest", "other"];
        for (kind, stamps) in frames {
            let stamps: Vec<repred::Stamp> = stamps
                .into_iter()
                .map(|(n, ts)| repred::Stamp {
                    ts: repred::Timestamp::from_raw(ts),
                    source: id(names[n as usize]),
                })
                .collect();
            let body = if kind == 10 {
                let sources: Vec<_> = stamps.iter().map(|s| s.source).collect();
                postcard::to_allocvec(&sources).unwrap()
            } else {
                postcard::to_allocvec(&stamps).unwrap()
            };
            bytes.extend_from_slice(&((body.len() + 1) as u32).to_le_bytes());
            bytes.push(kind);
            bytes.extend_from_slice(&body);
        }
        let s = r.open(StreamOpts::default()).unwrap();
        prop_assert!(r.handle(s, NOW, &bytes).is_ok());
        let mut out = Vec::new();
        for _ in 0..1000 {
            if r.poll_transmit(s, &mut out).unwrap() == 0 {
                break;
            }
        }
        let mut net = Network::new();
        let a = net.add(r);
        let honest = net.add(Replica::new(id("honest"), Model::default()));
        net.update(honest, Model::set("h", "1")).unwrap();
        net.link(a, honest);
        net.pump();
        prop_assert_eq!(net[a].state().get("h"), Some("1"));
        prop_assert_eq!(net[honest].state().get("mine"), Some("1"));
    }
}
