use std::cell::Cell;
use std::collections::BTreeSet;
use std::panic::{AssertUnwindSafe, catch_unwind};

use super::*;
use crate::{Network, NodeId, Outcome, StreamOpts};

thread_local! {
    /// The value whose insertion panics, on this test's thread only.
    static POISON: Cell<Option<u64>> = const { Cell::new(None) };
    /// The value whose update's stamping panics, on this thread only.
    static STAMP_POISON: Cell<Option<u64>> = const { Cell::new(None) };
    /// The value whose unstamping panics when it is all the update
    /// holds (as a reduce returns it when the rest was there).
    static UNSTAMP_POISON: Cell<Option<u64>> = const { Cell::new(None) };
}

/// A grow-only set whose reduce panics at the poisoned value, after
/// inserting the values before it in the same update: a user's bug that
/// leaves an update half in the state.
#[derive(Clone, Debug, Default, PartialEq)]
struct Fragile(BTreeSet<u64>);

impl Reduce for Fragile {
    type Update = Vec<u64>;

    fn reduce(&mut self, update: Vec<u64>) -> Option<Vec<u64>> {
        let mut added = Vec::new();
        for value in update {
            assert!(POISON.get() != Some(value), "the user's reduce fails at {value}");
            if self.0.insert(value) {
                added.push(value);
            }
        }
        (!added.is_empty()).then_some(added)
    }

    fn snapshot(&self) -> Vec<u64> {
        self.0.iter().copied().collect()
    }

    /// A user's bug before any reduce: stamping an update that holds
    /// the poisoned value panics.
    fn stamp(update: &mut Vec<u64>, _: Stamp) {
        if let Some(poison) = STAMP_POISON.get() {
            assert!(!update.contains(&poison), "the user's stamp fails at {poison}");
        }
    }

    fn unstamp(change: &mut Vec<u64>, _: Stamp) {
        if let Some(poison) = UNSTAMP_POISON.get() {
            assert!(change != &[poison], "the user's unstamp fails at {poison}");
        }
    }
}

fn id(name: &str) -> SourceId {
    SourceId::new(name).expect("a valid test id")
}

/// Whether every update of `source` that `replica`'s clock claims is in
/// its state, given what each wrote.
fn claims_only_what_it_holds(replica: &Replica<Fragile>, writes: &[(Stamp, Vec<u64>)]) {
    let clock = replica.clock();
    for (stamp, values) in writes {
        if clock.has(stamp.source, stamp.ts) {
            assert!(
                values.iter().all(|v| replica.state().0.contains(v)),
                "the clock claims {stamp:?}, but the state lacks some of {values:?}"
            );
        }
    }
}

/// A user's reduce that panics mid-frame, caught, leaves the replica
/// claiming no update its reduce did not return from: what came before
/// is kept (and recorded), and a later sync brings the rest.
#[test]
fn a_reduce_that_panicked_mid_frame_leaves_the_rest_to_be_asked_for_again() {
    let mut net = Network::new();
    let a = net.add(Replica::new(id("a"), Fragile::default()));
    let b = net.add(Replica::new(id("b"), Fragile::default()));
    let link = net.link(a, b);
    net.pump();
    let mut writes = Vec::new();
    for i in 0..100u64 {
        // The 50th update carries the poison after a harmless value.
        let values = if i == 50 { vec![i, 5_000] } else { vec![i, 1_000 + i] };
        let stamp = net.update(a, values.clone()).ok().flatten();
        writes.push((stamp.expect("a new update"), values));
    }
    POISON.set(Some(5_000));
    let caught = catch_unwind(AssertUnwindSafe(|| net.pump()));
    POISON.set(None);
    assert!(caught.is_err(), "the reduce panicked");
    let b_clock = net[b].clock().get(id("a"));
    assert!(b_clock < writes[50].0.ts, "b claims the update whose reduce panicked");
    assert!(b_clock > Timestamp::ZERO, "what came before stays");
    claims_only_what_it_holds(&net[b], &writes);
    assert!(net[b].history_len() > 0, "and is recorded, to be relayed");

    net.cut(link);
    net.link(a, b);
    net.pump();
    assert_eq!(net[b].state(), net[a].state());
    assert_eq!(net[b].clock(), net[a].clock());
}

/// The same through `Replica::apply`: the clock stays where it was.
#[test]
fn a_reduce_that_panicked_in_apply_moves_no_clock() {
    let mut r = Replica::new(id("r"), Fragile::default());
    let now = Network::<Fragile>::EPOCH;
    let ts = Timestamp::new(now, 0);
    let first = Envelope::new(id("w"), ts, vec![1]);
    assert_eq!(r.apply(now, first), Outcome::Applied);
    let poisoned = Envelope::new(id("w"), ts.next(now), vec![2, 5_000]);
    POISON.set(Some(5_000));
    let caught = catch_unwind(AssertUnwindSafe(|| r.apply(now, poisoned.clone())));
    POISON.set(None);
    assert!(caught.is_err());
    assert_eq!(r.clock().get(id("w")), ts, "the clock went back");
    assert_eq!(r.apply(now, poisoned), Outcome::Applied, "and it is taken when sent again");
    let fresh = Envelope::new(id("v"), ts, vec![7, 5_000]);
    POISON.set(Some(5_000));
    let caught = catch_unwind(AssertUnwindSafe(|| r.apply(now, fresh)));
    POISON.set(None);
    assert!(caught.is_err());
    assert_eq!(r.clock().get(id("v")), Timestamp::ZERO, "a new source is unseen again");
    assert_eq!(r.clock().len(), 1);
}

