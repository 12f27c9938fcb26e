use super::*;
use crate::frame::{Kind, Writer};
use crate::{Config, Envelope, Outcome, Stamp};

#[derive(Default)]
struct Max(u64);

impl Reduce for Max {
    type Update = u64;
    fn reduce(&mut self, u: u64) -> Option<u64> {
        (u > self.0).then(|| {
            self.0 = u;
            u
        })
    }
    fn snapshot(&self) -> u64 {
        self.0
    }
}

const NOW: u64 = 1_700_000_000_000;

fn frame(kind: Kind, body: &impl serde::Serialize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = Writer::begin(&mut out, kind);
    w.put(body).unwrap();
    w.finish();
    out
}

/// A lazy replica with one stream whose peer said Hello.
fn with_peer() -> (Replica<Max>, StreamId) {
    with_peer_config(Config::default().lazy_relay(true))
}

/// A replica with one stream whose peer said Hello.
fn with_peer_config(config: Config) -> (Replica<Max>, StreamId) {
    let mut r = Replica::with_config(SourceId::new("me").unwrap(), Max(0), config);
    let s = peer_stream(&mut r, "peer");
    (r, s)
}

/// Opens a stream on `r` whose peer, `name`, said Hello.
fn peer_stream(r: &mut Replica<Max>, name: &str) -> StreamId {
    let mut peer = Replica::new(SourceId::new(name).unwrap(), Max(0));
    let p = peer.open(StreamOpts::default()).unwrap();
    let mut hello = Vec::new();
    peer.poll_transmit(p, &mut hello).unwrap();
    let s = r.open(StreamOpts::default()).unwrap();
    r.handle(s, NOW, &hello).unwrap();
    s
}

fn bogus(n: u64) -> Vec<Stamp> {
    (0..n)
        .map(|i| Stamp {
            ts: Timestamp::new(NOW, 0),
            source: SourceId::new(format!("s{i}").as_bytes()).unwrap(),
        })
        .collect()
}

#[test]
fn wants_for_sources_never_seen_are_not_remembered() {
    let (mut r, s) = with_peer();
    r.update(NOW, 1).unwrap();
    let mut want = bogus(1_000);
    want.push(Stamp { ts: Timestamp::ZERO, source: r.id() });
    for _ in 0..3 {
        r.handle(s, NOW, &frame(Kind::Want, &want)).unwrap();
    }
    let stream = &r.streams[&s];
    assert_eq!(stream.eager.len(), 1, "only our own source is wanted");
    assert!(stream.known.len() <= 2, "{} sources known", stream.known.len());
}

#[test]
fn clocks_naming_unknown_sources_are_remembered_up_to_the_limit() {
    let (mut r, s) = with_peer_config(Config::default().max_unknown_sources(500));
    r.update(NOW, 1).unwrap();
    for round in 0..8u64 {
        let clock: Clock = (0..2_000u64)
            .map(|i| {
                let mut bytes = [0xCD; 16];
                bytes[..8].copy_from_slice(&(round * 10_000 + i).to_le_bytes());
                (SourceId::from_bytes(bytes).unwrap(), Timestamp::new(NOW, 0))
            })
            .chain([(r.id(), Timestamp::new(NOW, 0))])
            .collect();
        r.handle(s, NOW, &frame(Kind::Clock, &clock)).unwrap();
    }
    let stream = &r.streams[&s];
    assert!(stream.known.len() <= 501, "{} sources remembered", stream.known.len());
    assert_eq!(stream.known.get(r.id()), Timestamp::new(NOW, 0), "known sources are kept");
}

/// A replica with a stream whose peer said Hello, and no events left.
fn listening(config: Config) -> (Replica<Max>, StreamId) {
    let (mut r, s) = with_peer_config(config);
    while r.poll_event().is_some() {}
    (r, s)
}

/// Takes `frames` of updates in through `handle` (the frame's source
/// table), and the same envelopes one at a time as the loop did before
/// the table (apply, then note what the peer has), and checks that both
/// end the same: clock, state, counters, events, history, and the
/// stream's record of the peer and of unknown sources.
fn same_as_one_at_a_time(config: Config, frames: &[Vec<Envelope<u64>>]) {
    let (mut framed, fs) = listening(config.clone());
    let (mut single, ss) = listening(config);
    for envelopes in frames {
        let mut out = Vec::new();
        let mut w = Writer::begin(&mut out, Kind::Updates);
        for e in envelopes {
            w.put(e).unwrap();
        }
        w.finish();
        framed.handle(fs, NOW, &out).unwrap();
        let mut stream = single.streams.remove(&ss).unwrap();
        for e in envelopes {
            single.core.apply(NOW, e.clone());
            stream.note_known(&single.core, e.source, e.ts);
        }
        single.streams.insert(ss, stream);
    }
    assert_eq!(framed.clock(), single.clock());
    assert_eq!(framed.state().0, single.state().0);
    assert_eq!(framed.stats(), single.stats());
    assert_eq!(framed.last_timestamp(), single.last_timestamp());
    let events = |r: &mut Replica<Max>| std::iter::from_fn(|| r.poll_event()).collect::<Vec<_>>();
    assert_eq!(events(&mut framed), events(&mut single));
    let log =
        |r: &Replica<Max>| r.entries_from(0).unwrap().map(|(_, e)| e.clone()).collect::<Vec<_>>();
    assert_eq!(log(&framed), log(&single));
    let (f, s) = (&framed.streams[&fs], &single.streams[&ss]);
    assert_eq!((&f.known, f.foreign), (&s.known, s.foreign));
    assert!(framed.core.inbox.is_empty() && framed.core.staged.is_empty());
}

