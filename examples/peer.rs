//! A peer of a local repred cluster, after the JavaScript `peer` example:
//! a shared board you type into.
//!
//!     cargo run --example peer 9000 9001
//!     cargo run --example peer -- --help
//!
//! listens on 127.0.0.1:9000, bootstraps from 127.0.0.1:9001 (which may
//! start later; more ports may follow), prints `UP [9000, 9001]` whenever
//! the set of live peers changes, and replicates a board: the struct
//! [`Board`] below, made a replicated type by `#[derive(Replicated)]`.
//! Lines typed on stdin become updates:
//!
//!     set KEY VALUE   write a note (the newest write of a key wins)
//!     del KEY         delete a note
//!     add ITEM        add an item to a set that only grows
//!     show            print the board
//!     help            print these commands
//!
//! and every change, made here or anywhere, is printed with who made it
//! (`9001 set color = blue (note #3)`). Ctrl-C leaves the cluster cleanly;
//! the board survives restarts (`<data dir>/node-<port>.redb`).
//!
//! `--log FILTER` logs the node's connections, syncs and membership on
//! stderr (a tracing filter: `info`, `repred_transport=debug`; default
//! `warn`); `--metrics-addr ADDR` serves its metrics as Prometheus text at
//! `http://ADDR/metrics`. Credentials live in `./.repred/` (or `--data-dir
//! DIR`, or the `REPRED_DATA_DIR` environment variable); the first peer
//! creates the cluster there and the others join it.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use repred::{GSet, LwwMap, Max, Replicated, SourceId, Stamped};
use repred_transport::{Applied, Handle, Node, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing_subscriber::EnvFilter;

/// The name the board is replicated under. (Not `board`: the `board`
/// example replicates another type under that name in the same cluster.)
const OBJECT: &str = "peer-board";

/// What every peer replicates: each field is a lattice, and the derive
/// writes the merge field by field, plus `BoardChange`, one optional part
/// per field, so a change to one field travels without the others.
#[derive(Replicated, Default)]
struct Board {
    /// Notes, key -> text: the newest write of a key wins, wherever it was
    /// made; a delete is a write too.
    notes: LwwMap<String, String>,
    /// Items that only accumulate (`add`).
    items: GSet<String>,
    /// Every peer that ever joined, with the source id it writes as: how a
    /// change's source is printed as a port.
    joined: GSet<Peer>,
    /// The number of the newest note written anywhere. A peer numbers its
    /// next note one higher, read from the board (which a restart loads
    /// from disk), never from a counter of its own.
    serial: Max<u64>,
}

/// A peer as the board remembers it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct Peer {
    port: u16,
    source: SourceId,
}

/// A peer of a local repred cluster: a shared board you type into.
///
/// Type `set KEY VALUE`, `del KEY`, `add ITEM`, `show` or `help` while it
/// runs; every change made anywhere is printed with who made it.
#[derive(Parser, Debug)]
#[command(name = "peer", version, after_help = AFTER_HELP)]
struct Args {
    /// The port to listen on, at 127.0.0.1.
    #[arg(value_parser = port)]
    port: u16,
    /// Ports of peers to join through (ones not up yet are asked again
    /// while this peer is alone).
    #[arg(value_parser = port, value_name = "BOOTSTRAP_PORT")]
    bootstrap: Vec<u16>,
    /// Where the cluster's certificates and this peer's board live
    /// [default: $REPRED_DATA_DIR, else ./.repred].
    #[arg(long, value_name = "DIR", value_parser = non_empty_dir)]
    data_dir: Option<PathBuf>,
    /// Serve the node's metrics as Prometheus text at http://ADDR/metrics
    /// (port 0 picks a free port and prints it).
    #[arg(long, value_name = "ADDR", value_parser = socket_addr)]
    metrics_addr: Option<SocketAddr>,
    /// What to log on stderr: a tracing filter such as `info` or
    /// `warn,repred_transport=debug` [default: $RUST_LOG, else warn].
    #[arg(long, value_name = "FILTER", value_parser = log_filter)]
    log: Option<String>,
}

