//! The drivers and invariants of the fuzz targets, and the real exchanges
//! their seed corpus comes from.
//!
//! Shared word for word by the `cargo fuzz` targets (through the
//! `repred-fuzz` library) and by the main workspace's
//! `tests/fuzz_generators.rs` (through `#[path]`), so that what CI runs with
//! proptest checks exactly what the fuzzer checks. It depends only on
//! `repred`, `repred_suite` (the `Model` fixture), `postcard` and `serde`.
//!
//! Every check is an `assert!`: a violated invariant is a panic, which
//! libFuzzer reports as a crash and proptest as a failure.
#![allow(dead_code)]

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Debug;

use repred::{
    ChannelBinding, Clock, ClockSummary, Config, Entry, Hello, Identity, LwwMap, OrSet,
    PROTOCOL_VERSION, Proof, Reduce, Replica, SessionError, Signature, SourceId, StreamId,
    StreamOpts, Timestamp,
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

/// The `n`th signing identity of the exchanges (deterministic; derived
/// once per thread, as every input asks for a few).
pub fn identity(n: u8) -> Identity {
    thread_local! {
        static IDENTITIES: RefCell<HashMap<u8, Identity>> = RefCell::new(HashMap::new());
    }
    IDENTITIES.with_borrow_mut(|ids| {
        ids.entry(n).or_insert_with(|| Identity::from_secret([n; 32])).clone()
    })
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

/// The channel binding of every stream of a replica under test: as over
/// QUIC, each end of every stream passes one, so the bound path is what is
/// fuzzed.
pub const BINDING: ChannelBinding = ChannelBinding::acceptor([0x42; 32]);

/// The same, at the other end: its peers' streams, and the side the Hellos
/// the harness writes are signed on.
pub const PEER_BINDING: ChannelBinding = BINDING.other_end();

/// A stream's options from two bits of the input.
pub fn opts(selector: u8) -> StreamOpts {
    match selector & 3 {
        0 => StreamOpts::default().binding(BINDING),
        1 => StreamOpts::receive_only().binding(BINDING),
        2 => StreamOpts::default().binding(BINDING).tail(false),
        _ => StreamOpts::send_only().binding(BINDING),
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

/// `replica` as a store written by an earlier version would restore it:
/// its signed no-ops recorded as proofs ([`Entry::Proven`]), its unsigned
/// ones as clock advances.
fn as_restored_from_an_earlier_version(replica: &Replica<Model>, config: Config) -> Replica<Model> {
    let Ok(entries) = replica.entries_from(0) else { panic!("the history starts at 0") };
    let entries: Vec<Entry<<Model as Reduce>::Update>> = entries
        .map(|(_, entry)| match entry {
            Entry::Unchanged(e) => match &e.signature {
                Some(signature) => {
                    let bytes = postcard::to_allocvec(&e.change).expect("a change encodes");
                    let digest = repred::change_digest(&bytes);
                    Entry::Proven(Box::new(Proof {
                        stamp: e.stamp(),
                        digest,
                        signature: (**signature).clone(),
                    }))
                }
                None => Entry::Advance(e.stamp()),
            },
            other => other.clone(),
        })
        .collect();
    Replica::restore(
        replica.id(),
        Model::default(),
        Clock::new(),
        replica.last_timestamp(),
        0,
        entries,
        config,
    )
    .with_life(replica.life())
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
    let sa = a.open(StreamOpts::default().binding(BINDING).tail(false)).expect("open");
    let sb = b.open(StreamOpts::default().binding(PEER_BINDING).tail(false)).expect("open");
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
    out.push((
        "plain-one-peer",
        exchange(0, 0, &mut [(p, StreamOpts::default().binding(PEER_BINDING))], None),
    ));

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
        exchange(
            0,
            0,
            &mut [
                (p, StreamOpts::default().binding(PEER_BINDING)),
                (q, StreamOpts::default().binding(PEER_BINDING)),
            ],
            None,
        ),
    ));

    // A strict target and a signed peer; an unsigned one is refused.
    let mut p = peer("", Some(2), plain().require_signatures(true));
    writes(&mut p, "s", 5);
    let mut q = peer("p2", None, plain());
    writes(&mut q, "u", 3);
    out.push((
        "strict-signed",
        exchange(
            STRICT,
            0,
            &mut [
                (p, StreamOpts::default().binding(PEER_BINDING)),
                (q, StreamOpts::default().binding(PEER_BINDING)),
            ],
            None,
        ),
    ));

    // Signed snapshots: trusted, then refused.
    for (name, flags) in [("strict-trusted-snapshot", STRICT | TRUST), ("strict-refused", STRICT)] {
        let mut p = peer("", Some(2), plain().require_signatures(true).history_limit(2))
            .sign_snapshots_with(identity(2));
        writes(&mut p, "t", 10);
        out.push((
            name,
            exchange(flags, 0, &mut [(p, StreamOpts::default().binding(PEER_BINDING))], None),
        ));
    }

    // Lazy relay: three peers that all have the same origin's writes.
    let mut origin = peer("origin", None, plain());
    writes(&mut origin, "o", 6);
    let mut peers = Vec::new();
    for (name, n) in [("r1", 1), ("r2", 2), ("r3", 3)] {
        let mut r = peer(name, None, plain().lazy_relay(true));
        sync(&mut r, &mut origin);
        writes(&mut r, &format!("own{n}-"), n);
        peers.push((r, StreamOpts::default().binding(PEER_BINDING)));
    }
    out.push(("lazy-three-relays", exchange(LAZY, 0, &mut peers, None)));

    // Signed lazy relay into a strict lazy target.
    let mut origin = peer("", Some(3), plain().require_signatures(true));
    writes(&mut origin, "x", 4);
    let mut peers = Vec::new();
    for n in [4, 5] {
        let mut r = peer("", Some(n), plain().require_signatures(true).lazy_relay(true));
        sync(&mut r, &mut origin);
        peers.push((r, StreamOpts::default().binding(PEER_BINDING)));
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
        let mut relay = peer("relay", signer(8), strictness.clone());
        sync(&mut relay, &mut o2);
        sync(&mut relay, &mut o1);
        // Today a relay sends its no-ops to an eager peer as advances when
        // unsigned, whole when signed; a store written by an earlier
        // version may hold them as proofs, which still go out as such.
        let relay = as_restored_from_an_earlier_version(&relay, strictness);
        out.push((
            name,
            exchange(flags, 0, &mut [(relay, StreamOpts::default().binding(PEER_BINDING))], None),
        ));
    }

    // Many sources against a target that remembers few.
    let mut p = peer("many", None, plain());
    for n in 0..40 {
        let mut o = peer(&format!("src{n}"), None, plain());
        writes(&mut o, "m", 1);
        sync(&mut p, &mut o);
    }
    out.push((
        "few-sources",
        exchange(FEW_SOURCES, 0, &mut [(p, StreamOpts::default().binding(PEER_BINDING))], None),
    ));

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
                (p, StreamOpts::default().binding(PEER_BINDING)),
                (q, StreamOpts::send_only().binding(PEER_BINDING)),
                (r, StreamOpts::default().binding(PEER_BINDING).tail(false)),
                (s, StreamOpts::default().binding(PEER_BINDING)),
            ],
            Some(1),
        ),
    ));
    out
}

