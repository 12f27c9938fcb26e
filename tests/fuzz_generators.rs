//! What CI can afford of the fuzz targets (`fuzz/`, run with `cargo fuzz`
//! for a fixed budget outside CI): the same drivers and invariants
//! (`fuzz/src/harness.rs`, compiled in here as it is), over
//! proptest-generated inputs instead of libFuzzer's.
//!
//! - `session`: real exchanges (the fuzz corpus's seeds, regenerated here)
//!   with bits flipped, cut short, spliced into each other, frame kinds
//!   replaced, and the replica's configuration changed.
//! - `snapshot`: Snapshot frames with any clock, state and signature, and
//!   real signed snapshot frames with bits flipped, handed to a plain, a
//!   strict and a strict trusting replica.
//!
//! Invariants (each an assert in the harness): no panic; a refused frame
//! leaves state and clock as they were; no clock holds timestamp zero;
//! `poll_transmit` never fails; a strict replica that trusts no signer
//! never takes a snapshot; a trusting one takes only its signer's; a plain
//! one takes none whose signature does not hold.

#[path = "../fuzz/src/harness.rs"]
mod harness;

use std::sync::OnceLock;

use harness::{
    FEW_SOURCES, LAZY, OP_BYTES, SHORT_HISTORY, STRICT, SnapshotCase, SnapshotSig, TRUST, frames,
    identity, run_session, run_snapshot, run_snapshot_frame, snapshot_frames, snapshot_source,
    transcripts,
};
use proptest::prelude::*;
use proptest::sample::Index;
use repred::{Stamp, Timestamp};
use repred_suite::{Model, Write};

