//! The drivers and invariants of the fuzz targets, and the real exchanges
//! their seed corpus comes from.
//!
//! Shared word for word by the `cargo fuzz` targets (through the
//! `repred-fuzz` library) and by the main workspace's
//! `tests/fuzz_generators.rs` (through `#[path]`), so that what CI runs with
//! proptest checks exactly what the fuzzer checks. It depends only on
//! `repred`, `repred_suite` (the `Model` fixture) and `postcard`.
//!
//! Every check is an `assert!`: a violated invariant is a panic, which
//! libFuzzer reports as a crash and proptest as a failure.
#![allow(dead_code)]

use std::fmt::Debug;

use repred::{
    Clock, ClockSummary, Config, Hello, Identity, PROTOCOL_VERSION, Reduce, Replica, SessionError,
    Signature, SourceId, StreamId, StreamOpts, Timestamp,
};
use repred_suite::Model;

/// Wall time of every exchange, as in the integration tests.
pub const NOW: u64 = 1_700_000_000_000;

/// The replica under test requires signatures (and signs its own updates).
pub const STRICT: u8 = 1;
/// The replica under test relays lazily.
pub const LAZY: u8 = 2;
/// The replica under test remembers at most 4 unknown sources per stream.
pub const FEW_SOURCES: u8 = 4;
/// The replica under test keeps a history of 4 records.
pub const SHORT_HISTORY: u8 = 8;
/// The replica under test trusts snapshots signed by [`identity`]`(2)`.
pub const TRUST: u8 = 16;

/// Most bytes one op of a session input carries (its length is a u16).
pub const MAX_OP: usize = u16::MAX as usize;

/// A source id from a name.
pub fn id(name: &str) -> SourceId {
    SourceId::new(name).expect("a valid id")
}

/// The `n`th signing identity of the exchanges (deterministic).
pub fn identity(n: u8) -> Identity {
    Identity::from_secret([n; 32])
}

/// The configuration of the replica under test for `flags`.
pub fn config(flags: u8) -> Config {
    let mut config =
        Config::default().require_signatures(flags & STRICT != 0).lazy_relay(flags & LAZY != 0);
    if flags & FEW_SOURCES != 0 {
        config = config.max_unknown_sources(4);
    }
    if flags & SHORT_HISTORY != 0 {
        config = config.history_limit(4);
    }
    if flags & TRUST != 0 {
        config = config.trust_snapshots_from([identity(2).id()]);
    }
    config
}

/// The replica under test, always the same for the same flags: an id (a
/// signing identity when strict), a fixed life and two local writes.
pub fn target(flags: u8) -> Replica<Model> {
    let config = config(flags);
    let replica = if flags & STRICT != 0 {
        Replica::with_identity(identity(1), Model::default(), config)
    } else {
        Replica::with_config(id("me"), Model::default(), config)
    };
    let mut replica = replica.with_life(1);
    replica.update(NOW - 2_000, Model::set("mine", "1")).expect("a local write");
    replica.update(NOW - 1_000, Model::set("shared", "me")).expect("a local write");
    replica
}

/// A stream's options from two bits of the input.
pub fn opts(selector: u8) -> StreamOpts {
    match selector & 3 {
        0 => StreamOpts::default(),
        1 => StreamOpts::receive_only(),
        2 => StreamOpts::default().tail(false),
        _ => StreamOpts::send_only(),
    }
}

// ---------------------------------------------------------------------------
// The session target.
//
// Input: `[flags u8][stream options u8: 2 bits per slot]` then ops, each
// `[code u8][len u16 LE][len bytes]` (a last op may be cut short):
// `code & 3` is one of four stream slots, `(code >> 2) & 3` what to do:
//   0  feed the bytes to the slot's stream (`Replica::handle`),
//   1  let `len` milliseconds pass (then `handle_timeout`),
//   2  a local write of the bytes as a key,
//   3  close (`len` even) or abort the slot's stream and open a new one with
//      options `len >> 1`.
// After every op each stream is polled until quiet, events are drained and
// `handle_timeout` runs.

/// What to do in one op of a session input.
pub const OP_BYTES: u8 = 0;
/// Let time pass.
pub const OP_TIME: u8 = 1;
/// A local write.
pub const OP_WRITE: u8 = 2;
/// Close or abort a stream and open another.
pub const OP_REOPEN: u8 = 3;