/// The kind byte of a snapshot's begin frame: postcard `(u64, [u8; 32])`
/// (how many sources its clock has, and their [`clock_digest`]), then
/// `Option<Signature>` over [`snapshot_id`] of those bytes.
pub const SNAPSHOT_BEGIN: u8 = 3;
/// The kind byte of a chunk of a snapshot's clock: postcard `Vec<(SourceId,
/// Timestamp)>`, in source order, unsigned (the begin's digest vouches).
pub const SNAPSHOT_CLOCK: u8 = 14;
/// The kind byte of a snapshot's part: postcard `u64` (its index),
/// `T::Update` (the part), `Option<Signature>` over [`part_digest`].
pub const SNAPSHOT_PART: u8 = 12;
/// The kind byte of a snapshot's end: postcard `u64` (how many parts),
/// `Option<Signature>` over [`end_digest`].
pub const SNAPSHOT_END: u8 = 13;
/// The kinds of a snapshot's frames.
pub const SNAPSHOT_KINDS: [u8; 4] = [SNAPSHOT_BEGIN, SNAPSHOT_CLOCK, SNAPSHOT_PART, SNAPSHOT_END];

/// The snapshot frames (begin, clock chunks, parts, end; length prefixes
/// included), in
/// the order sent, that `source` sends an empty replica of the same type in
/// a real exchange. Live updates sent between them are left out.
pub fn snapshot_frames<T: Reduce + Default>(source: &mut Replica<T>) -> Vec<Vec<u8>> {
    let mut sink: Replica<T> = Replica::new(id("sink"), T::default());
    let a = source.open(StreamOpts::default().binding(BINDING).tail(false)).expect("open");
    let b = sink.open(StreamOpts::default().binding(PEER_BINDING).tail(false)).expect("open");
    let mut out = Vec::new();
    let mut buf = Vec::new();
    for _ in 0..100 {
        buf.clear();
        while source.poll_transmit(a, &mut buf).unwrap_or(0) > 0 {}
        out.extend(
            frames(&buf)
                .into_iter()
                .filter(|f| f.get(4).is_some_and(|k| SNAPSHOT_KINDS.contains(k)))
                .map(<[u8]>::to_vec),
        );
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

/// A replica of `T` under id `src` with a history of 2 records, signing
/// its snapshots as `identity(n)` if given: after a few writes it sends a
/// snapshot to a peer that has nothing.
fn source_of<T: Reduce>(state: T, signer: Option<u8>) -> Replica<T> {
    let replica = Replica::with_config(id("src"), state, Config::default().history_limit(2));
    match signer {
        Some(n) => replica.sign_snapshots_with(identity(n)),
        None => replica,
    }
}

/// A `Model` replica with 8 writes and a delete (see [`source_of`]). Its
/// snapshot is one part: `Model` keeps `Reduce::snapshot_part`'s default.
pub fn snapshot_source(signer: Option<u8>) -> Replica<Model> {
    let mut replica = source_of(Model::default(), signer);
    for i in 0..8u64 {
        let now = NOW - 5_000 + i;
        replica.update(now, Model::set(&format!("k{}", i % 3), &format!("v{i}"))).expect("write");
        if i % 4 == 3 {
            replica.update(now, Model::delete("k0")).expect("write");
        }
    }
    replica
}

/// An `LwwMap<String, String>` replica with `keys` keys, `extra` of them
/// written twice (see [`source_of`]). Parts start 64 entries long, so 70
/// keys make two parts.
pub fn lww_source(signer: Option<u8>, keys: u64, extra: u64) -> Replica<LwwMap<String, String>> {
    let mut replica = source_of(LwwMap::default(), signer);
    for i in 0..keys + extra {
        let key = format!("k{}", i % keys);
        replica.update(NOW - 5_000 + i, LwwMap::set(key, format!("v{i}"))).expect("write");
    }
    replica
}

/// An `OrSet<u32>` replica with `n` adds, every third of them removed
/// again (see [`source_of`]): its snapshot is at least two parts (live
/// elements, then tombstones), and 100 adds make three.
pub fn orset_source(signer: Option<u8>, n: u32) -> Replica<OrSet<u32>> {
    let mut replica = source_of(OrSet::default(), signer);
    for i in 0..n {
        let now = NOW - 5_000 + u64::from(i);
        replica.update(now, OrSet::add(i)).expect("write");
        if i % 3 == 2 {
            let remove = replica.state().remove(&(i - 1));
            replica.update(now, remove).expect("write");
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

/// SHA-256 of the pieces, one after the other.
fn sha256(pieces: &[&[u8]]) -> [u8; 32] {
    // `change_digest` is SHA-256 of its bytes.
    repred::change_digest(&pieces.concat())
}

/// A snapshot's id: what its begin frame's signature covers, from the
/// begin's body before the signature (as `repred::frame::snapshot_id`, from
/// its definition).
pub fn snapshot_id(begin: &[u8]) -> [u8; 32] {
    sha256(&[b"repred snapshot begin", begin])
}

/// The bytes a clock's digest covers: 16 of source and 8 of timestamp (LE)
/// an entry, in the order sent, however chunked (as
/// `repred::frame::clock_digest_update`).
fn clock_digest_bytes(entries: &[([u8; 16], u64)], out: &mut Vec<u8>) {
    for (source, ts) in entries {
        out.extend_from_slice(source);
        out.extend_from_slice(&ts.to_le_bytes());
    }
}

/// The digest of a snapshot's clock entries, which its begin carries.
pub fn clock_digest(entries: &[([u8; 16], u64)]) -> [u8; 32] {
    let mut bytes = Vec::new();
    clock_digest_bytes(entries, &mut bytes);
    sha256(&[&bytes])
}

/// What a part's signature covers: the snapshot, the part's index, the
/// SHA-256 of its encoded state (as `repred::frame::part_digest`).
pub fn part_digest(id: &[u8; 32], index: u64, state: &[u8; 32]) -> [u8; 32] {
    sha256(&[b"repred snapshot part", id, &index.to_le_bytes(), state])
}

/// What an end's signature covers: the snapshot and how many parts it had
/// (as `repred::frame::end_digest`).
pub fn end_digest(id: &[u8; 32], parts: u64) -> [u8; 32] {
    sha256(&[b"repred snapshot end", id, &parts.to_le_bytes()])
}

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
    /// A real signature by `identity(n)` over the frame's own digest.
    By(u8),
    /// A real signature by `identity(n)` over a digest that is not the
    /// frame's.
    Stale(u8, Stale),
}

/// What a stale signature was made for instead.
#[derive(Clone, Copy, Debug)]
pub enum Stale {
    /// The same frame of another snapshot (another id).
    Snapshot,
    /// Another place in this snapshot: a part's next index, an end with a
    /// part more; for a begin, the end of this snapshot with no parts.
    Place,
    /// Other contents at this place: a part's state with a byte more; for
    /// a begin or an end, the SHA-256 of its body before the signature (as
    /// single-frame snapshots were signed before they came in parts).
    Contents,
    /// Another kind of frame of this snapshot at this place: a begin
    /// signed as part 0 of nothing, a part as the end after `index` parts,
    /// an end as the begin (the snapshot's id).
    Kind,
}

/// One part of a [`SnapshotCase`].
#[derive(Clone, Debug)]
pub struct PartCase {
    /// The index the part claims (`None`: its place among the case's parts).
    pub index: Option<u64>,
    /// The encoded part (postcard of `T::Update`, or any bytes).
    pub state: Vec<u8>,
    /// Its signature.
    pub sig: SnapshotSig,
}

/// The end of a [`SnapshotCase`].
#[derive(Clone, Debug)]
pub struct EndCase {
    /// How many parts it claims (`None`: as many as the case has).
    pub parts: Option<u64>,
    /// Its signature.
    pub sig: SnapshotSig,
}

/// A snapshot as the snapshot target builds it: a begin, its clock in
/// chunks, parts, an end.
#[derive(Clone, Debug)]
pub struct SnapshotCase {
    /// The clock's entries, as raw `(source, timestamp)` pairs: reserved
    /// ids, zero timestamps, duplicates and disorder included.
    pub clock: Vec<([u8; 16], u64)>,
    /// Entries per clock chunk; 0: one chunk of them all, even none.
    pub chunk: usize,
    /// How many sources the begin announces (`None`: as many as sent).
    pub sources: Option<u64>,
    /// The entries the begin's digest is of (`None`: those sent).
    pub digest_of: Option<Vec<([u8; 16], u64)>>,
    /// The begin's signature.
    pub begin: SnapshotSig,
    /// The parts.
    pub parts: Vec<PartCase>,
    /// The end (`None`: the snapshot is cut short).
    pub end: Option<EndCase>,
    /// Whether all of it is sent twice (a snapshot restarted, or begun
    /// again before its end).
    pub twice: bool,
    /// Which `identity(n)` the Hello before it names.
    pub peer: u8,
    /// Whether a Hello comes first (else the snapshot comes before Hello).
    pub hello: bool,
    /// Whether a Sync follows.
    pub sync: bool,
    /// Milliseconds of skew added to [`NOW`] for the receivers.
    pub late: u16,
    /// The collection floor the begin ends with, a timestamp as it
    /// encodes (`None`: the begin ends after its signature).
    pub floor: Option<u64>,
}

/// A signature as `sig` says, `own` being the digest the frame's signature
/// should cover and `stale` the digests it should not.
fn sign(sig: &SnapshotSig, own: &[u8; 32], stale: impl Fn(Stale) -> [u8; 32]) -> Option<Signature> {
    match sig {
        SnapshotSig::None => None,
        SnapshotSig::Raw { key, sig } => Some(Signature { key: *key, sig: *sig }),
        SnapshotSig::By(n) => Some(identity(*n).sign_snapshot(own)),
        SnapshotSig::Stale(n, how) => Some(identity(*n).sign_snapshot(&stale(*how))),
    }
}

fn encode<T: serde::Serialize + ?Sized>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).expect("encode")
}

/// A frame of `kind` with `body`, length prefix included.
pub fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut payload = vec![kind];
    payload.extend_from_slice(body);
    framed(payload)
}

/// The frames of a case: its begin, clock chunks, parts and end (twice if
/// it says so).
pub fn snapshot_case_frames(case: &SnapshotCase) -> Vec<Vec<u8>> {
    let sources = case.sources.unwrap_or(case.clock.len() as u64);
    let digest = clock_digest(case.digest_of.as_deref().unwrap_or(&case.clock));
    let begin = encode(&(sources, digest));
    let id = snapshot_id(&begin);
    let other = snapshot_id(&encode(&(sources.wrapping_add(1), digest)));
    let mut out = Vec::new();
    let proof = sign(&case.begin, &id, |how| match how {
        Stale::Snapshot => other,
        Stale::Place => end_digest(&id, 0),
        Stale::Contents => sha256(&[&begin]),
        Stale::Kind => part_digest(&id, 0, &sha256(&[])),
    });
    // After the signature: no size hint, and the floor if any.
    let tail = case.floor.map(|floor| encode(&(None::<u64>, floor))).unwrap_or_default();
    out.push(frame(SNAPSHOT_BEGIN, &[begin, encode(&proof), tail].concat()));
    // A sequence of `([u8; 16], u64)` encodes as one of `(SourceId,
    // Timestamp)` does.
    match case.chunk {
        0 => out.push(frame(SNAPSHOT_CLOCK, &encode(&case.clock))),
        n => out.extend(case.clock.chunks(n).map(|c| frame(SNAPSHOT_CLOCK, &encode(c)))),
    }
    for (n, part) in case.parts.iter().enumerate() {
        let index = part.index.unwrap_or(n as u64);
        let hash = sha256(&[&part.state]);
        let proof = sign(&part.sig, &part_digest(&id, index, &hash), |how| match how {
            Stale::Snapshot => part_digest(&other, index, &hash),
            Stale::Place => part_digest(&id, index.wrapping_add(1), &hash),
            Stale::Contents => part_digest(&id, index, &sha256(&[&part.state, &[0]])),
            Stale::Kind => end_digest(&id, index),
        });
        out.push(frame(
            SNAPSHOT_PART,
            &[encode(&index), part.state.clone(), encode(&proof)].concat(),
        ));
    }
    if let Some(end) = &case.end {
        let parts = end.parts.unwrap_or(case.parts.len() as u64);
        let proof = sign(&end.sig, &end_digest(&id, parts), |how| match how {
            Stale::Snapshot => end_digest(&other, parts),
            Stale::Place => end_digest(&id, parts.wrapping_add(1)),
            Stale::Contents => sha256(&[&encode(&parts)]),
            Stale::Kind => id,
        });
        out.push(frame(SNAPSHOT_END, &[encode(&parts), encode(&proof)].concat()));
    }
    if case.twice {
        out.extend_from_within(..);
    }
    out
}

fn framed(payload: Vec<u8>) -> Vec<u8> {
    let mut frame = (payload.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(&payload);
    frame
}

/// A Hello frame from `identity(n)` with an empty clock, signed by it (as
/// a replica with a key signs its Hellos: a strict replica takes a
/// snapshot only from a sender whose Hello a trusted signer signed).
pub fn hello_frame(n: u8) -> Vec<u8> {
    let mut hello = Hello {
        id: identity(n).id(),
        clock: ClockSummary::Full(Clock::new()),
        meta: Vec::new(),
        sends: true,
        receives: true,
        life: 7,
        floor: repred::Timestamp::ZERO,
        missing_own: None,
        signature: None,
    };
    hello.signature = Some(identity(n).sign_hello(&hello.claims(Some(PEER_BINDING))));
    let mut payload = vec![1u8];
    payload.extend_from_slice(&encode(&PROTOCOL_VERSION));
    payload.extend_from_slice(&encode(&hello));
    framed(payload)
}

/// A Sync frame.
pub fn sync_frame() -> Vec<u8> {
    framed(vec![4])
}

/// Most frames [`snapshot_stream`] makes of its input.
pub const MAX_SNAPSHOT_FRAMES: usize = 64;

/// Any bytes as a sequence of whole snapshot frames: each frame of the
/// stream keeps its body; one cut short is closed where it stops (else the
/// next would complete it), an empty one gets a kind byte, and a kind that
/// is not a snapshot's becomes one (other kinds may well move a plain
/// replica's clock, which is the session target's business). At most
/// [`MAX_SNAPSHOT_FRAMES`].
pub fn snapshot_stream(bytes: &[u8]) -> Vec<Vec<u8>> {
    frames(bytes)
        .into_iter()
        .take(MAX_SNAPSHOT_FRAMES)
        .map(|f| {
            let mut frame = f.to_vec();
            frame.resize(frame.len().max(5), 0);
            let len = (frame.len() - 4) as u32;
            frame[..4].copy_from_slice(&len.to_le_bytes());
            if !SNAPSHOT_KINDS.contains(&frame[4]) {
                frame[4] = SNAPSHOT_KINDS[usize::from(frame[4]) % SNAPSHOT_KINDS.len()];
            }
            frame
        })
        .collect()
}

/// What became of a snapshot exchange at the receivers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotReport {
    /// The plain replica took a snapshot's end.
    pub plain: bool,
    /// The strict replica trusting `identity(7)` took a snapshot's end.
    pub trusting: bool,
    /// Parts taken by the plain, the untrusting and the trusting replica.
    pub parts: [u64; 3],
}

/// Whose snapshots a receiver takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Trust {
    /// A plain replica: unsigned ones, and signed ones whose signature
    /// holds (each part and the end then by the begin's signer).
    Any,
    /// A strict replica that trusts no snapshot signer: none.
    Nobody,
    /// A strict replica: those signed by this signer only.
    Only(SourceId),
}