/// Runs `a`'s 100 updates to `b` in one frame, the 50th being
/// `poisoned`, with `poison` set to 5,000 and a panic caught; then `b`
/// resyncs with `a`, and `c`, which hears only from `b`, with `b`.
/// `b` holds 9,999 of its own, which `a` lacks as it writes.
///
/// The stream the panic came on ends, as if its link were cut: the
/// frames after the poisoned one are lost, and going on would take the
/// next over a gap.
fn panic_mid_frame_then_resync(
    poison: &'static std::thread::LocalKey<Cell<Option<u64>>>,
    poisoned: Vec<u64>,
) {
    let mut net = Network::new();
    let a = net.add(Replica::new(id("a"), Fragile::default()));
    let b = net.add(Replica::new(id("b"), Fragile::default()));
    let link = net.link(a, b);
    net.pump();
    let [_, (_, on_b)] = net.streams(link);
    // Of b's that a has not heard of when it writes: a reduce at b
    // returns less than a wrote.
    net.update(b, vec![9_999]).expect("b's update");
    let mut writes = Vec::new();
    for i in 0..100u64 {
        let values = if i == 50 { poisoned.clone() } else { vec![i, 1_000 + i] };
        let stamp = net.update(a, values.clone()).ok().flatten();
        writes.push((stamp.expect("a new update"), values));
    }
    poison.set(Some(5_000));
    let caught = catch_unwind(AssertUnwindSafe(|| net.pump()));
    poison.set(None);
    assert!(caught.is_err(), "the user's code panicked");
    claims_only_what_it_holds(&net[b], &writes);
    assert!(net[b].core.staged.is_empty(), "nothing stays staged");
    assert!(net[b].core.inbox.is_empty(), "nor in the inbox");
    assert!(!net[b].open_streams().any(|s| s == on_b), "the stream ended");
    assert_eq!(net[b].peer_heard(on_b), None);

    net.cut(link);
    net.link(a, b);
    net.pump();
    assert_eq!(net[b].state(), net[a].state());
    assert_eq!(net[b].clock(), net[a].clock());
    let c = net.add(Replica::new(id("c"), Fragile::default()));
    net.link(b, c);
    net.pump();
    assert_eq!(net[c].state(), net[a].state(), "b's history holds every update");
    assert_eq!(net[c].clock(), net[a].clock());
}

/// A user's `stamp` that panics while a frame is being staged, caught,
/// leaves nothing of the frame staged or claimed: a later sync brings
/// all of it, and a third replica that hears only from this one gets
/// every update from its history (left staged, the frame's changes
/// were reduced with the next frame and recorded against its
/// envelopes, some of which then went unrecorded).
#[test]
fn a_stamp_that_panicked_mid_frame_leaves_nothing_staged_or_claimed() {
    panic_mid_frame_then_resync(&STAMP_POISON, vec![50, 5_000]);
}

/// A user's `unstamp` that panics on what a reduce returned, before the
/// frame is recorded: every update reduced is still recorded (before,
/// those from it on were not, while the clock and the state had them:
/// a replica that hears only from this one never got them).
#[test]
fn an_unstamp_that_panicked_before_the_records_leaves_none_out() {
    // 9,999 is there already at b: its reduce returns 5,000 alone.
    panic_mid_frame_then_resync(&UNSTAMP_POISON, vec![5_000, 9_999]);
}

/// The same through `Replica::apply`: the clock, raised before the
/// stamp, goes back.
#[test]
fn a_stamp_that_panicked_in_apply_moves_no_clock() {
    let mut r = Replica::new(id("r"), Fragile::default());
    let now = Network::<Fragile>::EPOCH;
    let ts = Timestamp::new(now, 0);
    assert_eq!(r.apply(now, Envelope::new(id("w"), ts, vec![1])), Outcome::Applied);
    let poisoned = Envelope::new(id("w"), ts.next(now), vec![2, 5_000]);
    STAMP_POISON.set(Some(5_000));
    let caught = catch_unwind(AssertUnwindSafe(|| r.apply(now, poisoned.clone())));
    STAMP_POISON.set(None);
    assert!(caught.is_err());
    assert_eq!(r.clock().get(id("w")), ts, "the clock went back");
    assert_eq!(r.apply(now, poisoned), Outcome::Applied, "and it is taken when sent again");
    assert_eq!(r.state().0, BTreeSet::from([1, 2, 5_000]));
}

/// A user's `unstamp` that panics in `Replica::apply`, on what the
/// reduce returned: the state took the update, so it is recorded, and
/// a replica that hears only from this one gets it.
#[test]
fn an_unstamp_that_panicked_in_apply_still_records_the_update() {
    let mut net = Network::new();
    let r = net.add(Replica::new(id("r"), Fragile::default()));
    let now = Network::<Fragile>::EPOCH;
    net[r].update(now, vec![9_999]).expect("r's update");
    // 9,999 is there already: the reduce returns 5,000 alone.
    let envelope = Envelope::new(id("w"), Timestamp::new(now, 0), vec![5_000, 9_999]);
    UNSTAMP_POISON.set(Some(5_000));
    let caught = catch_unwind(AssertUnwindSafe(|| net[r].apply(now, envelope)));
    UNSTAMP_POISON.set(None);
    assert!(caught.is_err());
    let c = net.add(Replica::new(id("c"), Fragile::default()));
    net.link(r, c);
    net.pump();
    assert_eq!(net[c].state(), net[r].state());
    assert_eq!(net[c].clock(), net[r].clock());
}

/// A user's `unstamp` that panics in `Replica::update`, on what the
/// reduce returned: the state took the write, so it is recorded and
/// travels.
#[test]
fn an_unstamp_that_panicked_in_update_still_records_the_write() {
    let mut net = Network::new();
    let r = net.add(Replica::new(id("r"), Fragile::default()));
    let now = Network::<Fragile>::EPOCH;
    UNSTAMP_POISON.set(Some(5_000));
    let caught = catch_unwind(AssertUnwindSafe(|| net[r].update(now, vec![5_000])));
    UNSTAMP_POISON.set(None);
    assert!(caught.is_err());
    assert!(net[r].update(now, vec![1]).is_ok_and(|s| s.is_some()), "r writes on");
    let c = net.add(Replica::new(id("c"), Fragile::default()));
    net.link(r, c);
    net.pump();
    assert_eq!(net[c].state(), net[r].state());
    assert_eq!(net[c].clock(), net[r].clock());
}

