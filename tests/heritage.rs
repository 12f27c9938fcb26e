//! The behaviours of scuttlebutt, repred and crdt (JavaScript, by Dominic
//! Tarr), case by case, as listed in `shared/HERITAGE.md`. Each test is named
//! after its case; where the Rust shape differs on purpose, its doc says so.

mod common;

use common::{NOW, drain, events, id, read, replica, synced};
use repred::{
    Clock, CloseReason, EndReason, Envelope, Event, Network, Outcome, PeerMisbehaved, Rejection,
    Replica, SessionError, Stamp, StreamOpts, Timestamp,
};
use repred_suite::{Events, MaxMap, Model, Names};

fn ts(millis: u64) -> Timestamp {
    Timestamp::new(millis, 0)
}

fn model_envelope(
    source: &str,
    key: &str,
    value: &str,
    t: Timestamp,
) -> Envelope<<Model as repred::Reduce>::Update> {
    let stamp = Stamp { ts: t, source: id(source) };
    Envelope::new(id(source), t, Model::stamped(key, value, stamp))
}

/// A tiny deterministic generator, so randomized cases replay exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

// ---- A. scuttlebutt ----

#[test]
fn a01_updates_in_history() {
    let mut r: Replica<Model> = replica("me");
    let first = model_envelope("source", "k", "v", ts(NOW));
    assert_eq!(r.apply(NOW, first.clone()), Outcome::Applied);
    assert_eq!(r.state().get("k"), Some("v"));
    // Recorded with the write's stamp left implicit: it is the envelope's.
    let recorded = Envelope::new(id("source"), ts(NOW), Model::set("k", "v"));
    assert_eq!(r.history(&Clock::new()), vec![&recorded]);

    let older = model_envelope("source", "k", "v2", ts(NOW - 1));
    assert_eq!(r.apply(NOW, older), Outcome::Old);
    let same = model_envelope("source", "k", "v3", ts(NOW));
    assert_eq!(r.apply(NOW, same), Outcome::Old, "an equal timestamp is old data too");
    assert_eq!(r.state().get("k"), Some("v"));
    assert_eq!(r.history(&Clock::new()), vec![&recorded]);
    assert_eq!(r.stats().old, 2);
}

#[test]
fn a02_filter_history_by_clock() {
    let mut r: Replica<Model> = replica("me");
    let t = ts(NOW);
    for s in ["A", "B", "C"] {
        r.apply(NOW, model_envelope(s, s, "x", t));
    }
    let all: Clock = [(id("A"), t), (id("B"), t), (id("C"), t)].into_iter().collect();
    assert!(r.history(&all).is_empty());

    let b_behind: Clock =
        [(id("A"), t), (id("B"), ts(NOW - 1)), (id("C"), t)].into_iter().collect();
    let sources: Vec<_> = r.history(&b_behind).iter().map(|e| e.source).collect();
    assert_eq!(sources, [id("B")]);

    // A missing source means "send all"; output is ordered by ts, then source.
    let c_missing: Clock = [(id("A"), t), (id("B"), ts(NOW - 1))].into_iter().collect();
    let sources: Vec<_> = r.history(&c_missing).iter().map(|e| e.source).collect();
    assert_eq!(sources, [id("B"), id("C")]);
}

#[test]
fn a03_sync_two_emitters() {
    let mut net = Network::new();
    let a = net.add(replica::<Events>("A"));
    let b = net.add(replica::<Events>("B"));
    for i in 0..3 {
        net.update(a, Events::emit(&format!("a{i}"))).unwrap();
        net.update(b, Events::emit(&format!("b{i}"))).unwrap();
    }
    assert!(events(&mut net[a]).is_empty(), "no Sync before linking");
    let link = net.link(a, b);
    net.pump();
    let [(_, sa), (_, sb)] = net.streams(link);
    assert_eq!(synced(&events(&mut net[a]), sa), 1);
    assert_eq!(synced(&events(&mut net[b]), sb), 1);
    let everything = Clock::new();
    assert_eq!(net[a].history(&everything).len(), 6);
    assert_eq!(net[a].state(), net[b].state());
    let mut ha: Vec<_> = net[a].history(&everything).into_iter().cloned().collect();
    let mut hb: Vec<_> = net[b].history(&everything).into_iter().cloned().collect();
    ha.sort_by_key(|e| e.stamp());
    hb.sort_by_key(|e| e.stamp());
    assert_eq!(ha, hb);
}

#[test]
fn a04_integrate_1() {
    let mut net = Network::new();
    let g1 = net.add(replica::<Model>("g1"));
    let g2 = net.add(replica::<Model>("g2"));
    net.link(g1, g2);
    net.pump();
    net.update(g1, Model::set("key", "0.7253")).unwrap();
    net.pump();
    assert_eq!(net[g2].state().get("key"), net[g1].state().get("key"));
    assert_eq!(net[g2].state().get("key"), Some("0.7253"));
}

#[test]
fn a05_integrate_2_triangle() {
    let mut net = Network::new();
    let g = ["g1", "g2", "g3"].map(|n| net.add(replica::<Model>(n)));
    net.link(g[0], g[1]);
    net.link(g[1], g[2]);
    net.link(g[2], g[0]);
    net.pump();
    let mut subs: Vec<_> = g.iter().map(|&n| net[n].subscribe()).collect();
    net.update(g[0], Model::set("key", "value")).unwrap();
    net.pump(); // would panic if forwarding never stopped
    for (i, &n) in g.iter().enumerate() {
        assert_eq!(net[n].state().get("key"), Some("value"));
        assert_eq!(read(&net[n], &mut subs[i]).len(), 1, "each replica sees the update once");
    }
    let old: u64 = g.iter().map(|&n| net[n].stats().old).sum();
    assert!(old >= 1, "a copy arriving by the second path is old data, not re-applied");
}