/// What the oracle expects of one frame.
#[derive(Debug)]
enum Expect<U> {
    /// Taken, and it carries nothing: state and clock stay (a Hello, a
    /// Sync, a snapshot's begin or a chunk of its clock).
    Taken,
    /// Refused (why): the stream ends, and nothing of the frame is applied.
    Refused(&'static str),
    /// The stream ended before: the frame is not read.
    Ended,
    /// A part taken: the state joins it, the clock stays.
    Part(U),
    /// An end taken: the clock joins the begin's clock, the state stays,
    /// but for a snapshot from above the replica's floor: then the
    /// replica takes that floor, and its state is collected at it.
    End(Clock, Option<repred::Timestamp>),
}

/// A snapshot the oracle saw begin.
#[derive(Debug)]
struct Begun {
    id: [u8; 32],
    signer: Option<SourceId>,
    /// How many clock entries the begin announced, and their digest.
    sources: u64,
    digest: [u8; 32],
    /// Entries received so far, and the bytes their digest covers (since
    /// the digest was last checked).
    received: u64,
    hashed: Vec<u8>,
    clock: Clock,
    next: u64,
}

impl Begun {
    fn clock_complete(&self) -> bool {
        self.received == self.sources
    }
}

/// A receiver of snapshot frames as the wire format specifies it, worked
/// out from each frame's bytes alone (the digests re-implemented from
/// their definitions), never from the replica's answers.
#[derive(Debug)]
struct Oracle {
    trust: Trust,
    now: u64,
    /// Whether the replica holds anything (a write of its own, or a
    /// snapshot taken): a begin from above its floor then finds it stale.
    holds_state: bool,
    /// The replica's collection floor (zero, until it takes a snapshot's).
    ours: repred::Timestamp,
    /// The peer's floor, as its Hello (zero) and begins said.
    theirs: repred::Timestamp,
    hello: bool,
    /// Whether the Hello was signed by a signer the replica trusts (a
    /// strict replica believes the floor of no other sender, and takes
    /// none of its snapshots).
    vouched: bool,
    synced: bool,
    ended: bool,
    begun: Option<Begun>,
}

/// Decodes all of `bytes` as a `T`.
fn decode_all<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Option<T> {
    match postcard::take_from_bytes::<T>(bytes) {
        Ok((value, [])) => Some(value),
        _ => None,
    }
}

impl Oracle {
    fn new(trust: Trust, now: u64, holds_state: bool) -> Self {
        Self {
            trust,
            now,
            holds_state,
            ours: repred::Timestamp::ZERO,
            theirs: repred::Timestamp::ZERO,
            hello: false,
            vouched: false,
            synced: false,
            ended: false,
            begun: None,
        }
    }

