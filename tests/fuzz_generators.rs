//! What CI can afford of the fuzz targets (`fuzz/`, run with `cargo fuzz`
//! for a fixed budget outside CI): the same drivers and invariants
//! (`fuzz/src/harness.rs`, compiled in here as it is), over
//! proptest-generated inputs instead of libFuzzer's.
//!
//! - `session`: real exchanges (the fuzz corpus's seeds, regenerated here)
//!   with bits flipped, cut short, spliced into each other, frame kinds
//!   replaced, and the replica's configuration changed.
//! - `snapshot`: snapshots (a begin, parts, an end) with any clock, parts,
//!   indices, part counts and signatures, and the snapshot frames of real
//!   exchanges, signed and unsigned, in one part and in several, with bits
//!   flipped and frames dropped, repeated, swapped or taken from another
//!   snapshot, handed to a plain, a strict and a strict trusting replica.
//!
//! Invariants (each an assert in the harness): no panic; a refused frame
//! ends its stream and leaves state and clock as they were; no clock holds
//! timestamp zero; `poll_transmit` never fails; a strict replica that
//! trusts no signer never changes on a snapshot; a trusting one takes only
//! parts and ends its signer signed for the snapshot it began; a plain one
//! takes unsigned snapshots and signed ones whose signatures hold; a part
//! changes the state by exactly its join and never the clock, an end the
//! clock by exactly the begin's and never the state; and every frame the
//! format says to take is taken.

#[path = "../fuzz/src/harness.rs"]
mod harness;

use std::sync::OnceLock;

use harness::{
    EndCase, FEW_SOURCES, LAZY, OP_BYTES, PartCase, SHORT_HISTORY, SNAPSHOT_CLOCK, SNAPSHOT_PART,
    STRICT, SnapshotCase, SnapshotReport, SnapshotSig, Stale, TRUST, frames, identity, lww_source,
    orset_source, run_session, run_snapshot, run_snapshot_frames, snapshot_frames, snapshot_source,
    snapshot_stream, transcripts,
};
use proptest::prelude::*;
use proptest::sample::Index;
use repred::{LwwMap, OrSet, Stamp, Timestamp};
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
        3 => (any::<Index>(), prop_oneof![0u8..=15, any::<u8>()])
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
    // them: Hello, Updates, SnapshotBegin, Sync, Close, Advance, Clock,
    // Have, Want, Proofs, SnapshotPart, SnapshotEnd, SnapshotClock (not
    // Unwant, nor Ranges: the replica under test never has the 33 sources
    // that make its Hello carry a digest).
    let mut kinds: Vec<u8> =
        corpus().iter().flat_map(|(_, i)| kind_positions(i).into_iter().map(|p| i[p])).collect();
    kinds.sort_unstable();
    kinds.dedup();
    assert_eq!(kinds, [1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14]);
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
        6 => (-70_000i64..70_000, any::<u16>()).prop_map(|(d, c)| Timestamp::new(
            (harness::NOW as i64 + d) as u64,
            c
        )
        .to_raw()),
        1 => Just(0u64),
        1 => Just(u64::MAX),
        1 => any::<u64>(),
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
    let stale = prop_oneof![
        Just(Stale::Snapshot),
        Just(Stale::Place),
        Just(Stale::Contents),
        Just(Stale::Kind),
    ];
    prop_oneof![
        Just(SnapshotSig::None),
        (any::<[u8; 32]>(), any::<[u8; 32]>(), any::<[u8; 32]>())
            .prop_map(|(key, a, b)| SnapshotSig::Raw { key, sig: (a, b) }),
        (0u8..8).prop_map(SnapshotSig::By),
        Just(SnapshotSig::By(7)),
        (0u8..8, stale).prop_map(|(n, how)| SnapshotSig::Stale(n, how)),
    ]
}

