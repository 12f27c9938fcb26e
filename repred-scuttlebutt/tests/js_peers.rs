//! Rust nodes against the real JavaScript scuttlebutt (npm, as
//! `tests/js/package.json` pins it), over TCP and WebSocket. Node and npm
//! must be installed: without them these tests fail and say so.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use repred::Config;
use repred_scuttlebutt::{EndReason, Event, Model, Node, StreamOpts};
use serde_json::{Value, json};
use support::{Js, Rust, Transport, WAIT, free_port, lines_of, sorted, wait_event};

/// A history as comparable tuples: key, value (as JSON text), ts, source.
fn canon(history: &[Value]) -> Vec<(String, String, f64, String)> {
    let mut out: Vec<_> = sorted(history.to_vec())
        .iter()
        .map(|u| {
            (
                u[0][0].as_str().unwrap_or_default().to_string(),
                u[0][1].to_string(),
                u[1].as_f64().unwrap_or(f64::NAN),
                u[2].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    out.sort_by(|a, b| a.2.total_cmp(&b.2).then_with(|| a.3.cmp(&b.3)));
    out
}

fn history_of(dump: &Value) -> Vec<Value> {
    dump["history"].as_array().cloned().unwrap_or_default()
}

/// Both sides write before connecting and after; they converge on the same
/// map and on the same `[change, ts, source]` for every key.
fn both_write_before_and_after(transport: Transport, rust_listens: bool) {
    let mut js = Js::spawn("js", None);
    assert!(js.id.len() > 16, "scuttlebutt's own ids are long: {}", js.id);
    let rust = Rust::new("RUST1");
    js.set("from-js", json!("before"));
    rust.set("from-rust", json!("before"));
    if rust_listens {
        let port = rust.listen(transport);
        js.connect(transport, port);
    } else {
        let port = js.listen(transport);
        rust.connect(transport, port);
    }
    let sync = js.synced();
    assert_eq!(sync["history"], json!(1), "the JS peer got Rust's one write as history: {sync}");
    let both = json!({"from-js": "before", "from-rust": "before"});
    js.wait_state(&both);
    rust.wait_state(&both);

    js.set("from-js", json!({"after": [1, 2.5]}));
    // "both" set to null leaves no key in the state to wait for: written
    // before "from-rust", it reaches JS first (a source's updates go in
    // order), so waiting for "from-rust" waits for it too.
    rust.set("both", json!(null));
    rust.set("from-rust", json!("after"));
    let after = json!({"from-js": {"after": [1, 2.5]}, "from-rust": "after"});
    let dump = js.wait_state(&after);
    rust.wait_state(&after);
    assert_eq!(canon(&history_of(&dump)), canon(&rust.history()), "the same updates everywhere");
    assert_eq!(dump["old"], json!(0), "nothing came back to JS that it had");
}

#[test]
fn rust_listens_js_connects_over_tcp() {
    both_write_before_and_after(Transport::Tcp, true);
}

#[test]
fn js_listens_rust_connects_over_tcp() {
    both_write_before_and_after(Transport::Tcp, false);
}

#[test]
fn rust_listens_js_connects_over_websocket() {
    both_write_before_and_after(Transport::Ws, true);
}

#[test]
fn js_listens_rust_connects_over_websocket() {
    both_write_before_and_after(Transport::Ws, false);
}

#[test]
fn line_of_three_relays_both_ways() {
    // JS a -(tcp)- Rust -(websocket)- JS b: a and b never meet. Each end's
    // writes reach the other through Rust with their own ts and source.
    let mut a = Js::spawn("a", None);
    let mut b = Js::spawn("b", None);
    let rust = Rust::new("MIDDLE");
    a.set("a1", json!("a before"));
    b.set("b1", json!("b before"));
    // A fractional timestamp and a short id, as a hand-made update.
    a.cmd(json!({"cmd": "update", "update": [["odd", "stamp"], 1_700_000_000_000.123_f64, "x"]}));
    let tcp = rust.listen(Transport::Tcp);
    let ws = rust.listen(Transport::Ws);
    a.connect(Transport::Tcp, tcp);
    b.connect(Transport::Ws, ws);
    a.synced();
    b.synced();
    a.set("a2", json!("a after"));
    b.set("b2", json!("b after"));
    rust.set("r", json!("rust"));
    let all = json!({
        "a1": "a before", "a2": "a after", "b1": "b before", "b2": "b after",
        "odd": "stamp", "r": "rust",
    });
    let da = a.wait_state(&all);
    let db = b.wait_state(&all);
    rust.wait_state(&all);
    let (ha, hb) = (canon(&history_of(&da)), canon(&history_of(&db)));
    assert_eq!(ha, hb, "a and b hold the same [change, ts, source] for every key");
    assert_eq!(ha, canon(&rust.history()));
    assert!(ha.iter().any(|(k, _, ts, s)| k == "odd" && *ts == 1_700_000_000_000.123 && s == "x"));
    assert!(ha.iter().any(|(k, _, _, s)| k == "a2" && *s == a.id));
    assert!(ha.iter().any(|(k, _, _, s)| k == "b2" && *s == b.id));
    // The clocks agree on every source's newest timestamp.
    assert_eq!(da["sources"][&a.id], db["sources"][&a.id]);
    assert_eq!(da["sources"][&b.id], db["sources"][&b.id]);
}

#[test]
fn concurrent_writes_converge_on_the_same_winner() {
    // Written while apart, a few milliseconds from each other: on every
    // node the newest write of each key wins.
    let mut a = Js::spawn("a", None);
    let mut b = Js::spawn("b", None);
    let rust = Rust::new("RUST");
    let pause = || std::thread::sleep(Duration::from_millis(5));
    a.set("k", json!("a"));
    a.dump();
    pause();
    rust.set("k", json!("rust"));
    pause();
    b.set("k", json!("b"));
    b.dump();
    pause();
    b.set("j", json!("b"));
    b.dump();
    pause();
    a.set("j", json!("a"));
    a.dump();
    pause();
    rust.set("j", json!("rust"));
    let tcp = rust.listen(Transport::Tcp);
    let ws = rust.listen(Transport::Ws);
    a.connect(Transport::Tcp, tcp);
    b.connect(Transport::Ws, ws);
    let winners = json!({"k": "b", "j": "rust"});
    a.wait_state(&winners);
    b.wait_state(&winners);
    rust.wait_state(&winners);
}

#[test]
fn tied_writes_replayed_as_history_agree_with_rust() {
    // Equal timestamps from two sources: Rust keeps the greater source, as
    // a JavaScript peer does when the two reach it as history (sorted by
    // ts, then source, each replacing the last). (Two live JavaScript
    // models keep whichever reached each last, so they may disagree with
    // each other; see the README.)
    let mut a = Js::spawn("a", Some("TIE-A"));
    let mut b = Js::spawn("b", Some("TIE-B"));
    let rust = Rust::new("RUST");
    let ts = 1_700_000_000_000.5_f64;
    a.cmd(json!({"cmd": "update", "update": [["t", "a"], ts, "TIE-A"]}));
    b.cmd(json!({"cmd": "update", "update": [["t", "b"], ts, "TIE-B"]}));
    let port = rust.listen(Transport::Tcp);
    a.connect(Transport::Tcp, port);
    a.synced();
    b.connect(Transport::Tcp, port);
    b.synced();
    rust.wait_state(&json!({"t": "b"}));
    let mut fresh = Js::spawn("fresh", None);
    fresh.connect(Transport::Tcp, port);
    fresh.synced();
    fresh.wait_state(&json!({"t": "b"}));
}

#[test]
fn restarted_rust_node_resumes_with_js_peers_without_resending() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("node.redb");
    let load = || {
        let store = repred_store::Store::open(&path).expect("the store opens");
        let node = match store.load::<Model>("model", Config::default()).expect("it loads") {
            Some(replica) => Node::from_replica(replica),
            None => Node::new("DURABLE").expect("an id"),
        };
        (store, node)
    };
    let mut js = Js::spawn("js", None);
    js.set("js-before", json!(1));
    let (store, node) = load();
    let rust = Rust::from_node(node);
    rust.set("rust-before", json!(2));
    js.connect(Transport::Tcp, rust.listen(Transport::Tcp));
    js.synced();
    let first = json!({"js-before": 1, "rust-before": 2});
    rust.wait_state(&first);
    js.wait_state(&first);
    rust.peer.read(|node| store.save("model", node.replica())).expect("saved");
    drop(rust);
    drop(store);
    js.expect("CLOSED ");

    let (store, node) = load();
    assert_eq!(node.id(), "DURABLE");
    let rust = Rust::from_node(node);
    rust.wait_state(&first);
    js.connect(Transport::Tcp, rust.listen(Transport::Tcp));
    let sync = js.synced();
    assert_eq!(sync["history"], json!(0), "Rust resent nothing the JS peer had: {sync}");
    let stats = rust.peer.read(|node| node.replica().stats());
    assert_eq!((stats.applied, stats.old), (0, 0), "nor the JS peer to Rust: {stats:?}");
    js.set("js-after", json!(3));
    rust.set("rust-after", json!(4));
    let second = json!({"js-before": 1, "rust-before": 2, "js-after": 3, "rust-after": 4});
    let dump = js.wait_state(&second);
    rust.wait_state(&second);
    assert_eq!(dump["old"], json!(0));
    drop(store);
}

fn garbage_peer_is_cut_off(transport: Transport) {
    let mut good = Js::spawn("good", None);
    let mut garbage = Js::spawn("garbage", None);
    let rust = Rust::new("RUST");
    let mut events = rust.events();
    let port = rust.listen_with(transport, StreamOpts::default().max_line(4_096));
    good.connect(transport, port);
    good.synced();
    garbage.cmd(json!({
        "cmd": "garbage", "transport": transport.name(), "port": port,
        "text": "this is not json\n[[\"evil\",\"x\"],1700000000000,\"GARBAGE\"]\n",
    }));
    garbage.expect("GARBAGE_CLOSED");
    let ended =
        wait_event(&mut events, |e| matches!(e, Event::Ended { reason: EndReason::Error(_), .. }));
    let Event::Ended { reason: EndReason::Error(error), .. } = ended else { unreachable!() };
    assert_eq!(error.line, 2, "{error}");
    // An oversize line is cut off before its end arrives.
    garbage.cmd(json!({
        "cmd": "garbage", "transport": transport.name(), "port": port,
        "text": format!("[[\"big\",\"{}", "x".repeat(10_000)),
    }));
    garbage.expect("GARBAGE_CLOSED");
    // The good peer and Rust go on.
    good.set("still", json!("going"));
    rust.set("rust", json!("too"));
    let state = json!({"still": "going", "rust": "too"});
    good.wait_state(&state);
    rust.wait_state(&state);
}

#[test]
fn garbage_peer_is_cut_off_while_others_go_on_over_tcp() {
    garbage_peer_is_cut_off(Transport::Tcp);
}

#[test]
fn garbage_peer_is_cut_off_while_others_go_on_over_websocket() {
    garbage_peer_is_cut_off(Transport::Ws);
}

/// The example's binary: built next to the test binaries by `cargo test
/// --workspace`; otherwise built here into a target directory of its own
/// (the outer cargo holds the usual one's lock while tests run).
fn example_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary has a path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>");
    let name = format!("scuttlebutt{}", std::env::consts::EXE_SUFFIX);
    let built = profile_dir.join("examples").join(&name);
    if built.exists() {
        return built;
    }
    let target = profile_dir.join("scuttlebutt-example-target");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root");
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "--quiet",
            "-p",
            "repred-suite",
            "--example",
            "scuttlebutt",
            "--target-dir",
        ])
        .arg(&target)
        .current_dir(root)
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building the scuttlebutt example failed");
    target.join("debug").join("examples").join(name)
}

