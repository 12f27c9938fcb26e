//! The board example's bridge (`examples/board/bridge.rs`, compiled here
//! as it is) and `repred_scuttlebutt::Model` replicated over QUIC, in one
//! process: repred-transport nodes on 127.0.0.1, each with the bridge and
//! its browser-facing scuttlebutt replica, and Rust scuttlebutt peers
//! standing in for pages (connected through in-memory pipes). The pages in
//! Chromium are `tests/board_browser.rs`.

#[path = "../examples/board/bridge.rs"]
#[allow(dead_code)]
mod bridge;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bridge::Bridge;
use repred::{Envelope, Outcome};
use repred_scuttlebutt::serde_json::json;
use repred_scuttlebutt::{Json, Model, ModelChange, Node, Peer, StreamOpts, Write};
use repred_scuttlebutt::{id, now_millis, time};
use repred_transport::Handle;
use repred_transport::repred_node::NodeConfig;
use tokio::task::JoinHandle;

/// How long any one expectation waits.
const WAIT: Duration = Duration::from_secs(20);

/// A scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "repred-board-bridge-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("scratch directory");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn builder(dir: &std::path::Path) -> repred_transport::Builder {
    let config = NodeConfig::default()
        .dial_backoff(Duration::from_millis(100))
        .max_dial_backoff(Duration::from_millis(1_500));
    repred_transport::Node::builder()
        .data_dir(dir)
        .node_config(config)
        .heartbeat(Duration::from_millis(150))
        .down_after(Duration::from_millis(1_000))
}

/// One board node: a cluster node, its list, the browsers' replica and the
/// bridge between them.
struct Board {
    node: repred_transport::Node,
    cluster: Handle<Model>,
    browsers: Peer,
    bridge: Arc<Bridge>,
}