/// The signature of a part or an end: mostly of the begin's kind (the
/// begin's signer over the frame's own digest), sometimes any.
fn frame_sig(begin: SnapshotSig) -> impl Strategy<Value = SnapshotSig> {
    prop_oneof![4 => Just(begin), 1 => sig()]
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

/// A snapshot of `Model` parts: a begin (mostly announcing the clock sent),
/// the clock in one chunk or in chunks of one or two entries, up to three
/// parts (mostly at their place), an end (mostly, and mostly with the right
/// count), each frame signed mostly as the begin is.
fn snapshot_case() -> impl Strategy<Value = SnapshotCase> {
    sig().prop_flat_map(|begin| {
        let part = (prop::option::weighted(0.1, 0u64..4), model_state(), frame_sig(begin.clone()))
            .prop_map(|(index, state, sig)| PartCase { index, state, sig });
        let end = (prop::option::weighted(0.1, 0u64..5), frame_sig(begin.clone()))
            .prop_map(|(parts, sig)| EndCase { parts, sig });
        let clock = || prop::collection::vec((source(), ts()), 0..5);
        (
            (clock(), 0usize..3, prop::option::weighted(0.1, 0u64..6)),
            prop::option::weighted(0.1, clock()),
            Just(begin),
            prop::collection::vec(part, 0..4),
            prop::option::weighted(0.85, end),
            prop::bool::weighted(0.1),
            // The trusted signer says hello half the time, so its
            // snapshots are taken as often as refused.
            (
                prop_oneof![Just(7u8), 0u8..8],
                prop::bool::weighted(0.9),
                any::<bool>(),
                prop::option::weighted(0.2, ts()),
            ),
            prop_oneof![Just(0u16), any::<u16>()],
        )
            .prop_map(
                |(
                    (clock, chunk, sources),
                    digest_of,
                    begin,
                    parts,
                    end,
                    twice,
                    (peer, hello, sync, floor),
                    late,
                )| SnapshotCase {
                    clock,
                    chunk,
                    sources,
                    digest_of,
                    begin,
                    parts,
                    end,
                    twice,
                    peer,
                    hello,
                    sync,
                    late,
                    floor,
                },
            )
    })
}

/// The snapshot frames of real exchanges: of a `Model` (one part), an
/// `LwwMap<String, String>` (two) and an `OrSet<u32>` (three), unsigned,
/// signed by the trusted signer and by another; each with the frames of
/// another snapshot of the same source and signer (one write later), which
/// must not pass for its own.
struct Real {
    signer: Option<u8>,
    /// 0 `Model`, 1 `LwwMap`, 2 `OrSet`.
    ty: u8,
    frames: Vec<Vec<u8>>,
    other: Vec<Vec<u8>>,
}

fn real_snapshots() -> &'static [Real] {
    static REAL: OnceLock<Vec<Real>> = OnceLock::new();
    REAL.get_or_init(|| {
        let mut out = Vec::new();
        for signer in [None, Some(7u8), Some(2)] {
            let frames = snapshot_frames(&mut snapshot_source(signer));
            let mut later = snapshot_source(signer);
            later.update(harness::NOW - 100, Model::set("later", "x")).unwrap();
            out.push(Real { signer, ty: 0, frames, other: snapshot_frames(&mut later) });
            let frames = snapshot_frames(&mut lww_source(signer, 70, 5));
            let other = snapshot_frames(&mut lww_source(signer, 70, 6));
            out.push(Real { signer, ty: 1, frames, other });
            let frames = snapshot_frames(&mut orset_source(signer, 100));
            let other = snapshot_frames(&mut orset_source(signer, 101));
            out.push(Real { signer, ty: 2, frames, other });
        }
        out
    })
}

/// `frames` of `real`'s type after a Hello from its signer (or, unsigned,
/// from `identity(2)`): a strict replica takes a snapshot only from a
/// sender whose Hello its trusted signer signed.
fn run_real(real: &Real, frames: &[Vec<u8>], sync: bool) -> SnapshotReport {
    let hello = Some(real.signer.unwrap_or(2));
    match real.ty {
        0 => run_snapshot_frames::<Model>(frames, hello, sync, 0, None),
        1 => run_snapshot_frames::<LwwMap<String, String>>(frames, hello, sync, 0, None),
        _ => run_snapshot_frames::<OrSet<u32>>(frames, hello, sync, 0, None),
    }
}

#[derive(Clone, Debug)]
enum FrameMutation {
    /// A bit of a byte of a frame (length prefix and kind included).
    Flip(Index, Index, u8),
    Drop(Index),
    Repeat(Index),
    Swap(Index, Index),
    /// A frame replaced with the other snapshot's frame at that place.
    Foreign(Index),
}