/// Moves what `from` writes on `fs` to `to`'s `ts`, one frame per call
/// to `handle`, catching a panic from it; returns the bytes moved and
/// the panics caught.
fn frame_by_frame(
    from: &mut Replica<Fragile>,
    fs: StreamId,
    to: &mut Replica<Fragile>,
    ts: StreamId,
) -> (usize, usize) {
    let now = Network::<Fragile>::EPOCH;
    let mut out = Vec::new();
    while from.poll_transmit(fs, &mut out).unwrap_or(0) > 0 {}
    let (mut at, mut panics) = (0, 0);
    while at < out.len() {
        let len = u32::from_le_bytes(out[at..at + 4].try_into().expect("a prefix")) as usize;
        let frame = &out[at..at + 4 + len];
        if catch_unwind(AssertUnwindSafe(|| to.handle(ts, now, frame))).is_err() {
            panics += 1;
        }
        at += 4 + len;
    }
    (out.len(), panics)
}

/// Both ways until quiet; returns the panics caught.
fn exchange(x: &mut Replica<Fragile>, y: &mut Replica<Fragile>) -> usize {
    let sx = x.open(crate::StreamOpts::default()).expect("open");
    let sy = y.open(crate::StreamOpts::default()).expect("open");
    let mut panics = 0;
    loop {
        let (there, p) = frame_by_frame(x, sx, y, sy);
        let (back, q) = frame_by_frame(y, sy, x, sx);
        panics += p + q;
        if there + back == 0 {
            return panics;
        }
    }
}

/// A user's `reduce` that panics on a snapshot's part, caught, leaves
/// the clock where it was even when the snapshot's end arrives: the
/// part was counted before its reduce, and without the snapshot
/// dropped the end gave the clock to a state that lacked the part.
#[test]
fn a_reduce_that_panicked_on_a_snapshot_part_ends_the_snapshot() {
    let config = crate::Config::default().history_limit(4);
    let mut a = Replica::with_config(id("a"), Fragile::default(), config);
    let now = Network::<Fragile>::EPOCH;
    for i in 0..20u64 {
        a.update(now, vec![i, 5_000 + i]).expect("an update");
    }
    let mut b = Replica::new(id("b"), Fragile::default());
    POISON.set(Some(5_019));
    let panics = exchange(&mut a, &mut b);
    POISON.set(None);
    assert_eq!(panics, 1, "the reduce panicked");
    assert_eq!(b.clock().get(id("a")), Timestamp::ZERO, "b claims nothing of a's");

    assert_eq!(exchange(&mut a, &mut b), 0);
    assert!(b.stats().snapshots > 0, "b was brought up by snapshot");
    assert_eq!(b.state(), a.state());
    assert_eq!(b.clock(), a.clock());
}

/// A signing replica shows its progress with a signed proof, which a
/// peer that takes no unsigned word takes: its clock and `peer_heard`
/// move; an unsigned advance it refuses.
#[test]
fn a_signing_replica_shows_progress_to_a_strict_peer() {
    let signer = Identity::from_secret([7; 32]);
    let mut net = Network::new();
    let strict = Config::default().require_signatures(true);
    let a = net.add(Replica::with_config(id("a"), Fragile::default(), strict));
    let b = net.add(Replica::with_identity(signer, Fragile::default(), Config::default()));
    let c = net.add(Replica::new(id("c"), Fragile::default()));
    let to_b = net.link(a, b);
    let to_c = net.link(a, c);
    net.update(b, vec![1]).expect("b's write");
    net.pump();
    let now = net.now() + 5;
    let shown = net[b].show_progress(now).expect("a progress");
    let unsigned = net[c].show_progress(now).expect("a progress");
    net.pump();
    let [(_, on_b), _] = net.streams(to_b);
    let [(_, on_c), _] = net.streams(to_c);
    assert_eq!(net[a].clock().get(shown.source), shown.ts, "the proof moved a's clock");
    assert_eq!(net[a].peer_heard(on_b), Some(shown.ts));
    assert_eq!(net[a].clock().get(unsigned.source), Timestamp::ZERO, "refused, unsigned");
    assert!(net[a].peer_heard(on_c) < Some(unsigned.ts));
    assert_eq!(net[a].state().0, BTreeSet::from([1]), "nothing changed");
}

thread_local! {
    /// The value whose encoding panics, on this test's thread only.
    static ENCODE_POISON: Cell<Option<u64>> = const { Cell::new(None) };
}

/// A value whose `Serialize` panics when poisoned: a user's bug while a
/// frame is being written.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Deserialize)]
#[serde(transparent)]
struct Touchy(u64);

impl serde::Serialize for Touchy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        assert!(ENCODE_POISON.get() != Some(self.0), "the user's Serialize fails");
        s.serialize_u64(self.0)
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
struct TouchySet(BTreeSet<Touchy>);

impl Reduce for TouchySet {
    type Update = Vec<Touchy>;

    fn reduce(&mut self, update: Vec<Touchy>) -> Option<Vec<Touchy>> {
        let added: Vec<Touchy> = update.into_iter().filter(|v| self.0.insert(v.clone())).collect();
        (!added.is_empty()).then_some(added)
    }

    fn snapshot(&self) -> Vec<Touchy> {
        self.0.iter().cloned().collect()
    }
}

/// A user's `Serialize` that panics while a frame is written, caught,
/// ends the stream with nothing of the frame in the output: before,
/// the stream counted as sent what it was writing, and the half frame
/// stayed in the buffer for the caller to send.
#[test]
fn an_encoding_that_panicked_mid_frame_ends_the_stream_with_nothing_half_written() {
    let mut a = Replica::new(id("a"), TouchySet::default());
    let mut b = Replica::new(id("b"), TouchySet::default());
    let now = Network::<TouchySet>::EPOCH;
    let opts = crate::StreamOpts::default;
    let (sa, sb) = (a.open(opts()).unwrap(), b.open(opts()).unwrap());
    let mut out = Vec::new();
    b.poll_transmit(sb, &mut out).unwrap();
    a.handle(sa, now, &out).unwrap();
    for i in 0..10 {
        a.update(now, vec![Touchy(i)]).unwrap();
    }
    let mut out = b"kept".to_vec();
    ENCODE_POISON.set(Some(5));
    let caught = catch_unwind(AssertUnwindSafe(|| a.poll_transmit(sa, &mut out)));
    ENCODE_POISON.set(None);
    assert!(caught.is_err(), "the encoding panicked");
    assert_eq!(out, b"kept", "nothing half written");
    assert!(!a.open_streams().any(|s| s == sa), "the stream ended");
    // A new stream brings all.
    b.abort(sb);
    let opts = crate::StreamOpts::default;
    let (sa, sb) = (a.open(opts()).unwrap(), b.open(opts()).unwrap());
    for _ in 0..100 {
        let mut out = Vec::new();
        let n = a.poll_transmit(sa, &mut out).unwrap();
        b.handle(sb, now, &out).unwrap();
        let mut back = Vec::new();
        let m = b.poll_transmit(sb, &mut back).unwrap();
        a.handle(sa, now, &back).unwrap();
        if n == 0 && m == 0 {
            break;
        }
    }
    assert_eq!(b.state(), a.state());
    assert_eq!(b.clock(), a.clock());
}

