//! Real JavaScript peers (node, npm `scuttlebutt` as `tests/js/package.json`
//! pins it) and in-process Rust peers, for the interop tests.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write as _};
use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use repred_scuttlebutt::{Event, Node, Peer, StreamOpts, TransportError};
use serde_json::{Value, json};

/// How long any one expectation waits.
pub const WAIT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Ws,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Ws => "ws",
        }
    }
}

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("js")
}

/// The fixture directory, its npm packages installed: once per process,
/// and across processes under a lock directory. Panics, saying what is
/// missing, when node or npm is not there: these tests never pass without
/// the JavaScript peers they are about.
pub fn fixture() -> &'static Path {
    static READY: OnceLock<PathBuf> = OnceLock::new();
    READY.get_or_init(|| {
        let dir = fixture_dir();
        for (tool, why) in [("node", "runs the JavaScript peers"), ("npm", "installs scuttlebutt")]
        {
            let ok = Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success());
            assert!(
                ok,
                "`{tool}` is not on PATH: the scuttlebutt interop tests need node (20) and npm \
                 ({tool} {why}); install them, e.g. `apt-get install nodejs npm`"
            );
        }
        let lock = dir.join(".install-lock");
        let start = Instant::now();
        while std::fs::create_dir(&lock).is_err() {
            // Another test binary is installing; a lock older than five
            // minutes was left by a killed one.
            let stale = std::fs::metadata(&lock)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().unwrap_or_default() > Duration::from_secs(300));
            if stale {
                let _ = std::fs::remove_dir(&lock);
            }
            assert!(start.elapsed() < Duration::from_secs(600), "waited 10 min for {lock:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
        let installed = installed_version(&dir, "scuttlebutt") == Some(pinned(&dir, "scuttlebutt"))
            && installed_version(&dir, "ws") == Some(pinned(&dir, "ws"));
        let result = if installed {
            Ok(())
        } else {
            Command::new("npm")
                .args(["install", "--no-package-lock", "--no-audit", "--no-fund"])
                .current_dir(&dir)
                .output()
                .map_err(|e| e.to_string())
                .and_then(|o| {
                    if o.status.success() {
                        Ok(())
                    } else {
                        Err(format!(
                            "{}\n{}",
                            String::from_utf8_lossy(&o.stdout),
                            String::from_utf8_lossy(&o.stderr)
                        ))
                    }
                })
        };
        let _ = std::fs::remove_dir(&lock);
        if let Err(e) = result {
            panic!("`npm install` in {dir:?} failed (it needs the npm registry): {e}");
        }
        dir
    })
}

fn pinned(dir: &Path, package: &str) -> String {
    let text = std::fs::read_to_string(dir.join("package.json")).expect("package.json");
    let json: Value = serde_json::from_str(&text).expect("package.json is JSON");
    json["dependencies"][package].as_str().expect("pinned").to_string()
}

fn installed_version(dir: &Path, package: &str) -> Option<String> {
    let path = dir.join("node_modules").join(package).join("package.json");
    let json: Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    Some(json["version"].as_str()?.to_string())
}

/// Reads a child's stdout lines on a thread.
pub fn lines_of(child: &mut Child) -> Receiver<String> {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// A JavaScript scuttlebutt peer (`tests/js/peer.js`).
pub struct Js {
    pub name: String,
    pub id: String,
    child: Child,
    stdin: ChildStdin,
    rx: Receiver<String>,
    pub seen: Vec<String>,
}

impl Js {
    /// A peer with scuttlebutt's own random id (39-odd hex digits), or `id`.
    pub fn spawn(name: &str, id: Option<&str>) -> Js {
        let dir = fixture();
        let mut command = Command::new("node");
        command.arg("peer.js").current_dir(dir);
        if let Some(id) = id {
            command.arg(id);
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node starts");
        let stdin = child.stdin.take().expect("piped stdin");
        let rx = lines_of(&mut child);
        let mut js =
            Js { name: name.into(), id: String::new(), child, stdin, rx, seen: Vec::new() };
        js.id = js.expect("READY ");
        js
    }

    pub fn cmd(&mut self, command: Value) {
        writeln!(self.stdin, "{command}").expect("the JS peer reads commands");
    }

    /// The rest of the next line starting with `prefix` (earlier lines are
    /// kept in `seen`).
    pub fn expect(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return rest.to_string();
                    }
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => panic!(
                    "{}: no line starting {prefix:?} within {WAIT:?}; it printed:\n{}",
                    self.name,
                    self.seen.join("\n")
                ),
            }
        }
    }

    pub fn listen(&mut self, transport: Transport) -> u16 {
        self.cmd(json!({"cmd": "listen", "transport": transport.name()}));
        self.expect("LISTENING ").parse().expect("a port")
    }

    pub fn connect(&mut self, transport: Transport, port: u16) {
        self.cmd(json!({"cmd": "connect", "transport": transport.name(), "port": port}));
    }

    pub fn set(&mut self, key: &str, value: Value) {
        self.cmd(json!({"cmd": "set", "key": key, "value": value}));
    }

    /// `{"state", "history", "sources", "old"}` now.
    pub fn dump(&mut self) -> Value {
        self.cmd(json!({"cmd": "dump"}));
        serde_json::from_str(&self.expect("DUMP ")).expect("a dump is JSON")
    }

    /// Waits until the model's toJSON is `expected`.
    pub fn wait_state(&mut self, expected: &Value) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let dump = self.dump();
            if &dump["state"] == expected {
                return dump;
            }
            assert!(
                Instant::now() < deadline,
                "{}: state {} never became {expected}; it printed:\n{}",
                self.name,
                dump["state"],
                self.seen.join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The next `SYNC {...}` line.
    pub fn synced(&mut self) -> Value {
        serde_json::from_str(&self.expect("SYNC ")).expect("SYNC is JSON")
    }
}