async fn board(builder: repred_transport::Builder, name: &str) -> Board {
    // A socket just closed (a restart on the same port) may take a moment
    // to be released.
    let mut tries = 0;
    let node = loop {
        match builder.clone().spawn().await {
            Ok(node) => break node,
            Err(e) if tries < 50 => {
                tries += 1;
                eprintln!("node did not start yet: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("node did not start: {e}"),
        }
    };
    let cluster = node.replicate("board", Model::default()).expect("replicate");
    let browsers = Peer::new(Node::new(name).expect("id"));
    let bridge = Bridge::start(cluster.clone(), browsers.clone()).await;
    Board { node, cluster, browsers, bridge }
}

/// A page: a scuttlebutt replica of its own, connected to a node's
/// browser-facing replica through an in-memory pipe (both sides run the
/// real stream protocol, as over the WebSocket).
struct Page {
    peer: Peer,
    link: Mutex<Vec<JoinHandle<()>>>,
}

impl Page {
    fn new(id: &str) -> Self {
        Page { peer: Peer::new(Node::new(id).expect("id")), link: Mutex::new(Vec::new()) }
    }

    fn connect(&self, server: &Peer) {
        let (near, far) = tokio::io::duplex(64 << 10);
        let (server, page) = (server.clone(), self.peer.clone());
        let tasks = vec![
            tokio::spawn(async move {
                let _ = server.run(far, StreamOpts::default()).await;
            }),
            tokio::spawn(async move {
                let _ = page.run(near, StreamOpts::default()).await;
            }),
        ];
        self.link.lock().unwrap().extend(tasks);
    }

    async fn disconnect(&self) {
        let tasks: Vec<_> = self.link.lock().unwrap().drain(..).collect();
        for task in tasks {
            task.abort();
            let _ = task.await;
        }
    }

    fn set(&self, key: &str, value: &str) {
        self.peer.set(key, Json::string(value)).expect("set");
    }

    /// A write as a JavaScript page makes it: scuttlebutt's long random id,
    /// a float timestamp of its own.
    fn set_as_js(&self, source: &str, ts: f64, key: &str, value: &str) {
        let write = Write {
            key: key.into(),
            value: Json::string(value),
            ts: Some(ts),
            source: Some(source.into()),
        };
        let envelope = Envelope::new(
            id::source_id(source),
            time::timestamp_of(ts).expect("a timestamp"),
            ModelChange { writes: vec![write], names: Vec::new() },
        );
        let outcome = self.peer.with(|node| node.replica_mut().apply(now_millis(), envelope));
        assert_eq!(outcome, Outcome::Applied);
    }

    fn contents(&self) -> Contents {
        self.peer.read(|node| contents(node.model()))
    }
}

/// Every key's write, stamp included.
type Contents = Vec<(String, String, f64, String)>;

fn contents(model: &Model) -> Contents {
    model
        .iter()
        .map(|e| (e.key.to_string(), e.value.to_string(), e.ts, e.source.to_string()))
        .collect()
}

async fn eventually<T: std::fmt::Debug>(what: &str, mut observe: impl FnMut() -> (bool, T)) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (done, seen) = observe();
        if done {
            return seen;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("{what}: not within {WAIT:?}; last seen {seen:#?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Two board nodes in one cluster.
async fn pair(scratch: &Scratch) -> (Board, Board) {
    let a = board(builder(&scratch.0), "node-a").await;
    let b = board(builder(&scratch.0).bootstrap([a.node.addr()]), "node-b").await;
    (a, b)
}

/// Everything holds the same writes: the pages, both nodes' browser
/// replicas and both cluster replicas.
async fn all_equal(what: &str, boards: &[&Board], pages: &[&Page], keys: usize) -> Contents {
    eventually(what, || {
        let mut seen: Vec<Contents> = pages.iter().map(|p| p.contents()).collect();
        for b in boards {
            seen.push(b.cluster.read(contents));
            seen.push(b.browsers.read(|node| contents(node.model())));
        }
        let same = seen.windows(2).all(|w| w[0] == w[1]) && seen[0].len() == keys;
        (same, seen)
    })
    .await
    .swap_remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_write_reaches_a_page_on_another_node_with_its_own_stamp() {
    let scratch = Scratch::new();
    let (a, b) = pair(&scratch).await;
    let (pa, pb) = (Page::new("page-a"), Page::new("page-b"));
    pa.connect(&a.browsers);
    pb.connect(&b.browsers);
    let js = "0d2c7b4a9f8e1b3c5d7e9f0a1b2c3d4e5f6a7b8c";
    let ts = now_millis() as f64 + 0.25;
    pa.set("x.text", "milk");
    pa.set_as_js(js, ts, "y.text", "eggs");
    pb.set("z.text", "bread");
    let seen = all_equal("three writes everywhere", &[&a, &b], &[&pa, &pb], 3).await;
    // The writers' own stamps, unchanged through two bridges and QUIC.
    let y = seen.iter().find(|w| w.0 == "y.text").expect("y");
    assert_eq!((y.2, y.3.as_str()), (ts, js));
    let x = seen.iter().find(|w| w.0 == "x.text").expect("x");
    assert_eq!(x.3, "page-a");
    // The long JavaScript id is named in the cluster replica's clock.
    b.cluster.read(|m| assert!(m.names().values().any(|n| n == js)));
    assert_eq!(a.bridge.stats.repairs.load(Ordering::Relaxed), 0);
    assert_eq!(b.bridge.stats.repairs.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_made_while_a_page_is_disconnected_merge_when_it_reconnects() {
    let scratch = Scratch::new();
    let (a, b) = pair(&scratch).await;
    let (pa, pb) = (Page::new("page-a"), Page::new("page-b"));
    pa.connect(&a.browsers);
    pb.connect(&b.browsers);
    pa.set("item.text", "first");
    all_equal("the first write everywhere", &[&a, &b], &[&pa, &pb], 1).await;

    pb.disconnect().await;
    pa.set("a-only.text", "written by A");
    pa.set("item.text", "A's edit");
    pb.set("b-only.text", "written by B offline");
    tokio::time::sleep(Duration::from_millis(5)).await;
    pb.set("item.text", "B's later edit");
    eventually("A's writes reach node B, not page B", || {
        let on_b = b.cluster.read(|m| m.len());
        (on_b == 2 && pb.contents().len() == 2, (on_b, pb.contents()))
    })
    .await;

    pb.connect(&b.browsers);
    let seen = all_equal("after reconnecting", &[&a, &b], &[&pa, &pb], 3).await;
    let item = seen.iter().find(|w| w.0 == "item.text").expect("item");
    assert_eq!(item.1, json!("B's later edit").to_string(), "the newer write wins");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_the_browser_replica_clock_covers_is_repaired() {
    let scratch = Scratch::new();
    let node = builder(&scratch.0).spawn().await.expect("node starts");
    let cluster = node.replicate("board", Model::default()).expect("replicate");
    let browsers = Peer::new(Node::new("node-a").expect("id"));
    let js = "4f1e2d3c4b5a69788796a5b4c3d2e1f0aabbccdd";
    let now = now_millis() as f64;
    let write = |key: &str, ts: f64| Write {
        key: key.into(),
        value: Json::string(key),
        ts: Some(ts),
        source: Some(js.into()),
    };
    let envelope = |w: Write| {
        Envelope::new(
            id::source_id(js),
            time::timestamp_of(w.ts.unwrap()).unwrap(),
            ModelChange { writes: vec![w], names: Vec::new() },
        )
    };
    // The cluster holds the source's older write of one key; the browsers'
    // replica its newer write of another, so its clock covers the first
    // without holding it (as after a snapshot's parts crossed live updates).
    assert_eq!(cluster.apply(envelope(write("a", now - 2_000.5))), Outcome::Applied);
    let newer = envelope(write("b", now - 1_000.5));
    assert_eq!(browsers.with(|n| n.replica_mut().apply(now_millis(), newer)), Outcome::Applied);

    let bridge = Bridge::start(cluster.clone(), browsers.clone()).await;
    assert_eq!(bridge.stats.repairs.load(Ordering::Relaxed), 1, "written again, not lost");
    let a = browsers.read(|n| n.model().entry("a").map(|e| (e.ts, e.source.to_string())));
    assert_eq!(a, Some((now - 2_000.5, js.to_string())), "with the writer's own stamp");
    // The other way, nothing tells the bridge (it came before it started):
    // the periodic check finds the difference and copies it.
    let seen = eventually("the check copies what the cluster lacks", || {
        let (c, w) = (cluster.read(contents), browsers.read(|n| contents(n.model())));
        (c == w && c.len() == 2, (c, w))
    })
    .await;
    assert_eq!(seen.0[1].0, "b");
    assert!(bridge.stats.resyncs.load(Ordering::Relaxed) >= 1);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_serves_its_stored_list_to_pages() {
    let scratch = Scratch::new();
    let first = board(builder(&scratch.0).durable(true), "node-a").await;
    let addr = first.node.addr();
    let page = Page::new("page-a");
    page.connect(&first.browsers);
    page.set("k.text", "kept");
    page.set("k.pos", "V");
    let written = eventually("the page's writes in the store's replica", || {
        let c = first.cluster.read(contents);
        (c.len() == 2, c)
    })
    .await;
    page.disconnect().await;
    first.bridge.stop().await;
    let Board { node, cluster, browsers, bridge } = first;
    drop((cluster, browsers, bridge));
    node.shutdown().await;

    let again = board(builder(&scratch.0).durable(true).listen(addr), "node-a").await;
    assert_eq!(again.cluster.read(contents), written, "the store kept the list");
    assert_eq!(
        again.browsers.read(|n| contents(n.model())),
        written,
        "copied to the browsers' side"
    );
    let fresh = Page::new("page-b");
    fresh.connect(&again.browsers);
    eventually("a new page gets the list", || (fresh.contents() == written, fresh.contents()))
        .await;
    again.node.shutdown().await;
}