fn corpus() -> &'static [(&'static str, Vec<u8>)] {
    static CORPUS: OnceLock<Vec<(&'static str, Vec<u8>)>> = OnceLock::new();
    CORPUS.get_or_init(transcripts)
}

/// Where the kind bytes of the frames of a session input are.
fn kind_positions(input: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut at = 2;
    while at + 3 <= input.len() {
        let code = input[at];
        let len = u16::from_le_bytes([input[at + 1], input[at + 2]]) as usize;
        let start = at + 3;
        let end = (start + len).min(input.len());
        if (code >> 2) & 3 == OP_BYTES {
            let mut offset = start;
            for frame in frames(&input[start..end]) {
                if frame.len() > 4 {
                    out.push(offset + 4);
                }
                offset += frame.len();
            }
        }
        at = end;
    }
    out
}

#[derive(Clone, Debug)]
enum Mutation {
    Flip(Index, u8),
    Truncate(Index),
    Splice { from: Index, at: Index, range: (Index, Index) },
    Kind(Index, u8),
    Flags(u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<Index>(), 0u8..8).prop_map(|(i, bit)| Mutation::Flip(i, bit)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        2 => (any::<Index>(), any::<Index>(), any::<(Index, Index)>())
            .prop_map(|(from, at, range)| Mutation::Splice { from, at, range }),
        3 => (any::<Index>(), prop_oneof![0u8..=12, any::<u8>()])
            .prop_map(|(i, kind)| Mutation::Kind(i, kind)),
        1 => prop_oneof![
            Just(0u8), Just(STRICT), Just(LAZY), Just(STRICT | LAZY), Just(FEW_SOURCES),
            Just(SHORT_HISTORY), Just(STRICT | TRUST), any::<u8>(),
        ]
        .prop_map(Mutation::Flags),
    ]
}

fn mutate(mut input: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    let corpus = corpus();
    for m in mutations {
        if input.is_empty() {
            break;
        }
        match m {
            Mutation::Flip(i, bit) => {
                let i = i.index(input.len());
                input[i] ^= 1 << bit;
            }
            Mutation::Truncate(i) => input.truncate(i.index(input.len() + 1)),
            Mutation::Splice { from, at, range } => {
                let other = &corpus[from.index(corpus.len())].1;
                let (a, b) = (range.0.index(other.len()), range.1.index(other.len()));
                let piece = other[a.min(b)..a.max(b)].to_vec();
                let at = at.index(input.len() + 1);
                input.splice(at..at, piece);
            }
            Mutation::Kind(i, kind) => {
                let positions = kind_positions(&input);
                if !positions.is_empty() {
                    input[positions[i.index(positions.len())]] = *kind;
                }
            }
            Mutation::Flags(flags) => input[0] = *flags,
        }
    }
    input
}

/// Every real exchange replays through the session driver and gets deep:
/// updates applied or snapshots merged, for every transcript but the one
/// that shows a strict replica refusing a snapshot.
#[test]
fn real_exchanges_replay_and_reach_the_state() {
    for (name, input) in corpus() {
        let report = run_session(input);
        // The one whose point is a refused snapshot applies nothing.
        let refused = *name == "strict-refused";
        assert_eq!(report.applied + report.snapshots == 0, refused, "{name}: {report:?}");
        assert!(report.sent > 0, "{name} sent nothing");
    }
    let names: Vec<&str> = corpus().iter().map(|(n, _)| *n).collect();
    for wanted in ["plain-snapshot", "strict-trusted-snapshot", "lazy-three-relays", "proofs"] {
        assert!(names.contains(&wanted), "no {wanted} exchange");
    }
    // The kinds the exchanges carry, so that mutations start from all of
    // them: Hello, Updates, Snapshot, Sync, Close, Advance, Clock, Have,
    // Want, Proofs.
    let mut kinds: Vec<u8> =
        corpus().iter().flat_map(|(_, i)| kind_positions(i).into_iter().map(|p| i[p])).collect();
    kinds.sort_unstable();
    kinds.dedup();
    assert_eq!(kinds, [1, 2, 3, 4, 5, 6, 7, 8, 9, 11]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The `session` target's invariants over mutated real exchanges.
    #[test]
    fn mutated_exchanges_keep_the_session_invariants(
        which in any::<Index>(),
        mutations in prop::collection::vec(mutation(), 1..6),
    ) {
        let input = corpus()[which.index(corpus().len())].1.clone();
        run_session(&mutate(input, &mutations));
    }
}

fn ts() -> impl Strategy<Value = u64> {
    prop_oneof![
        (-70_000i64..70_000, any::<u16>()).prop_map(|(d, c)| Timestamp::new(
            (harness::NOW as i64 + d) as u64,
            c
        )
        .to_raw()),
        Just(0u64),
        Just(u64::MAX),
        any::<u64>(),
    ]
}

fn source() -> impl Strategy<Value = [u8; 16]> {
    prop_oneof![
        (0u8..8).prop_map(|n| *identity(n).id().as_bytes()),
        Just([0u8; 16]),
        any::<[u8; 16]>(),
    ]
}

fn sig() -> impl Strategy<Value = SnapshotSig> {
    prop_oneof![
        Just(SnapshotSig::None),
        (any::<[u8; 32]>(), any::<[u8; 32]>(), any::<[u8; 32]>())
            .prop_map(|(key, a, b)| SnapshotSig::Raw { key, sig: (a, b) }),
        (0u8..8).prop_map(SnapshotSig::By),
        Just(SnapshotSig::By(7)),
        (0u8..8).prop_map(SnapshotSig::Stale),
    ]
}

fn model_state() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => prop::collection::vec(
            (0u8..6, prop::option::of((ts(), source())), prop::option::of("[a-z]{0,4}")),
            0..6,
        )
        .prop_map(|writes| {
            let update: std::collections::BTreeMap<String, Write> = writes
                .into_iter()
                .map(|(key, stamp, value)| {
                    let stamp = stamp.map(|(ts, src)| Stamp {
                        ts: Timestamp::from_raw(ts),
                        source: harness::raw_source(src),
                    });
                    (format!("k{key}"), Write { stamp, value })
                })
                .collect();
            postcard::to_allocvec(&update).unwrap()
        }),
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// The `snapshot` target's invariants over generated Snapshot frames.
    #[test]
    fn generated_snapshots_keep_the_trust_rules(
        clock in prop::collection::vec((source(), ts()), 0..5),
        state in model_state(),
        sig in sig(),
        peer in 0u8..8,
        hello in prop::bool::weighted(0.9),
        sync in any::<bool>(),
        late in prop_oneof![Just(0u16), any::<u16>()],
        seeded in any::<bool>(),
    ) {
        let case = SnapshotCase { clock, state, sig, peer, hello, sync, late };
        run_snapshot::<Model>(&case, seeded.then(|| Model::set("mine", "1")));
    }

    /// Real snapshot frames, unsigned and signed by the trusted signer and
    /// another, with bits flipped.
    #[test]
    fn mutated_real_snapshots_keep_the_trust_rules(
        signer in prop_oneof![Just(None), Just(Some(7u8)), Just(Some(2u8))],
        flips in prop::collection::vec((any::<Index>(), 0u8..8), 0..3),
        sync in any::<bool>(),
    ) {
        static FRAMES: OnceLock<Vec<(Option<u8>, Vec<u8>)>> = OnceLock::new();
        let frames = FRAMES.get_or_init(|| {
            [None, Some(7), Some(2)]
                .into_iter()
                .flat_map(|s| snapshot_frames(&mut snapshot_source(s)).into_iter().map(move |f| (s, f)))
                .collect()
        });
        let mut frame = frames.iter().find(|(s, _)| *s == signer).expect("a real frame").1.clone();
        for (i, bit) in &flips {
            let i = i.index(frame.len());
            frame[i] ^= 1 << bit;
        }
        let report = run_snapshot_frame::<Model>(&frame, Some(2), sync, 0, None);
        if flips.is_empty() {
            prop_assert!(report.plain, "a plain replica refused a real snapshot");
            prop_assert_eq!(report.trusting, signer == Some(7));
        }
    }
}
