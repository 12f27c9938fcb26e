//! scuttlebutt's behaviours (named after /work/shared/HERITAGE.md's cases)
//! between Rust nodes speaking the JSON protocol, and the mappings' edges.
//! The same behaviours against the real npm package are in
//! `tests/js_peers.rs`.

// Literals written as JavaScript prints them.
#![allow(clippy::excessive_precision)]

use std::collections::HashMap;

use repred::{Reduce, SourceId, Timestamp};
use serde_json::json;

use crate::line::LineError;
use crate::time::{float_of, timestamp_of};
use crate::{EndReason, Event, Json, Model, ModelChange, Node, StreamId, StreamOpts, Write, id};

const NOW: u64 = 1_700_000_000_000;

/// Two streams piped into each other (`a.pipe(b).pipe(a)`).
struct Link {
    a: StreamId,
    b: StreamId,
}

fn link(a: &mut Node, b: &mut Node) -> Link {
    link_with(a, StreamOpts::default(), b, StreamOpts::default())
}

fn link_with(a: &mut Node, ao: StreamOpts, b: &mut Node, bo: StreamOpts) -> Link {
    Link { a: a.open(ao), b: b.open(bo) }
}

/// Delivers both ways until nothing moves; returns the bytes moved.
fn pump(a: &mut Node, b: &mut Node, l: &Link) -> usize {
    let mut moved = 0;
    loop {
        let mut buf = Vec::new();
        a.poll_transmit(l.a, &mut buf);
        b.handle(l.b, NOW, &buf).expect("a speaks the protocol");
        let mut back = Vec::new();
        b.poll_transmit(l.b, &mut back);
        a.handle(l.a, NOW, &back).expect("b speaks the protocol");
        if buf.is_empty() && back.is_empty() {
            return moved;
        }
        moved += buf.len() + back.len();
    }
}

fn events(n: &mut Node) -> Vec<Event> {
    std::iter::from_fn(|| n.poll_event()).collect()
}

fn count(events: &[Event], f: impl Fn(&Event) -> bool) -> usize {
    events.iter().filter(|e| f(e)).count()
}

fn lines(n: &mut Node, s: StreamId) -> Vec<String> {
    let mut out = Vec::new();
    n.poll_transmit(s, &mut out);
    String::from_utf8(out).unwrap().lines().map(str::to_string).collect()
}

fn node(id: &str) -> Node {
    Node::new(id).unwrap()
}

#[test]
fn updates_in_history() {
    // Heritage 1: an update is taken once; an older one from the same
    // source is old data, and so is an equal one.
    let mut r = node("R");
    let s = r.open(StreamOpts::default());
    let input = concat!(
        r#"{"id":"source","clock":{}}"#,
        "\n",
        r#"[["k","v"],1700000000005,"source"]"#,
        "\n",
        r#"[["k","v2"],1700000000004,"source"]"#,
        "\n",
        r#"[["k","v3"],1700000000005,"source"]"#,
        "\n",
    );
    r.handle(s, NOW, input.as_bytes()).unwrap();
    assert_eq!(r.model().get("k"), Some(json!("v")));
    let stats = r.stream_stats(s).unwrap();
    assert_eq!((stats.applied, stats.old), (1, 2));
    let history = r.model().history(&HashMap::new());
    assert_eq!(history.len(), 1);
    assert_eq!((history[0].ts, history[0].source), (1_700_000_000_005.0, "source"));
}

#[test]
fn sync_two_emitters() {
    // Heritage 3: three writes each, then linked: each stream syncs once.
    let (mut a, mut b) = (node("A"), node("B"));
    for i in 0..3 {
        a.set(NOW, &format!("a{i}"), json!(i)).unwrap();
        b.set(NOW, &format!("b{i}"), json!(i)).unwrap();
    }
    let l = link(&mut a, &mut b);
    pump(&mut a, &mut b, &l);
    assert_eq!(a.model(), b.model());
    assert_eq!(a.model().len(), 6);
    for n in [&mut a, &mut b] {
        let ev = events(n);
        assert_eq!(count(&ev, |e| matches!(e, Event::Synced { .. })), 1);
        assert_eq!(count(&ev, |e| matches!(e, Event::Header { .. })), 1);
    }
    assert_eq!(a.replica().clock(), b.replica().clock());
}