/// Rust shape: a subscription yields the change as a map of key -> write, so
/// one change event per key written; `None` means absent.
#[test]
fn a06_model_change_events() {
    let mut r: Replica<Model> = replica("A");
    assert!(r.state().to_map().is_empty());
    let mut sub = r.subscribe();
    r.update(NOW, Model::set("key", "x")).unwrap();
    let seen = read(&r, &mut sub);
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].1["key"].value.as_deref(), Some("x"));
    assert_eq!(r.state().to_map(), [("key".to_string(), "x".to_string())].into());
    r.update(NOW, Model::delete("key")).unwrap();
    assert_eq!(r.state().get("key"), None);
    assert!(r.state().to_map().is_empty(), "a deleted key is omitted");
    assert_eq!(read(&r, &mut sub)[0].1["key"].value, None);
}

#[test]
fn a07_events_exactly_six() {
    let mut net = Network::new();
    let a = net.add(replica::<Events>("A"));
    let b = net.add(replica::<Events>("B"));
    let mut sa = net[a].subscribe();
    let mut sb = net[b].subscribe();
    for i in 0..3 {
        net.update(a, Events::emit(&format!("a{i}"))).unwrap();
        net.update(b, Events::emit(&format!("b{i}"))).unwrap();
    }
    net.link(a, b);
    net.pump();
    assert_eq!(read(&net[a], &mut sa).len(), 6);
    assert_eq!(read(&net[b], &mut sb).len(), 6);
    let mut pa = net[a].state().payloads();
    let mut pb = net[b].state().payloads();
    pa.sort();
    pb.sort();
    assert_eq!(pa, pb);
    assert_eq!(pa.len(), 6, "every event is kept");
}

/// Rust shape: the read stream's frames are collected into a `Vec<u8>` (a
/// file would do), then fed to a fresh replica's receive-only stream.
#[test]
fn a08_persist() {
    let mut a: Replica<Events> = replica("A");
    let s = a.open(StreamOpts::send_only()).unwrap();
    let mut log = drain(&mut a, s);
    for i in 0..3 {
        a.update(NOW, Events::emit(&format!("e{i}"))).unwrap();
    }
    log.extend(drain(&mut a, s));
    a.dispose();
    log.extend(drain(&mut a, s));
    let ends = events(&mut a).iter().filter(|e| matches!(e, Event::End { .. })).count();
    assert_eq!(ends, 1, "the read stream ends exactly once");

    let mut b: Replica<Events> = replica("B");
    let r = b.open(StreamOpts::receive_only()).unwrap();
    b.handle(r, NOW, &log).unwrap();
    assert_eq!(b.stats().applied, 3);
    assert_eq!(a.history(&Clock::new()), b.history(&Clock::new()));
}

#[test]
fn a14_dispose_ends_streams() {
    let mut a: Replica<Events> = replica("A");
    let s = a.open(StreamOpts::send_only()).unwrap();
    a.update(NOW, Events::emit("one")).unwrap();
    a.update(NOW, Events::emit("two")).unwrap();
    let mut out = drain(&mut a, s);
    events(&mut a);
    a.dispose();
    assert_eq!(a.stream_count(), 0, "ended before dispose returns");
    let ev = events(&mut a);
    assert!(
        ev.contains(&Event::End { stream: s, reason: EndReason::Local(CloseReason::Disposed) })
    );
    assert_eq!(ev.last(), Some(&Event::Dispose));
    // The Close still reaches the peer.
    out.clear();
    a.poll_transmit(s, &mut out).unwrap();
    assert!(!out.is_empty());
    assert_eq!(a.update(NOW, Events::emit("late")), Err(repred::ReplicaError::Disposed));
}

#[test]
fn a15_cleanup() {
    let mut a: Replica<Events> = replica("A");
    for _ in 0..20 {
        let s = a.open(StreamOpts::default()).unwrap();
        assert!(a.stream_count() <= 2);
        drain(&mut a, s);
        a.close(s);
        drain(&mut a, s);
    }
    assert_eq!(a.stream_count(), 0);
}

#[test]
fn a16_header() {
    let mut net = Network::new();
    let a = net.add(replica::<Model>("a"));
    let b = net.add(replica::<Model>("b"));
    let c = net.add(replica::<Model>("c"));
    let ab = net.link(a, b);
    let bc = net.link(b, c);
    net.pump();
    let headers = |r: &mut Replica<Model>| -> Vec<(repred::StreamId, repred::SourceId)> {
        events(r)
            .into_iter()
            .filter_map(|e| match e {
                Event::Header { stream, id, .. } => Some((stream, id)),
                _ => None,
            })
            .collect()
    };
    let [(_, as_), (_, bs)] = net.streams(ab);
    let [(_, b2s), (_, cs)] = net.streams(bc);
    assert_eq!(headers(&mut net[a]), [(as_, id("b"))]);
    assert_eq!(headers(&mut net[b]), [(bs, id("a")), (b2s, id("c"))]);
    assert_eq!(headers(&mut net[c]), [(cs, id("b"))]);
}

#[test]
fn a17_meta() {
    let mut net = Network::new();
    let a = net.add(replica::<Model>("a"));
    let b = net.add(replica::<Model>("b"));
    let c = net.add(replica::<Model>("c"));
    let m = |s: &str| StreamOpts::default().meta(s);
    net.link_with(a, m("A"), b, m("B"));
    net.link_with(b, m("B"), c, m("C"));
    net.pump();
    let metas = |r: &mut Replica<Model>| -> Vec<Vec<u8>> {
        events(r)
            .into_iter()
            .filter_map(|e| match e {
                Event::Header { meta, .. } => Some(meta),
                _ => None,
            })
            .collect()
    };
    assert_eq!(metas(&mut net[a]), [b"B".to_vec()]);
    assert_eq!(metas(&mut net[b]), [b"A".to_vec(), b"C".to_vec()]);
    assert_eq!(metas(&mut net[c]), [b"B".to_vec()]);
}