fn update(source: SourceId, ts: Timestamp, value: u64) -> Envelope<u64> {
    Envelope::new(source, ts, value)
}

#[test]
fn a_frame_of_mixed_sources_ends_as_one_update_at_a_time() {
    let id = |name: &str| SourceId::new(name).unwrap();
    let (a, b, c) = (id("a"), id("b"), id("c"));
    let t = |n: u16| Timestamp::new(NOW, n);
    let reserved = SourceId::from_hash_raw([0; 16]);
    let future = Timestamp::new(NOW + 3_600_000, 0);
    // A first frame, so that the second finds sources it knows.
    let first = vec![update(a, t(5), 5), update(b, t(2), 2)];
    let mut second = vec![
        update(a, t(6), 6),
        update(b, t(1), 1), // older than the clock
        update(c, t(3), 30),
        update(a, t(6), 60), // a duplicate within the frame
        update(reserved, t(7), 7),
        update(c, Timestamp::ZERO, 8),
        update(b, future, 9),
        update(a, t(4), 4), // older than the frame's own
        update(b, t(8), 1), // new, but changes nothing
    ];
    // Unknown sources, refused, past the limit of unknown sources in
    // the middle of the frame; one of them comes back later.
    for i in 0..6u64 {
        second.push(update(id(&format!("x{i}")), future, i));
        second.push(update(c, t(10 + i as u16), 100 + i));
    }
    second.push(update(id("x1"), t(20), 200));
    let config = Config::default().max_unknown_sources(3);
    same_as_one_at_a_time(config.clone(), &[first.clone(), second.clone()]);
    same_as_one_at_a_time(config.clone(), &[[first.clone(), second.clone()].concat()]);
    // A floor refuses what is new and older than it.
    let (mut framed, fs) = listening(config.clone());
    let (mut single, _) = listening(config);
    framed.collect(t(4));
    single.collect(t(4));
    let mut out = Vec::new();
    let mut w = Writer::begin(&mut out, Kind::Updates);
    for e in [update(c, t(2), 2), update(c, t(5), 5), update(a, t(3), 3)] {
        w.put(&e).unwrap();
    }
    w.finish();
    framed.handle(fs, NOW, &out).unwrap();
    for e in [update(c, t(2), 2), update(c, t(5), 5), update(a, t(3), 3)] {
        single.apply(NOW, e);
    }
    assert_eq!((framed.clock(), framed.stats()), (single.clock(), single.stats()));
    assert_eq!(framed.stats().rejected, 2);
}

#[test]
fn a_frame_of_signed_and_refused_updates_ends_as_one_update_at_a_time() {
    use crate::Identity;
    let signer = Identity::from_secret([7; 32]);
    let forger = Identity::from_secret([8; 32]);
    let outsider = Identity::from_secret([9; 32]);
    let t = |n: u16| Timestamp::new(NOW, n);
    let signed = |who: &Identity, as_: SourceId, ts: Timestamp, value: u64| {
        let mut e = update(as_, ts, value);
        e.signature = Some(Box::new(who.sign(ts, &postcard::to_allocvec(&value).unwrap())));
        e
    };
    let me = signer.id();
    let frame = vec![
        signed(&signer, me, t(1), 1),
        signed(&forger, me, t(2), 2),              // a forged signature
        update(me, t(3), 3),                       // unsigned
        signed(&signer, me, t(1), 1),              // a duplicate: no crypto, old
        signed(&outsider, outsider.id(), t(4), 4), // not on the list
        signed(&signer, me, t(5), 5),
    ];
    let strict = Config::default().allow_only([me]);
    same_as_one_at_a_time(strict, std::slice::from_ref(&frame));
    // Not strict: signed updates are verified, unsigned ones taken.
    same_as_one_at_a_time(Config::default(), &[frame]);
}