    fn judge<T: Reduce>(&mut self, frame: &[u8]) -> Expect<T::Update> {
        if self.ended {
            return Expect::Ended;
        }
        let expect = self.read::<T>(frame);
        if matches!(expect, Expect::Refused(_)) {
            self.ended = true;
        }
        expect
    }

    fn read<T: Reduce>(&mut self, frame: &[u8]) -> Expect<T::Update> {
        let Some((&kind, body)) = frame.get(4..).and_then(<[u8]>::split_first) else {
            return Expect::Refused("an empty frame");
        };
        match kind {
            1 if self.hello => Expect::Refused("a second Hello"),
            1 => {
                self.hello = true;
                let signer = postcard::take_from_bytes::<u16>(body)
                    .ok()
                    .and_then(|(_, hello)| decode_all::<Hello>(hello))
                    .and_then(|h| {
                        h.signature.as_ref()?.verify_hello(&h.claims(Some(PEER_BINDING))).ok()
                    });
                self.vouched = match self.trust {
                    Trust::Any => true,
                    Trust::Nobody => false,
                    Trust::Only(trusted) => signer == Some(trusted),
                };
                Expect::Taken
            }
            4 if !self.hello => Expect::Refused("a Sync before Hello"),
            4 if self.synced => Expect::Refused("a second Sync"),
            4 => {
                self.synced = true;
                Expect::Taken
            }
            SNAPSHOT_BEGIN => self.begin(body),
            SNAPSHOT_CLOCK => self.clock(body),
            SNAPSHOT_PART => self.part::<T>(body),
            SNAPSHOT_END => self.end(body),
            _ => Expect::Refused("not a frame of this target"),
        }
    }

