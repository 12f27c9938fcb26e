//! A Rust peer of JavaScript scuttlebutt (npm `scuttlebutt/model`) over TCP.
//!
//!     cargo run --example scuttlebutt -- listen PORT [key=value ...]
//!     cargo run --example scuttlebutt -- connect PORT [key=value ...]
//!
//! Listens on (or connects to) 127.0.0.1:PORT, sets the given keys (each
//! value as a JSON string), and prints, one line each on stdout:
//!
//! - `STATE {json}`: the whole map as `model.toJSON()` does (keys sorted,
//!   `null` values left out) after every change (changes that land together
//!   print once);
//! - `SYNC`: a stream has synced (both sides sent their history).
//!
//! It exits after `LIFE_MS` milliseconds (default 30,000). `connect` keeps
//! trying until the listener is up, and connects again if the stream ends.
//!
//! The JavaScript side:
//!
//! ```js
//! var Model = require('scuttlebutt/model'), net = require('net')
//! var m = new Model()
//! m.on('update', function () { console.log(JSON.stringify(m.toJSON())) })
//! var s = net.connect(9000); s.pipe(m.createStream()).pipe(s)
//! ```

use std::process::ExitCode;
use std::time::Duration;

use repred_scuttlebutt::{Event, Json, Node, Peer, StreamOpts};

const USAGE: &str = "usage: scuttlebutt (listen|connect) PORT [key=value ...]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mode, port, sets) = match parse(&args) {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("{e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let life = match std::env::var("LIFE_MS") {
        Ok(ms) => match ms.parse::<u64>() {
            Ok(ms) => Duration::from_millis(ms),
            Err(_) => {
                eprintln!("LIFE_MS must be a number of milliseconds, got {ms:?}");
                return ExitCode::from(2);
            }
        },
        Err(_) => Duration::from_millis(30_000),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        match tokio::time::timeout(life, run(mode, port, sets)).await {
            // Lived its life.
            Err(_) => ExitCode::SUCCESS,
            Ok(Ok(())) => ExitCode::SUCCESS,
            Ok(Err(e)) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        }
    })
}

#[derive(Clone, Copy)]
enum Mode {
    Listen,
    Connect,
}

/// Keys and values to set, in order.
type Sets = Vec<(String, String)>;

fn parse(args: &[String]) -> Result<(Mode, u16, Sets), String> {
    let mode = match args.first().map(String::as_str) {
        Some("listen") => Mode::Listen,
        Some("connect") => Mode::Connect,
        _ => return Err("the first argument is listen or connect".into()),
    };
    let port = args
        .get(1)
        .and_then(|p| p.parse::<u16>().ok())
        .ok_or_else(|| "the second argument is a port number".to_string())?;
    let sets = args[2..]
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => Ok((k.to_string(), v.to_string())),
            None => Err(format!("{kv:?} is not key=value")),
        })
        .collect::<Result<_, _>>()?;
    Ok((mode, port, sets))
}

async fn run(mode: Mode, port: u16, sets: Sets) -> Result<(), String> {
    let node = Node::new(&Node::random_id()).map_err(|e| e.to_string())?;
    let peer = Peer::new(node);
    // Subscribed before anything happens, so that no change goes unprinted.
    let printer = tokio::spawn(print(peer.clone()));
    for (key, value) in &sets {
        peer.set(key, Json::string(value)).map_err(|e| e.to_string())?;
    }
    let addr = ("127.0.0.1", port);
    match mode {
        Mode::Listen => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on 127.0.0.1:{port}: {e}"))?;
            peer.serve_tcp(listener, StreamOpts::default()).await.map_err(|e| e.to_string())?;
        }
        Mode::Connect => loop {
            if let Err(e) = peer.connect_tcp(addr, StreamOpts::default()).await {
                eprintln!("127.0.0.1:{port}: {e}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        },
    }
    printer.abort();
    Ok(())
}

/// Prints `STATE` when the map changed since last printed, then `SYNC` for
/// each stream that synced (so a `SYNC` line follows the state it brought).
async fn print(peer: Peer) {
    let mut changes = peer.changes();
    let mut events = peer.events();
    let mut printed = String::from("{}");
    loop {
        let state = peer.to_json();
        if state != printed {
            println!("STATE {state}");
            printed = state;
        }
        loop {
            match events.try_recv() {
                Ok(Event::Synced { .. }) => println!("SYNC"),
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => {}
                Err(_) => break,
            }
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            event = events.recv() => {
                if let Ok(Event::Synced { .. }) = event {
                    let state = peer.to_json();
                    if state != printed {
                        println!("STATE {state}");
                        printed = state;
                    }
                    println!("SYNC");
                }
            }
        }
    }
}
