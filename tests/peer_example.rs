//! The `peer` example itself, driven as a user drives it: processes on free
//! ports, lines typed on their stdin, their stdout read line by line. Every
//! wait is bounded and nothing is timed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long any one expected line may take: generous, for a loaded 2-core
/// machine; a healthy run takes a second or two.
const WAIT: Duration = Duration::from_secs(60);

/// The example's binary. `cargo test` builds examples next to the test
/// binaries (`target/<profile>/examples/`); when only this test was built,
/// it is built here into a target directory of its own, because the outer
/// cargo holds the lock of the usual one while tests run.
fn peer_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary has a path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>");
    let name = format!("peer{}", std::env::consts::EXE_SUFFIX);
    let built = profile_dir.join("examples").join(&name);
    if built.exists() {
        return built;
    }
    let target = profile_dir.join("peer-example-target");
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--example", "peer", "--target-dir"])
        .arg(&target)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building the peer example failed");
    target.join("debug").join("examples").join(name)
}

/// UDP ports nothing listens on right now (QUIC is UDP).
fn free_ports<const N: usize>() -> [u16; N] {
    let sockets: Vec<std::net::UdpSocket> =
        (0..N).map(|_| std::net::UdpSocket::bind("127.0.0.1:0").expect("bind")).collect();
    std::array::from_fn(|i| sockets[i].local_addr().expect("bound").port())
}

/// A data directory removed however the test ends.
struct Dir(PathBuf);