    fn begin<U>(&mut self, body: &[u8]) -> Expect<U> {
        let Ok(((sources, digest), rest)) = postcard::take_from_bytes::<(u64, [u8; 32])>(body)
        else {
            return Expect::Refused("a begin whose clock's size and digest do not decode");
        };
        let id = snapshot_id(&body[..body.len() - rest.len()]);
        let Ok((proof, hint)) = postcard::take_from_bytes::<Option<Signature>>(rest) else {
            return Expect::Refused("a begin whose signature does not decode");
        };
        // After the signature (version 4): the state's size hint, if any,
        // and the sender's floor; a hand-built begin may leave both out.
        let floor = if hint.is_empty() {
            None
        } else {
            match decode_all::<(Option<u64>, repred::Timestamp)>(hint) {
                Some((_, floor)) => Some(floor),
                None => return Expect::Refused("a begin whose size hint and floor do not decode"),
            }
        };
        if !self.hello {
            return Expect::Refused("a begin before Hello");
        }
        if self.begun.is_some() {
            return Expect::Refused("a begin before the last snapshot's end");
        }
        // The floor only rises: the Hello's is zero.
        if let Some(floor) = floor.filter(|&f| f > self.theirs) {
            if floor.millis() > self.now + Config::default().max_skew_millis {
                return Expect::Refused("a begin whose floor is ahead of the clock");
            }
            // Unsigned: a strict replica takes the floor the Hello was
            // signed with only.
            if self.trust != Trust::Any {
                return Expect::Refused("a begin whose floor rose past the Hello's (strict)");
            }
            self.theirs = floor;
        }
        if self.theirs > self.ours && self.holds_state {
            return Expect::Refused("a begin from above the floor of a replica with state");
        }
        let signer = match proof.map(|p| verify(p, &id)) {
            None => None,
            Some(Some(signer)) => Some(signer),
            Some(None) => return Expect::Refused("a begin whose signature does not hold"),
        };
        match (self.trust, signer) {
            (Trust::Any, _) => {}
            (Trust::Nobody, _) => return Expect::Refused("a begin (no signer is trusted)"),
            (Trust::Only(_), None) => return Expect::Refused("an unsigned begin"),
            (Trust::Only(trusted), Some(signer)) if signer != trusted => {
                return Expect::Refused("a begin signed by an untrusted signer");
            }
            (Trust::Only(_), Some(_)) if !self.vouched => {
                return Expect::Refused(
                    "a begin from a sender whose Hello no trusted signer signed",
                );
            }
            (Trust::Only(_), Some(_)) => {}
        }
        if sources > Config::default().max_snapshot_sources {
            return Expect::Refused("a begin announcing more sources than the limit");
        }
        self.begun = Some(Begun {
            id,
            signer,
            sources,
            digest,
            received: 0,
            hashed: Vec::new(),
            clock: Clock::new(),
            next: 0,
        });
        Expect::Taken
    }