/// Rust shape: the reader waits for the writer's clock (`await_clock`), so it
/// sends history once instead of twice.
#[test]
fn a18_sendclock_one_way() {
    let mut net = Network::new();
    let a = net.add(replica::<Model>("a"));
    let b = net.add(replica::<Model>("b"));
    let c = net.add(replica::<Model>("c"));
    let reader = StreamOpts { receives: false, ..StreamOpts::default() };
    let writer = StreamOpts::receive_only();
    net.link_with(a, reader.clone(), b, writer.clone());
    net.update(a, Model::set("foo", "bar")).unwrap();
    net.pump();
    assert_eq!(net[b].state().get("foo"), Some("bar"));
    net.update(b, Model::set("foo", "baz")).unwrap();
    net.pump();
    assert_eq!(net[b].state().get("foo"), Some("baz"));
    assert_eq!(net[a].state().get("foo"), Some("bar"), "the reader never accepts writes");
    net.advance(1);
    net.update(a, Model::set("foo", "bar")).unwrap();
    net.pump();
    assert_eq!(net[b].state().get("foo"), Some("bar"), "the newest write wins");
    net.link_with(b, reader, c, writer);
    net.pump();
    assert_eq!(net[c].state().get("foo"), Some("bar"));
    net.advance(1);
    net.update(c, Model::set("foo", "qux")).unwrap();
    net.pump();
    assert_eq!(net[b].state().get("foo"), Some("bar"), "the writer never sends");
}

#[test]
fn a20_unstream() {
    let mut a: Replica<Model> = replica("a");
    let s = a.open(StreamOpts::default()).unwrap();
    events(&mut a);
    a.close(s);
    assert!(events(&mut a).contains(&Event::Unstream(0)));
}

#[test]
fn a21_unstream_x2() {
    let mut a: Replica<Model> = replica("a");
    let s1 = a.open(StreamOpts::default()).unwrap();
    let s2 = a.open(StreamOpts::default()).unwrap();
    events(&mut a);
    a.close(s1);
    a.abort(s2);
    let counts: Vec<_> = events(&mut a)
        .into_iter()
        .filter_map(|e| if let Event::Unstream(n) = e { Some(n) } else { None })
        .collect();
    assert_eq!(counts, [1, 0]);
}

#[test]
fn a22_unstream_dispose() {
    let mut a: Replica<Model> = replica("a");
    a.open(StreamOpts::default()).unwrap();
    a.open(StreamOpts::default()).unwrap();
    events(&mut a);
    a.dispose();
    let counts: Vec<_> = events(&mut a)
        .into_iter()
        .filter_map(|e| if let Event::Unstream(n) = e { Some(n) } else { None })
        .collect();
    assert_eq!(counts, [1, 0]);
}

#[test]
fn a23_tail_false() {
    let mut a: Replica<Events> = replica("A");
    a.update(NOW, Events::emit("before")).unwrap();
    let s = a.open(StreamOpts::send_only().tail(false)).unwrap();
    let log = drain(&mut a, s);
    let ev = events(&mut a);
    assert!(ev.contains(&Event::End { stream: s, reason: EndReason::Local(CloseReason::Done) }));
    a.update(NOW, Events::emit("after")).unwrap();
    assert!(drain(&mut a, s).is_empty(), "later updates are not sent");

    let mut b: Replica<Events> = replica("B");
    let r = b.open(StreamOpts::receive_only()).unwrap();
    b.handle(r, NOW, &log).unwrap();
    assert_eq!(b.state().payloads(), ["before"]);
    let ev = events(&mut b);
    assert!(ev.contains(&Event::End { stream: r, reason: EndReason::Remote(CloseReason::Done) }));
}

#[test]
fn a24_read_only_start() {
    let mut a: Replica<Events> = replica("A");
    a.update(NOW, Events::emit("x")).unwrap();
    let s = a.open(StreamOpts::send_only()).unwrap();
    let ev = events(&mut a);
    assert!(
        ev.contains(&Event::SyncReceived { stream: s }),
        "a reader's Sync needs no remote frame"
    );
    let out = drain(&mut a, s);
    assert!(out.len() > 20, "history goes out at once, with no remote clock");
    assert!(events(&mut a).contains(&Event::Synced { stream: s }));

    let mut b: Replica<Events> = replica("B");
    let w = b.open(StreamOpts::receive_only()).unwrap();
    assert!(
        events(&mut b).contains(&Event::SyncSent { stream: w }),
        "a writer counts Sync as sent"
    );
}

#[test]
fn a25_non_writable_drops_updates() {
    let mut net = Network::new();
    let a = net.add(replica::<Model>("a"));
    let b = net.add(replica::<Model>("b"));
    let deaf = StreamOpts { receives: false, ..StreamOpts::default() };
    let link = net.link_with(a, StreamOpts::default(), b, deaf);
    net.update(a, Model::set("k", "v")).unwrap();
    net.pump();
    assert_eq!(net[b].state().get("k"), None);
    let [_, (_, sb)] = net.streams(link);
    let ev = events(&mut net[b]);
    assert!(ev.iter().any(|e| matches!(e, Event::Header { stream, .. } if *stream == sb)));
    assert!(ev.contains(&Event::SyncReceived { stream: sb }));
    assert!(net.errors().is_empty());
}

/// Rust shape: a frame that does not decode is a typed error and closes the
/// stream; a well-formed update with a reserved id or zero timestamp is
/// dropped alone (`Rejected`) while the rest of its frame applies.
#[test]
fn a26_validation() {
    let mut r: Replica<Model> = replica("me");
    let good = model_envelope("A", "k", "v", ts(NOW));
    let zero = Envelope { ts: Timestamp::ZERO, ..model_envelope("B", "z", "v", ts(NOW)) };
    assert_eq!(r.apply(NOW, zero), Outcome::Rejected(Rejection::ZeroTimestamp));
    assert_eq!(r.apply(NOW, good), Outcome::Applied);

    let mut r2: Replica<Model> = replica("me");
    let s = r2.open(StreamOpts::default()).unwrap();
    // A Hello cut short: kind 1, the version, then nothing.
    let version = repred::PROTOCOL_VERSION as u8;
    let err = r2.handle(s, NOW, &[2, 0, 0, 0, 1, version]).unwrap_err();
    assert!(matches!(err, SessionError::Peer(PeerMisbehaved::Malformed { .. })), "{err}");
    assert_eq!(r2.stream_count(), 0);
}