/// Builds session inputs.
#[derive(Clone, Debug, Default)]
pub struct Recorder {
    /// The input so far.
    pub input: Vec<u8>,
}

impl Recorder {
    /// An input for the replica `target(flags)` whose four streams have
    /// options `opts(selectors >> 2 * slot)`.
    pub fn new(flags: u8, selectors: u8) -> Self {
        Self { input: vec![flags, selectors] }
    }

    /// Bytes arriving on a slot's stream (split into ops of at most
    /// [`MAX_OP`] bytes).
    pub fn bytes(&mut self, slot: u8, bytes: &[u8]) {
        for chunk in bytes.chunks(MAX_OP) {
            self.op(slot, OP_BYTES, chunk.len() as u16, chunk);
        }
    }

    /// Time passing.
    pub fn time(&mut self, millis: u16) {
        self.op(0, OP_TIME, millis, &[]);
    }

    fn op(&mut self, slot: u8, what: u8, len: u16, payload: &[u8]) {
        self.input.push((what << 2) | (slot & 3));
        self.input.extend_from_slice(&len.to_le_bytes());
        self.input.extend_from_slice(payload);
    }
}

/// One stream of the replica under test, and the bytes of the frame it is
/// in the middle of (to cut the input at frame ends).
struct Slot {
    id: StreamId,
    open: bool,
    partial: Vec<u8>,
}

/// What a session run did, for tests that want to know it reached deep.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionReport {
    /// `handle` calls.
    pub handled: u64,
    /// `handle` calls refused with a peer error.
    pub refused: u64,
    /// Remote updates applied.
    pub applied: u64,
    /// Snapshots merged.
    pub snapshots: u64,
    /// Bytes the replica sent.
    pub sent: u64,
}

/// The session target's driver.
pub struct SessionRun {
    replica: Replica<Model>,
    slots: Vec<Slot>,
    now: u64,
    out: Vec<u8>,
    report: SessionReport,
}

/// How many bytes of `rest` to feed so that at most one frame completes:
/// up to the end of the frame that `partial` began (or `rest` begins).
fn cut(partial: &[u8], rest: &[u8]) -> usize {
    let have = partial.len().min(4);
    let need = 4 - have;
    if rest.len() < need {
        return rest.len();
    }
    let mut header = [0u8; 4];
    header[..have].copy_from_slice(&partial[..have]);
    header[have..].copy_from_slice(&rest[..need]);
    let total = 4 + u32::from_le_bytes(header) as usize;
    (total - partial.len()).min(rest.len())
}

fn frame_done(partial: &[u8]) -> bool {
    partial.len() >= 4
        && partial.len() == 4 + u32::from_le_bytes(partial[..4].try_into().unwrap()) as usize
}

/// The clock invariant of every replica here: no source at timestamp zero
/// (zero means "nothing seen" and is never issued).
pub fn check_clock(clock: &Clock) {
    for (source, ts) in clock.iter() {
        assert_ne!(ts, Timestamp::ZERO, "the clock holds timestamp zero for {source:?}");
    }
}

/// Polls every stream of `replica` until quiet (asserting that a
/// well-formed replica never fails to transmit), drains its events and runs
/// its timers. Returns the bytes sent.
pub fn settle<T: Reduce>(replica: &mut Replica<T>, now: u64, streams: &[StreamId]) -> u64 {
    let mut out = Vec::new();
    let mut sent = 0;
    for &id in streams {
        for round in 0.. {
            assert!(round < 100_000, "stream {id:?} never went quiet");
            match replica.poll_transmit(id, &mut out) {
                Ok(0) => break,
                Ok(n) => sent += n as u64,
                Err(e) => panic!("poll_transmit failed on a well-formed replica: {e}"),
            }
            out.clear();
        }
    }
    for n in 0.. {
        assert!(n < 1_000_000, "events never ran out");
        if replica.poll_event().is_none() {
            break;
        }
    }
    replica.handle_timeout(now);
    sent
}