const AFTER_HELP: &str = "\
Commands, typed while it runs:
  set KEY VALUE   write a note (the newest write of a key wins)
  del KEY         delete a note
  add ITEM        add an item to a set that only grows
  show            print the board
  help            print these commands

Example, in two terminals:
  cargo run --example peer 9000 9001
  cargo run --example peer -- 9001 9000 --log info";

fn port(arg: &str) -> Result<u16, String> {
    match arg.parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(format!("`{arg}` is not a port number (1-65535)")),
    }
}

fn non_empty_dir(arg: &str) -> Result<PathBuf, String> {
    // An empty path would put the cluster's key files in whatever the
    // current directory is.
    if arg.is_empty() {
        Err("name a directory, not an empty string".into())
    } else {
        Ok(arg.into())
    }
}

fn socket_addr(arg: &str) -> Result<SocketAddr, String> {
    arg.parse().map_err(|_| format!("`{arg}` is not an address like 127.0.0.1:9100"))
}

fn log_filter(arg: &str) -> Result<String, String> {
    EnvFilter::try_new(arg).map(|_| arg.to_string()).map_err(|e| {
        format!(
            "`{arg}` is not a tracing filter ({e}); try `info` or `warn,repred_transport=debug`"
        )
    })
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// Where the board and the credentials live: the flag wins over the
/// environment; an empty variable is a mistake (`REPRED_DATA_DIR= cargo
/// run ...`), not a request for the current directory.
fn data_dir(flag: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match (flag, std::env::var_os("REPRED_DATA_DIR")) {
        (Some(dir), _) => Ok(dir),
        (None, Some(dir)) if dir.is_empty() => {
            anyhow::bail!("REPRED_DATA_DIR is set but empty: unset it or name a directory")
        }
        (None, Some(dir)) => Ok(PathBuf::from(dir)),
        (None, None) => Ok(PathBuf::from(".repred")),
    }
}

/// Logs on stderr, so that stdout carries only the board.
fn start_logging(flag: Option<&str>) -> anyhow::Result<()> {
    let filter = match (flag, std::env::var("RUST_LOG")) {
        (Some(filter), _) => EnvFilter::try_new(filter)?,
        (None, Ok(env)) if !env.is_empty() => EnvFilter::try_new(&env)
            .map_err(|e| anyhow::anyhow!("RUST_LOG=`{env}` is not a tracing filter ({e})"))?,
        _ => EnvFilter::new("warn"),
    };
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    Ok(())
}

/// Installs the Prometheus recorder (before the node starts: the node
/// takes its metric handles when it does) and serves its text at
/// `addr`; returns the address bound.
async fn serve_metrics(addr: SocketAddr) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await.with_context(|| {
        format!("cannot serve metrics on {addr}: pick a free address, or port 0 for any")
    })?;
    let bound = listener.local_addr()?;
    // Commits take milliseconds (an fsync); a histogram with buckets is
    // what Prometheus can aggregate, rather than the exporter's default
    // summary.
    let buckets = [0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(repred_transport::metrics::STORE_COMMIT_SECONDS.into()),
            &buckets,
        )?
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(answer(stream, handle.clone()));
        }
    });
    Ok(bound)
}