/// A replica that rejoined below a floor trusts it holds no own write
/// under it only until a snapshot brings its own writes back: one from
/// a peer that had not collected (and still held an own write below
/// the floor that the others lack) makes it stale to a peer at the
/// floor again, as any replica holding such a write is. Before, it
/// took that peer's floor, and its next snapshot could bring back
/// what the peer had deleted and forgotten.
#[test]
fn own_writes_a_snapshot_brought_back_count_after_a_rejoin() {
    type Map = crate::LwwMap<String, u32>;
    let set = |k: &str, v: u32| crate::LwwMap::set(k.to_string(), v);
    let mut net = Network::new();
    let small = Config::default().history_limit(2);
    let a = net.add(Replica::with_config(id("a"), Map::default(), small));
    let b = net.add(Replica::new(id("b"), Map::default()));
    let c = net.add(Replica::new(id("c"), Map::default()));
    // c gets a's writes; then b's old write reaches a, not c.
    for i in 0..4 {
        net.update(a, set(&format!("a{i}"), i)).expect("a's write");
    }
    let link = net.link(a, c);
    net.pump();
    net.cut(link);
    let link = net.link(a, b);
    net.update(b, set("old", 1)).expect("b's write");
    net.pump();
    net.cut(link);
    assert!(net[a].state().get("old").is_some() && net[c].state().get("old").is_none());
    net.advance(10);
    net.update(c, set("c", 1)).expect("c's write");
    let floor = Timestamp::new(net.now(), 0);
    net[c].collect(floor);
    net.advance(10);
    // Stale to c, b rejoins, keeping a newer write.
    let link = net.link(b, c);
    net.pump();
    assert_eq!(net[b].stale_floor(), Some(floor));
    net.cut(link);
    net.update(b, set("new", 2)).expect("b's write");
    net[b].rejoin(Map::default());
    // a, which never collected, brings b up by snapshot (its history
    // keeps two records), b's old write with it.
    let link = net.link(a, b);
    net.pump();
    net.cut(link);
    assert!(net[b].stats().snapshots > 0, "brought up by snapshot");
    assert!(net[b].state().get("old").is_some(), "b's old write is back");
    // To c, at the floor, b is stale again.
    net.link(b, c);
    net.pump();
    assert_eq!(net[b].stale_floor(), Some(floor), "b holds a write below c's floor");
    assert!(net[c].state().get("old").is_none(), "c never took it");
}

/// A replica that rejoined and then wrote past its log's limit takes
/// the floor from the floor's peer, which holds an old write of its
/// own: the log's eviction raised its horizon for its own source above
/// the floor, which for its own source does not count (only what a
/// snapshot may have brought back does; see `holds_news_below`).
#[test]
fn a_rejoined_replica_whose_log_overflowed_still_takes_the_floor() {
    type Map = crate::LwwMap<String, u32>;
    let set = |k: &str, v: u32| crate::LwwMap::set(k.to_string(), v);
    let mut net = Network::new();
    let a = net.add(Replica::new(id("a"), Map::default()));
    let small = Config::default().history_limit(2);
    let b = net.add(Replica::with_config(id("b"), Map::default(), small));
    // a holds a write of b's from before they split.
    let link = net.link(a, b);
    net.update(b, set("early", 0)).expect("b's write");
    net.pump();
    net.cut(link);
    net.update(b, set("old", 1)).expect("b's write a never gets");
    net.advance(10);
    net.update(a, set("a", 1)).expect("a's write");
    let floor = Timestamp::new(net.now(), 0);
    net[a].collect(floor);
    net.advance(10);
    let link = net.link(a, b);
    net.pump();
    assert_eq!(net[b].stale_floor(), Some(floor));
    net.cut(link);
    net[b].rejoin(Map::default());
    for i in 0..3 {
        net.update(b, set(&format!("new{i}"), i)).expect("b's write");
    }
    net.link(a, b);
    net.pump();
    assert_eq!(net[b].stale_floor(), None, "not stale again");
    assert_eq!(net[b].floor(), floor);
    assert_eq!(net[a].state().get("new2"), Some(&2), "b's writes reached a");
    assert_eq!(net[b].state().get("a"), Some(&1), "a's reached b");
    // b's own "early", which a holds and b's newer writes' stamps
    // claim, comes back by the snapshot b's Hello asked for.
    assert_eq!(net[b].state().get("early"), Some(&0), "b's dropped write is back");
}