impl SessionRun {
    fn new(flags: u8, selectors: u8) -> Self {
        let mut replica = target(flags);
        let slots = (0..4)
            .map(|slot| {
                let id = replica.open(opts(selectors >> (2 * slot))).expect("open");
                Slot { id, open: true, partial: Vec::new() }
            })
            .collect();
        Self { replica, slots, now: NOW, out: Vec::new(), report: SessionReport::default() }
    }

    fn feed(&mut self, slot: usize, mut bytes: &[u8]) {
        let Slot { id, open, partial } = &mut self.slots[slot];
        while *open && !bytes.is_empty() {
            let take = cut(partial, bytes);
            let (piece, rest) = bytes.split_at(take);
            bytes = rest;
            let before = (self.replica.state().clone(), self.replica.clock().clone());
            self.report.handled += 1;
            match self.replica.handle(*id, self.now, piece) {
                Ok(()) => {
                    partial.extend_from_slice(piece);
                    if frame_done(partial) {
                        partial.clear();
                    }
                }
                Err(e) => {
                    assert!(
                        matches!(e, SessionError::Peer(_) | SessionError::NotOpen(_)),
                        "handle failed with {e:?}, not a peer error"
                    );
                    assert!(
                        before.0 == *self.replica.state(),
                        "a refused frame ({e}) changed the state"
                    );
                    assert!(
                        before.1 == *self.replica.clock(),
                        "a refused frame ({e}) moved the clock"
                    );
                    self.report.refused += 1;
                    *open = false;
                }
            }
        }
    }

    fn settle(&mut self) {
        let ids: Vec<StreamId> = self.slots.iter().map(|s| s.id).collect();
        self.report.sent += settle(&mut self.replica, self.now, &ids);
        for slot in &mut self.slots {
            slot.open &= self.replica.open_streams().any(|id| id == slot.id);
        }
        check_clock(self.replica.clock());
        let _ = &self.out;
    }
}

/// Runs one session input against the replica under test, checking after
/// every op: no panic; a refused frame leaves state and clock as they were
/// before it; the clock never holds timestamp zero; `poll_transmit` never
/// fails.
pub fn run_session(data: &[u8]) -> SessionReport {
    let (&flags, data) = data.split_first().unwrap_or((&0, &[]));
    let (&selectors, mut data) = data.split_first().unwrap_or((&0, &[]));
    let mut run = SessionRun::new(flags, selectors);
    run.settle();
    while let Some((&code, rest)) = data.split_first() {
        let len = match rest {
            [a, b, ..] => u16::from_le_bytes([*a, *b]) as usize,
            [a] => *a as usize,
            [] => 0,
        };
        let rest = &rest[rest.len().min(2)..];
        let (payload, rest) = rest.split_at(len.min(rest.len()));
        data = rest;
        let slot = usize::from(code & 3);
        match (code >> 2) & 3 {
            OP_BYTES => run.feed(slot, payload),
            OP_TIME => run.now += len as u64,
            OP_WRITE => {
                let key = String::from_utf8_lossy(&payload[..payload.len().min(16)]).into_owned();
                run.replica.update(run.now, Model::set(&key, "w")).expect("a local write");
            }
            _ => {
                let old = run.slots[slot].id;
                if len % 2 == 0 {
                    run.replica.close(old);
                } else {
                    run.replica.abort(old);
                }
                let ids: Vec<StreamId> = vec![old];
                run.report.sent += settle(&mut run.replica, run.now, &ids);
                let id = run.replica.open(opts((len >> 1) as u8)).expect("open");
                run.slots[slot] = Slot { id, open: true, partial: Vec::new() };
            }
        }
        run.settle();
    }
    let stats = run.replica.stats();
    run.report.applied = stats.applied;
    run.report.snapshots = stats.snapshots;
    // The replica is still usable.
    run.replica.update(run.now, Model::set("after", "ok")).expect("a write after the input");
    run.report
}

// ---------------------------------------------------------------------------
// Real exchanges: the seed corpus of the session target, and what
// tests/fuzz_generators.rs mutates.

/// A peer of the exchanges: unsigned under `name`, or signed as
/// `identity(n)`.
pub fn peer(name: &str, signer: Option<u8>, config: Config) -> Replica<Model> {
    match signer {
        Some(n) => Replica::with_identity(identity(n), Model::default(), config),
        None => Replica::with_config(id(name), Model::default(), config),
    }
    .with_life(7)
}