    /// A chunk of the clock: no more entries than the begin announced, each
    /// of a valid source not seen before in this clock and no further ahead
    /// than the skew limit; once all are in, their digest is the begin's.
    fn clock<U>(&mut self, body: &[u8]) -> Expect<U> {
        let Some(entries) = decode_all::<Vec<([u8; 16], u64)>>(body) else {
            return Expect::Refused("a clock chunk that does not decode");
        };
        if !self.hello {
            return Expect::Refused("a clock chunk before Hello");
        }
        let Some(begun) = &mut self.begun else {
            return Expect::Refused("a clock chunk before its begin");
        };
        if begun.received.saturating_add(entries.len() as u64) > begun.sources {
            return Expect::Refused("more clock entries than the begin announced");
        }
        let limit = self.now.saturating_add(Config::default().max_skew_millis);
        for &(source, ts) in &entries {
            let (source, ts) = (raw_source(source), Timestamp::from_raw(ts));
            if ts.millis() > limit {
                return Expect::Refused("a clock entry too far ahead");
            }
            if !source.is_valid() || begun.clock.get(source) != Timestamp::ZERO {
                return Expect::Refused("a clock entry of a reserved or repeated source");
            }
            begun.clock.observe(source, ts);
        }
        clock_digest_bytes(&entries, &mut begun.hashed);
        begun.received += entries.len() as u64;
        if begun.clock_complete() {
            // Checked each time the count is reached, over what came since
            // the last check: an empty chunk after a complete clock is
            // checked as an empty clock.
            let digest = sha256(&[&std::mem::take(&mut begun.hashed)]);
            if digest != begun.digest {
                return Expect::Refused("a clock that does not match the begin's digest");
            }
        }
        Expect::Taken
    }