impl Drop for Js {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Rust peer in this process, on a runtime of its own (dropping it ends
/// every connection, as a stopped process would).
pub struct Rust {
    pub peer: Peer,
    rt: tokio::runtime::Runtime,
}

impl Rust {
    pub fn new(id: &str) -> Rust {
        Rust::from_node(Node::new(id).expect("a short id"))
    }

    pub fn from_node(node: Node) -> Rust {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        Rust { peer: Peer::new(node), rt }
    }

    pub fn listen(&self, transport: Transport) -> u16 {
        self.listen_with(transport, StreamOpts::default())
    }

    pub fn listen_with(&self, transport: Transport, opts: StreamOpts) -> u16 {
        let std = StdListener::bind("127.0.0.1:0").expect("bind");
        std.set_nonblocking(true).expect("nonblocking");
        let port = std.local_addr().expect("addr").port();
        let peer = self.peer.clone();
        self.rt.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(std)?;
            match transport {
                Transport::Tcp => peer.serve_tcp(listener, opts).await,
                Transport::Ws => peer.serve_websocket(listener, opts).await,
            }
        });
        port
    }

    pub fn connect(
        &self,
        transport: Transport,
        port: u16,
    ) -> tokio::task::JoinHandle<Result<(), TransportError>> {
        let peer = self.peer.clone();
        self.rt.spawn(async move {
            match transport {
                Transport::Tcp => {
                    peer.connect_tcp(("127.0.0.1", port), StreamOpts::default()).await
                }
                Transport::Ws => {
                    let url = format!("ws://127.0.0.1:{port}/");
                    peer.connect_websocket(&url, StreamOpts::default()).await
                }
            }
        })
    }

    pub fn set(&self, key: &str, value: Value) {
        self.peer.set(key, value).expect("a write");
    }

    pub fn state(&self) -> Value {
        serde_json::from_str(&self.peer.to_json()).expect("toJSON is JSON")
    }

    pub fn wait_state(&self, expected: &Value) {
        let deadline = Instant::now() + WAIT;
        while &self.state() != expected {
            assert!(
                Instant::now() < deadline,
                "rust: state {} never became {expected}",
                self.state()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every key's write as `[[key, value], ts, source]`, sorted as JS sorts
    /// history.
    pub fn history(&self) -> Vec<Value> {
        self.peer.read(|node| {
            node.model()
                .history(&Default::default())
                .iter()
                .map(|e| json!([[e.key, e.value.to_value()], e.ts, e.source]))
                .collect()
        })
    }

    /// Events from now on.
    pub fn events(&self) -> tokio::sync::broadcast::Receiver<Event> {
        self.peer.events()
    }
}

/// Waits for an event matching `f`.
pub fn wait_event(
    rx: &mut tokio::sync::broadcast::Receiver<Event>,
    f: impl Fn(&Event) -> bool,
) -> Event {
    let deadline = Instant::now() + WAIT;
    loop {
        match rx.try_recv() {
            Ok(e) if f(&e) => return e,
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::TryRecvError::Empty) => {
                assert!(Instant::now() < deadline, "no such event within {WAIT:?}");
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("events: {e}"),
        }
    }
}

/// JS history entries sorted as the Rust helper sorts them.
pub fn sorted(mut history: Vec<Value>) -> Vec<Value> {
    history.sort_by(|a, b| {
        a[1].as_f64()
            .unwrap_or(0.0)
            .total_cmp(&b[1].as_f64().unwrap_or(0.0))
            .then_with(|| a[2].as_str().unwrap_or("").cmp(b[2].as_str().unwrap_or("")))
    });
    history
}

/// A TCP port nothing listens on right now.
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}