/// Writes `n` keys `prefix0..` into `replica`, a millisecond apart, ending
/// before [`NOW`].
pub fn writes(replica: &mut Replica<Model>, prefix: &str, n: u64) {
    for i in 0..n {
        let key = format!("{prefix}{}", i % 5);
        replica.update(NOW - 10_000 + i, Model::set(&key, &format!("v{i}"))).expect("a write");
    }
}

/// Links two replicas with one stream each and pumps until quiet.
pub fn sync(a: &mut Replica<Model>, b: &mut Replica<Model>) {
    let sa = a.open(StreamOpts::default().tail(false)).expect("open");
    let sb = b.open(StreamOpts::default().tail(false)).expect("open");
    let mut buf = Vec::new();
    for _ in 0..1_000 {
        let mut moved = false;
        while a.poll_transmit(sa, &mut buf).unwrap_or(0) > 0 {}
        moved |= !buf.is_empty();
        let _ = b.handle(sb, NOW, &buf);
        buf.clear();
        while b.poll_transmit(sb, &mut buf).unwrap_or(0) > 0 {}
        moved |= !buf.is_empty();
        let _ = a.handle(sa, NOW, &buf);
        buf.clear();
        while a.poll_event().is_some() {}
        while b.poll_event().is_some() {}
        if !moved {
            break;
        }
    }
}

/// Runs `target(flags)` against `peers` (each on its own slot, with the
/// peer's side opened with the given options) until quiet, and records
/// every chunk each peer sent, as it sent it, into a session input.
/// `close` closes the first peer's stream after `close` rounds.
pub fn exchange(
    flags: u8,
    selectors: u8,
    peers: &mut [(Replica<Model>, StreamOpts)],
    close: Option<usize>,
) -> Vec<u8> {
    let mut me = target(flags);
    let mut rec = Recorder::new(flags, selectors);
    let mine: Vec<StreamId> =
        (0..4).map(|slot| me.open(opts(selectors >> (2 * slot))).expect("open")).collect();
    let theirs: Vec<StreamId> =
        peers.iter_mut().map(|(p, o)| p.open(o.clone()).expect("open")).collect();
    let mut buf = Vec::new();
    let mut now = NOW;
    for round in 0..200 {
        let mut moved = false;
        for (i, (p, _)) in peers.iter_mut().enumerate() {
            if close == Some(round) && i == 0 {
                p.close(theirs[0]);
            }
            loop {
                buf.clear();
                if p.poll_transmit(theirs[i], &mut buf).unwrap_or(0) == 0 {
                    break;
                }
                moved = true;
                rec.bytes(i as u8, &buf);
                let _ = me.handle(mine[i], now, &buf);
            }
            loop {
                buf.clear();
                if me.poll_transmit(mine[i], &mut buf).unwrap_or(0) == 0 {
                    break;
                }
                moved = true;
                let _ = p.handle(theirs[i], now, &buf);
            }
            while p.poll_event().is_some() {}
            p.handle_timeout(now);
        }
        while me.poll_event().is_some() {}
        me.handle_timeout(now);
        if !moved {
            // Let lazy relay's timers fire once before calling it quiet.
            if me.poll_timeout().is_some_and(|t| t > now) {
                let wait = me.poll_timeout().unwrap() - now;
                let wait = wait.min(u64::from(u16::MAX)) as u16;
                rec.time(wait);
                now += u64::from(wait);
                continue;
            }
            break;
        }
    }
    rec.input
}

