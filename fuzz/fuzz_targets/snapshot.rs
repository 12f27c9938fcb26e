//! Snapshots, as they travel in parts (a SnapshotBegin, kind 3: postcard
//! `(u64, [u8; 32])`, the size and digest of the clock, then
//! `Option<Signature>`, then optionally `(Option<u64>, Timestamp)`, the
//! state's size hint and the sender's collection floor;
//! SnapshotClock chunks, kind 14: `Vec<(SourceId,
//! Timestamp)>`; SnapshotParts, kind 12: index, `T::Update`,
//! `Option<Signature>`; a SnapshotEnd, kind 13: how many parts,
//! `Option<Signature>`), for three state types, handed to a plain replica,
//! a strict one that trusts nobody's snapshots and a strict one that trusts
//! one signer. See `repred_fuzz::harness::run_snapshot_frames` for the
//! oracle and the invariants.
//!
//! Input: `S` then `[type u8][bits u8: 1 Hello first, 2 Sync after, 4 a
//! local write first][peer u8]` and a stream of frames, each made a whole
//! snapshot frame (the seed corpus: the snapshot frames of real exchanges,
//! multi-part ones included); or anything else, read as a structured
//! [`Input`] through `arbitrary`: a clock of any sources and timestamps in
//! chunks of any size, announced right or not, digested right or over
//! other entries; parts from stamped writes (or any bytes) at their place
//! or any index; an end with the right or any part count, or none; each
//! frame's signature absent, random, real, or real but over another
//! snapshot, place, contents or kind of frame.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use repred::{LwwMap, OrSet, Reduce, SourceId, Stamp, Timestamp};
use repred_fuzz::harness::{
    EndCase, NOW, PartCase, SnapshotCase, SnapshotSig, Stale, identity, raw_source, run_snapshot,
    run_snapshot_frames, snapshot_stream,
};
use repred_suite::{Model, Write};

type Lww = LwwMap<String, String>;

#[derive(Arbitrary, Debug)]
enum Ts {
    /// Within a few minutes of now (some pass the skew check, some not).
    Near {
        back: i32,
        counter: u16,
    },
    Raw(u64),
    Zero,
    Max,
}