/// The Clock frame owed to a peer that sent its whole clock shows our
/// clock as of our Hello: a write made since, not sent yet, must not
/// count as shown (`peer_heard`), or the peer could collect past it
/// before it arrives.
#[test]
fn the_owed_clock_is_the_clock_of_the_hello() {
    let id = |name: &str| SourceId::new(name).unwrap();
    let mut w = Replica::new(id("w"), Max(0));
    // More sources than a Hello carries whole: w sends a digest.
    for i in 0..=ClockSummary::INLINE_SOURCES as u64 {
        let source = id(&format!("s{i}"));
        assert_eq!(w.apply(NOW, update(source, Timestamp::new(NOW, 1), i + 1)), Outcome::Applied);
    }
    let first = w.update(NOW, 100).unwrap().expect("a new write");
    // p knows w's first write only: its clock, sent whole, differs.
    let mut p = Replica::new(id("p"), Max(0));
    assert_eq!(p.apply(NOW, update(w.id(), first.ts, 100)), Outcome::Applied);
    let on_w = w.open(StreamOpts::receive_only()).unwrap();
    let on_p = p.open(StreamOpts::default()).unwrap();
    let mut hello = Vec::new();
    p.poll_transmit(on_p, &mut hello).unwrap();
    w.handle(on_w, NOW, &hello).unwrap();
    // Written after the Hello; a stream that sends nothing never sends it.
    let second = w.update(NOW + 10, 200).unwrap().expect("a new write");
    let mut out = Vec::new();
    w.poll_transmit(on_w, &mut out).unwrap();
    p.handle(on_p, NOW + 10, &out).unwrap();
    let heard = p.peer_heard(on_p).expect("p heard w's Hello and Clock");
    assert_eq!(heard, first.ts, "w showed its first write, not {second:?}");
}

/// A stream at each of `a` and `b`, with default options.
fn open_pair<T: Reduce>(a: &mut Replica<T>, b: &mut Replica<T>) -> (StreamId, StreamId) {
    (a.open(StreamOpts::default()).unwrap(), b.open(StreamOpts::default()).unwrap())
}

/// Moves frames between two streams until neither has anything to
/// send (bounded).
fn exchange<T: Reduce>(a: &mut Replica<T>, sa: StreamId, b: &mut Replica<T>, sb: StreamId) {
    for _ in 0..10_000 {
        let mut out = Vec::new();
        let from_a = a.poll_transmit(sa, &mut out).unwrap();
        if from_a > 0 {
            b.handle(sb, NOW, &out).unwrap();
        }
        out.clear();
        let from_b = b.poll_transmit(sb, &mut out).unwrap();
        if from_b > 0 {
            a.handle(sa, NOW, &out).unwrap();
        }
        if from_a == 0 && from_b == 0 {
            return;
        }
    }
    panic!("the streams never went quiet");
}

/// A write made while a snapshot is being sent waits for its end:
/// sent between two parts, it moved the peer's clock for its source
/// past older writes still to come in the parts, and a stream cut then
/// left the peer claiming what it never got (the next stream sent it
/// nothing of them: they differ for good).
#[test]
fn a_write_made_during_a_snapshot_waits_for_its_end() {
    type Map = crate::LwwMap<String, u32>;
    let id = |name: &str| SourceId::new(name).unwrap();
    let config = Config::default().snapshot_part_bytes(64).batch_bytes(64);
    let mut y = Replica::with_config(id("y"), Map::default(), config.clone());
    // Each key written three times: the state is the cheaper path.
    for round in 0..3 {
        for i in 0..1_000 {
            y.update(NOW, crate::LwwMap::set(format!("key{i:04}"), round)).unwrap();
        }
    }
    let mut n = Replica::with_config(id("n"), Map::default(), config);
    let (sy, sn) = open_pair(&mut y, &mut n);
    let mut out = Vec::new();
    n.poll_transmit(sn, &mut out).unwrap();
    y.handle(sy, NOW, &out).unwrap();
    // y's Hello and its snapshot's first parts; then a write; then more.
    out.clear();
    y.poll_transmit(sy, &mut out).unwrap();
    y.update(NOW + 1, crate::LwwMap::set("late".to_string(), 2)).unwrap().expect("a write");
    y.poll_transmit(sy, &mut out).unwrap();
    n.handle(sn, NOW + 1, &out).unwrap();
    assert_eq!(n.stats().snapshots, 0, "the snapshot is still on its way");
    assert_eq!(n.clock().get(y.id()), Timestamp::ZERO, "n claims none of y's writes");
    // The stream is cut; a new one brings everything.
    y.abort(sy);
    n.abort(sn);
    let (sy, sn) = open_pair(&mut y, &mut n);
    exchange(&mut y, sy, &mut n, sn);
    assert_eq!(n.stats().snapshots, 1, "brought up by snapshot");
    assert_eq!(n.clock(), y.clock());
    assert_eq!(n.state(), y.state(), "n holds every write of y's");
}