#[test]
fn a27_invalid_id() {
    assert!(repred::SourceId::new("").is_err());
    assert!(repred::SourceId::new([0u8; 16]).is_err());
}

#[test]
fn a28_no_change_not_forwarded() {
    let mut net = Network::new();
    let a = net.add(replica::<MaxMap>("a"));
    let b = net.add(replica::<MaxMap>("b"));
    let link = net.link(a, b);
    net.update(a, [("x".to_string(), 5)].into()).unwrap();
    net.pump();
    let mut sub = net[b].subscribe();
    // b already has 5: a remote 3 from elsewhere changes nothing.
    let stale = Envelope::new(id("c"), ts(NOW), [("x".to_string(), 3)].into());
    assert_eq!(net[b].apply(NOW, stale), Outcome::Unchanged);
    assert_eq!(net[b].clock().get(id("c")), ts(NOW), "the clock still advances");
    assert!(read(&net[b], &mut sub).is_empty(), "no change event");
    assert_eq!(net[b].update(NOW, [("x".to_string(), 1)].into()), Ok(None));
    let [(_, sa), (_, sb)] = net.streams(link);
    let before = net[b].stream_stats(sb).unwrap().updates_sent;
    net.pump();
    assert_eq!(net[b].stream_stats(sb).unwrap().updates_sent, before, "nothing forwarded");
    assert_eq!(net[a].stream_stats(sa).unwrap().updates_sent, 1);
}

#[test]
fn a29_per_link_suppression() {
    let mut net = Network::new();
    let a = net.add(replica::<Model>("a"));
    let b = net.add(replica::<Model>("b"));
    let link = net.link(a, b);
    net.pump();
    for i in 0..5 {
        net.update(a, Model::set(&format!("k{i}"), "v")).unwrap();
        net.pump();
    }
    let [(_, sa), (_, sb)] = net.streams(link);
    assert_eq!(net[a].stream_stats(sa).unwrap().updates_sent, 5);
    assert_eq!(net[b].stream_stats(sb).unwrap().updates_sent, 0, "no echo to the origin");
    assert_eq!(net[a].stats().old, 0);
}

#[test]
fn a30_monotonic_timestamps() {
    let mut r: Replica<Events> = replica("A");
    let mut last = Timestamp::ZERO;
    for i in 0..10_000u64 {
        // The same millisecond, and now and then the wall clock steps back.
        let now = if i % 1_000 == 999 { NOW - 5_000 } else { NOW };
        r.update(now, Events::emit("e")).unwrap();
        let t = r.clock().get(r.id());
        assert!(t > last, "{t:?} after {last:?}");
        last = t;
    }
}

// ---- B. repred ----

#[test]
fn b31_non_virgins_grow_only_set() {
    let names = ["ann", "bo", "cy", "di", "ed", "flo", "gus", "hal", "ivy", "jo"];
    let mut net = Network::new();
    let a = net.add(replica::<Names>("a"));
    let b = net.add(replica::<Names>("b"));
    net.link(a, b);
    let mut rng = Rng(31);
    for _ in 0..12 {
        let side = if rng.below(2) == 0 { a } else { b };
        let pick = [names[rng.below(10) as usize], names[rng.below(10) as usize]];
        net.update(side, Names::add(pick)).unwrap();
        net.step();
    }
    net.pump();
    assert_eq!(net[a].state(), net[b].state());
    assert!(!net[a].state().0.is_empty());
}

#[test]
fn b32_on_the_wagon_max_map() {
    let mut net = Network::new();
    let a = net.add(replica::<MaxMap>("a"));
    let b = net.add(replica::<MaxMap>("b"));
    net.link(a, b);
    let mut rng = Rng(32);
    for round in 0..100u64 {
        for _ in 0..10 {
            let side = if rng.below(2) == 0 { a } else { b };
            let name = format!("n{}", rng.below(100));
            // Often stale on purpose: many updates are no-ops.
            let seen = round.saturating_sub(rng.below(5));
            net.update(side, [(name, seen)].into()).unwrap();
        }
        net.advance(1);
        net.pump();
    }
    assert_eq!(net[a].state(), net[b].state());
}

#[test]
fn b33_nullish_empty() {
    let mut net = Network::new();
    let a = net.add(replica::<Names>("a"));
    let b = net.add(replica::<Names>("b"));
    let link = net.link(a, b);
    net.pump();
    let mut sub = net[a].subscribe();
    assert_eq!(net.update(a, Names::add([])), Ok(None), "an empty update changes nothing");
    net.pump();
    assert!(read(&net[a], &mut sub).is_empty());
    let [(_, sa), _] = net.streams(link);
    assert_eq!(net[a].stream_stats(sa).unwrap().updates_sent, 0);
}

#[test]
fn b34_relay_excludes_origin() {
    let mut net = Network::new();
    let x = net.add(replica::<Names>("x"));
    let hub = net.add(replica::<Names>("hub"));
    let y = net.add(replica::<Names>("y"));
    let xl = net.link(x, hub);
    net.link(hub, y);
    net.pump();
    let mut sub = net[y].subscribe();
    net.update(x, Names::add(["from-x"])).unwrap();
    net.pump();
    assert_eq!(read(&net[y], &mut sub), [(id("x"), Names::add(["from-x"]))]);
    let [_, (_, hub_to_x)] = net.streams(xl);
    assert_eq!(net[hub].stream_stats(hub_to_x).unwrap().updates_sent, 0, "nothing back to X");
}

// ---- C. crdt ----