/// Answers one HTTP/1 request: `GET /metrics` gets the text, anything else
/// a short error. One request per connection; a client that says nothing
/// for five seconds is dropped.
async fn answer(mut stream: TcpStream, metrics: PrometheusHandle) {
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    let read_head = async {
        while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
        true
    };
    if !matches!(tokio::time::timeout(Duration::from_secs(5), read_head).await, Ok(true)) {
        return;
    }
    let head = String::from_utf8_lossy(&request);
    let mut first = head.lines().next().unwrap_or_default().split_whitespace();
    let (status, kind, body) = match (first.next(), first.next()) {
        (Some("GET"), Some("/metrics")) => {
            ("200 OK", "text/plain; version=0.0.4; charset=utf-8", metrics.render())
        }
        (Some("GET"), _) => ("404 Not Found", "text/plain", "try /metrics\n".to_string()),
        _ => ("405 Method Not Allowed", "text/plain", "GET /metrics\n".to_string()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Lines typed on stdin, read on a thread of their own: a read of stdin
/// cannot be cancelled, and the runtime would wait for it at exit.
fn typed_lines() -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Who wrote as `source`: its port when the board knows it.
fn who(board: &Board, source: SourceId) -> String {
    match board.joined.iter().find(|p| p.source == source) {
        Some(peer) => peer.port.to_string(),
        None => source.to_string(),
    }
}

/// Prints one applied change, line by line, with who made each part.
fn print_change(handle: &Handle<Board>, applied: &Applied<BoardChange>) {
    let change = &applied.change;
    let via = if applied.via_snapshot { " (from a snapshot)" } else { "" };
    handle.read(|board| {
        if let Some(joined) = &change.joined {
            for peer in joined.iter() {
                println!("{} joined{via}", peer.port);
            }
        }
        let by = who(board, applied.source);
        let serial = change.serial.as_ref().and_then(|s| s.get().copied());
        for (key, write) in change.notes.iter().flatten() {
            let Stamped { stamp, value } = write;
            // A snapshot carries each write's own stamp; a live update's
            // writes are its source's.
            let author = stamp.map_or_else(|| by.clone(), |s| who(board, s.source));
            match (value, serial) {
                (Some(text), Some(n)) if !applied.via_snapshot => {
                    println!("{author} set {key} = {text} (note #{n})");
                }
                (Some(text), _) => println!("{author} set {key} = {text}{via}"),
                (None, _) => println!("{author} deleted {key}{via}"),
            }
        }
        if let Some(items) = &change.items {
            for item in items.iter() {
                println!("{by} added {item}{via}");
            }
        }
    });
}

fn print_board(handle: &Handle<Board>) {
    handle.read(|board| {
        let mut notes: Vec<(&String, &String)> = board.notes.iter().collect();
        notes.sort();
        println!("notes ({}, newest #{}):", notes.len(), board.serial.get().copied().unwrap_or(0));
        for (key, text) in notes {
            let by = board.notes.stamp_of(key).map_or_else(String::new, |s| who(board, s.source));
            println!("  {key} = {text} (by {by})");
        }
        let items: Vec<&String> = board.items.iter().collect();
        println!("items: {items:?}");
        let ports: Vec<u16> = board.joined.iter().map(|p| p.port).collect();
        println!("joined: {ports:?}");
    });
}

const COMMANDS: &str = "commands: set KEY VALUE | del KEY | add ITEM | show | help";

/// Turns one typed line into an update (or a printout); returns what to
/// write, if anything.
fn command(line: &str, handle: &Handle<Board>) -> Option<BoardChange> {
    let line = line.trim();
    let (verb, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    let rest = rest.trim();
    match verb {
        "" => None,
        "set" => match rest.split_once(char::is_whitespace) {
            Some((key, value)) if !value.trim().is_empty() => {
                let next = handle.read(|b| b.serial.get().copied().unwrap_or(0)) + 1;
                let note = LwwMap::set(key.to_string(), value.trim().to_string());
                Some(BoardChange::notes(note).with_serial(next))
            }
            _ => {
                println!("usage: set KEY VALUE (the value may have spaces)");
                None
            }
        },
        "del" if !rest.is_empty() => {
            if handle.read(|b| b.notes.get(rest).is_none()) {
                println!("no note {rest}; `show` lists them");
                return None;
            }
            Some(BoardChange::notes(LwwMap::delete(rest.to_string())))
        }
        "add" if !rest.is_empty() => {
            if handle.read(|b| b.items.contains(&rest.to_string())) {
                println!("{rest} is there already");
                return None;
            }
            Some(BoardChange::items(GSet::add(rest.to_string())))
        }
        "del" | "add" => {
            println!("usage: {verb} {}", if verb == "del" { "KEY" } else { "ITEM" });
            None
        }
        "show" => {
            print_board(handle);
            None
        }
        "help" => {
            println!("{COMMANDS}");
            None
        }
        other => {
            println!("unknown command `{other}`; {COMMANDS}");
            None
        }
    }
}

/// Says what to do about the usual reasons a peer cannot start.
fn start_error(e: repred_transport::Error, port: u16, dir: &std::path::Path) -> anyhow::Error {
    let hint = match &e {
        repred_transport::Error::Bind { .. } => {
            format!("is another peer on port {port}? Pick another port")
        }
        repred_transport::Error::Storage(_) => format!(
            "another process may hold {}: a peer on the same port and data directory?",
            dir.join(format!("node-{port}.redb")).display()
        ),
        _ => "see above".to_string(),
    };
    anyhow::Error::new(e).context(format!("cannot start a peer on port {port} ({hint})"))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let dir = data_dir(args.data_dir)?;
    if let Some(addr) = args.metrics_addr {
        let bound = serve_metrics(addr).await?;
        println!("metrics at http://{bound}/metrics");
    }
    let node = Node::builder()
        .listen(local(args.port))
        .bootstrap(args.bootstrap.iter().map(|&p| local(p)))
        .data_dir(&dir)
        // The board survives restarts: it lives in node-<port>.redb.
        .durable(true)
        // A probe a second (the library's default is every 500 ms), 5 s to
        // refute a suspicion before a silent peer is declared down, and a
        // connection traded every 5 s, so a demo shows peers coming, going
        // and mixing within seconds.
        .heartbeat(Duration::from_secs(1))
        .down_after(Duration::from_secs(5))
        .rotate_every(Duration::from_secs(5))
        .spawn()
        .await
        .map_err(|e| start_error(e, args.port, &dir))?;
    let board = node.replicate(OBJECT, Board::default()).map_err(|e| {
        anyhow::Error::new(e).context(format!(
            "cannot load the board from {}: a store of an older version of this example? Use \
             another --data-dir, or delete that file",
            dir.join(format!("node-{}.redb", args.port)).display()
        ))
    })?;
    let mut changes = board.changes();
    let me = Peer { port: args.port, source: board.source() };
    println!("peer {} writes as {}; type `help` for the commands", me.port, me.source);
    if !board.read(|b| b.joined.contains(&me)) {
        board.update(BoardChange::joined(GSet::add(me))).await?;
    }

    let mut members = node.members();
    members.mark_changed();
    let mut last_up = Vec::new();
    let mut lines = typed_lines();
    let mut typing = true;
    // One future for the whole run: a signal that arrives between two
    // passes of the loop is not lost.
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            changed = members.changed() => {
                if changed.is_err() {
                    break;
                }
                let mut up: Vec<u16> = members.borrow_and_update().values().map(|a| a.port()).collect();
                up.sort();
                if up != last_up {
                    println!("UP {up:?}");
                    last_up = up;
                }
            }
            Some(applied) = changes.next() => match applied {
                Ok(applied) => print_change(&board, &applied),
                Err(lagged) => println!("({lagged}; `show` prints the board)"),
            },
            line = lines.recv(), if typing => match line {
                Some(line) => {
                    if let Some(change) = command(&line, &board)
                        && let Err(e) = board.update(change).await
                    {
                        println!("not written: {e}");
                    }
                }
                // End of input (`< /dev/null`, or Ctrl-D): the peer goes on.
                None => typing = false,
            },
            signal = &mut ctrl_c => {
                signal.context("cannot listen for Ctrl-C")?;
                break;
            }
        }
    }
    println!("leaving the cluster");
    node.shutdown().await;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    // --help and --version print to stdout and exit 0; a bad argument
    // prints what is wrong and the usage to stderr and exits 2.
    let args = Args::parse();
    if let Err(e) = start_logging(args.log.as_deref()) {
        eprintln!("error: {e:#}");
        return ExitCode::from(2);
    }
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