/// The floor a Hello carries is the one of the moment the stream
/// opened, as its clock is: a collection between the open and the
/// Hello's sending raised the floor past a write the clock lacks, the
/// peer took that floor and refused the write when it came.
#[test]
fn a_hello_carries_the_floor_of_its_clock() {
    type Map = crate::LwwMap<String, u32>;
    let id = |name: &str| SourceId::new(name).unwrap();
    let mut y = Replica::new(id("y"), Map::default());
    let mut n = Replica::new(id("n"), Map::default());
    let (sy, sn) = open_pair(&mut y, &mut n);
    // n's Hello first: y's stream starts, and keeps what it has yet to
    // send through the collection.
    let mut out = Vec::new();
    n.poll_transmit(sn, &mut out).unwrap();
    y.handle(sy, NOW, &out).unwrap();
    // After the open: a write of m's, which n lacks, then a
    // collection past it.
    let w = Envelope::new(id("m"), Timestamp::new(NOW, 0), crate::LwwMap::set("k".to_string(), 1));
    assert_eq!(y.apply(NOW, w), Outcome::Applied);
    y.collect(Timestamp::new(NOW + 5, 0));
    exchange(&mut y, sy, &mut n, sn);
    assert!(n.stats().rejected == 0, "n refused nothing: {:?}", n.stats());
    assert_eq!(n.clock(), y.clock());
    assert_eq!(n.state(), y.state(), "n holds m's write");
}

/// The records written while a snapshot goes out wait for its end
/// (see `send_batch`), so the history keeps them past its limit (up to
/// twice it): evicted, the stream found them gone at the end and sent
/// another snapshot, and under steady writes another, never done.
#[test]
fn writes_during_a_snapshot_are_kept_for_after_it() {
    type Map = crate::LwwMap<String, u32>;
    let id = |name: &str| SourceId::new(name).unwrap();
    let config = Config::default().history_limit(32).snapshot_part_bytes(64).batch_bytes(64);
    let mut y = Replica::with_config(id("y"), Map::default(), config.clone());
    for i in 0..1_000 {
        y.update(NOW, crate::LwwMap::set(format!("key{i:04}"), i)).unwrap();
    }
    let mut n = Replica::with_config(id("n"), Map::default(), config);
    let (sy, sn) = open_pair(&mut y, &mut n);
    let mut out = Vec::new();
    n.poll_transmit(sn, &mut out).unwrap();
    y.handle(sy, NOW, &out).unwrap();
    // More writes than the limit while the snapshot goes out, part by part.
    for i in 0..48 {
        out.clear();
        y.poll_transmit(sy, &mut out).unwrap();
        n.handle(sn, NOW, &out).unwrap();
        y.update(NOW + 1, crate::LwwMap::set(format!("late{i:02}"), i)).unwrap();
    }
    assert_eq!(n.stats().snapshots, 0, "the snapshot took longer than the writes");
    // Once the snapshot is in, writes go on while the stream sends what
    // was written meanwhile, a batch at a time: what it has yet to send
    // stays kept until it fits in the log again (let go at the end,
    // the next write evicted it, and another snapshot followed).
    for i in 0..400 {
        out.clear();
        y.poll_transmit(sy, &mut out).unwrap();
        n.handle(sn, NOW + 2, &out).unwrap();
        out.clear();
        n.poll_transmit(sn, &mut out).unwrap();
        y.handle(sy, NOW + 2, &out).unwrap();
        if n.stats().snapshots == 1 {
            y.update(NOW + 2, crate::LwwMap::set(format!("later{i:03}"), i)).unwrap();
        }
    }
    exchange(&mut y, sy, &mut n, sn);
    assert_eq!(y.stream_stats(sy).map(|s| s.snapshots_sent), Some(1), "one snapshot");
    assert_eq!(n.clock(), y.clock());
    assert_eq!(n.state(), y.state());
    // Once sent, the history goes back under its limit.
    y.update(NOW + 2, crate::LwwMap::set("after".to_string(), 1)).unwrap();
    assert!(y.history_len() <= 32, "{} records", y.history_len());
}