#[test]
fn c37_simple() {
    let mut net = Network::new();
    let doc = net.add(replica::<Model>("doc"));
    let hoc = net.add(replica::<Model>("hoc"));
    net.link(doc, hoc);
    net.update(doc, Model::set("abc", "hello")).unwrap();
    net.pump();
    assert_eq!(net[doc].state(), net[hoc].state());
    net.update(hoc, Model::set("abc", "world")).unwrap();
    net.pump();
    assert_eq!(net[doc].state(), net[hoc].state());
    net.update(doc, Model::set("xyz", "!")).unwrap();
    net.pump();
    assert_eq!(net[doc].state(), net[hoc].state());
    let moc = net.add(replica::<Model>("moc"));
    net.link(hoc, moc);
    net.pump();
    assert_eq!(net[moc].state(), net[doc].state(), "the late joiner gets doc's writes via hoc");
}

#[test]
fn c38_listen() {
    let mut net = Network::new();
    let doc = net.add(replica::<Model>("doc"));
    let hoc = net.add(replica::<Model>("hoc"));
    net.link(doc, hoc);
    net.pump();
    let mut sub = net[doc].subscribe();
    net.update(hoc, Model::set("row", "value")).unwrap();
    net.pump();
    let seen = read(&net[doc], &mut sub);
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].0, id("hoc"));
    assert_eq!(seen[0].1["row"].value.as_deref(), Some("value"));
}

/// Rust shape: keys are typed, so there is nothing to stringify; the test
/// checks that a key full of punctuation arrives byte for byte.
#[test]
fn c39_single() {
    let mut net = Network::new();
    let a = net.add(replica::<Model>("a"));
    let b = net.add(replica::<Model>("b"));
    net.link(a, b);
    net.update(a, Model::set("{\"id\":1}", "row")).unwrap();
    net.pump();
    let keys: Vec<String> = net[b].state().to_map().into_keys().collect();
    assert_eq!(keys, ["{\"id\":1}"]);
    assert!(!keys.iter().any(|k| k.contains("[object Object]")));
}

#[test]
fn c40_random() {
    for seed in 1..=20 {
        let mut rng = Rng(seed);
        let mut net = Network::new();
        let a = net.add(replica::<Model>("a"));
        let b = net.add(replica::<Model>("b"));
        net.link(a, b);
        for _ in 0..50 {
            let side = if rng.below(2) == 0 { a } else { b };
            let key = format!("k{}", rng.below(8));
            net.update(side, Model::set(&key, &rng.next().to_string())).unwrap();
            if rng.below(3) == 0 {
                net.step();
            }
        }
        net.pump();
        assert_eq!(net[a].state(), net[b].state(), "seed {seed}");
    }
}

#[test]
fn c41_histroy() {
    let mut net = Network::new();
    let a = net.add(replica::<Model>("a"));
    let b = net.add(replica::<Model>("b"));
    for i in 0..10 {
        net.update(a, Model::set(&format!("k{i}"), "a")).unwrap();
        net.update(b, Model::set(&format!("j{i}"), "b")).unwrap();
    }
    let link = net.link(a, b);
    net.pump();
    assert_eq!(net[a].state(), net[b].state());
    let [(_, sa), _] = net.streams(link);
    assert_eq!(net[a].stream_stats(sa).unwrap().updates_sent, 10, "sent as history");
}

/// Rust shape: the wire is postcard, not JSON; every update in an Updates
/// frame decodes as the tuple `(change, ts, source, signature)`.
#[test]
fn c42_histroy2() {
    let mut a: Replica<Model> = replica("a");
    a.update(NOW, Model::set("k", "v")).unwrap();
    let s = a.open(StreamOpts::send_only()).unwrap();
    let out = drain(&mut a, s);
    let mut at = 0;
    let mut seen = 0;
    while at < out.len() {
        let len = u32::from_le_bytes(out[at..at + 4].try_into().unwrap()) as usize;
        let body = &out[at + 4..at + 4 + len];
        if body[0] == 2 {
            type Shape = (
                std::collections::BTreeMap<String, repred_suite::Write>,
                Timestamp,
                repred::SourceId,
                Option<repred::Signature>,
            );
            let (update, rest): (Shape, _) = postcard::take_from_bytes(&body[1..]).unwrap();
            assert!(rest.is_empty());
            assert_eq!(update.2, id("a"));
            assert_eq!(update.0["k"].value.as_deref(), Some("v"));
            seen += 1;
        }
        at += 4 + len;
    }
    assert_eq!(seen, 1);
}

#[test]
fn c43_histroy3() {
    let mut net = Network::new();
    let a = net.add(replica::<Model>("a"));
    let b = net.add(replica::<Model>("b"));
    let c = net.add(replica::<Model>("c"));
    net.link(b, c);
    net.update(b, Model::set("x", "1")).unwrap();
    net.update(b, Model::set("y", "2")).unwrap();
    net.pump();
    net.link(a, b);
    net.pump();
    assert_eq!(net[a].state(), net[b].state());
    assert_eq!(net[b].state(), net[c].state());
    assert_eq!(net[a].state().to_map().len(), 2);
}

#[test]
fn c44_client_server() {
    let mut net = Network::new();
    let a = net.add(replica::<Model>("a"));
    let hub = net.add(replica::<Model>("b"));
    let c = net.add(replica::<Model>("c"));
    net.link(a, hub);
    net.link(c, hub);
    net.update(a, Model::set("from", "a")).unwrap();
    net.pump();
    assert_eq!(net[c].state().get("from"), Some("a"));
    net.advance(1);
    net.update(c, Model::set("from", "c")).unwrap();
    net.pump();
    assert_eq!(net[a].state().get("from"), Some("c"));
}

#[test]
fn c45_row_remove() {
    let mut net = Network::new();
    let a = net.add(replica::<Model>("a"));
    let b = net.add(replica::<Model>("b"));
    net.link(a, b);
    net.update(a, Model::set("row", "x")).unwrap();
    net.pump();
    net.update(a, Model::delete("row")).unwrap();
    net.pump();
    assert_eq!(net[b].state().get("row"), None);
    assert_eq!(net[a].state(), net[b].state());
}