fn frame_mutation() -> impl Strategy<Value = FrameMutation> {
    prop_oneof![
        4 => (any::<Index>(), any::<Index>(), 0u8..8)
            .prop_map(|(f, i, b)| FrameMutation::Flip(f, i, b)),
        1 => any::<Index>().prop_map(FrameMutation::Drop),
        1 => any::<Index>().prop_map(FrameMutation::Repeat),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| FrameMutation::Swap(a, b)),
        1 => any::<Index>().prop_map(FrameMutation::Foreign),
    ]
}

/// The real snapshots are what the target and the corpus need: a begin
/// first, then its clock, parts, several of them for the stock lattices,
/// and an end; and each is taken whole by the receivers that should.
#[test]
fn real_snapshots_come_in_parts_and_are_taken() {
    for real in real_snapshots() {
        let kinds: Vec<u8> = real.frames.iter().map(|f| f[4]).collect();
        let chunks = kinds.iter().filter(|&&k| k == SNAPSHOT_CLOCK).count();
        let parts = kinds.iter().filter(|&&k| k == SNAPSHOT_PART).count();
        let mut want = vec![3];
        want.extend([SNAPSHOT_CLOCK].repeat(chunks));
        want.extend([SNAPSHOT_PART].repeat(parts));
        want.push(13);
        assert_eq!(kinds, want);
        assert!(chunks > 0, "{kinds:?}");
        assert_eq!(parts, [1, 2, 3][usize::from(real.ty)], "type {}: {kinds:?}", real.ty);
        let parts = parts as u64;
        let trusted = real.signer == Some(7);
        let report = run_real(real, &snapshot_stream(&real.frames.concat()), true);
        let want = SnapshotReport {
            plain: true,
            trusting: trusted,
            parts: [parts, 0, if trusted { parts } else { 0 }],
        };
        assert_eq!(report, want, "type {} signed by {:?}", real.ty, real.signer);
    }
}

/// Snapshots the harness builds are taken as built: the oracle, the
/// builder and the replica agree on the frames they should take.
#[test]
fn built_snapshots_are_taken_as_built() {
    let state = |key: &str, back: u64| {
        let stamp = Stamp { ts: Timestamp::new(harness::NOW - back, 0), source: identity(3).id() };
        postcard::to_allocvec(&Model::stamped(key, "v", stamp)).unwrap()
    };
    let entry = |n: u8, back: u64| {
        (*identity(n).id().as_bytes(), Timestamp::new(harness::NOW - back, 0).to_raw())
    };
    // Sources in order, as a replica sends them.
    let mut clock = vec![entry(3, 100), entry(4, 50)];
    clock.sort_unstable();
    let case = |sig: SnapshotSig| SnapshotCase {
        clock: clock.clone(),
        chunk: 1,
        sources: None,
        digest_of: None,
        begin: sig.clone(),
        parts: vec![
            PartCase { index: None, state: state("a", 300), sig: sig.clone() },
            PartCase { index: None, state: state("b", 200), sig: sig.clone() },
        ],
        end: Some(EndCase { parts: None, sig: sig.clone() }),
        twice: false,
        // The signer says hello itself (a strict replica takes a
        // snapshot only from a sender its trusted signer vouches for).
        peer: if matches!(sig, SnapshotSig::By(7)) { 7 } else { 2 },
        hello: true,
        sync: true,
        floor: None,
        late: 0,
    };
    let report = |plain, trusting, parts| SnapshotReport { plain, trusting, parts };
    let run = |case: &SnapshotCase| run_snapshot::<Model>(case, None);
    assert_eq!(run(&case(SnapshotSig::By(7))), report(true, true, [2, 0, 2]));
    assert_eq!(run(&case(SnapshotSig::By(2))), report(true, false, [2, 0, 0]));
    assert_eq!(run(&case(SnapshotSig::None)), report(true, false, [2, 0, 0]));
    // The trusted signer's snapshot from another sender: its floor is that
    // sender's word, so the strict replica refuses it.
    let mut passed_on = case(SnapshotSig::By(7));
    passed_on.peer = 2;
    assert_eq!(run(&passed_on), report(true, false, [2, 0, 0]));
    // Sent twice: a restarted snapshot is taken again.
    let mut twice = case(SnapshotSig::By(7));
    twice.twice = true;
    assert_eq!(run(&twice), report(true, true, [4, 0, 4]));
    // Cut short: the parts are merged, the clock is not taken.
    let mut cut = case(SnapshotSig::By(7));
    cut.end = None;
    assert_eq!(run(&cut), report(false, false, [2, 0, 2]));
    // A second part signed for another place, another snapshot, other
    // contents, as an end: the part before it is taken, it is refused.
    for how in [Stale::Place, Stale::Snapshot, Stale::Contents, Stale::Kind] {
        let mut stale = case(SnapshotSig::By(7));
        stale.parts[1].sig = SnapshotSig::Stale(7, how);
        assert_eq!(run(&stale), report(false, false, [1, 0, 1]), "{how:?}");
    }
    // Unsigned, the plain replica does not look at the parts' signatures.
    let mut unsigned = case(SnapshotSig::None);
    unsigned.parts[1].sig = SnapshotSig::Stale(7, Stale::Place);
    assert_eq!(run(&unsigned), report(true, false, [2, 0, 0]));
    // An end signed by another than the begin's signer.
    let mut end = case(SnapshotSig::By(7));
    end.end = Some(EndCase { parts: None, sig: SnapshotSig::By(2) });
    assert_eq!(run(&end), report(false, false, [2, 0, 2]));
    // The clock in one chunk: taken as well.
    let mut one = case(SnapshotSig::By(7));
    one.chunk = 0;
    assert_eq!(run(&one), report(true, true, [2, 0, 2]));
    // A clock other than the signed digest's, or than announced, or too far
    // ahead: refused before any part.
    let mut forged = case(SnapshotSig::By(7));
    forged.digest_of = Some(vec![entry(3, 100)]);
    assert_eq!(run(&forged), report(false, false, [0, 0, 0]));
    for sources in [1, 3] {
        let mut short = case(SnapshotSig::By(7));
        short.sources = Some(sources);
        assert_eq!(run(&short), report(false, false, [0, 0, 0]), "{sources} announced");
    }
    let mut ahead = case(SnapshotSig::None);
    ahead.late = 0;
    ahead.clock = vec![entry(3, 100), (*identity(5).id().as_bytes(), u64::MAX)];
    assert_eq!(run(&ahead), report(false, false, [0, 0, 0]));
}