/// The real exchanges, by name: signed and unsigned, lazy relay, history
/// limits small enough to force snapshots, proofs and advances, closes.
pub fn transcripts() -> Vec<(&'static str, Vec<u8>)> {
    let plain = Config::default;
    let mut out = Vec::new();

    // One unsigned peer with a few writes.
    let mut p = peer("p1", None, plain());
    writes(&mut p, "k", 6);
    out.push(("plain-one-peer", exchange(0, 0, &mut [(p, StreamOpts::default())], None)));

    // Two peers; one keeps a history of 2 records, so the target (which
    // has none of it) gets a snapshot from it.
    let mut p = peer("p1", None, plain().history_limit(2));
    writes(&mut p, "a", 12);
    let mut q = peer("p2", None, plain());
    writes(&mut q, "b", 4);
    sync(&mut p, &mut q);
    writes(&mut q, "c", 3);
    out.push((
        "plain-snapshot",
        exchange(0, 0, &mut [(p, StreamOpts::default()), (q, StreamOpts::default())], None),
    ));

    // A strict target and a signed peer; an unsigned one is refused.
    let mut p = peer("", Some(2), plain().require_signatures(true));
    writes(&mut p, "s", 5);
    let mut q = peer("p2", None, plain());
    writes(&mut q, "u", 3);
    out.push((
        "strict-signed",
        exchange(STRICT, 0, &mut [(p, StreamOpts::default()), (q, StreamOpts::default())], None),
    ));

    // Signed snapshots: trusted, then refused.
    for (name, flags) in [("strict-trusted-snapshot", STRICT | TRUST), ("strict-refused", STRICT)] {
        let mut p = peer("", Some(2), plain().require_signatures(true).history_limit(2))
            .sign_snapshots_with(identity(2));
        writes(&mut p, "t", 10);
        out.push((name, exchange(flags, 0, &mut [(p, StreamOpts::default())], None)));
    }

    // Lazy relay: three peers that all have the same origin's writes.
    let mut origin = peer("origin", None, plain());
    writes(&mut origin, "o", 6);
    let mut peers = Vec::new();
    for (name, n) in [("r1", 1), ("r2", 2), ("r3", 3)] {
        let mut r = peer(name, None, plain().lazy_relay(true));
        sync(&mut r, &mut origin);
        writes(&mut r, &format!("own{n}-"), n);
        peers.push((r, StreamOpts::default()));
    }
    out.push(("lazy-three-relays", exchange(LAZY, 0, &mut peers, None)));

    // Signed lazy relay into a strict lazy target.
    let mut origin = peer("", Some(3), plain().require_signatures(true));
    writes(&mut origin, "x", 4);
    let mut peers = Vec::new();
    for n in [4, 5] {
        let mut r = peer("", Some(n), plain().require_signatures(true).lazy_relay(true));
        sync(&mut r, &mut origin);
        peers.push((r, StreamOpts::default()));
    }
    out.push(("strict-lazy-signed", exchange(STRICT | LAZY, 0, &mut peers, None)));

    // Proofs and advances: a relay took an older write after a newer one
    // of the same key, so it changed nothing there.
    for (name, signed, flags) in [("advances", false, 0), ("proofs", true, STRICT)] {
        let signer = |n| signed.then_some(n);
        let strictness = plain().require_signatures(signed);
        let mut o1 = peer("o1", signer(6), strictness.clone());
        let mut o2 = peer("o2", signer(7), strictness.clone());
        o1.update(NOW - 5_000, Model::set("k", "old")).unwrap();
        o2.update(NOW - 4_000, Model::set("k", "new")).unwrap();
        let mut relay = peer("relay", signer(8), strictness);
        sync(&mut relay, &mut o2);
        sync(&mut relay, &mut o1);
        out.push((name, exchange(flags, 0, &mut [(relay, StreamOpts::default())], None)));
    }

    // Many sources against a target that remembers few.
    let mut p = peer("many", None, plain());
    for n in 0..40 {
        let mut o = peer(&format!("src{n}"), None, plain());
        writes(&mut o, "m", 1);
        sync(&mut p, &mut o);
    }
    out.push(("few-sources", exchange(FEW_SOURCES, 0, &mut [(p, StreamOpts::default())], None)));

    // A target with a short history, every stream option, a peer that
    // closes, one that does not tail.
    let mut p = peer("p1", None, plain());
    writes(&mut p, "h", 8);
    let mut q = peer("p2", None, plain());
    writes(&mut q, "i", 2);
    let mut r = peer("p3", None, plain());
    writes(&mut r, "j", 2);
    let mut s = peer("p4", None, plain());
    writes(&mut s, "l", 2);
    out.push((
        "options-and-close",
        exchange(
            SHORT_HISTORY,
            0b11_10_01_00,
            &mut [
                (p, StreamOpts::default()),
                (q, StreamOpts::send_only()),
                (r, StreamOpts::default().tail(false)),
                (s, StreamOpts::default()),
            ],
            Some(1),
        ),
    ));
    out
}