/// A floor taken after the stream opened goes in the Hello when the
/// clock is still the one it summarises: with the floor of the open,
/// lower than the peer's, the peer refused the snapshot that followed
/// as from below its floor.
#[test]
fn a_hello_carries_a_floor_taken_since_for_the_same_clock() {
    type Map = crate::LwwMap<String, u32>;
    let id = |name: &str| SourceId::new(name).unwrap();
    let set = |k: &str, v: u32| crate::LwwMap::set(k.to_string(), v);
    let shared = Envelope::new(id("m"), Timestamp::new(NOW, 0), set("k", 1));
    let mut n = Replica::new(id("n"), Map::default());
    assert_eq!(n.apply(NOW, shared.clone()), Outcome::Applied);
    n.collect(Timestamp::new(NOW + 5, 0));
    // y holds all n holds, and many overwrites of its own since: a
    // snapshot is n's cheaper path.
    let mut y = Replica::new(id("y"), Map::default());
    assert_eq!(y.apply(NOW, shared), Outcome::Applied);
    for round in 0..3 {
        for i in 0..1_000 {
            y.update(NOW + 10, set(&format!("key{i:04}"), round)).unwrap();
        }
    }
    let (sy, sn) = open_pair(&mut y, &mut n);
    // n's Hello reaches y before y sends its own: y takes n's floor.
    let mut out = Vec::new();
    n.poll_transmit(sn, &mut out).unwrap();
    y.handle(sy, NOW + 10, &out).unwrap();
    assert_eq!(y.floor(), n.floor());
    exchange(&mut y, sy, &mut n, sn);
    assert_eq!(n.stats().snapshots_refused, 0, "{:?}", n.stats());
    assert_eq!(n.stats().snapshots, 1);
    assert_eq!(n.clock(), y.clock());
    assert_eq!(n.state(), y.state());
}

/// A Hello whose clock is the one ours stood for gives its floor only
/// if our clock has not moved since: a write taken since, below that
/// floor and lacked by the peer, makes us stale, not floored past it
/// (which had the peer refuse it for good).
#[test]
fn a_floor_is_not_taken_over_a_write_taken_since_the_open() {
    type Map = crate::LwwMap<String, u32>;
    let id = |name: &str| SourceId::new(name).unwrap();
    let set = |k: &str, v: u32| crate::LwwMap::set(k.to_string(), v);
    let shared = Envelope::new(id("s"), Timestamp::new(NOW, 0), set("k", 1));
    let mut y = Replica::new(id("y"), Map::default());
    let mut n = Replica::new(id("n"), Map::default());
    for r in [&mut y, &mut n] {
        assert_eq!(r.apply(NOW, shared.clone()), Outcome::Applied);
    }
    let floor = Timestamp::new(NOW + 5, 0);
    n.collect(floor);
    let (sy, sn) = open_pair(&mut y, &mut n);
    // Since the open, y took a write n lacks, below n's floor.
    let below = Envelope::new(id("q"), Timestamp::new(NOW + 1, 0), set("q", 2));
    assert_eq!(y.apply(NOW + 1, below), Outcome::Applied);
    let mut out = Vec::new();
    n.poll_transmit(sn, &mut out).unwrap();
    y.handle(sy, NOW + 10, &out).unwrap();
    assert_eq!(y.floor(), Timestamp::ZERO, "y did not take n's floor");
    assert_eq!(y.stale_floor(), Some(floor), "y is stale");
}

/// A peer holding nothing vouches for nothing below its floor (one
/// raised by hand on an empty replica): our clock covers its empty
/// one, yet the floor is not taken over a key we hold that a delete
/// below it, which we may lack, was collected for; it would let a
/// snapshot from that floor be merged over the key. We are stale
/// instead (`holds_news_below` counts whatever we hold below it).
#[test]
fn a_floor_is_not_taken_from_a_peer_holding_nothing_over_what_we_hold() {
    type Map = crate::LwwMap<String, u32>;
    let id = |name: &str| SourceId::new(name).unwrap();
    let mut y = Replica::new(id("y"), Map::default());
    let set = Envelope::new(id("s"), Timestamp::new(NOW, 0), crate::LwwMap::set("k".into(), 1));
    assert_eq!(y.apply(NOW, set), Outcome::Applied);
    let mut empty = Replica::new(id("e"), Map::default());
    let floor = Timestamp::new(NOW + 5, 0);
    empty.collect(floor);
    let (sy, se) = open_pair(&mut y, &mut empty);
    let mut out = Vec::new();
    empty.poll_transmit(se, &mut out).unwrap();
    y.handle(sy, NOW + 10, &out).unwrap();
    assert_eq!(y.floor(), Timestamp::ZERO, "y did not take the empty peer's floor");
    assert_eq!(y.stale_floor(), Some(floor), "y holds a write below it: stale");
    // Holding nothing below it, a replica takes it: nothing here can
    // come back, and what it lacks comes by snapshot.
    let above =
        Envelope::new(id("s"), Timestamp::new(NOW + 6, 0), crate::LwwMap::set("j".into(), 2));
    let mut z = Replica::new(id("z"), Map::default());
    assert_eq!(z.apply(NOW + 6, above), Outcome::Applied);
    let mut empty = Replica::new(id("e"), Map::default());
    empty.collect(floor);
    let (sz, se) = open_pair(&mut z, &mut empty);
    out.clear();
    empty.poll_transmit(se, &mut out).unwrap();
    z.handle(sz, NOW + 10, &out).unwrap();
    assert_eq!(z.floor(), floor);
    assert_eq!(z.stale_floor(), None);
}

