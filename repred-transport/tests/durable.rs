//! A durable node survives a crash with every acknowledged update, its
//! source id and a clock that spares its peers from resending.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Counters, eventually, fast, spawn};
use repred::{Config, GSet};
use repred_store::Store;
use repred_transport::Node;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

async fn durable_node(dir: &std::path::Path, listen: SocketAddr, bootstrap: SocketAddr) -> Node {
    // The crashed node's socket may take a moment to be released.
    let mut last = None;
    for _ in 0..50 {
        match fast(dir).durable(true).listen(listen).bootstrap([bootstrap]).spawn().await {
            Ok(node) => return node,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the durable node did not start: {last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_durable_node_resumes_with_everything_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let b = spawn(dir.path(), &[]).await;
    let on_b = b.replicate("counters", Counters::default()).unwrap();
    let a = durable_node(dir.path(), "127.0.0.1:0".parse().unwrap(), b.addr()).await;
    let port = a.addr().port();
    let on_a = a.replicate("counters", Counters::default()).unwrap();

    // Acknowledged one by one, and many at once sharing commits.
    for i in 1..=50 {
        on_a.update(Counters::set(&format!("seq{i}"), i)).await.unwrap();
    }
    let mut concurrent = JoinSet::new();
    for i in 1..=100u64 {
        let h = on_a.clone();
        concurrent.spawn(async move { h.update(Counters::set(&format!("par{i}"), i)).await });
    }
    while let Some(done) = concurrent.join_next().await {
        done.unwrap().unwrap();
    }
    eventually("b has all 150", Duration::from_secs(10), || {
        let n = on_b.read(|c| c.0.len());
        (n == 150, n)
    })
    .await;
    let source = on_a.source();
    let clock = on_a.clock();
    drop((on_a, a)); // a crash: no shutdown, nothing flushed on the way out

    let a = durable_node(dir.path(), SocketAddr::from(([127, 0, 0, 1], port)), b.addr()).await;
    let on_a = a.replicate("counters", Counters::default()).unwrap();
    assert_eq!(on_a.read(|c| c.0.len()), 150, "every acknowledged update is back");
    assert_eq!(on_a.source(), source, "the same source id");
    assert!(on_a.clock().covers(&clock));

    // It meets its peer again and is sent nothing it already has.
    eventually("a reconnected to b", Duration::from_secs(10), || {
        let open = on_a.traffic().open;
        (open > 0, open)
    })
    .await;
    let stamp = on_a.update(Counters::set("after", 1)).await.unwrap().unwrap();
    assert!(stamp.ts > clock.get(source), "timestamps keep increasing across the crash");
    eventually("b has the new one", Duration::from_secs(10), || {
        let n = on_b.read(|c| c.0.len());
        (n == 151, n)
    })
    .await;
    // None of the 150: at most the new write comes back, on the twin
    // connection of a simultaneous dial whose Hello left before it.
    let received = on_a.traffic().updates_received;
    assert!(received <= 1, "b resent what a had: {received} updates");
    a.shutdown().await;
    b.shutdown().await;
}

/// An update made through a handle that outlived its crashed node fails
/// with `Shutdown` at once instead of waiting for a commit that will never
/// come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_after_a_crash_fails_instead_of_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let a = fast(dir.path()).durable(true).spawn().await.unwrap();
    let on_a = a.replicate("counters", Counters::default()).unwrap();
    on_a.update(Counters::set("before", 1)).await.unwrap();
    drop(a);
    let late = tokio::time::timeout(Duration::from_secs(5), on_a.update(Counters::set("x", 2)));
    let result = late.await.expect("no hang");
    assert!(matches!(result, Err(repred_transport::Error::Shutdown)), "{result:?}");
}

/// Durable and signing together: after a crash, the restarted node still
/// signs as itself, and a peer that requires signatures takes its updates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signing_durable_node_signs_as_itself_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let b = fast(dir.path()).require_signatures(true).spawn().await.unwrap();
    let on_b = b.replicate("counters", Counters::default()).unwrap();
    let start = |listen: SocketAddr| {
        let dir = dir.path().to_path_buf();
        let b = b.addr();
        async move {
            for _ in 0..50 {
                let built = fast(&dir).durable(true).signing(true).listen(listen).bootstrap([b]);
                if let Ok(node) = built.spawn().await {
                    return node;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("the node did not start");
        }
    };
    let a = start("127.0.0.1:0".parse().unwrap()).await;
    let port = a.addr().port();
    let on_a = a.replicate("counters", Counters::default()).unwrap();
    for i in 1..=10 {
        on_a.update(Counters::set(&format!("k{i}"), i)).await.unwrap();
    }
    let source = on_a.source();
    drop((on_a, a));

    let a = start(SocketAddr::from(([127, 0, 0, 1], port))).await;
    let on_a = a.replicate("counters", Counters::default()).unwrap();
    assert_eq!(on_a.source(), source);
    assert_eq!(on_a.read(|c| c.0.len()), 10);
    on_a.update(Counters::set("after", 11)).await.unwrap();
    eventually("b took all 11 signed updates", Duration::from_secs(15), || {
        let n = on_b.read(|c| c.0.len());
        (n == 11, (n, on_b.traffic(), on_a.traffic()))
    })
    .await;
    a.shutdown().await;
    b.shutdown().await;
}

/// The numbers the writer process writes (the same type as in
/// `repred-transport-writer`, so its store reads back here).
type Numbers = GSet<u64>;

/// A `repred-transport-writer` child and its stdout, line by line.
struct Writer {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
}

impl Writer {
    fn start(dir: &Path, port: u16, lanes: u64, bootstrap: u16, serve: bool) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_repred-transport-writer"));
        cmd.arg(dir).arg(port.to_string()).arg(lanes.to_string());
        cmd.arg("--bootstrap").arg(bootstrap.to_string());
        if serve {
            cmd.arg("--serve");
        }
        let mut child =
            cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("the writer starts");
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = mpsc::unbounded_channel();
        // Blocking reads on a thread of their own; it ends with the pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self { child, lines }
    }

    async fn line(&mut self) -> String {
        let next = tokio::time::timeout(Duration::from_secs(10), self.lines.recv());
        next.await.expect("a line from the writer in time").expect("the writer is still running")
    }

    async fn field(&mut self, key: &str) -> u64 {
        let line = self.line().await;
        let value = line.strip_prefix(key).and_then(|v| v.trim().parse().ok());
        value.unwrap_or_else(|| panic!("expected {key:?}, got {line:?}"))
    }

    fn kill(mut self) {
        self.child.kill().expect("SIGKILL"); // SIGKILL on Unix
        self.child.wait().expect("reaped");
    }
}

/// A durable node in a child process, writing on four lanes at once (so
/// acknowledgements share commits) to a peer over QUIC, is killed with
/// SIGKILL at random moments. After each kill its store holds every
/// number it printed as acknowledged, each lane a gap-free prefix; after
/// the last, a restart serves its peer everything it kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_writer_process_loses_nothing_acknowledged_and_leaks_nothing_unsaved() {
    const LANES: u64 = 4;
    let dir = tempfile::tempdir().unwrap();
    let b = spawn(dir.path(), &[]).await;
    let on_b = b.replicate("numbers", Numbers::default()).unwrap();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut port = 0;
    let mut acked = BTreeSet::new();
    let mut on_disk = BTreeSet::new();
    for round in 0..4 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let kill_after = 10 + seed % 150;
        let mut writer = Writer::start(dir.path(), port, LANES, b.addr().port(), false);
        port = u16::try_from(writer.field("listening").await).unwrap();
        let loaded = writer.field("loaded").await;
        assert_eq!(loaded, on_disk.len() as u64, "round {round}: it loads what is on disk");
        for _ in 0..kill_after {
            acked.insert(writer.field("ack").await);
        }
        writer.kill();

        let store = Store::open(dir.path().join(format!("node-{port}.redb"))).unwrap();
        let back = store.load::<Numbers>("numbers", Config::default()).unwrap().unwrap();
        on_disk = back.state().iter().copied().collect();
        let lost: Vec<u64> = acked.difference(&on_disk).copied().collect();
        assert!(lost.is_empty(), "round {round}: acknowledged but lost: {lost:?}");
        for lane in 0..LANES {
            let mine: Vec<u64> = on_disk.iter().copied().filter(|n| n % LANES == lane).collect();
            let prefix: Vec<u64> = (0..mine.len() as u64).map(|i| lane + i * LANES).collect();
            assert_eq!(mine, prefix, "round {round}: lane {lane} is a gap-free prefix");
        }
        // Entries reach peers only once committed: the peer holds nothing
        // the crash took (it would otherwise keep it for good, since the
        // restarted writer's later timestamps claim it).
        let leaked: Vec<u64> =
            on_b.read(|s| s.iter().filter(|n| !on_disk.contains(n)).copied().collect());
        assert!(leaked.is_empty(), "round {round}: the peer has what the disk lost: {leaked:?}");
        eprintln!("round {round}: {} acknowledged, {} on disk", acked.len(), on_disk.len());
    }

    // Restarted once more, writing nothing: b ends up with all it kept.
    let mut writer = Writer::start(dir.path(), port, LANES, b.addr().port(), true);
    writer.field("listening").await;
    assert_eq!(writer.field("loaded").await, on_disk.len() as u64);
    eventually("b has everything the writer kept", Duration::from_secs(10), || {
        let missing = on_b.read(|s| on_disk.iter().filter(|n| !s.contains(n)).count());
        (missing == 0, missing)
    })
    .await;
    writer.kill();
    b.shutdown().await;
}
