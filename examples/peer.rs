//! A peer of a local repred cluster, after the JavaScript `peer` example.
//!
//!     cargo run --example peer 9000 9001
//!
//! listens on 127.0.0.1:9000, bootstraps from 127.0.0.1:9001 (which may start
//! later; more ports may follow), probes a member every second (SWIM), prints
//! `UP [9000, 9001]` whenever the set of live peers changes, and now and then
//! writes a note to a shared board, printing every note any peer writes.
//! Ctrl-C leaves the cluster cleanly.
//!
//! Credentials live in `./.repred/` (or `--data-dir DIR`, or the
//! `REPRED_DATA_DIR` environment variable); the first peer creates the
//! cluster there and the others join it.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use repred::Reduce;
use repred_transport::Node;
use serde::{Deserialize, Serialize};
use tokio_stream::StreamExt;

const USAGE: &str = "usage: peer PORT [BOOTSTRAP_PORT...] [--data-dir DIR]";

/// One peer's latest note.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Note {
    seq: u64,
    text: String,
}

/// The shared board: port -> that peer's latest note. Only the peer on a
/// port writes its entry, so the higher sequence number is the newer note.
#[derive(Clone, Debug, Default)]
struct Board(BTreeMap<u16, Note>);

impl Reduce for Board {
    type Update = BTreeMap<u16, Note>;

    fn reduce(&mut self, update: Self::Update) -> Option<Self::Update> {
        let mut changed = BTreeMap::new();
        for (port, note) in update {
            if self.0.get(&port).is_none_or(|old| note.seq > old.seq) {
                self.0.insert(port, note.clone());
                changed.insert(port, note);
            }
        }
        (!changed.is_empty()).then_some(changed)
    }

    fn snapshot(&self) -> Self::Update {
        self.0.clone()
    }
}

struct Args {
    port: u16,
    bootstrap: Vec<u16>,
    data_dir: PathBuf,
}

fn parse_port(arg: &str) -> anyhow::Result<u16> {
    match arg.parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => bail!("`{arg}` is not a port number (1-65535)"),
    }
}

fn parse_args(args: impl IntoIterator<Item = String>) -> anyhow::Result<Args> {
    let mut ports = Vec::new();
    let mut data_dir: Option<PathBuf> = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--data-dir" => {
                let dir = args.next().context("--data-dir needs a directory")?;
                // An empty path would put the cluster's key files in
                // whatever the current directory is.
                if dir.is_empty() {
                    bail!("--data-dir needs a directory, not an empty string");
                }
                data_dir = Some(dir.into());
            }
            "-h" | "--help" => bail!("{USAGE}"),
            flag if flag.starts_with('-') => bail!("unknown option `{flag}`"),
            port => ports.push(parse_port(port)?),
        }
    }
    let Some((&port, bootstrap)) = ports.split_first() else { bail!("missing PORT") };
    // The flag wins over the environment; an empty variable is a mistake
    // (`REPRED_DATA_DIR= cargo run ...`), not a request for the current
    // directory.
    let data_dir = match (data_dir, std::env::var_os("REPRED_DATA_DIR")) {
        (Some(dir), _) => dir,
        (None, Some(dir)) if dir.is_empty() => {
            bail!("REPRED_DATA_DIR is set but empty: unset it or name a directory")
        }
        (None, Some(dir)) => PathBuf::from(dir),
        (None, None) => PathBuf::from(".repred"),
    };
    Ok(Args { port, bootstrap: bootstrap.to_vec(), data_dir })
}

/// Some time between 2 and 5 seconds: peers write at their own pace.
fn pause() -> Duration {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    Duration::from_millis(2_000 + u64::from(nanos % 3_000))
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let node = Node::builder()
        .listen(local(args.port))
        .bootstrap(args.bootstrap.iter().map(|&p| local(p)))
        .data_dir(&args.data_dir)
        // The shared board survives restarts: it lives in node-<port>.redb.
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
        .with_context(|| format!("cannot start a peer on port {}", args.port))?;
    let board = node.replicate("board", Board::default())?;
    let mut changes = board.changes();
    let mut members = node.members();
    members.mark_changed();
    let mut seq = 0;
    let mut next_note = Box::pin(tokio::time::sleep(pause()));
    let mut last_up = Vec::new();
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
                Ok(applied) => {
                    for (port, note) in applied.change {
                        println!("{port} says {} (note #{})", note.text, note.seq);
                    }
                }
                Err(lagged) => println!("(skipped: {lagged})"),
            },
            () = &mut next_note => {
                seq += 1;
                let note = Note { seq, text: format!("hello from {}", args.port) };
                board.update(BTreeMap::from([(args.port, note)])).await?;
                next_note.as_mut().reset(tokio::time::Instant::now() + pause());
            }
            signal = tokio::signal::ctrl_c() => {
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
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("error: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
