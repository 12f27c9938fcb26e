//! Snapshot frames (kind 3: postcard `(Clock, T::Update)`, then postcard
//! `Option<Signature>`) for three state types, handed to a plain replica, a
//! strict one that trusts nobody's snapshots and a strict one that trusts
//! one signer. See `repred_fuzz::harness::run_snapshot_frame` for the
//! invariants.
//!
//! Input: `S` then `[type u8][bits u8: 1 Hello first, 2 Sync after][peer
//! u8]` and a whole Snapshot frame (the seed corpus: frames from real
//! exchanges), or anything else, read as a structured [`Input`] through
//! `arbitrary`: clocks with any sources and timestamps, states built from
//! stamped writes (or any bytes), signatures absent, random, real or over
//! another body.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use repred::{LwwMap, OrSet, Reduce, SourceId, Stamp, Timestamp};
use repred_fuzz::harness::{
    NOW, SnapshotCase, SnapshotSig, identity, raw_source, run_snapshot, run_snapshot_frame,
};
use repred_suite::{Model, Write};

type Lww = LwwMap<String, String>;

#[derive(Arbitrary, Debug)]
enum Ts {
    /// Within a minute or so of now (some pass the skew check, some not).
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

#[derive(Arbitrary, Debug)]
enum Sig {
    None,
    Raw([u8; 32], [u8; 32], [u8; 32]),
    By(u8),
    Stale(u8),
}

#[derive(Arbitrary, Debug)]
enum OrOp {
    Add(u32, Ts, Src),
    Remove(u32),
}

/// A `Model` write: key, stamp (or none), value (or a delete).
type ModelWrite = (u8, Option<(Ts, Src)>, Option<String>);

#[derive(Arbitrary, Debug)]
enum State {
    /// `Model` writes: key, stamp (or none), value (or a delete).
    Model(Vec<ModelWrite>),
    /// Stamped writes into an `LwwMap<String, String>`, then its snapshot.
    Lww(Vec<(u8, Option<String>, Ts, Src)>),
    /// Stamped adds and removes in an `OrSet<u32>`, then its snapshot.
    OrSet(Vec<OrOp>),
    /// Any bytes as the state of one of the three types.
    Raw(u8, Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Input {
    clock: Vec<(Src, Ts)>,
    state: State,
    sig: Sig,
    peer: u8,
    hello: bool,
    sync: bool,
    late: u16,
    seeded: bool,
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).expect("encode")
}

/// Runs `frame` (or `case`) against replicas of the type `kind` names.
fn run(kind: u8, seeded: bool, case: Result<&SnapshotCase, (&[u8], Option<u8>, bool)>) {
    fn go<T: Reduce + Default + Clone + PartialEq + std::fmt::Debug>(
        case: Result<&SnapshotCase, (&[u8], Option<u8>, bool)>,
        seed: Option<T::Update>,
    ) {
        match case {
            Ok(case) => {
                run_snapshot::<T>(case, seed);
            }
            Err((frame, hello, sync)) => {
                run_snapshot_frame::<T>(frame, hello, sync, 0, seed);
            }
        }
    }
    match kind % 3 {
        0 => go::<Model>(case, seeded.then(|| Model::set("mine", "1"))),
        1 => go::<Lww>(case, seeded.then(|| Lww::set("mine".into(), "1".into()))),
        _ => go::<OrSet<u32>>(case, seeded.then(|| OrSet::add(1))),
    }
}

fuzz_target!(|data: &[u8]| {
    if let [b'S', kind, bits, peer, frame @ ..] = data {
        let hello = (bits & 1 != 0).then_some(*peer);
        run(*kind, bits & 4 != 0, Err((frame, hello, bits & 2 != 0)));
        return;
    }
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else { return };
    let (kind, state) = match &input.state {
        State::Model(writes) => {
            let update: <Model as Reduce>::Update = writes
                .iter()
                .map(|(key, stamp, value)| {
                    let stamp = stamp.as_ref().map(|(ts, src)| self::stamp(ts, src));
                    (format!("k{}", key % 8), Write { stamp, value: value.clone() })
                })
                .collect();
            (0, encode(&update))
        }
        State::Lww(writes) => {
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
            (1, encode(&map.snapshot()))
        }
        State::OrSet(ops) => {
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
                OrSet::<u32>::stamp(
                    &mut update,
                    stamp(&Ts::Near { back: 0, counter: 0 }, &Src::Known(3)),
                );
                set.reduce(update);
            }
            (2, encode(&set.snapshot()))
        }
        State::Raw(kind, bytes) => (*kind, bytes.clone()),
    };
    let case = SnapshotCase {
        clock: input.clock.iter().map(|(src, ts)| (src.bytes(), ts.raw())).collect(),
        state,
        sig: match input.sig {
            Sig::None => SnapshotSig::None,
            Sig::Raw(key, a, b) => SnapshotSig::Raw { key, sig: (a, b) },
            Sig::By(n) => SnapshotSig::By(n & 7),
            Sig::Stale(n) => SnapshotSig::Stale(n & 7),
        },
        peer: input.peer & 7,
        hello: input.hello,
        sync: input.sync,
        late: input.late,
    };
    run(kind, input.seeded, Ok(&case));
});