/// The Snapshot frames (length prefix included) that `source` sends an
/// empty replica of the same type in a real exchange.
pub fn snapshot_frames<T: Reduce + Default>(source: &mut Replica<T>) -> Vec<Vec<u8>> {
    let mut sink: Replica<T> = Replica::new(id("sink"), T::default());
    let a = source.open(StreamOpts::default().tail(false)).expect("open");
    let b = sink.open(StreamOpts::default().tail(false)).expect("open");
    let mut out = Vec::new();
    let mut buf = Vec::new();
    for _ in 0..100 {
        buf.clear();
        while source.poll_transmit(a, &mut buf).unwrap_or(0) > 0 {}
        out.extend(frames(&buf).into_iter().filter(|f| f.get(4) == Some(&3)).map(<[u8]>::to_vec));
        let moved = !buf.is_empty();
        let _ = sink.handle(b, NOW, &buf);
        buf.clear();
        while sink.poll_transmit(b, &mut buf).unwrap_or(0) > 0 {}
        let _ = source.handle(a, NOW, &buf);
        if !moved && buf.is_empty() {
            break;
        }
    }
    out
}

/// A `Model` replica with a history of 2 records and 8 writes (so it
/// sends a snapshot), signing its snapshots as `identity(n)` if given.
pub fn snapshot_source(signer: Option<u8>) -> Replica<Model> {
    let mut replica =
        Replica::with_config(id("src"), Model::default(), Config::default().history_limit(2));
    if let Some(n) = signer {
        replica = replica.sign_snapshots_with(identity(n));
    }
    for i in 0..8u64 {
        let now = NOW - 5_000 + i;
        replica.update(now, Model::set(&format!("k{}", i % 3), &format!("v{i}"))).expect("write");
        if i % 4 == 3 {
            replica.update(now, Model::delete("k0")).expect("write");
        }
    }
    replica
}

/// Splits a session input into its ops, as `(code, payload)`.
pub fn ops(input: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut data = input.get(2..).unwrap_or(&[]);
    let mut out = Vec::new();
    while let Some((&code, rest)) = data.split_first() {
        let len = match rest {
            [a, b, ..] => u16::from_le_bytes([*a, *b]) as usize,
            _ => 0,
        };
        let rest = &rest[rest.len().min(2)..];
        let (payload, rest) = rest.split_at(len.min(rest.len()));
        out.push((code, payload.to_vec()));
        data = rest;
    }
    out
}

/// The frames of a byte stream (each with its length prefix), and a
/// trailing partial one if any.
pub fn frames(stream: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        let take = cut(&[], rest);
        out.push(&rest[..take]);
        rest = &rest[take..];
    }
    out
}

// ---------------------------------------------------------------------------
// The snapshot target.

/// The signature a snapshot frame carries.
#[derive(Clone, Debug)]
pub enum SnapshotSig {
    /// None.
    None,
    /// Arbitrary key and signature bytes.
    Raw {
        /// The key.
        key: [u8; 32],
        /// The signature's halves.
        sig: ([u8; 32], [u8; 32]),
    },
    /// A real signature over the body by `identity(n)`.
    By(u8),
    /// A real signature by `identity(n)` over another body.
    Stale(u8),
}

/// A snapshot frame as the snapshot target builds it.
#[derive(Clone, Debug)]
pub struct SnapshotCase {
    /// The clock, as raw `(source, timestamp)` pairs: reserved ids, zero
    /// timestamps, duplicates and disorder included.
    pub clock: Vec<([u8; 16], u64)>,
    /// The encoded state (postcard of `T::Update`, or any bytes).
    pub state: Vec<u8>,
    /// The signature.
    pub sig: SnapshotSig,
    /// Which `identity(n)` the Hello before it names.
    pub peer: u8,
    /// Whether a Hello comes first (else the snapshot comes before Hello).
    pub hello: bool,
    /// Whether a Sync follows.
    pub sync: bool,
    /// Milliseconds of skew added to [`NOW`] for the receivers.
    pub late: u16,
}

