//! `cargo run --example embed`: the sans-IO core over a plain byte pipe,
//! with no QUIC, no tokio and no threads.
//!
//! A [`Replica`] is a state machine: bytes in (`handle`), bytes out
//! (`poll_transmit`), events out (`poll_event`), time passed in as a
//! number. Anything that carries bytes in order can connect two replicas:
//! here two OS pipes (`std::io::pipe`), one each way, carry the protocol
//! (Hello, history, Sync, live updates) in chunks of at most 1,000 bytes,
//! so frames arrive cut anywhere, as they would from a socket. The loop
//! below is the whole transport: swap the pipes for a TCP stream, a serial
//! line or a file, and nothing else changes.

use std::io::{PipeReader, PipeWriter, Read, Write};

use repred::{Delivery, Event, GSet, Replica, SourceId, StreamId, StreamOpts};

/// Bytes per write: small, to show frames arriving in pieces (and to stay
/// under the pipe's buffer, since one thread both writes and reads).
const CHUNK: usize = 1_000;

type Names = GSet<String>;

/// One side's end of the connection: its replica's stream and the pipe
/// it writes to.
struct Side {
    replica: Replica<Names>,
    stream: StreamId,
    to_peer: PipeWriter,
    from_peer: PipeReader,
}

/// Moves what `from` has to send through its pipe into `to`; returns how
/// many bytes moved.
fn shuttle(from: &mut Side, to: &mut Side, now: u64) -> anyhow::Result<usize> {
    let mut out = Vec::new();
    while from.replica.poll_transmit(from.stream, &mut out)? > 0 {}
    let mut buf = [0u8; CHUNK];
    for chunk in out.chunks(CHUNK) {
        from.to_peer.write_all(chunk)?;
        to.from_peer.read_exact(&mut buf[..chunk.len()])?;
        to.replica.handle(to.stream, now, &buf[..chunk.len()])?;
    }
    Ok(out.len())
}

/// Runs both directions until neither side has anything to send.
fn pump(a: &mut Side, b: &mut Side, now: u64) -> anyhow::Result<usize> {
    let mut total = 0;
    loop {
        let moved = shuttle(a, b, now)? + shuttle(b, a, now)?;
        if moved == 0 {
            return Ok(total);
        }
        total += moved;
    }
}

/// The events a side's replica has for its driver.
fn events(side: &mut Side) -> Vec<String> {
    std::iter::from_fn(|| side.replica.poll_event())
        .filter_map(|e| match e {
            Event::Header { id, .. } => Some(format!("hello from {id}")),
            Event::Synced { .. } => Some("synced".to_string()),
            _ => None,
        })
        .collect()
}

pub fn run(out: &mut impl Write) -> anyhow::Result<()> {
    let now = 1_700_000_000_000; // the caller's clock: the core never reads one
    let (a_reads, b_writes) = std::io::pipe()?;
    let (b_reads, a_writes) = std::io::pipe()?;
    let mut a = Replica::new(SourceId::new("a")?, Names::default());
    let mut b = Replica::new(SourceId::new("b")?, Names::default());

    // Written before the two are connected: travels as history.
    let names: Vec<String> = (0..200).map(|i| format!("name-{i:03}")).collect();
    a.update(now, GSet::add_all(names))?;
    b.update(now, GSet::add("bo".to_string()))?;

    let mut a = Side {
        stream: a.open(StreamOpts::default())?,
        replica: a,
        to_peer: a_writes,
        from_peer: a_reads,
    };
    let mut b = Side {
        stream: b.open(StreamOpts::default())?,
        replica: b,
        to_peer: b_writes,
        from_peer: b_reads,
    };
    let mut seen_at_b = b.replica.subscribe();
    let bytes = pump(&mut a, &mut b, now)?;
    writeln!(out, "a: {:?}", events(&mut a))?;
    writeln!(out, "b: {:?}", events(&mut b))?;
    writeln!(
        out,
        "after {bytes} bytes through the pipes, a holds {} names and b {}",
        a.replica.state().len(),
        b.replica.state().len()
    )?;

    // Connected: a live update, and what b's subscription reports.
    a.replica.update(now + 1, GSet::add("ann".to_string()))?;
    let bytes = pump(&mut a, &mut b, now + 1)?;
    for delivery in b.replica.changes(&mut seen_at_b) {
        if let Delivery::Change(c) = delivery {
            writeln!(out, "b applied {} name(s) from {}", c.change.len(), c.source)?;
        }
    }
    writeln!(
        out,
        "the live update took {bytes} bytes; both hold \"ann\": {}",
        b.replica.state().contains(&"ann".to_string())
            && a.replica.state().contains(&"ann".to_string())
    )?;
    anyhow::ensure!(a.replica.state() == b.replica.state(), "a and b must agree");
    anyhow::ensure!(a.replica.clock() == b.replica.clock(), "and so must their clocks");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    run(&mut std::io::stdout())
}