/// A rejoined replica brought up by one peer's snapshot, which held an
/// old write of the replica's own, is not stale to a second peer at a
/// higher floor that holds that write too: what the first snapshot
/// brought back is weighed against the second's clock at the floor's
/// taking (its snapshot's end), not refused at its begin. Refusing at
/// the begin (49b76f1 reverted it) had repred-transport's
/// tests/stale.rs fail about one run in six under load, when the second
/// snapshot began after the first had ended.
#[test]
fn a_second_floor_peer_holding_what_a_snapshot_brought_back_finds_a_rejoined_replica_fresh() {
    type Map = crate::LwwMap<String, u32>;
    let set = |k: &str, v: u32| crate::LwwMap::set(k.to_string(), v);
    let mut net = Network::new();
    let small = Config::default().history_limit(2);
    let a = net.add(Replica::with_config(id("a"), Map::default(), small.clone()));
    let b = net.add(Replica::new(id("b"), Map::default()));
    let c = net.add(Replica::with_config(id("c"), Map::default(), small));
    // All three hold b's early write and a's.
    let links = [net.link(a, b), net.link(b, c), net.link(a, c)];
    net.update(b, set("early", 0)).expect("b's write");
    for i in 0..4 {
        net.update(a, set(&format!("a{i}"), i)).expect("a's write");
    }
    net.pump();
    for link in links {
        net.cut(link);
    }
    // Apart: a collects at fa; b writes where nobody hears; c writes and
    // collects at fc, above b's lost write.
    net.advance(10);
    let fa = Timestamp::new(net.now(), 0);
    net[a].collect(fa);
    net.advance(10);
    net.update(b, set("old", 1)).expect("b's lost write");
    net.advance(10);
    for i in 0..4 {
        net.update(c, set(&format!("c{i}"), i)).expect("c's write");
    }
    let fc = Timestamp::new(net.now(), 0);
    net[c].collect(fc);
    net.advance(10);
    // Stale to c; b rejoins under fc.
    let link = net.link(b, c);
    net.pump();
    net.cut(link);
    assert_eq!(net[b].stale_floor(), Some(fc));
    net[b].rejoin(Map::default());
    // a brings b up by snapshot (its log keeps two records), b's early
    // write with it; b takes a's floor.
    let link = net.link(a, b);
    net.pump();
    net.cut(link);
    assert!(net[b].stats().snapshots > 0, "a brought b up by snapshot");
    assert_eq!(net[b].state().get("early"), Some(&0), "b's early write is back");
    assert_eq!(net[b].floor(), fa);
    // c, at the higher floor and holding the early write too, brings
    // the rest by snapshot: b is not stale, and takes fc.
    let snapshots = net[b].stats().snapshots;
    net.link(b, c);
    net.pump();
    assert!(net[b].stats().snapshots > snapshots, "c sent a snapshot");
    assert_eq!(net[b].stale_floor(), None, "b holds nothing below fc that c lacks");
    assert_eq!(net[b].floor(), fc);
    assert_eq!(net[b].clock(), net[c].clock());
    assert_eq!(net[b].state().get("c3"), Some(&3));
    assert!(net[b].state().get("old").is_none() && net[c].state().get("old").is_none());
}

/// A local update whose reduce panics poisons the replica: what it
/// left in the state has no record and would never reach a peer, so
/// local updates are refused until a rejoin starts the state over from
/// the peers' and the replica's own recorded writes.
#[test]
fn a_local_reduce_that_panics_poisons_the_replica_until_it_rejoins() {
    let mut net = Network::new();
    let a = net.add(Replica::new(id("a"), Fragile::default()));
    let b = net.add(Replica::new(id("b"), Fragile::default()));
    let link = net.link(a, b);
    net.update(b, vec![1]).expect("b's write");
    net.update(a, vec![2]).expect("a's write");
    net.pump();
    POISON.set(Some(13));
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = net.update(b, vec![7, 13]);
    }));
    POISON.set(None);
    assert!(panicked.is_err(), "the panic goes on to the caller");
    assert!(net[b].is_poisoned());
    assert!(net[b].state().0.contains(&7), "the reduce left part of the update");
    assert_eq!(net.update(b, vec![8]), Err(ReplicaError::Poisoned));
    // Peers' updates are still taken.
    net.update(a, vec![3]).expect("a's write");
    net.pump();
    assert!(net[b].state().0.contains(&3));
    assert!(!net[a].state().0.contains(&7), "nothing sends what no record holds");
    net.cut(link);
    net[b].rejoin(Fragile::default());
    assert!(!net[b].is_poisoned());
    net.update(b, vec![4]).expect("b writes again");
    net.link(a, b);
    net.pump();
    let all = BTreeSet::from([1, 2, 3, 4]);
    assert_eq!(net[a].state().0, all);
    assert_eq!(net[b].state().0, all, "the part the panic left is gone");
    assert_eq!(net[a].clock(), net[b].clock());
}

/// A grow-only set sent in parts, whose reduce takes an update's values
/// from the highest down and panics at the poisoned value, the higher
/// ones already in.
#[derive(Default, Debug)]
struct FragileParts(BTreeSet<u64>);

impl Reduce for FragileParts {
    type Update = BTreeSet<u64>;

    fn reduce(&mut self, update: BTreeSet<u64>) -> Option<BTreeSet<u64>> {
        let mut added = BTreeSet::new();
        for value in update.into_iter().rev() {
            assert!(POISON.get() != Some(value), "the user's reduce fails at {value}");
            if self.0.insert(value) {
                added.insert(value);
            }
        }
        (!added.is_empty()).then_some(added)
    }

    fn snapshot(&self) -> BTreeSet<u64> {
        self.0.clone()
    }

    fn snapshot_part(&self, cursor: Option<&[u8]>, max: usize) -> (BTreeSet<u64>, Option<Vec<u8>>) {
        let from = cursor.and_then(|c| <[u8; 8]>::try_from(c).ok()).map_or(0, u64::from_be_bytes);
        let part = self.0.range(from..).take(max.max(1)).copied().collect();
        let next = self.0.range(from..).nth(max.max(1)).map(|n| n.to_be_bytes().to_vec());
        (part, next)
    }
}

/// Runs `write` on `r` with `POISON` at 13; whether it panicked.
fn poisoned_write<T: Reduce>(r: &mut Replica<T>, now: u64, write: T::Update) -> bool {
    POISON.set(Some(13));
    let panicked = catch_unwind(AssertUnwindSafe(|| {
        let _ = r.update(now, write);
    }));
    POISON.set(None);
    panicked.is_err()
}

/// A poisoned replica starts no snapshot (the panic's leftover would go
/// with it), and its stamp is spent.
#[test]
fn a_poisoned_replica_sends_no_snapshot() {
    let mut net = Network::new();
    let small = Config::default().history_limit(2);
    let a = net.add(Replica::with_config(id("a"), Fragile::default(), small));
    let b = net.add(Replica::new(id("b"), Fragile::default()));
    let c = net.add(Replica::new(id("c"), Fragile::default()));
    // c's writes reach a, whose log keeps two records.
    let ac = net.link(a, c);
    for i in 1..=3 {
        net.update(c, vec![i]).expect("c's write");
    }
    net.pump();
    net.cut(ac);
    let before = net[a].last_timestamp();
    let now = net.now();
    assert!(poisoned_write(&mut net[a], now, vec![7, 13]));
    assert!(net[a].last_timestamp() > before, "the panicked write's stamp is spent");
    // b lacks what a's log no longer holds: it would need a snapshot.
    let ab = net.link(a, b);
    net.pump();
    assert_eq!(net[b].stats().snapshots, 0, "no snapshot from a poisoned replica");
    assert!(!net[b].state().0.contains(&7));
    net.cut(ab);
    net[a].rejoin(Fragile::default());
    net.link(a, c);
    net.link(a, b);
    net.pump();
    let all = BTreeSet::from([1, 2, 3]);
    for r in [a, b, c] {
        assert_eq!(net[r].state().0, all, "the leftover is nowhere");
    }
}

