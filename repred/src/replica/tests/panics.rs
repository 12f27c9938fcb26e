//! User code that panics (`reduce`, `stamp`, `unstamp`, `Serialize`),
//! caught: the replica claims only what its state took, records all it
//! took, and a poisoned one sends nothing of the leftover.

use std::cell::Cell;
use std::collections::BTreeSet;
use std::panic::{AssertUnwindSafe, catch_unwind};

use super::*;
use crate::Outcome;

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