impl Ts {
    fn raw(&self) -> u64 {
        match *self {
            Ts::Near { back, counter } => {
                let millis = (NOW as i64 + i64::from(back) / 16_000) as u64;
                Timestamp::new(millis, counter).to_raw()
            }
            Ts::Raw(raw) => raw,
            Ts::Zero => 0,
            Ts::Max => u64::MAX,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Src {
    /// `identity(n & 7)`'s id: the replicas' own (1), the trusted (7)...
    Known(u8),
    Raw([u8; 16]),
    Zero,
}

impl Src {
    fn bytes(&self) -> [u8; 16] {
        match self {
            Src::Known(n) => *identity(n & 7).id().as_bytes(),
            Src::Raw(bytes) => *bytes,
            Src::Zero => [0; 16],
        }
    }

    fn id(&self) -> SourceId {
        raw_source(self.bytes())
    }
}

fn stamp(ts: &Ts, src: &Src) -> Stamp {
    Stamp { ts: Timestamp::from_raw(ts.raw()), source: src.id() }
}

#[derive(Arbitrary, Clone, Copy, Debug)]
enum Sig {
    None,
    Raw([u8; 32], [u8; 32], [u8; 32]),
    By(u8),
    Stale(u8, u8),
}

impl Sig {
    fn case(self) -> SnapshotSig {
        match self {
            Sig::None => SnapshotSig::None,
            Sig::Raw(key, a, b) => SnapshotSig::Raw { key, sig: (a, b) },
            Sig::By(n) => SnapshotSig::By(n & 7),
            Sig::Stale(n, how) => SnapshotSig::Stale(
                n & 7,
                [Stale::Snapshot, Stale::Place, Stale::Contents, Stale::Kind][usize::from(how % 4)],
            ),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum OrOp {
    Add(u32, Ts, Src),
    Remove(u32),
}

/// A `Model` write: key, stamp (or none), value (or a delete).
type ModelWrite = (u8, Option<(Ts, Src)>, Option<String>);

/// An `LwwMap<String, String>` write: key, value (or a delete), stamp.
type LwwWrite = (u8, Option<String>, Ts, Src);

/// A part: the index it claims (`None`: its place), its state, its
/// signature (`None`: as the begin's, over the part's own digest).
#[derive(Arbitrary, Debug)]
struct Part<S> {
    index: Option<u64>,
    state: S,
    sig: Option<Sig>,
}

/// The parts, of one of the three types.
#[derive(Arbitrary, Debug)]
enum Parts {
    /// Each part: `Model` writes.
    Model(Vec<Part<Vec<ModelWrite>>>),
    /// Each part: stamped writes into an `LwwMap<String, String>`, then its
    /// snapshot.
    Lww(Vec<Part<Vec<LwwWrite>>>),
    /// Each part: stamped adds and removes in an `OrSet<u32>`, then its
    /// snapshot.
    OrSet(Vec<Part<Vec<OrOp>>>),
    /// Each part: any bytes as a part of one of the three types.
    Raw(u8, Vec<Part<Vec<u8>>>),
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// The clock's entries.
    clock: Vec<(Src, Ts)>,
    /// Entries per clock chunk (0: one chunk of all, even none).
    chunk: u8,
    /// How many sources the begin announces (`None`: as many as sent).
    sources: Option<u64>,
    /// The entries the begin's digest is of (`None`: those sent).
    digest_of: Option<Vec<(Src, Ts)>>,
    begin: Sig,
    parts: Parts,
    /// The end: the part count it claims (`None`: the right one), its
    /// signature (`None`: as the begin's); no end: cut short.
    end: Option<(Option<u64>, Option<Sig>)>,
    twice: bool,
    peer: u8,
    hello: bool,
    sync: bool,
    late: u16,
    seeded: bool,
    /// The floor the begin ends with (`None`: none).
    floor: Option<Ts>,
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).expect("encode")
}

fn model_part(writes: &[ModelWrite]) -> Vec<u8> {
    let update: <Model as Reduce>::Update = writes
        .iter()
        .map(|(key, stamp, value)| {
            let stamp = stamp.as_ref().map(|(ts, src)| self::stamp(ts, src));
            (format!("k{}", key % 8), Write { stamp, value: value.clone() })
        })
        .collect();
    encode(&update)
}

fn lww_part(writes: &[LwwWrite]) -> Vec<u8> {
    let mut map = Lww::default();
    for (key, value, ts, src) in writes {
        let key = format!("k{}", key % 8);
        let mut write = match value {
            Some(value) => Lww::set(key, value.clone()),
            None => Lww::delete(key),
        };
        Lww::stamp(&mut write, stamp(ts, src));
        map.reduce(write);
    }
    encode(&map.snapshot())
}

fn orset_part(ops: &[OrOp]) -> Vec<u8> {
    let mut set = OrSet::<u32>::default();
    for op in ops {
        let mut update = match op {
            OrOp::Add(x, ts, src) => {
                let mut add = OrSet::add(*x % 16);
                OrSet::stamp(&mut add, stamp(ts, src));
                add
            }
            OrOp::Remove(x) => set.remove(&(*x % 16)),
        };
        OrSet::<u32>::stamp(&mut update, stamp(&Ts::Near { back: 0, counter: 0 }, &Src::Known(3)));
        set.reduce(update);
    }
    encode(&set.snapshot())
}

/// What to hand the receivers: a case, or frames (after a Hello from
/// `identity(hello)` if given, before a Sync if `sync`).
#[derive(Clone, Copy)]
enum Job<'a> {
    Case(&'a SnapshotCase),
    Frames { frames: &'a [Vec<u8>], hello: Option<u8>, sync: bool },
}

/// Runs a job against replicas of the type `kind` names.
fn run(kind: u8, seeded: bool, job: Job<'_>) {
    fn go<T: Reduce + Default + Clone + PartialEq + std::fmt::Debug>(
        job: Job<'_>,
        seed: Option<T::Update>,
    ) {
        match job {
            Job::Case(case) => {
                run_snapshot::<T>(case, seed);
            }
            Job::Frames { frames, hello, sync } => {
                run_snapshot_frames::<T>(frames, hello, sync, 0, seed);
            }
        }
    }
    match kind % 3 {
        0 => go::<Model>(job, seeded.then(|| Model::set("mine", "1"))),
        1 => go::<Lww>(job, seeded.then(|| Lww::set("mine".into(), "1".into()))),
        _ => go::<OrSet<u32>>(job, seeded.then(|| OrSet::add(1))),
    }
}

fn entries(clock: &[(Src, Ts)]) -> Vec<([u8; 16], u64)> {
    clock.iter().map(|(src, ts)| (src.bytes(), ts.raw())).collect()
}

fn parts<S>(parts: &[Part<S>], begin: Sig, state: impl Fn(&S) -> Vec<u8>) -> Vec<PartCase> {
    parts
        .iter()
        .map(|p| PartCase {
            index: p.index,
            state: state(&p.state),
            sig: p.sig.unwrap_or(begin).case(),
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    if let [b'S', kind, bits, peer, stream @ ..] = data {
        let hello = (bits & 1 != 0).then_some(*peer);
        let frames = snapshot_stream(stream);
        run(*kind, bits & 4 != 0, Job::Frames { frames: &frames, hello, sync: bits & 2 != 0 });
        return;
    }
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else { return };
    let begin = input.begin;
    let (kind, parts) = match &input.parts {
        Parts::Model(p) => (0, parts(p, begin, |w| model_part(w))),
        Parts::Lww(p) => (1, parts(p, begin, |w| lww_part(w))),
        Parts::OrSet(p) => (2, parts(p, begin, |o| orset_part(o))),
        Parts::Raw(kind, p) => (*kind, parts(p, begin, |b| b.clone())),
    };
    let case = SnapshotCase {
        clock: entries(&input.clock),
        chunk: usize::from(input.chunk),
        sources: input.sources,
        digest_of: input.digest_of.as_deref().map(entries),
        begin: begin.case(),
        parts,
        end: input.end.map(|(parts, sig)| EndCase { parts, sig: sig.unwrap_or(begin).case() }),
        twice: input.twice,
        peer: input.peer & 7,
        hello: input.hello,
        sync: input.sync,
        late: input.late,
        floor: input.floor.as_ref().map(Ts::raw),
    };
    run(kind, input.seeded, Job::Case(&case));
});