/// A snapshot going out when its replica is poisoned is cut short: its
/// later parts, made from the state as they go, would carry the
/// leftover.
#[test]
fn a_snapshot_going_out_is_cut_short_by_a_poisoning() {
    const NOW: u64 = 1_700_000_000_000;
    let config = Config::default().history_limit(2).batch_bytes(64).snapshot_part_bytes(64);
    let mut a = Replica::with_config(id("a"), FragileParts::default(), config);
    for chunk in 0..5u64 {
        a.update(NOW, (chunk * 100..chunk * 100 + 100).collect()).expect("a's write");
    }
    let mut b = Replica::new(id("b"), FragileParts::default());
    let (sa, sb) = (
        a.open(crate::StreamOpts::default()).expect("open"),
        b.open(crate::StreamOpts::default()).expect("open"),
    );
    let mut hello = Vec::new();
    while b.poll_transmit(sb, &mut hello).expect("b's frames") > 0 {}
    a.handle(sa, NOW, &hello).expect("b's hello");
    let mut first = Vec::new();
    a.poll_transmit(sa, &mut first).expect("a's first frames");
    b.handle(sb, NOW, &first).expect("the snapshot's first part");
    let seen = b.state().0.len();
    assert!(seen > 0 && !b.state().0.contains(&499), "the snapshot is part way");
    // 1000 sorts last: a later part would carry it.
    assert!(poisoned_write(&mut a, NOW + 1, BTreeSet::from([1000, 13])));
    assert!(!a.open_streams().any(|s| s == sa), "the stream sending it was cut");
    let mut rest = Vec::new();
    while let Ok(n) = a.poll_transmit(sa, &mut rest)
        && n > 0
    {}
    let _ = b.handle(sb, NOW + 1, &rest);
    assert!(!b.state().0.contains(&1000), "the leftover went nowhere");
}

/// A kept write whose reduce panics in a rejoin leaves every kept write
/// recorded, the replica poisoned; a second rejoin keeps them all.
#[test]
fn a_rejoin_whose_kept_write_panics_keeps_every_write_for_the_next() {
    let mut r = Replica::new(id("r"), Fragile::default());
    for write in [vec![1], vec![13], vec![3]] {
        r.update(1_700_000_000_000, write).expect("r's write");
    }
    POISON.set(Some(13));
    let panicked = catch_unwind(AssertUnwindSafe(|| r.rejoin(Fragile::default())));
    POISON.set(None);
    assert!(panicked.is_err());
    assert!(r.is_poisoned());
    assert_eq!(r.history_len(), 3, "every kept write is recorded");
    r.rejoin(Fragile::default());
    assert!(!r.is_poisoned());
    assert_eq!(r.state().0, BTreeSet::from([1, 13, 3]));
}

/// A rejoin takes the highest floor of the peers it streams with: one
/// whose Hello said a higher floor than the replica's own (not taken
/// yet: the replica lacks some of its writes) would find it stale at
/// once for a write kept below that floor.
#[test]
fn a_rejoin_takes_the_highest_floor_of_its_peers() {
    const NOW: u64 = 1_700_000_000_000;
    let mut a = Replica::new(id("a"), Fragile::default());
    a.update(NOW, vec![1]).expect("a's write");
    let floor = Timestamp::new(NOW + 10, 0);
    a.collect(floor);
    let mut b = Replica::new(id("b"), Fragile::default());
    b.update(NOW + 20, vec![2]).expect("b's write");
    let (sa, sb) = (
        a.open(crate::StreamOpts::default()).expect("open"),
        b.open(crate::StreamOpts::default()).expect("open"),
    );
    let mut hello = Vec::new();
    a.poll_transmit(sa, &mut hello).expect("a's hello");
    b.handle(sb, NOW + 20, &hello).expect("a's hello");
    assert_eq!(b.floor(), Timestamp::ZERO, "b lacks a's write: the floor waits");
    b.rejoin(Fragile::default());
    assert_eq!(b.rejoined_below(), floor);
}

/// A replica that rejoins gets back its own writes that were gone from
/// its log, although a kept write's stamp, and one made since, claim
/// them: its Hello asks for a snapshot, which holds them.
#[test]
fn a_rejoined_replica_gets_back_its_own_writes_gone_from_its_log() {
    let (mut net, a, c) = rejoined_without_its_first_write(small(), false);
    net.update(a, vec![4]).expect("a's write after the rejoin");
    let snapshots = net[a].stats().snapshots;
    net.link(a, c);
    net.pump();
    assert!(net[a].stats().snapshots > snapshots, "c sent the snapshot a asked for");
    let all = BTreeSet::from([1, 2, 3, 4]);
    assert_eq!(net[a].state().0, all, "a's write gone from its log is back");
    assert_eq!(net[c].state().0, all);
    assert_eq!(net[a].clock(), net[c].clock());
    // Brought up: the next stream asks for nothing.
    let snapshots = net[a].stats().snapshots;
    net.link(a, c);
    net.pump();
    assert_eq!(net[a].stats().snapshots, snapshots, "no second snapshot");
}

/// A second rejoin before a snapshot came still asks for one: the
/// first emptied the horizon that said what was gone.
#[test]
fn a_second_rejoin_before_a_snapshot_still_asks_for_one() {
    let (mut net, a, c) = rejoined_without_its_first_write(small(), false);
    let missing = net[a].rejoin_missing();
    assert!(missing > Timestamp::ZERO);
    net[a].rejoin(Fragile::default());
    assert_eq!(net[a].rejoin_missing(), missing);
    net.link(a, c);
    net.pump();
    assert_eq!(net[a].state().0, BTreeSet::from([1, 2, 3]), "the first write is back");
    assert_eq!(net[a].clock(), net[c].clock());
}