#[test]
fn integrate_2_triangle() {
    // Heritage 5: a cycle of three; a write reaches all, the copies by the
    // second path are old data, and the links fall quiet.
    let (mut a, mut b, mut c) = (node("A"), node("B"), node("C"));
    let ab = link(&mut a, &mut b);
    let bc = link(&mut b, &mut c);
    let ca = link(&mut c, &mut a);
    for _ in 0..3 {
        pump(&mut a, &mut b, &ab);
        pump(&mut b, &mut c, &bc);
        pump(&mut c, &mut a, &ca);
    }
    a.set(NOW, "key", json!("x")).unwrap();
    for _ in 0..3 {
        pump(&mut a, &mut b, &ab);
        pump(&mut b, &mut c, &bc);
        pump(&mut c, &mut a, &ca);
    }
    assert_eq!(b.model().get("key"), Some(json!("x")));
    assert_eq!(c.model().get("key"), Some(json!("x")));
    assert_eq!(pump(&mut a, &mut b, &ab) + pump(&mut b, &mut c, &bc), 0, "quiet");
    assert_eq!(b.replica().stats().applied + c.replica().stats().applied, 2);
}

#[test]
fn header_and_meta() {
    // Heritage 16 and 17: each side's header event carries the remote's id
    // and meta.
    let (mut a, mut b) = (node("A"), node("B"));
    let l = link_with(
        &mut a,
        StreamOpts::default().meta(json!("from a")),
        &mut b,
        StreamOpts::default().meta(json!({"b": true})),
    );
    pump(&mut a, &mut b, &l);
    let header = |n: &mut Node| {
        events(n).into_iter().find_map(|e| match e {
            Event::Header { id, meta, .. } => Some((id, meta)),
            _ => None,
        })
    };
    assert_eq!(header(&mut a), Some((Some("B".into()), Some(json!({"b": true})))));
    assert_eq!(header(&mut b), Some((Some("A".into()), Some(json!("from a")))));
}

#[test]
fn sendclock_one_way() {
    // Heritage 18: a sends only, b takes only; a write on b stays on b,
    // and a newer write on a wins on b again.
    let (mut a, mut b) = (node("A"), node("B"));
    let l = link_with(
        &mut a,
        StreamOpts::read_only().send_clock(true),
        &mut b,
        StreamOpts::write_only().send_clock(true),
    );
    pump(&mut a, &mut b, &l);
    a.set(NOW, "foo", json!("bar")).unwrap();
    pump(&mut a, &mut b, &l);
    assert_eq!(b.model().get("foo"), Some(json!("bar")));
    b.set(NOW, "foo", json!("baz")).unwrap();
    pump(&mut a, &mut b, &l);
    assert_eq!(b.model().get("foo"), Some(json!("baz")));
    assert_eq!(a.model().get("foo"), Some(json!("bar")), "the reader never takes writes");
    a.set(NOW + 1, "foo", json!("bar")).unwrap();
    pump(&mut a, &mut b, &l);
    assert_eq!(b.model().get("foo"), Some(json!("bar")), "the newest wins");
}