/// A fresh replica brought up by a snapshot from a peer whose floor
/// rose after its Hello takes that floor at the snapshot's end (the
/// begin says it): before, it kept floor zero, took writes below the
/// floor the snapshot's state had forgotten the deletes of, and held
/// any snapshot it owed that peer for ever (a peer floor above its).
#[test]
fn a_snapshot_from_a_floor_risen_since_the_hello_gives_its_floor() {
    type Map = crate::LwwMap<String, u32>;
    let id = |name: &str| SourceId::new(name).unwrap();
    let config = Config::default().history_limit(8);
    let mut y = Replica::with_config(id("y"), Map::default(), config.clone());
    for i in 0..100 {
        y.update(NOW, crate::LwwMap::set(format!("key{i:03}"), i)).unwrap();
    }
    let mut n = Replica::with_config(id("n"), Map::default(), config);
    let (sy, sn) = open_pair(&mut y, &mut n);
    let mut out = Vec::new();
    y.poll_transmit(sy, &mut out).unwrap();
    n.handle(sn, NOW, &out).unwrap();
    // After its Hello (floor zero), y collects.
    let floor = Timestamp::new(NOW + 5, 0);
    y.collect(floor);
    exchange(&mut y, sy, &mut n, sn);
    assert_eq!(n.stats().snapshots, 1, "brought up by snapshot");
    assert_eq!(n.floor(), floor, "n took the snapshot's floor");
    assert!(y.is_synced(sy) && n.is_synced(sn));
    assert_eq!(n.state(), y.state());
}

#[test]
fn announcements_from_a_peer_that_sends_nothing_are_ignored() {
    let config = Config::default().lazy_relay(true);
    let mut r = Replica::with_config(SourceId::new("me").unwrap(), Max(0), config);
    let mut peer = Replica::new(SourceId::new("peer").unwrap(), Max(0));
    let p = peer.open(StreamOpts::receive_only()).unwrap();
    let mut hello = Vec::new();
    peer.poll_transmit(p, &mut hello).unwrap();
    let s = r.open(StreamOpts::default()).unwrap();
    r.handle(s, NOW, &hello).unwrap();
    r.handle(s, NOW, &frame(Kind::Have, &bogus(10))).unwrap();
    assert!(r.core.parents.is_empty());
    assert!(r.streams[&s].intents.is_empty());
}

/// What a stream's peer made us pull and then sent forged proofs of is
/// forgotten with the stream: each stream could otherwise add another
/// `max_unknown_sources` to it for good.
#[test]
fn refusals_of_what_we_pull_go_with_the_stream() {
    let (mut r, s) = with_peer();
    let forger = crate::Identity::from_secret([9; 32]);
    let announced = bogus(100);
    r.handle(s, NOW, &frame(Kind::Have, &announced)).unwrap();
    assert_eq!(r.core.parents.len(), 100);
    let forged: Vec<crate::Proof> = announced
        .iter()
        .map(|&stamp| {
            let digest = crate::change_digest(b"x");
            let signature = forger.sign_digest(stamp.ts, &digest);
            crate::Proof { stamp, digest, signature }
        })
        .collect();
    r.handle(s, NOW, &frame(Kind::Proofs, &forged)).unwrap();
    assert_eq!(r.core.refused.len(), 100, "refused as unverified while pulled");
    r.close(s);
    assert!(r.core.parents.is_empty());
    assert_eq!(r.core.refused.len(), 0, "kept after the stream ended");
}

fn have(source: SourceId, ms: u64) -> Vec<u8> {
    frame(Kind::Have, &vec![Stamp { source, ts: Timestamp::new(ms, 0) }])
}

/// An Updates frame of one update of `source`'s at `ms`.
fn pushed(source: SourceId, ms: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = Writer::begin(&mut out, Kind::Updates);
    w.put(&update(source, Timestamp::new(ms, 0), ms - NOW)).unwrap();
    w.finish();
    out
}

/// Which stream `source`'s updates are asked of.
fn parent(r: &Replica<Max>, source: SourceId) -> Option<StreamId> {
    r.core.parents.get(&source).map(|p| p.stream)
}

/// Whether `r` has a Want for `source` to write to stream `s`.
fn asks(r: &Replica<Max>, s: StreamId, source: SourceId) -> bool {
    r.streams[&s].intents.get(&source).is_some_and(Option::is_some)
}