/// A peer whose stream does not await the clock has started, and sent
/// its history, before the Hello asking for a snapshot arrives: it
/// sends one then.
#[test]
fn a_peer_not_awaiting_the_clock_sends_the_snapshot_asked_for() {
    // One at a time: c gets them by history, so its own history, from
    // its start, leaves a fresh peer nothing it needs a snapshot for.
    let (mut net, a, c) = rejoined_without_its_first_write(small(), true);
    assert_eq!(net[c].stats().snapshots, 0);
    let eager = StreamOpts::default().await_clock(false);
    net.link_with(a, StreamOpts::default(), c, eager);
    net.pump();
    assert_eq!(net[a].state().0, BTreeSet::from([1, 2, 3]), "the first write is back");
    assert_eq!(net[a].rejoin_missing(), Timestamp::ZERO);
}

/// A peer asked for a snapshot it cannot send (it is poisoned) sends
/// its history instead: a wanted snapshot is a favour, and waiting for
/// it held back every update to the asker.
#[test]
fn a_wanted_snapshot_that_cannot_go_does_not_hold_back_history() {
    let mut net = Network::new();
    let small = Config::default().history_limit(2);
    let a = net.add(Replica::with_config(id("a"), Fragile::default(), small));
    let c = net.add(Replica::new(id("c"), Fragile::default()));
    let link = net.link(a, c);
    for i in 1..=3 {
        net.update(a, vec![i]).expect("a's write");
    }
    net.update(c, vec![10]).expect("c's write");
    net.pump();
    net.cut(link);
    net[a].rejoin(Fragile::default());
    net.update(c, vec![11]).expect("c's write");
    let now = net.now();
    assert!(poisoned_write(&mut net[c], now, vec![12, 13]));
    let snapshots = net[a].stats().snapshots;
    net.link(a, c);
    net.pump();
    assert_eq!(net[a].stats().snapshots, snapshots, "none from a poisoned replica");
    let state = &net[a].state().0;
    assert!(state.contains(&10) && state.contains(&11), "c's history came: {state:?}");
    assert!(!state.contains(&12), "not the panic's leftover");
    assert!(net[a].rejoin_missing() > Timestamp::ZERO, "a still asks");
}

/// A peer that did not await the clock and does not tail sent its Sync
/// before the Hello asking for a snapshot came, with the asker's Sync
/// in the same read: it sends the snapshot before it is done (it
/// closed at once, and the asker never got it).
#[test]
fn a_peer_that_does_not_tail_sends_the_snapshot_asked_for_before_it_closes() {
    let (mut net, a, c) = rejoined_without_its_first_write(small(), true);
    let eager = StreamOpts::default().await_clock(false);
    let ac = net.link_with(a, eager.clone(), c, eager.tail(false));
    net.pump();
    assert_eq!(net[a].state().0, BTreeSet::from([1, 2, 3]), "the first write is back");
    assert_eq!(net[a].rejoin_missing(), Timestamp::ZERO);
    // And then it is done, as a stream that does not tail is.
    let [_, (_, sc)] = net.streams(ac);
    let events: Vec<Event> = std::iter::from_fn(|| net[c].poll_event()).collect();
    assert!(
        events.iter().any(|e| matches!(e,
            Event::End { stream, reason: crate::EndReason::Local(crate::CloseReason::Done) }
                if *stream == sc)),
        "c's stream closed as done: {events:?}"
    );
}

/// A stream that takes nothing does not ask for a snapshot, and its
/// peer, which sends it nothing, still says Sync.
/// Asserts that `c`, on its side of `link`, said Sync (among the
/// events it has not yet given out).
fn assert_said_sync<T: Reduce>(net: &mut Network<T>, c: NodeId, link: crate::LinkId) {
    let [_, (_, sc)] = net.streams(link);
    let events: Vec<Event> = std::iter::from_fn(|| net[c].poll_event()).collect();
    assert!(
        events.iter().any(|e| matches!(e, Event::SyncSent { stream } if *stream == sc)),
        "c said Sync: {events:?}"
    );
}

#[test]
fn a_stream_that_takes_nothing_asks_for_no_snapshot() {
    let (mut net, a, c) = rejoined_without_its_first_write(small(), false);
    // c holds what a lacks: it would answer a stream that takes.
    while net[c].poll_event().is_some() {}
    let ac = net.link_with(a, StreamOpts::send_only(), c, StreamOpts::default());
    net.pump();
    assert_said_sync(&mut net, c, ac);
    assert_eq!(net[a].stats().snapshots, 0);
    assert!(net[a].rejoin_missing() > Timestamp::ZERO, "a still asks its other streams");
}

/// A snapshot from a peer that had fewer of a rejoined replica's own
/// writes than it lacks (one it needed from the first peer it reached)
/// does not end its asking: the next peer's brings back the rest.
/// Asking ended at the first, and the replica lacked its first write
/// for good, though c had it.
#[test]
fn a_snapshot_lacking_some_missing_writes_leaves_the_asking_to_the_next_peer() {
    let (mut net, a, c) = rejoined_without_its_first_write(small(), false);
    // b never heard of a, and its log lost its first write: a needs
    // its snapshot, which brings nothing of a's back.
    let b = net.add(Replica::with_config(id("b"), Fragile::default(), small_b()));
    net.update(b, vec![20]).expect("b's write");
    net.update(b, vec![21]).expect("b's write");
    let ab = net.link(a, b);
    net.pump();
    assert_eq!(net[a].stats().snapshots, 1, "b sent the snapshot a needed");
    assert!(net[a].state().0.contains(&20));
    assert!(net[a].rejoin_missing() > Timestamp::ZERO, "a still asks");
    net.cut(ab);
    net.link(a, c);
    net.pump();
    assert!(net[a].state().0.contains(&1), "c brought back a's first write");
    assert_eq!(net[a].rejoin_missing(), Timestamp::ZERO);
}