#[test]
fn persist() {
    // Heritage 8 and 50: a read-only stream without tail is a log: header,
    // history, SYNC, end. Replayed into a fresh node's write-only stream, it
    // rebuilds the map and syncs.
    let mut a = node("A");
    for i in 0..3 {
        a.set(NOW, &format!("k{i}"), json!(i)).unwrap();
    }
    let s = a.open(StreamOpts::read_only().tail(false));
    let mut log = Vec::new();
    a.poll_transmit(s, &mut log);
    assert!(!a.is_open(s), "ends once written");
    let ev = events(&mut a);
    assert!(ev.iter().any(|e| matches!(e, Event::Ended { reason: EndReason::Tail, .. })));
    assert_eq!(String::from_utf8_lossy(&log).lines().count(), 5);

    let mut b = node("B");
    let w = b.open(StreamOpts::write_only());
    b.handle(w, NOW, &log).unwrap();
    b.handle_end(w, NOW).unwrap();
    assert_eq!(b.model(), a.model());
    assert_eq!(b.replica().stats().applied, 3);
    assert_eq!(count(&events(&mut b), |e| matches!(e, Event::Synced { .. })), 1);
}

#[test]
fn tail_false_ends_after_sync() {
    // Heritage 23 and 65: both without tail end once synced; later writes
    // stay local.
    let (mut a, mut b) = (node("A"), node("B"));
    a.set(NOW, "x", json!(1)).unwrap();
    let l = link_with(
        &mut a,
        StreamOpts::default().tail(false),
        &mut b,
        StreamOpts::default().tail(false),
    );
    pump(&mut a, &mut b, &l);
    assert!(!a.is_open(l.a) && !b.is_open(l.b));
    assert_eq!(b.model().get("x"), Some(json!(1)));
    a.set(NOW, "y", json!(2)).unwrap();
    pump(&mut a, &mut b, &l);
    assert_eq!(b.model().get("y"), None);
}