/// A lazy replica with two announcing peers, `p` and `q`: `p` announces
/// `o`'s update at `NOW + 10` and `q` an older one, and `p` has not
/// delivered by the relay timeout, so `q` is asked instead.
fn p_demoted_for_q() -> (Replica<Max>, StreamId, StreamId, SourceId) {
    let mut r = Replica::with_config(
        SourceId::new("me").unwrap(),
        Max(0),
        Config::default().lazy_relay(true),
    );
    let (p, q) = (peer_stream(&mut r, "p"), peer_stream(&mut r, "q"));
    let o = SourceId::new("o").unwrap();
    r.handle(p, NOW, &have(o, NOW + 10)).unwrap();
    r.handle(q, NOW, &have(o, NOW + 5)).unwrap();
    assert_eq!(parent(&r, o), Some(p));
    let timeout = r.config().relay_timeout_millis;
    assert_eq!(r.poll_timeout(), Some(NOW + timeout));
    r.handle_timeout(NOW + timeout);
    assert_eq!(parent(&r, o), Some(q), "p did not deliver in time");
    assert_eq!(r.stats().relay_demotions, 1);
    (r, p, q, o)
}

/// A stream of `r`'s whose peer `name` said Hello and whom the transport
/// proved to be `proven`.
fn proven_stream(r: &mut Replica<Max>, name: &str, proven: SourceId) -> StreamId {
    let mut peer = Replica::new(SourceId::new(name).unwrap(), Max(0));
    let p = peer.open(StreamOpts::default()).unwrap();
    let mut hello = Vec::new();
    peer.poll_transmit(p, &mut hello).unwrap();
    let s = r.open(StreamOpts::default().authenticated_peer(proven)).unwrap();
    r.handle(s, NOW, &hello).unwrap();
    s
}

/// A lazy replica where the stream `old`, whose peer the transport proved
/// to be `p`, announced `o`'s update at `NOW + 10` and did not deliver it
/// by the relay timeout, so `q` (announcing an older one) is asked
/// instead; and `p`'s second stream, opened since (it reconnected, its old
/// stream not yet ended).
fn proven_p_demoted_for_q() -> (Replica<Max>, [StreamId; 3], SourceId) {
    let mut r = Replica::with_config(
        SourceId::new("me").unwrap(),
        Max(0),
        Config::default().lazy_relay(true),
    );
    let p = SourceId::new("p").unwrap();
    let (old, q) = (proven_stream(&mut r, "p1", p), peer_stream(&mut r, "q"));
    let o = SourceId::new("o").unwrap();
    let timeout = r.config().relay_timeout_millis;
    r.handle(old, NOW, &have(o, NOW + 10)).unwrap();
    r.handle(q, NOW, &have(o, NOW + 5)).unwrap();
    r.handle_timeout(NOW + timeout);
    assert_eq!(parent(&r, o), Some(q), "the old stream did not deliver in time");
    let new = proven_stream(&mut r, "p2", p);
    (r, [old, new, q], o)
}

/// A proven peer's bar holds on its new stream too, and what it announces
/// there is asked of the new stream when the bar ends: not of the old one
/// that failed (and may be dead), which the offer went to before.
#[test]
fn a_proven_peers_bar_spans_its_streams_and_its_offer_goes_to_the_one_that_announced() {
    let (mut r, [old, new, q], o) = proven_p_demoted_for_q();
    let timeout = r.config().relay_timeout_millis;
    r.handle(new, NOW + timeout + 1, &have(o, NOW + 20)).unwrap();
    assert_eq!(parent(&r, o), Some(q), "the peer is barred on its new stream too");
    r.handle(q, NOW + timeout + 2, &pushed(o, NOW + 5)).unwrap();
    r.handle_timeout(NOW + 2 * timeout);
    assert_eq!(parent(&r, o), Some(new), "asked on the stream that announced it");
    assert!(asks(&r, new, o));
    assert_ne!(parent(&r, o), Some(old));
}

/// A proven peer that delivers on its new stream what its old one owed has
/// its bar lifted: its next announcement leads at once.
#[test]
fn a_proven_peers_delivery_on_another_stream_lifts_its_bar() {
    let (mut r, [_, new, q], o) = proven_p_demoted_for_q();
    let timeout = r.config().relay_timeout_millis;
    r.handle(new, NOW + timeout + 1, &have(o, NOW + 15)).unwrap();
    assert_eq!(parent(&r, o), Some(q), "barred");
    r.handle(new, NOW + timeout + 2, &pushed(o, NOW + 10)).unwrap();
    assert_eq!(r.state().0, 10);
    r.handle(new, NOW + timeout + 3, &have(o, NOW + 20)).unwrap();
    assert_eq!(parent(&r, o), Some(new), "delivered what it owed: it may lead again");
}

/// A demoted stream's announcements do not take the role back during its
/// bar, but what it announced then, if still missing, is asked of it when
/// the bar ends: it may be the only peer holding it (a slow, honest one).
#[test]
fn a_demoted_peer_is_asked_again_for_what_it_announced_once_its_bar_ends() {
    let (mut r, p, q, o) = p_demoted_for_q();
    let timeout = r.config().relay_timeout_millis;
    r.streams.get_mut(&p).unwrap().intents.clear();
    r.handle(p, NOW + timeout + 1, &have(o, NOW + 20)).unwrap();
    assert_eq!(parent(&r, o), Some(q), "barred: announcing does not take the role back");
    assert!(!asks(&r, p, o));
    // q delivers what it owed, so only the bar's end is due.
    r.handle(q, NOW + timeout + 2, &pushed(o, NOW + 5)).unwrap();
    assert_eq!(r.poll_timeout(), Some(NOW + 2 * timeout), "the bar's end");
    r.handle_timeout(NOW + 2 * timeout);
    assert_eq!(parent(&r, o), Some(p), "asked again for what only it announced");
    assert!(asks(&r, p, o));
    assert_eq!(r.stats().relay_demotions, 1, "q delivered");
}