/// The example process, printing `STATE {...}` and `SYNC` lines.
struct Example {
    child: std::process::Child,
    rx: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Example {
    fn start(args: &[String]) -> Example {
        let mut child = Command::new(example_binary())
            .args(args)
            .env("LIFE_MS", "60000")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the example starts");
        let rx = lines_of(&mut child);
        Example { child, rx, seen: Vec::new() }
    }

    fn expect_line(&mut self, line: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.seen.iter().any(|l| l == line) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(l) => self.seen.push(l),
                Err(_) => panic!(
                    "the example never printed {line:?}; it printed:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_example_and_js_converge_both_ways() {
    // Example listens, JS connects.
    let port = free_port();
    let mut example =
        Example::start(&["listen".into(), port.to_string(), "a=1".into(), "b=two words".into()]);
    example.expect_line(r#"STATE {"a":"1","b":"two words"}"#);
    let mut js = Js::spawn("js", None);
    js.set("c", json!("from js"));
    js.connect(Transport::Tcp, port);
    js.synced();
    example.expect_line("SYNC");
    let both = json!({"a": "1", "b": "two words", "c": "from js"});
    js.wait_state(&both);
    example.expect_line(&format!("STATE {both}"));
    js.set("d", json!("live"));
    example.expect_line(r#"STATE {"a":"1","b":"two words","c":"from js","d":"live"}"#);
    drop(example);

    // JS listens, the example connects.
    let mut js = Js::spawn("js2", None);
    js.set("x", json!("js"));
    let port = js.listen(Transport::Tcp);
    let mut example = Example::start(&["connect".into(), port.to_string(), "y=rust".into()]);
    example.expect_line("SYNC");
    example.expect_line(r#"STATE {"x":"js","y":"rust"}"#);
    js.wait_state(&json!({"x": "js", "y": "rust"}));
}

#[test]
fn the_example_exits_after_life_ms() {
    let start = Instant::now();
    let status = Command::new(example_binary())
        .args(["listen", &free_port().to_string()])
        .env("LIFE_MS", "300")
        .stdout(Stdio::null())
        .status()
        .expect("the example runs");
    assert!(status.success());
    assert!(start.elapsed() < WAIT);
}