/// The body of a Snapshot frame, `(clock, state)`, before its signature.
pub fn snapshot_body(case: &SnapshotCase) -> Vec<u8> {
    // A sequence of pairs encodes as a map does in postcard.
    let mut body = postcard::to_allocvec(&case.clock).expect("encode");
    body.extend_from_slice(&case.state);
    body
}

/// The whole Snapshot frame, length prefix included.
pub fn snapshot_frame(case: &SnapshotCase) -> Vec<u8> {
    let body = snapshot_body(case);
    let sig: Option<Signature> = match &case.sig {
        SnapshotSig::None => None,
        SnapshotSig::Raw { key, sig } => Some(Signature { key: *key, sig: *sig }),
        SnapshotSig::By(n) => Some(identity(*n).sign_snapshot(&repred::change_digest(&body))),
        SnapshotSig::Stale(n) => {
            let mut other = body.clone();
            other.push(0);
            Some(identity(*n).sign_snapshot(&repred::change_digest(&other)))
        }
    };
    let mut payload = vec![3u8];
    payload.extend_from_slice(&body);
    payload.extend_from_slice(&postcard::to_allocvec(&sig).expect("encode"));
    framed(payload)
}

fn framed(payload: Vec<u8>) -> Vec<u8> {
    let mut frame = (payload.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(&payload);
    frame
}

/// A Hello frame from `identity(n)` with an empty clock.
pub fn hello_frame(n: u8) -> Vec<u8> {
    let hello = Hello {
        id: identity(n).id(),
        clock: ClockSummary::Full(Clock::new()),
        meta: Vec::new(),
        sends: true,
        receives: true,
        life: 7,
        floor: repred::Timestamp::ZERO,
    };
    let mut payload = vec![1u8];
    payload.extend_from_slice(&postcard::to_allocvec(&PROTOCOL_VERSION).expect("encode"));
    payload.extend_from_slice(&postcard::to_allocvec(&hello).expect("encode"));
    framed(payload)
}

/// A Sync frame.
pub fn sync_frame() -> Vec<u8> {
    framed(vec![4])
}

/// What became of one snapshot at the three receivers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotReport {
    /// The plain replica merged it.
    pub plain: bool,
    /// The strict replica trusting `identity(7)` merged it.
    pub trusting: bool,
}

/// Who, by the frame's own bytes, signed a Snapshot frame (length prefix
/// included) for `T`: `None` if it does not decode, `Some(None)` if it is
/// unsigned, `Some(Some(Ok(signer)))` if its signature holds.
#[allow(clippy::type_complexity)]
fn snapshot_signer<T: Reduce>(
    frame: &[u8],
) -> Option<Option<Result<SourceId, repred::VerifyError>>> {
    let body = frame.get(5..).filter(|_| frame.get(4) == Some(&3))?;
    let (_, rest) = postcard::take_from_bytes::<(Clock, T::Update)>(body).ok()?;
    let digest = repred::change_digest(&body[..body.len() - rest.len()]);
    let (proof, tail) = postcard::take_from_bytes::<Option<Signature>>(rest).ok()?;
    if !tail.is_empty() {
        return None;
    }
    Some(proof.map(|p| p.verify_snapshot(&digest)))
}

/// [`run_snapshot_frame`] on the frame a case describes.
pub fn run_snapshot<T>(case: &SnapshotCase, seed: Option<T::Update>) -> SnapshotReport
where
    T: Reduce + Default + Clone + PartialEq + Debug,
{
    let frame = snapshot_frame(case);
    let hello = case.hello.then_some(case.peer);
    run_snapshot_frame::<T>(&frame, hello, case.sync, case.late, seed)
}