#[test]
fn read_only_start() {
    // Heritage 24: a read-only stream starts at once, with everything, and
    // counts as synced without a word from the peer.
    let mut a = node("A");
    a.set(NOW, "x", json!(1)).unwrap();
    let s = a.open(StreamOpts::read_only());
    let out = lines(&mut a, s);
    assert_eq!(out.len(), 3, "{out:?}");
    assert_eq!(out[2], r#""SYNC""#);
    assert!(a.is_synced(s));
}

#[test]
fn non_writable_drops_updates() {
    // Heritage 25: updates to a non-writable stream are ignored; header and
    // SYNC still count.
    let mut a = node("A");
    let s = a.open(StreamOpts::read_only().await_clock(true));
    let input = concat!(
        r#"{"id":"B","clock":{}}"#,
        "\n",
        r#"[["k","v"],1700000000000,"B"]"#,
        "\n",
        r#"[1,2,3]"#,
        "\n",
        r#""SYNC""#,
        "\n"
    );
    a.handle(s, NOW, input.as_bytes()).unwrap();
    assert!(a.model().is_empty());
    assert!(a.is_synced(s));
}

#[test]
fn malformed_lines_end_that_stream_only() {
    // Heritage 60: each bad line ends its stream with a typed error, nothing
    // of it applied; the node and its other streams go on.
    let header = "{\"id\":\"J\",\"clock\":{}}\n";
    type Expect = fn(&LineError) -> bool;
    let cases: Vec<(String, Expect)> = vec![
        (format!("{header}not json\n"), |k| matches!(k, LineError::NotJson(_))),
        (format!("{header}[[\"k\",\"v\"],1700000000000\n"), |k| matches!(k, LineError::NotJson(_))),
        (format!("{header}[[\"k\",\"v\"],\"1\",\"J\"]\n"), |k| {
            matches!(k, LineError::BadUpdate(_))
        }),
        (format!("{header}{header}"), |k| matches!(k, LineError::DuplicateHeader)),
        ("[[\"k\",\"v\"],1700000000000,\"J\"]\n".into(), |k| {
            matches!(k, LineError::UpdateBeforeHeader)
        }),
        ("{\"id\":\"J\"}\n".into(), |k| matches!(k, LineError::BadHeader(_))),
        (format!("{header}\"HELLO\"\n"), |k| matches!(k, LineError::Unexpected(_))),
        (format!("{header}\n"), |k| matches!(k, LineError::NotJson(_))),
    ];
    let mut r = node("R");
    let (mut good_a, mut good_b) = (node("A"), node("B"));
    let good = link(&mut good_a, &mut r);
    let _ = good_b;
    for (input, expected) in cases {
        let s = r.open(StreamOpts::default());
        let err = r.handle(s, NOW, input.as_bytes()).expect_err(&input);
        assert!(expected(&err.kind), "{input:?}: {err}");
        assert!(!r.is_open(s));
        assert!(r.model().is_empty(), "{input:?} applied something");
        let ev = events(&mut r);
        assert!(ev.iter().any(|e| matches!(e, Event::Ended { stream, reason: EndReason::Error(_), .. } if *stream == s)));
    }
    good_a.set(NOW, "still", json!("here")).unwrap();
    pump(&mut good_a, &mut r, &good);
    assert_eq!(r.model().get("still"), Some(json!("here")));
    good_b = node("B2");
    let _ = good_b;
}

#[test]
fn oversize_line_ends_the_stream_before_its_newline() {
    let mut r = node("R");
    let s = r.open(StreamOpts::default().max_line(1_000));
    r.handle(s, NOW, b"{\"id\":\"J\",\"clock\":{}}\n[[\"k\",\"").unwrap();
    let err = r.handle(s, NOW, &[b'x'; 2_000]).unwrap_err();
    assert_eq!(err.kind, LineError::Oversize { limit: 1_000 });
    assert_eq!(err.line, 2);
    assert!(!r.is_open(s));
}

#[test]
fn a_line_split_anywhere_reads_the_same() {
    let input = concat!(
        r#"{"id":"J","clock":{}}"#,
        "\n",
        r#"[["k","ü"],1700000000000.5,"J"]"#,
        "\n",
        r#""SYNC""#,
        "\n"
    )
    .as_bytes();
    for cut in 0..input.len() {
        let mut r = node("R");
        let s = r.open(StreamOpts::default());
        r.handle(s, NOW, &input[..cut]).unwrap();
        r.handle(s, NOW, &input[cut..]).unwrap();
        assert_eq!(r.model().get("k"), Some(json!("ü")));
        assert!(r.is_synced(s));
    }
    // A last line without its newline is read at the end, as
    // stream-serializer does.
    let mut r = node("R");
    let s = r.open(StreamOpts::default());
    r.handle(s, NOW, &input[..input.len() - 1]).unwrap();
    assert!(!r.is_synced(s));
    r.handle_end(s, NOW).unwrap();
    assert!(r.is_synced(s));
}

#[test]
fn per_link_suppression() {
    // Heritage 29: what a peer sent is never sent back to it; what it has
    // (by its clock) is not sent either.
    let (mut a, mut b) = (node("A"), node("B"));
    let l = link(&mut a, &mut b);
    pump(&mut a, &mut b, &l);
    for i in 0..5 {
        a.set(NOW, "k", json!(i)).unwrap();
        pump(&mut a, &mut b, &l);
    }
    assert_eq!(a.stream_stats(l.a).unwrap().updates_sent, 5);
    assert_eq!(b.stream_stats(l.b).unwrap().updates_sent, 0, "no echo");
    // Reconnected: equal clocks, nothing but headers and SYNCs.
    let l2 = link(&mut a, &mut b);
    pump(&mut a, &mut b, &l2);
    assert_eq!(a.stream_stats(l2.a).unwrap().history_sent, 0);
    assert_eq!(b.stream_stats(l2.b).unwrap().history_sent, 0);
}

#[test]
fn relay_keeps_change_ts_and_source_exactly() {
    // An update from JavaScript goes on through Rust as it came: long ids,
    // fractional and hand-made timestamps, odd values.
    let updates = [
        r#"[["a",{"x":[1,2.5,"é"]}],1700000000000.000999,"C7B3D2A4E0F9E8B1A3C5D7E9F1A3B5C7D9E1F3"]"#,
        r#"[["b",null],1.1,"short"]"#,
        r#"[["c","😀"],1700000000000.5,""]"#,
        r#"[["d",12345678901234567890],1700000000001,"~not really hex"]"#,
        r#"[["e",1e300],1700000000002,"ünïcødé ïd that is long"]"#,
    ];
    let mut r = node("R");
    let s = r.open(StreamOpts::default());
    let mut input = String::from("{\"id\":\"J\",\"clock\":{}}\n");
    for u in updates {
        input.push_str(u);
        input.push('\n');
    }
    r.handle(s, NOW, input.as_bytes()).unwrap();
    assert_eq!(r.stream_stats(s).unwrap().applied, 5);
    // A fresh peer gets them back in scuttlebutt's order.
    let t = r.open(StreamOpts::read_only());
    let out = lines(&mut r, t);
    let mut sent: Vec<serde_json::Value> =
        out[1..out.len() - 1].iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    let mut expected: Vec<serde_json::Value> =
        updates.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    expected.sort_by(|x, y| x[1].as_f64().unwrap().total_cmp(&y[1].as_f64().unwrap()));
    assert_eq!(sent, expected);
    sent.clear();
    // The header names every source as JavaScript does, long ids included.
    let header: serde_json::Value = serde_json::from_str(&out[0]).unwrap();
    let clock = |s: &str| header["clock"][s].as_f64();
    assert_eq!(clock("C7B3D2A4E0F9E8B1A3C5D7E9F1A3B5C7D9E1F3"), Some(1700000000000.000999));
    assert_eq!(clock("ünïcødé ïd that is long"), Some(1700000000002.0));
    assert_eq!(clock(""), Some(1700000000000.5));
    assert!(clock("short").unwrap() <= 1.1, "rounded down, never up");
}

#[test]
fn restarted_from_a_store_the_header_still_names_long_ids() {
    // Heritage 56: the names of long ids live in the state, so a replica
    // restored by repred-store sends the same clock.
    let dir = tempfile::tempdir().unwrap();
    let store = repred_store::Store::open(dir.path().join("s.redb")).unwrap();
    let mut r = node("R");
    let s = r.open(StreamOpts::default());
    let long = "C7B3D2A4E0F9E8B1A3C5D7E9F1A3B5C7D9E1F3";
    let input = format!(
        "{{\"id\":\"{long}\",\"clock\":{{}}}}\n[[\"k\",1],1700000000001,\"{long}\"]\n[[\"k\",0],1700000000000,\"other-long-id-that-lost\"]\n"
    );
    r.handle(s, NOW, input.as_bytes()).unwrap();
    r.set(NOW, "mine", json!(true)).unwrap();
    store.save("model", r.replica()).unwrap();
    let t = r.open(StreamOpts::read_only());
    let before = lines(&mut r, t)[0].clone();
    drop((r, store));

    let store = repred_store::Store::open(dir.path().join("s.redb")).unwrap();
    let replica = store.load::<Model>("model", repred::Config::default()).unwrap().unwrap();
    let mut r = Node::from_replica(replica);
    assert_eq!(r.id(), "R");
    let t = r.open(StreamOpts::read_only());
    let after = lines(&mut r, t)[0].clone();
    assert_eq!(before, after);
    let header: serde_json::Value = serde_json::from_str(&after).unwrap();
    assert!(header["clock"]["other-long-id-that-lost"].is_number(), "{after}");
    // Own writes go on after the restored ones.
    let last = r.replica().clock().get(r.replica().id());
    r.set(NOW - 10_000, "again", json!(1)).unwrap();
    assert!(r.replica().clock().get(r.replica().id()) > last);
}

#[test]
fn monotonic_timestamps() {
    // Heritage 30: ten thousand writes in one millisecond, each later, each
    // a float exactly.
    let mut r = node("R");
    let mut last = Timestamp::ZERO;
    for i in 0..10_000 {
        r.set(NOW, "k", json!(i)).unwrap();
        let ts = r.replica().clock().get(r.replica().id());
        assert!(ts > last);
        assert_eq!(timestamp_of(float_of(ts)), Some(ts));
        last = ts;
    }
}

#[test]
fn model_change_events() {
    // Heritage 6: null is a value that toJSON leaves out.
    let mut r = node("R");
    assert_eq!(r.model().to_json(), "{}");
    r.set(NOW, "key", json!("x")).unwrap();
    assert_eq!(r.model().to_json(), r#"{"key":"x"}"#);
    r.set(NOW, "key", json!(null)).unwrap();
    assert_eq!(r.model().get("key"), Some(json!(null)));
    assert_eq!(r.model().to_json(), "{}");
    assert!(!r.set(NOW, "__proto__", json!(1)).unwrap(), "scuttlebutt refuses __proto__");
}

#[test]
fn node_ids_are_short_names() {
    assert!(Node::new("").is_err());
    assert!(Node::new("seventeen bytes!!").is_err());
    assert_eq!(Node::random_id().len(), 16);
    assert!(Node::new(&Node::random_id()).is_ok());
}

#[test]
fn ids_map_one_to_one() {
    let names: std::collections::BTreeMap<SourceId, String> = [
        "C7B3D2A4E0F9E8B1A3C5D7E9F1A3B5C7D9E1F3",
        "",
        "ends in nul\0",
        "~0123456789abcdef0123456789abcdef",
        "~41000000000000000000000000000000",
    ]
    .iter()
    .map(|s| (id::source_id(s), s.to_string()))
    .collect();
    for s in [
        "A",
        "sixteen bytes!!!",
        "ü",
        "C7B3D2A4E0F9E8B1A3C5D7E9F1A3B5C7D9E1F3",
        "",
        "ends in nul\0",
    ] {
        let sid = id::source_id(s);
        assert_eq!(id::js_id(sid, &names), s, "{s:?}");
    }
    // The hex form of a raw id comes back to it; of a short name it is just
    // a long string (the short name is the id's spelling).
    let raw = SourceId::from_bytes([7; 16]).unwrap();
    assert_eq!(id::source_id(&id::js_id(raw, &names)), raw);
    assert_ne!(id::source_id("~41000000000000000000000000000000"), SourceId::new("A").unwrap());
    assert!(id::is_hashed(id::source_id("~41000000000000000000000000000000")));
}

#[test]
fn equal_timestamps_the_greater_source_wins_in_any_order() {
    let w = |v: i32, source: &str| ModelChange {
        writes: vec![Write {
            key: "k".into(),
            value: Json::from(json!(v)),
            ts: Some(5.0),
            source: Some(source.into()),
        }],
        names: vec![],
    };
    let order = [w(1, "A"), w(2, "B"), w(3, "\u{ff61}"), w(4, "\u{1f600}")];
    let mut forward = Model::default();
    let mut backward = Model::default();
    for u in order.iter().cloned() {
        forward.reduce(u);
    }
    for u in order.iter().rev().cloned() {
        backward.reduce(u);
    }
    assert_eq!(forward, backward);
    // JavaScript compares UTF-16 code units: U+FF61 > U+1F600 there.
    assert_eq!(forward.get("k"), Some(json!(3)));
}

#[test]
fn model_is_a_lawful_join() {
    use proptest::prelude::*;
    let write = (
        prop::sample::select(vec!["a", "b", "__proto__"]),
        0i32..3,
        prop::option::of((
            1u8..4,
            prop::sample::select(vec!["s0", "zz", "a-long-javascript-source-id"]),
        )),
    )
        .prop_map(|(key, v, stamp)| Write {
            key: key.into(),
            value: Json::from(json!(v)),
            ts: stamp.map(|(t, _)| 1_000.0 + f64::from(t)),
            source: stamp.map(|(_, s)| s.to_string()),
        });
    let change = (
        prop::collection::vec(write, 0..3),
        prop::collection::vec(prop::sample::select(vec!["another-long-javascript-id", "x"]), 0..2),
    )
        .prop_map(|(writes, names)| ModelChange {
            writes,
            names: names.into_iter().map(str::to_string).collect(),
        });
    repred::laws::check::<Model>(change);
}