impl Dir {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("repred-peer-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Dir(dir)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One running `peer` process: what it prints, line by line, and its
/// stdin to type into. Killed when dropped.
struct Peer {
    port: u16,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    /// Every line read so far, for failure messages and later checks.
    seen: Vec<String>,
}

impl Peer {
    fn start(binary: &Path, dir: &Dir, port: u16, others: &[u16], extra: &[&str]) -> Peer {
        let mut child = Command::new(binary)
            .arg(port.to_string())
            .args(others.iter().map(u16::to_string))
            .arg("--data-dir")
            .arg(&dir.0)
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the peer example starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let stdin = child.stdin.take();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Peer { port, child, stdin, lines, seen: Vec::new() }
    }

    /// Types one line.
    fn type_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        writeln!(stdin, "{line}").expect("the peer reads its stdin");
        stdin.flush().expect("flushed");
    }

    /// Reads lines until one satisfies `want`, within [`WAIT`]; returns it.
    fn expect(&mut self, what: &str, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if want(&line) {
                        return line;
                    }
                }
                Err(e) => panic!(
                    "peer {}: no {what} ({e}); it printed:\n{}",
                    self.port,
                    self.seen.join("\n")
                ),
            }
        }
    }

    fn expect_line(&mut self, line: &str) {
        self.expect(&format!("`{line}`"), |l| l == line);
    }

    /// Reads lines until each of `lines` has been printed, in any order,
    /// within [`WAIT`]: `UP` comes from the connection and `joined` from the
    /// board's sync, and either may be printed first.
    fn expect_lines_in_any_order(&mut self, lines: &[String]) {
        let mut missing: Vec<&String> = lines.iter().collect();
        while !missing.is_empty() {
            let what = format!("{missing:?}");
            let line = self.expect(&what, |l| missing.iter().any(|m| m.as_str() == l));
            missing.retain(|m| **m != line);
        }
    }

    /// Types `show` until the board's first line is `header` (it may still
    /// be syncing), within [`WAIT`].
    fn show_until(&mut self, header: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            self.type_line("show");
            if self.expect("the board", |l| l.starts_with("notes (")) == header {
                return;
            }
            assert!(Instant::now() < deadline, "peer {}: never `{header}`", self.port);
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for the process to exit by itself, within [`WAIT`].
    fn exit_status(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("waitable") {
                return status;
            }
            assert!(Instant::now() < deadline, "peer {} did not exit", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn up(ports: &[u16]) -> String {
    let mut ports = ports.to_vec();
    ports.sort();
    format!("UP {ports:?}")
}

#[test]
fn two_peer_processes_see_each_other() {
    let binary = peer_binary();
    let dir = Dir::new("up");
    let [a, b] = free_ports();
    let mut pa = Peer::start(&binary, &dir, a, &[b], &[]);
    let mut pb = Peer::start(&binary, &dir, b, &[a], &[]);
    pa.expect_line(&up(&[a, b]));
    pb.expect_line(&up(&[a, b]));
}

/// What the README's walk-through types: a note written on one peer is
/// printed on the other with who wrote it, an item added there comes back,
/// a delete too; `show` prints the board; a bad command says what to type.
/// Ctrl-C (SIGINT) makes a peer leave cleanly, and the other sees it go.
#[test]
fn a_change_typed_on_one_peer_is_printed_on_the_other() {
    let binary = peer_binary();
    let dir = Dir::new("typed");
    let [a, b] = free_ports();
    let mut pa = Peer::start(&binary, &dir, a, &[b], &[]);
    let mut pb = Peer::start(&binary, &dir, b, &[a], &[]);
    // Each peer's `joined` entry is what names its changes by port.
    pa.expect_lines_in_any_order(&[up(&[a, b]), format!("{b} joined")]);
    pb.expect_lines_in_any_order(&[up(&[a, b]), format!("{a} joined")]);

    pa.type_line("set color blue");
    pb.expect_line(&format!("{a} set color = blue (note #1)"));
    pb.type_line("add milk");
    pa.expect_line(&format!("{b} added milk"));
    pb.type_line("set color deep   red");
    pa.expect_line(&format!("{b} set color = deep   red (note #2)"));
    pa.type_line("del color");
    pb.expect_line(&format!("{a} deleted color"));
    pb.type_line("show");
    pb.expect_line("items: [\"milk\"]");
    pb.type_line("sett x y");
    pb.expect("the list of commands", |l| l.starts_with("unknown command `sett`; commands:"));

    #[cfg(unix)]
    {
        let pid = pa.child.id().to_string();
        let sent = Command::new("kill").args(["-INT", &pid]).status().expect("kill runs");
        assert!(sent.success());
        pa.expect_line("leaving the cluster");
        assert!(pa.exit_status().success(), "Ctrl-C is a clean exit");
        pb.expect_line(&up(&[b]));
    }
}

/// The restart: a peer killed and started again on its port and
/// data directory loads its board and keeps writing notes the others see
/// (the old example's restarted peer numbered its notes from 1 again and
/// every peer ignored them as older). Its note numbers go on from the
/// board's.
#[test]
fn a_restarted_peer_keeps_writing_visible_notes() {
    let binary = peer_binary();
    let dir = Dir::new("restart");
    let [a, b] = free_ports();
    let mut pa = Peer::start(&binary, &dir, a, &[b], &[]);
    let mut pb = Peer::start(&binary, &dir, b, &[a], &[]);
    pa.expect_lines_in_any_order(&[up(&[a, b]), format!("{b} joined")]);
    pb.expect_line(&up(&[a, b]));
    pa.type_line("set first before the crash");
    pb.expect_line(&format!("{a} set first = before the crash (note #1)"));
    pb.type_line("set second from b");
    pa.expect_line(&format!("{b} set second = from b (note #2)"));

    // kill -9: no goodbye, no flush.
    drop(pa);
    let mut pa = Peer::start(&binary, &dir, a, &[b], &[]);
    pa.expect_line(&up(&[a, b]));
    // Its own note from disk, b's from disk or from b.
    pa.show_until("notes (2, newest #2):");
    pa.expect_line(&format!("  first = before the crash (by {a})"));
    pa.type_line("set third after the restart");
    pa.expect_line(&format!("{a} set third = after the restart (note #3)"));
    pb.expect_line(&format!("{a} set third = after the restart (note #3)"));
    pa.type_line("set first rewritten");
    pb.expect_line(&format!("{a} set first = rewritten (note #4)"));
}

/// `--help` is not an error: it prints the usage and the commands on
/// stdout and exits 0. A bad argument is: stderr says what is wrong, exit
/// status 2.
#[test]
fn help_exits_0_and_a_bad_argument_2() {
    let binary = peer_binary();
    let help = Command::new(&binary).arg("--help").output().expect("runs");
    let stdout = String::from_utf8_lossy(&help.stdout);
    assert_eq!(help.status.code(), Some(0), "{help:?}");
    assert!(stdout.contains("Usage: peer [OPTIONS] <PORT> [BOOTSTRAP_PORT]..."), "{stdout}");
    assert!(stdout.contains("set KEY VALUE") && stdout.contains("--metrics-addr"), "{stdout}");
    assert!(help.stderr.is_empty(), "{}", String::from_utf8_lossy(&help.stderr));

    let bad = Command::new(&binary).args(["90000"]).output().expect("runs");
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    assert!(stderr.contains("`90000` is not a port number (1-65535)"), "{stderr}");
    let bad = Command::new(&binary).args(["9000", "--log", "x=["]).output().expect("runs");
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    assert!(stderr.contains("is not a tracing filter"), "{stderr}");
}

/// One `GET /metrics` over plain HTTP/1.1, as a scraper does.
fn scrape(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).expect("the metrics address answers");
    stream.set_read_timeout(Some(WAIT)).expect("timeout set");
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
        .expect("request sent");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response read");
    let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(head.contains("Content-Type: text/plain; version=0.0.4"), "{head}");
    body.to_string()
}

/// The value of the series `name` whose labels include `labels`.
fn series(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix('{')?;
        let (set, value) = rest.split_once("} ")?;
        let all = labels.iter().all(|(k, v)| set.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
        all.then(|| value.trim().parse().ok()).flatten()
    })
}

/// `--metrics-addr` serves Prometheus text over HTTP whose counters move
/// while the peers write: the updates a peer applied from the other, the
/// bytes it received, its members.
#[test]
fn metrics_addr_serves_counters_that_move_while_peers_write() {
    let binary = peer_binary();
    let dir = Dir::new("metrics");
    let [a, b] = free_ports();
    let mut pa = Peer::start(&binary, &dir, a, &[b], &["--metrics-addr", "127.0.0.1:0"]);
    let line = pa.expect("the metrics address", |l| l.starts_with("metrics at http://"));
    let addr: SocketAddr = line
        .trim_start_matches("metrics at http://")
        .trim_end_matches("/metrics")
        .parse()
        .expect("an address");
    let mut pb = Peer::start(&binary, &dir, b, &[a], &[]);
    pa.expect_lines_in_any_order(&[up(&[a, b]), format!("{b} joined")]);

    let object = ("object", "peer-board");
    let applied = |text: &str| series(text, "repred_updates_applied_total", &[object]);
    let before = scrape(addr);
    let applied_before = applied(&before).expect("counted per object");
    let received_before =
        series(&before, "repred_bytes_received_total", &[object]).expect("bytes per object");
    for i in 0..3 {
        pb.type_line(&format!("set k{i} v{i}"));
    }
    pa.expect("b's third note", |l| l.starts_with(&format!("{b} set k2 = v2")));
    // Members are counted once a second: the gauge may lag the UP line.
    let alive = |text: &str| series(text, "repred_members", &[("state", "alive")]);
    let deadline = Instant::now() + WAIT;
    let after = loop {
        let text = scrape(addr);
        if applied(&text).is_some_and(|n| n >= applied_before + 3.0) && alive(&text) == Some(2.0) {
            break text;
        }
        let seen = (applied(&text), alive(&text));
        assert!(Instant::now() < deadline, "applied, alive stayed at {seen:?}:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let received = series(&after, "repred_bytes_received_total", &[object]).unwrap_or(0.0);
    assert!(received > received_before, "{received} after {received_before}");
    assert!(after.contains("# TYPE repred_store_commit_seconds histogram"), "{after}");
    assert_eq!(series(&after, "repred_connections_open", &[]).map(|n| n >= 1.0), Some(true));
}