// A signature check takes milliseconds in a debug build, and a signed
// snapshot has one a frame at each of two receivers: 128 generated
// snapshots and 64 real ones keep this under 10 s.
proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// The `snapshot` target's invariants over generated snapshots.
    #[test]
    fn generated_snapshots_keep_the_trust_rules(
        case in snapshot_case(),
        seeded in any::<bool>(),
    ) {
        run_snapshot::<Model>(&case, seeded.then(|| Model::set("mine", "1")));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Real snapshots, unsigned and signed by the trusted signer and
    /// another, in one part and in several, with bits flipped and frames
    /// dropped, repeated, swapped or taken from another snapshot.
    #[test]
    fn mutated_real_snapshots_keep_the_trust_rules(
        which in any::<Index>(),
        mutations in prop::collection::vec(frame_mutation(), 0..3),
        sync in any::<bool>(),
    ) {
        let real = &real_snapshots()[which.index(real_snapshots().len())];
        let mut frames = real.frames.clone();
        for m in &mutations {
            if frames.is_empty() {
                break;
            }
            let n = frames.len();
            match m {
                FrameMutation::Flip(f, i, bit) => {
                    let frame = &mut frames[f.index(n)];
                    let i = i.index(frame.len());
                    frame[i] ^= 1 << bit;
                }
                FrameMutation::Drop(f) => {
                    frames.remove(f.index(n));
                }
                FrameMutation::Repeat(f) => {
                    let f = f.index(n);
                    frames.insert(f, frames[f].clone());
                }
                FrameMutation::Swap(a, b) => frames.swap(a.index(n), b.index(n)),
                FrameMutation::Foreign(f) => {
                    let f = f.index(n.min(real.other.len()));
                    frames[f] = real.other[f].clone();
                }
            }
        }
        let report = run_real(real, &snapshot_stream(&frames.concat()), sync);
        if mutations.is_empty() {
            prop_assert!(report.plain, "a plain replica refused a real snapshot");
            prop_assert_eq!(report.trusting, real.signer == Some(7));
        }
    }
}