/// Rust shape: a write that arrives already beaten by a newer one changes
/// nothing and is not recorded, so the two histories need not list the same
/// entries; what must hold is that neither has anything the other's clock
/// lacks.
#[test]
fn c46_eventually_consistent() {
    for seed in 1..=10 {
        let mut rng = Rng(seed * 46);
        let mut net = Network::new();
        let a = net.add(replica::<Model>("a"));
        let b = net.add(replica::<Model>("b"));
        let link_at = rng.below(100);
        for i in 0..100 {
            if i == link_at {
                net.link(a, b);
            }
            let side = if rng.below(2) == 0 { a } else { b };
            net.update(side, Model::set(&format!("k{}", rng.below(20)), &i.to_string())).unwrap();
            net.advance(rng.below(3));
            if rng.below(4) == 0 {
                net.step();
            }
        }
        net.pump();
        assert_eq!(net[a].state(), net[b].state(), "seed {seed}");
        assert_eq!(net[a].clock(), net[b].clock());
        assert!(net[a].history(net[b].clock()).is_empty());
        assert!(net[b].history(net[a].clock()).is_empty());
    }
}

#[test]
fn c47_loop_star() {
    let mut net = Network::new();
    let doc = net.add(replica::<Model>("doc"));
    let hoc = net.add(replica::<Model>("hoc"));
    let loc = net.add(replica::<Model>("loc"));
    net.link(doc, hoc);
    net.link(doc, loc);
    net.pump();
    net.update(doc, Model::set("a", "1")).unwrap();
    net.step();
    assert_eq!(net[hoc].state(), net[doc].state());
    assert_eq!(net[loc].state(), net[doc].state());
    net.update(hoc, Model::set("b", "2")).unwrap();
    net.step();
    assert_eq!(net[doc].state().get("b"), Some("2"), "one hop");
    assert_eq!(net[loc].state().get("b"), None);
    net.step();
    assert_eq!(net[loc].state().get("b"), Some("2"), "two hops");
}

#[test]
fn c50_persist_deleted() {
    let mut a: Replica<Model> = replica("a");
    a.update(NOW, Model::set("k", "v")).unwrap();
    a.update(NOW, Model::set("j", "w")).unwrap();
    let s = a.open(StreamOpts::send_only().tail(false)).unwrap();
    let log = drain(&mut a, s);
    let mut b: Replica<Model> = replica("b");
    let r = b.open(StreamOpts::receive_only()).unwrap();
    b.handle(r, NOW, &log).unwrap();
    assert_eq!(b.state(), a.state());
    assert!(events(&mut b).contains(&Event::Synced { stream: r }));
}

// ---- D. what a real system must also pass ----

#[test]
fn d51_partition_and_heal() {
    let mut net = Network::new();
    let a = net.add(replica::<Model>("A"));
    let b = net.add(replica::<Model>("B"));
    let c = net.add(replica::<Model>("C"));
    net.link(a, b);
    let bc = net.link(b, c);
    net.update(a, Model::set("shared", "start")).unwrap();
    net.pump();
    net.cut(bc);
    for i in 0..5 {
        net.update(a, Model::set(&format!("a{i}"), "x")).unwrap();
        net.update(c, Model::set(&format!("c{i}"), "y")).unwrap();
    }
    net.advance(1);
    net.update(a, Model::set("shared", "left")).unwrap();
    net.update(c, Model::set("shared", "right")).unwrap();
    net.pump();
    let b_clock = net[b].clock().clone();
    let c_clock = net[c].clock().clone();
    let missing_at_c = net[b].history(&c_clock).len() as u64;
    let missing_at_b = net[c].history(&b_clock).len() as u64;
    let healed = net.link(b, c);
    net.pump();
    for r in [a, b] {
        assert_eq!(net[r].state(), net[c].state());
        assert_eq!(net[r].clock(), net[c].clock());
    }
    let [(_, sb), (_, sc)] = net.streams(healed);
    assert_eq!(net[b].stream_stats(sb).unwrap().updates_sent, missing_at_c);
    assert_eq!(net[c].stream_stats(sc).unwrap().updates_sent, missing_at_b);
    assert_eq!((missing_at_c, missing_at_b), (6, 6));
}

#[test]
fn d52_relay() {
    let mut net = Network::new();
    let a = net.add(replica::<Model>("A"));
    let b = net.add(replica::<Model>("B"));
    let c = net.add(replica::<Model>("C"));
    net.link(a, b);
    net.link(b, c);
    let stamp = net.update(a, Model::set("k", "v")).unwrap().unwrap();
    net.pump();
    assert_eq!(net[c].clock().get(id("A")), net[a].clock().get(id("A")));
    let h = net[c].history(&Clock::new());
    assert_eq!(h.len(), 1);
    assert_eq!(h[0].stamp(), stamp, "source and ts unchanged by the relay");
}

#[test]
fn d53_duplicates() {
    let mut r: Replica<Model> = replica("me");
    let mut sub = r.subscribe();
    let e = model_envelope("A", "k", "v", ts(NOW));
    let outcomes: Vec<_> = (0..5).map(|_| r.apply(NOW, e.clone())).collect();
    assert_eq!(outcomes[0], Outcome::Applied);
    assert!(outcomes[1..].iter().all(|o| *o == Outcome::Old));
    assert_eq!(r.stats().old, 4);
    assert_eq!(read(&r, &mut sub).len(), 1);
}