    fn part<T: Reduce>(&mut self, body: &[u8]) -> Expect<T::Update> {
        let Ok((index, rest)) = postcard::take_from_bytes::<u64>(body) else {
            return Expect::Refused("a part whose index does not decode");
        };
        let Ok((state, tail)) = postcard::take_from_bytes::<T::Update>(rest) else {
            return Expect::Refused("a part whose state does not decode");
        };
        let hash = sha256(&[&rest[..rest.len() - tail.len()]]);
        let Some(proof) = decode_all::<Option<Signature>>(tail) else {
            return Expect::Refused("a part whose signature does not decode");
        };
        if !self.hello {
            return Expect::Refused("a part before Hello");
        }
        let Some(begun) = &mut self.begun else {
            return Expect::Refused("a part before its begin");
        };
        if !begun.clock_complete() {
            return Expect::Refused("a part before the whole clock");
        }
        if index != begun.next {
            return Expect::Refused("a part out of order");
        }
        if let Err(why) = vouched(begun.signer, &part_digest(&begun.id, index, &hash), proof) {
            return Expect::Refused(why);
        }
        begun.next += 1;
        Expect::Part(state)
    }

    fn end<U>(&mut self, body: &[u8]) -> Expect<U> {
        let Ok((parts, rest)) = postcard::take_from_bytes::<u64>(body) else {
            return Expect::Refused("an end whose part count does not decode");
        };
        let Some(proof) = decode_all::<Option<Signature>>(rest) else {
            return Expect::Refused("an end whose signature does not decode");
        };
        if !self.hello {
            return Expect::Refused("an end before Hello");
        }
        let Some(begun) = self.begun.take() else {
            return Expect::Refused("an end before its begin");
        };
        if !begun.clock_complete() {
            return Expect::Refused("an end before the whole clock");
        }
        if parts != begun.next {
            return Expect::Refused("an end with parts missing");
        }
        if let Err(why) = vouched(begun.signer, &end_digest(&begun.id, parts), proof) {
            return Expect::Refused(why);
        }
        self.holds_state |= !begun.clock.is_empty();
        let floor = (self.theirs > self.ours).then_some(self.theirs);
        if let Some(floor) = floor {
            self.ours = floor;
        }
        Expect::End(begun.clock, floor)
    }
}

/// Signatures checked, by signature and digest, and who made them (`None`:
/// it does not hold).
type Verified = HashMap<(Signature, [u8; 32]), Option<SourceId>>;

thread_local! {
    /// The signatures the oracle checked in the current run: the three
    /// receivers' oracles read the same frames, and a check takes
    /// milliseconds in a debug build.
    static VERIFIED: RefCell<Verified> = RefCell::new(HashMap::new());
}

/// Who made `proof` over `digest`, if it holds.
fn verify(proof: Signature, digest: &[u8; 32]) -> Option<SourceId> {
    VERIFIED.with_borrow_mut(|seen| {
        *seen.entry((proof, *digest)).or_insert_with_key(|(p, d)| p.verify_snapshot(d).ok())
    })
}

/// A part or end of a snapshot whose begin `signer` signed must carry the
/// same signer's signature over `digest`; of an unsigned one, the
/// signature is not looked at.
fn vouched(
    signer: Option<SourceId>,
    digest: &[u8; 32],
    proof: Option<Signature>,
) -> Result<(), &'static str> {
    let Some(signer) = signer else { return Ok(()) };
    match proof.map(|p| verify(p, digest)) {
        None => Err("an unsigned frame of a signed snapshot"),
        Some(Some(who)) if who == signer => Ok(()),
        Some(Some(_)) => Err("a frame of a signed snapshot signed by another"),
        Some(None) => Err("a frame of a signed snapshot whose signature does not hold"),
    }
}

/// [`run_snapshot_frames`] on the frames a case describes.
pub fn run_snapshot<T>(case: &SnapshotCase, seed: Option<T::Update>) -> SnapshotReport
where
    T: Reduce + Default + Clone + PartialEq + Debug,
{
    let frames = snapshot_case_frames(case);
    let hello = case.hello.then_some(case.peer);
    run_snapshot_frames::<T>(&frames, hello, case.sync, case.late, seed)
}

/// The three receivers: a plain replica, a strict one that trusts no
/// snapshot signer, a strict one that trusts `identity(7)`.
const RECEIVERS: [&str; 3] = [
    "a plain replica",
    "a strict replica trusting no signer",
    "a strict replica trusting identity(7)",
];