/// A rejoin that kept none of its own writes (other sources' filled
/// its log) asks for no snapshot while its clock claims none of them:
/// history brings back what peers have. Once it writes, its clock
/// claims them, and it asks. Before, the first snapshot (from a peer
/// that had none of them) ended the asking, and after the write no
/// peer sent them back.
#[test]
fn a_rejoin_that_kept_no_write_asks_once_its_clock_claims_the_missing() {
    let mut net = Network::new();
    let small = Config::default().history_limit(2);
    let a = net.add(Replica::with_config(id("a"), Fragile::default(), small));
    let c = net.add(Replica::new(id("c"), Fragile::default()));
    let ac = net.link(a, c);
    for i in 1..=3 {
        net.update(a, vec![i]).expect("a's write");
    }
    net.pump();
    for i in 10..=11 {
        net.update(c, vec![i]).expect("c's write");
    }
    net.pump();
    net.cut(ac);
    net[a].rejoin(Fragile::default());
    assert!(net[a].rejoin_missing() > Timestamp::ZERO);
    assert!(net[a].state().0.is_empty(), "c's writes filled a's log: it kept none of its own");
    // b's snapshot (a needs it: b's log lost its first write) has none
    // of a's writes.
    let b = net.add(Replica::with_config(id("b"), Fragile::default(), small_b()));
    net.update(b, vec![20]).expect("b's write");
    net.update(b, vec![21]).expect("b's write");
    let ab = net.link(a, b);
    net.pump();
    net.cut(ab);
    assert_eq!(net[a].stats().snapshots, 1);
    assert!(net[a].rejoin_missing() > Timestamp::ZERO, "b had none of them");
    net.update(a, vec![4]).expect("a's write after the rejoin");
    net.link(a, c);
    net.pump();
    assert_eq!(net[a].state().0, BTreeSet::from([1, 2, 3, 4, 10, 11, 20, 21]));
    assert_eq!(net[a].rejoin_missing(), Timestamp::ZERO);
}

/// Only a peer whose clock holds the newest write the asker lacks
/// answers its request: one without it (here one that never takes the
/// asker's writes) would send a whole state on every stream for less.
#[test]
fn a_peer_without_the_missing_writes_sends_no_snapshot() {
    let (mut net, a, c) = rejoined_without_its_first_write(small(), false);
    let b = net.add(Replica::new(id("b"), Fragile::default()));
    net.update(b, vec![20]).expect("b's write");
    let deaf = StreamOpts { receives: false, ..StreamOpts::default() };
    for round in 0..3 {
        let ab = net.link_with(a, StreamOpts::default(), b, deaf.clone());
        net.pump();
        net.cut(ab);
        assert_eq!(net[a].stats().snapshots, 0, "round {round}: b sent none");
    }
    assert!(net[a].state().0.contains(&20), "b's history came");
    assert!(net[a].rejoin_missing() > Timestamp::ZERO, "a still asks");
    net.link(a, c);
    net.pump();
    assert_eq!(net[a].stats().snapshots, 1, "c answered");
    assert_eq!(net[a].state().0, BTreeSet::from([1, 2, 3, 20]));
    assert_eq!(net[a].rejoin_missing(), Timestamp::ZERO);
}

/// A strict replica that trusts nobody's snapshots does not ask for
/// one; one that trusts some asks, and a peer whose snapshot it refused
/// as unsigned does not answer the same request again: each stream
/// would cost a whole state, refused, and hold back the history.
#[test]
fn a_refused_answer_is_not_sent_again() {
    for trusted in [false, true] {
        let mut strict = small().require_signatures(true);
        if trusted {
            strict = strict.trust_snapshots_from([id("z")]);
        }
        let (mut net, a, c) = rejoined_without_its_first_write(strict, false);
        assert!(net[a].rejoin_missing() > Timestamp::ZERO);
        for round in 0..3 {
            let ac = net.link(a, c);
            net.pump();
            net.cut(ac);
            let refused = net[a].stats().snapshots_refused;
            assert_eq!(refused, u64::from(trusted), "trusted {trusted}, round {round}");
        }
        // The refusal stands for a while: a's settings may change.
        net.advance(DECLINE_MILLIS);
        let ac = net.link(a, c);
        net.pump();
        net.cut(ac);
        let refused = net[a].stats().snapshots_refused;
        assert_eq!(refused, 2 * u64::from(trusted), "trusted {trusted}: answered again");
    }
}

/// A stream that did not await the clock owes a snapshot from its
/// start (its log lost records), held back by a store's hold; the
/// peer's Hello then says it takes nothing: the stream owes it none,
/// and says Sync (it waited for ever).
#[test]
fn a_snapshot_owed_to_a_peer_that_takes_nothing_does_not_hold_the_sync() {
    let mut net = Network::new();
    let small = Config::default().history_limit(2);
    let c = net.add(Replica::with_config(id("c"), Fragile::default(), small));
    for i in 1..=3 {
        net.update(c, vec![i]).expect("c's write");
    }
    net[c].hold_until_released();
    net.update(c, vec![4]).expect("c's write, not yet saved");
    let a = net.add(Replica::new(id("a"), Fragile::default()));
    let eager = StreamOpts::default().await_clock(false);
    let ac = net.link_with(a, StreamOpts::send_only(), c, eager);
    net.pump();
    assert_said_sync(&mut net, c, ac);
}

/// A log of one record: a peer that lacks the first of two writes
/// needs a snapshot.
fn small_b() -> Config {
    Config::default().history_limit(1)
}

/// A log of two records.
fn small() -> Config {
    Config::default().history_limit(2)
}

/// a (with `config`, whose log holds two records) wrote 1, 2 and 3,
/// which c took (`one_at_a_time`: each by history before the next),
/// then they parted and a rejoined: its first write is gone from its
/// log, and its clock claims it.
fn rejoined_without_its_first_write(
    config: Config,
    one_at_a_time: bool,
) -> (Network<Fragile>, NodeId, NodeId) {
    let mut net = Network::new();
    let a = net.add(Replica::with_config(id("a"), Fragile::default(), config));
    let c = net.add(Replica::new(id("c"), Fragile::default()));
    let link = net.link(a, c);
    for i in 1..=3 {
        net.update(a, vec![i]).expect("a's write");
        if one_at_a_time {
            net.pump();
        }
    }
    net.pump();
    net.cut(link);
    net[a].rejoin(Fragile::default());
    (net, a, c)
}