/// A demoted stream that delivers what it owed is no longer barred: its
/// next announcement takes the role at once.
#[test]
fn a_demoted_peer_that_delivers_what_it_owed_may_lead_again() {
    let (mut r, p, q, o) = p_demoted_for_q();
    let timeout = r.config().relay_timeout_millis;
    r.handle(p, NOW + timeout + 1, &pushed(o, NOW + 10)).unwrap();
    assert_eq!(r.state().0, 10);
    r.handle(q, NOW + timeout + 2, &have(o, NOW + 15)).unwrap();
    r.handle(p, NOW + timeout + 3, &have(o, NOW + 20)).unwrap();
    assert_eq!(parent(&r, o), Some(p), "delivered what it owed: it may lead again");
}

/// Sending back an update this replica already had lifts no bar: anyone
/// can echo one (unverified, as it is old), so a liar could otherwise
/// take the role back with every lie.
#[test]
fn an_echoed_update_does_not_lift_a_bar() {
    let (mut r, p, q, o) = p_demoted_for_q();
    let timeout = r.config().relay_timeout_millis;
    r.handle(q, NOW + timeout + 1, &pushed(o, NOW + 10)).unwrap();
    r.handle(p, NOW + timeout + 2, &pushed(o, NOW + 10)).unwrap();
    r.handle(p, NOW + timeout + 3, &have(o, NOW + 20)).unwrap();
    assert_eq!(parent(&r, o), Some(q), "still barred");
}

/// A demoted stream that delivers what it owed, having announced more
/// while barred, is asked for that at once: lifting its bar must not
/// forget it, since nobody else may hold it.
#[test]
fn a_bar_lifted_by_a_delivery_keeps_what_was_announced_under_it() {
    let (mut r, p, q, o) = p_demoted_for_q();
    let timeout = r.config().relay_timeout_millis;
    r.handle(p, NOW + timeout + 1, &have(o, NOW + 20)).unwrap();
    assert_eq!(parent(&r, o), Some(q));
    r.streams.get_mut(&p).unwrap().intents.clear();
    r.handle(p, NOW + timeout + 2, &pushed(o, NOW + 10)).unwrap();
    let due = r.poll_timeout().expect("the offer is due");
    assert!(due <= NOW + timeout + 2, "at once, not at the bar's end");
    r.handle_timeout(NOW + timeout + 2);
    assert_eq!(parent(&r, o), Some(p));
    assert!(asks(&r, p, o));
}

/// The sole holder of the update it was demoted for, which announces
/// nothing more, is asked again for it when its bar ends: the stream
/// adopted instead (q) has less, and nobody else may ever send it.
#[test]
fn a_demoted_sole_holder_is_asked_again_when_its_bar_ends() {
    let (mut r, p, q, o) = p_demoted_for_q();
    let timeout = r.config().relay_timeout_millis;
    r.handle(q, NOW + timeout + 1, &pushed(o, NOW + 5)).unwrap();
    r.streams.get_mut(&p).unwrap().intents.clear();
    assert_eq!(r.poll_timeout(), Some(NOW + 2 * timeout), "the bar's end");
    r.handle_timeout(NOW + 2 * timeout);
    assert_eq!(parent(&r, o), Some(p), "asked again for what only it holds");
    assert!(asks(&r, p, o));
}

/// A floor is taken with the clock its Hello summarised (and signed): a
/// clock found out since that is another (a peer passing on someone
/// else's signed Hello, then reconciling a clock of its own) takes none.
#[test]
fn a_floor_is_taken_only_with_the_clock_its_hello_summarised() {
    let (mut r, s) = with_peer();
    let mut stream = r.streams.remove(&s).unwrap();
    let claimed = Clock::from_iter([(SourceId::new("a").unwrap(), Timestamp::new(NOW, 0))]);
    for (clock, kept) in [(Clock::new(), false), (claimed.clone(), true)] {
        stream.catch_floor = Some(Timestamp::new(NOW, 0));
        stream.floor_digest = claimed.digest();
        stream.floor_clock = None;
        stream.peer_clock(&r.core, &clock);
        assert_eq!(stream.catch_floor.is_some(), kept, "{clock:?}");
        assert_eq!(stream.floor_clock.is_some(), kept);
    }
}