/// Per-source order matters: an older update from a source that was already
/// passed is old data. Transports must keep each source's updates in order,
/// which a stream does.
#[test]
fn d54_reordering() {
    let updates: Vec<_> = (0..30u64)
        .map(|i| {
            let source = ["A", "B", "C"][(i % 3) as usize];
            model_envelope(source, &format!("k{}", i % 7), &i.to_string(), ts(NOW + i))
        })
        .collect();
    let mut reference: Replica<Model> = replica("ref");
    for u in &updates {
        reference.apply(NOW, u.clone());
    }
    let mut rng = Rng(54);
    for _ in 0..20 {
        // Shuffle across sources, keeping each source's own order.
        let mut queues: Vec<Vec<_>> =
            (0..3).map(|s| updates.iter().skip(s).step_by(3).rev().collect()).collect();
        let mut r: Replica<Model> = replica("r");
        while queues.iter().any(|q| !q.is_empty()) {
            let q = rng.below(3) as usize;
            if let Some(u) = queues[q].pop() {
                assert!(r.apply(NOW, u.clone()).is_applied() || r.stats().unchanged > 0);
            }
        }
        assert_eq!(r.state(), reference.state());
    }
    let mut r: Replica<Model> = replica("r");
    r.apply(NOW, updates[3].clone());
    assert_eq!(r.apply(NOW, updates[0].clone()), Outcome::Old, "older from the same source");
}

#[test]
fn d55_reconnect_idempotence() {
    let mut net = Network::new();
    let a = net.add(replica::<Model>("a"));
    let b = net.add(replica::<Model>("b"));
    for i in 0..10 {
        net.update(a, Model::set(&format!("k{i}"), "v")).unwrap();
    }
    let first = net.link(a, b);
    net.pump();
    net.cut(first);
    for _ in 0..5 {
        let l = net.link(a, b);
        net.pump();
        let [(_, sa), (_, sb)] = net.streams(l);
        assert_eq!(net[a].stream_stats(sa).unwrap().updates_sent, 0);
        assert_eq!(net[b].stream_stats(sb).unwrap().updates_sent, 0);
        net.cut(l);
    }
}

/// Rust shape: "restart" replays a send-only stream's log into a fresh
/// replica with the same id. The durable store of `repred-transport` does the
/// same from disk.
#[test]
fn d56_crash_restart() {
    let mut a: Replica<Model> = replica("a");
    let log_stream = a.open(StreamOpts::send_only()).unwrap();
    let mut log = drain(&mut a, log_stream);
    for i in 0..5 {
        a.update(NOW + 10, Model::set(&format!("k{i}"), "v")).unwrap();
    }
    log.extend(drain(&mut a, log_stream));
    let persisted = a.clock().get(id("a"));
    let mut peer: Replica<Model> = replica("peer");
    let mut pnet = Network::new();
    let p = pnet.add(std::mem::replace(&mut peer, replica("unused")));
    drop(a); // crash

    let mut restarted: Replica<Model> = replica("a");
    let replay = restarted.open(StreamOpts::receive_only()).unwrap();
    restarted.handle(replay, NOW, &log).unwrap();
    assert_eq!(restarted.clock().get(id("a")), persisted);
    // The wall clock went back by a minute: timestamps still increase.
    let t = restarted.update(NOW - 60_000, Model::set("after", "restart")).unwrap().unwrap();
    assert!(t.ts > persisted);

    // A peer that has everything sends nothing back.
    let a2 = pnet.add(restarted);
    let warm = pnet.link(a2, p);
    pnet.pump();
    let before = pnet[p].clock().clone();
    pnet.cut(warm);
    let l = pnet.link(a2, p);
    pnet.pump();
    let [_, (_, sp)] = pnet.streams(l);
    assert_eq!(pnet[p].stream_stats(sp).unwrap().updates_sent, 0);
    assert_eq!(pnet[p].clock(), &before);
}

#[test]
fn d58_clock_ahead_forged_ts() {
    let mut r: Replica<Model> = replica("me");
    let far = model_envelope("evil", "k", "forged", Timestamp::new(NOW + 3_600_000, 0));
    assert!(matches!(r.apply(NOW, far), Outcome::Rejected(Rejection::ClockSkew { .. })));
    let max = model_envelope("evil", "k", "forged", Timestamp::MAX);
    assert!(matches!(r.apply(NOW, max), Outcome::Rejected(Rejection::ClockSkew { .. })));
    assert_eq!(r.clock().get(id("evil")), Timestamp::ZERO, "the clock did not move");
    assert!(r.last_timestamp() < Timestamp::new(NOW + 1, 0), "our own clock is not dragged");
    let normal = model_envelope("evil", "k", "fine", ts(NOW));
    assert_eq!(r.apply(NOW, normal), Outcome::Applied, "the source is not wedged");
    assert_eq!(r.state().get("k"), Some("fine"));
    assert!(events(&mut r).iter().any(|e| matches!(e, Event::Rejected { .. })));
}

/// Without signing (issue 7 adds it) an update in our own name is taken as
/// our own past (a restart that lost its store) if it is new, and as old data
/// otherwise; either way our timestamps keep increasing.
#[test]
fn d59_forged_source() {
    let mut r: Replica<Model> = replica("me");
    let mine = r.update(NOW, Model::set("k", "real")).unwrap().unwrap();
    let replay = model_envelope("me", "k", "replayed", mine.ts);
    assert_eq!(r.apply(NOW, replay), Outcome::Old);
    assert_eq!(r.state().get("k"), Some("real"));
    let ahead = model_envelope("me", "k", "lost-past", ts(NOW + 1_000));
    assert_eq!(r.apply(NOW, ahead), Outcome::Applied);
    let next = r.update(NOW, Model::set("k", "new")).unwrap().unwrap();
    assert!(next.ts > ts(NOW + 1_000), "never issues a timestamp it has seen");
    assert_eq!(r.state().get("k"), Some("new"));
}