/// Hands snapshot frames (whole frames, length prefixes included, as
/// [`snapshot_stream`] makes them; after a Hello from `identity(hello)` if
/// given, before a Sync if `sync`), one `handle` call each, at `NOW +
/// late`, to three replicas of `T` that each hold `seed`: a plain one, a
/// strict one that trusts no snapshot signer, and a strict one that trusts
/// `identity(7)`.
///
/// An oracle works out from the frames' bytes what each receiver must do
/// with each frame, and every frame is checked against it: a strict
/// replica trusting no signer refuses every begin, so neither its state
/// nor its clock ever changes; the trusting one takes a begin only signed
/// by `identity(7)`, and parts and an end only with `identity(7)`'s
/// signatures over their digests (bound to the begin's id and their
/// place); a plain one takes unsigned snapshots, and signed ones whose
/// signatures hold, all by the begin's signer. The clock's chunks (which
/// carry no signature) are taken only as many as the begin announced, of
/// valid sources each once, within the skew limit, and matching the
/// begin's digest once complete; no part nor end before. A frame refused
/// ends the stream and changes nothing; a part taken changes the state by
/// exactly its join and leaves the clock; only an end taken moves the
/// clock, by exactly the snapshot's clock, and leaves the state; a begin, a
/// clock chunk, a Hello or a Sync changes neither; a frame the oracle takes
/// the replica must take too. Besides: no clock holds timestamp zero;
/// `poll_transmit` never fails; `handle` fails only with a peer error.
pub fn run_snapshot_frames<T>(
    frames: &[Vec<u8>],
    hello: Option<u8>,
    sync: bool,
    late: u16,
    seed: Option<T::Update>,
) -> SnapshotReport
where
    T: Reduce + Default + Clone + PartialEq + Debug,
{
    let mut input = Vec::new();
    if let Some(peer) = hello {
        input.push(hello_frame(peer));
    }
    input.extend(frames.iter().cloned());
    if sync {
        input.push(sync_frame());
    }
    let now = NOW + u64::from(late);
    VERIFIED.with_borrow_mut(HashMap::clear);
    let mut report = SnapshotReport::default();
    let strict = Config::default().require_signatures(true);
    let receivers = [
        (Config::default(), Trust::Any),
        (strict.clone(), Trust::Nobody),
        (strict.trust_snapshots_from([identity(7).id()]), Trust::Only(identity(7).id())),
    ];
    for (role, (config, trust)) in receivers.into_iter().enumerate() {
        let who = RECEIVERS[role];
        let mut replica = if trust == Trust::Any {
            Replica::with_config(id("me"), T::default(), config)
        } else {
            Replica::with_identity(identity(1), T::default(), config)
        }
        .with_life(1);
        if let Some(seed) = seed.clone() {
            replica.update(NOW - 1_000, seed).expect("a local write");
        }
        let stream = replica.open(StreamOpts::default().binding(BINDING)).expect("open");
        settle(&mut replica, now, &[stream]);
        let start = (replica.state().clone(), replica.clock().clone());
        let mut oracle = Oracle::new(trust, now, !replica.clock().is_empty());
        for frame in &input {
            let state = replica.state().clone();
            let clock = replica.clock().clone();
            let snapshots = replica.stats().snapshots;
            let expect = oracle.judge::<T>(frame);
            let result = replica.handle(stream, now, frame);
            if let Err(e) = &result {
                assert!(
                    matches!(e, SessionError::Peer(_) | SessionError::NotOpen(_)),
                    "handle failed with {e:?}, not a peer error"
                );
            }
            settle(&mut replica, now, &[stream]);
            check_clock(replica.clock());
            let open = replica.open_streams().any(|s| s == stream);
            let same_state = state == *replica.state();
            let same_clock = clock == *replica.clock();
            let ended = replica.stats().snapshots - snapshots;
            match expect {
                Expect::Ended => {
                    assert!(
                        matches!(result, Err(SessionError::NotOpen(_))),
                        "{who} read a frame after its stream ended: {result:?}"
                    );
                    assert!(same_state && same_clock, "{who} changed on a stream that ended");
                }
                Expect::Refused(why) => {
                    assert!(same_state, "{who} changed its state on {why}: {result:?}");
                    assert!(same_clock, "{who} moved its clock on {why}: {result:?}");
                    assert_eq!(ended, 0, "{who} counted a snapshot on {why}");
                    assert!(!open, "{who} took {why} ({result:?})");
                }
                Expect::Taken => {
                    assert!(open, "{who} refused a valid frame: {result:?}");
                    assert!(same_state, "{who} changed its state on a frame without state");
                    assert!(same_clock, "{who} moved its clock before a snapshot's end");
                    assert_eq!(ended, 0, "{who} counted a snapshot before its end");
                }
                Expect::Part(part) => {
                    assert!(open, "{who} refused a valid snapshot part: {result:?}");
                    assert!(same_clock, "{who} moved its clock on a snapshot part");
                    assert_eq!(ended, 0, "{who} counted a snapshot at a part");
                    let mut joined = state;
                    joined.reduce(part);
                    assert!(
                        joined == *replica.state(),
                        "{who} did not merge exactly the part: {:?} instead of {joined:?}",
                        replica.state()
                    );
                    report.parts[role] += 1;
                }
                Expect::End(of, floor) => {
                    assert!(open, "{who} refused a valid snapshot end: {result:?}");
                    match floor {
                        None => assert!(same_state, "{who} changed its state at a snapshot's end"),
                        Some(floor) => {
                            let mut collected = state;
                            collected.collect(floor);
                            assert!(
                                collected == *replica.state(),
                                "{who} did not take the snapshot's floor {floor:?} at its end"
                            );
                            assert_eq!(replica.floor(), floor, "{who} kept its floor");
                        }
                    }
                    let mut joined = clock;
                    joined.merge(&of);
                    assert!(
                        joined == *replica.clock(),
                        "{who} did not take exactly the snapshot's clock at its end: {:?} \
                         instead of {joined:?}",
                        replica.clock()
                    );
                    assert_eq!(ended, 1, "{who} did not count a snapshot it took");
                    match role {
                        0 => report.plain = true,
                        _ => report.trusting = true,
                    }
                }
            }
        }
        if trust == Trust::Nobody {
            let end = (replica.state().clone(), replica.clock().clone());
            assert!(end == start, "{who} took something of a snapshot");
            assert_eq!(replica.stats().snapshots, 0, "{who} took a snapshot");
        }
    }
    report
}

/// A source id from any 16 bytes, the reserved all-zero one included (as
/// a peer could send it).
pub fn raw_source(bytes: [u8; 16]) -> SourceId {
    postcard::from_bytes(&bytes).expect("16 bytes decode as a source id")
}