/// Hands one Snapshot frame (after a Hello from `identity(hello)` if
/// given, before a Sync if `sync`) at `NOW + late` to three replicas of `T`
/// that each hold `seed`: a plain one, a strict one that trusts no signer,
/// and a strict one that trusts `identity(7)`. Checks: the strict replica
/// without trusted signers changes neither state nor clock; the trusting
/// one changes only on a signature by `identity(7)` that holds; the plain
/// one changes only when the frame's signature, if any, holds; no clock
/// holds timestamp zero; a plain replica that merged it covers its clock;
/// a refused frame changes nothing; `poll_transmit` never fails.
pub fn run_snapshot_frame<T>(
    frame: &[u8],
    hello: Option<u8>,
    sync: bool,
    late: u16,
    seed: Option<T::Update>,
) -> SnapshotReport
where
    T: Reduce + Default + Clone + PartialEq + Debug,
{
    // One whole Snapshot frame: the bytes past its end are not looked at,
    // one cut short is closed where it stops (else the Sync after it would
    // complete it), and another kind byte is made 3 (other kinds may well
    // move a plain replica's clock, which is the session target's
    // business).
    let mut frame = frames(frame).first().copied().unwrap_or_default().to_vec();
    frame.resize(frame.len().max(5), 0);
    let len = (frame.len() - 4) as u32;
    frame[..4].copy_from_slice(&len.to_le_bytes());
    frame[4] = 3;
    let frame = frame.as_slice();
    let mut input = Vec::new();
    if let Some(peer) = hello {
        input.push(hello_frame(peer));
    }
    input.push(frame.to_vec());
    if sync {
        input.push(sync_frame());
    }
    let signer = snapshot_signer::<T>(frame);
    let holds = matches!(signer, Some(None | Some(Ok(_))));
    let by_seven = matches!(signer, Some(Some(Ok(s))) if s == identity(7).id());
    let clock: Option<Clock> = frame
        .get(5..)
        .and_then(|body| postcard::take_from_bytes::<Clock>(body).ok())
        .map(|(clock, _)| clock);
    let now = NOW + u64::from(late);
    let make = |config: Config, strict: bool| {
        let mut replica = if strict {
            Replica::with_identity(identity(1), T::default(), config)
        } else {
            Replica::with_config(id("me"), T::default(), config)
        }
        .with_life(1);
        if let Some(seed) = seed.clone() {
            replica.update(NOW - 1_000, seed).expect("a local write");
        }
        replica
    };
    let mut report = SnapshotReport::default();
    let strict = Config::default().require_signatures(true);
    for (role, config) in [
        (0, Config::default()),
        (1, strict.clone()),
        (2, strict.trust_snapshots_from([identity(7).id()])),
    ] {
        let mut replica: Replica<T> = make(config, role > 0);
        let stream = replica.open(StreamOpts::default()).expect("open");
        settle(&mut replica, now, &[stream]);
        let before = (replica.state().clone(), replica.clock().clone());
        for frame in &input {
            let prior = (replica.state().clone(), replica.clock().clone());
            match replica.handle(stream, now, frame) {
                Ok(()) => {}
                Err(SessionError::Peer(e)) => {
                    assert!(prior.0 == *replica.state(), "a refused frame ({e}) changed the state");
                    assert!(prior.1 == *replica.clock(), "a refused frame ({e}) moved the clock");
                    break;
                }
                Err(SessionError::NotOpen(_)) => break,
                Err(e) => panic!("handle failed with {e:?}, not a peer error"),
            }
            settle(&mut replica, now, &[stream]);
            check_clock(replica.clock());
        }
        let changed = before.0 != *replica.state() || before.1 != *replica.clock();
        let merged = replica.stats().snapshots > 0;
        match role {
            0 => {
                assert!(
                    !(changed || merged) || holds,
                    "a plain replica took a snapshot whose signature does not hold: {signer:?}"
                );
                if let (true, Some(clock)) = (merged, &clock) {
                    assert!(
                        replica.clock().covers(clock),
                        "a merged snapshot's clock is not covered"
                    );
                }
                report.plain = merged;
            }
            1 => {
                assert!(!changed, "a strict replica without trusted signers took a snapshot");
                assert!(!merged, "a strict replica without trusted signers merged a snapshot");
            }
            _ => {
                assert!(
                    !(changed || merged) || by_seven,
                    "a strict replica took a snapshot not signed by its trusted signer: {signer:?}"
                );
                report.trusting = merged;
            }
        }
    }
    report
}

/// A source id from any 16 bytes, the reserved all-zero one included (as
/// a peer could send it).
pub fn raw_source(bytes: [u8; 16]) -> SourceId {
    postcard::from_bytes(&bytes).expect("16 bytes decode as a source id")
}