#[test]
fn d60_malformed_frames() {
    let frame = |kind: u8, body: &[u8]| {
        let mut f = ((body.len() + 1) as u32).to_le_bytes().to_vec();
        f.push(kind);
        f.extend_from_slice(body);
        f
    };
    let mut hello_peer: Replica<Model> = replica("peer");
    let hs = hello_peer.open(StreamOpts::default()).unwrap();
    let hello = drain(&mut hello_peer, hs);

    type Expect = fn(&PeerMisbehaved) -> bool;
    let cases: Vec<(&str, Vec<u8>, Expect)> = vec![
        ("unknown kind", frame(42, b""), |e| matches!(e, PeerMisbehaved::UnknownFrame(42))),
        ("update before hello", frame(2, &[1, 2, 3]), |e| {
            matches!(e, PeerMisbehaved::Malformed { .. } | PeerMisbehaved::BeforeHello(_))
        }),
        ("sync before hello", frame(4, b""), |e| matches!(e, PeerMisbehaved::BeforeHello(_))),
        ("second hello", [hello.clone(), hello.clone()].concat(), |e| {
            matches!(e, PeerMisbehaved::DuplicateHello)
        }),
        ("garbage update", [hello.clone(), frame(2, &[0xff; 9])].concat(), |e| {
            matches!(e, PeerMisbehaved::Malformed { .. })
        }),
        ("oversized", [hello.clone(), (u32::MAX).to_le_bytes().to_vec()].concat(), |e| {
            matches!(e, PeerMisbehaved::FrameTooLarge { .. })
        }),
        ("empty frame", [hello.clone(), vec![0, 0, 0, 0]].concat(), |e| {
            matches!(e, PeerMisbehaved::EmptyFrame)
        }),
        // A version far ahead (9 was unknown until this crate spoke it).
        ("bad version", frame(1, &[99]), |e| matches!(e, PeerMisbehaved::UnknownVersion(99))),
    ];
    let mut r: Replica<Model> = replica("me");
    r.update(NOW, Model::set("mine", "v")).unwrap();
    let good = r.open(StreamOpts::default()).unwrap();
    let state = r.state().clone();
    for (name, bytes, expected) in cases {
        let s = r.open(StreamOpts::default()).unwrap();
        match r.handle(s, NOW, &bytes) {
            Err(SessionError::Peer(e)) => assert!(expected(&e), "{name}: got {e}"),
            other => panic!("{name}: expected a protocol error, got {other:?}"),
        }
        assert_eq!(r.state(), &state, "{name}: nothing applied");
        // The peer is told why.
        let mut out = Vec::new();
        r.poll_transmit(s, &mut out).unwrap();
        assert!(!out.is_empty(), "{name}: a Close goes out");
    }
    // A truncated frame just waits for the rest.
    let s = r.open(StreamOpts::default()).unwrap();
    r.handle(s, NOW, &hello[..hello.len() - 1]).unwrap();
    r.handle(s, NOW, &hello[hello.len() - 1..]).unwrap();
    assert_eq!(r.peer_id(s), Some(id("peer")));
    // Other streams are unaffected.
    assert!(r.open_streams().any(|x| x == good));
}

#[test]
fn d61_very_large_history() {
    let mut net = Network::new();
    let src = net.add(replica::<MaxMap>("src"));
    for i in 0..100_000u64 {
        let source = id(&format!("s{}", i % 100));
        let e = Envelope::new(
            source,
            Timestamp::new(NOW, (i / 100) as u16 + 1),
            [(format!("k{}", i % 1000), i)].into(),
        );
        net[src].apply(NOW, e);
    }
    assert_eq!(net[src].clock().len(), 100);
    assert!(net[src].history_len() <= net[src].config().history_limit);
    let fresh = net.add(replica::<MaxMap>("fresh"));
    net.link(src, fresh);
    net.pump();
    assert_eq!(net[fresh].state(), net[src].state());
    assert_eq!(net[fresh].clock(), net[src].clock());
    assert!(net[fresh].history_len() <= net[fresh].config().history_limit);
    // Equal replicas exchange Hello and Sync only.
    let l = net.link(src, fresh);
    net.pump();
    let [(_, s1), (_, s2)] = net.streams(l);
    assert_eq!(net[src].stream_stats(s1).unwrap().frames_sent, 2);
    assert_eq!(net[fresh].stream_stats(s2).unwrap().frames_sent, 2);
    assert_eq!(net[src].stream_stats(s1).unwrap().updates_sent, 0);
}

#[test]
fn d62_fan_out() {
    let mut net = Network::new();
    let hub = net.add(replica::<Names>("hub"));
    let peers: Vec<_> = (0..50).map(|i| net.add(replica::<Names>(&format!("p{i}")))).collect();
    for &p in &peers {
        net.link(hub, p);
    }
    for (i, &p) in peers.iter().enumerate() {
        net.update(p, Names::add([&*format!("n{i}")])).unwrap();
    }
    net.pump();
    for &p in &peers {
        assert_eq!(net[p].state().0.len(), 50);
    }
    assert_eq!(net[hub].stream_count(), 50);
    events(&mut net[hub]);
    net[hub].dispose();
    let counts: Vec<usize> = events(&mut net[hub])
        .into_iter()
        .filter_map(|e| if let Event::Unstream(n) = e { Some(n) } else { None })
        .collect();
    assert_eq!(counts, (0..50).rev().collect::<Vec<_>>());
    net.pump();
    for &p in &peers {
        assert_eq!(net[p].stream_count(), 0, "the Close reached every peer");
    }
}

#[test]
fn d65_both_tail_false() {
    let mut net = Network::new();
    let a = net.add(replica::<Model>("a"));
    let b = net.add(replica::<Model>("b"));
    net.update(a, Model::set("x", "1")).unwrap();
    net.update(b, Model::set("y", "2")).unwrap();
    let once = StreamOpts::default().tail(false);
    net.link_with(a, once.clone(), b, once);
    net.pump();
    assert_eq!(net[a].state(), net[b].state());
    for r in [a, b] {
        assert!(events(&mut net[r]).iter().any(|e| matches!(e, Event::End { .. })));
        assert_eq!(net[r].stream_count(), 0);
    }
    net.update(a, Model::set("later", "local")).unwrap();
    net.pump();
    assert_eq!(net[b].state().get("later"), None);
}
