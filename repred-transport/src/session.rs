//! One connection's streams: one bidirectional stream per replicated
//! object, each a pipe between a quinn stream and the object's sans-IO
//! session.
//!
//! Nothing here decides anything about the protocol: each stream is a pipe
//! between a quinn stream and the core's `handle` / `poll_transmit`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quinn::{Connection, RecvStream, SendStream};
use repred::SessionError;
use repred_node::ConnId;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::timeout;
use tracing::Instrument;

use crate::CloseCode;
use crate::clock::{instant_at, sleep_until_some};
use crate::node::{Inner, Phase, lock};
use crate::object::Object;

/// Bytes read from a stream at a time.
const READ_CHUNK: usize = 64 << 10;
/// Bytes of frames gathered before a write: enough to fill packets, little
/// enough that flow control, not this buffer, is what holds data back.
const WRITE_BATCH: usize = 256 << 10;
/// How long a stream may take to name its object.
const PREAMBLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs one connection: opens a stream per object (on the dialing side),
/// accepts the peer's, carries the node cores' messages both ways
/// (`messages` are this core's), and on shutdown lets the object streams
/// drain before closing.
pub(crate) async fn run_connection(
    inner: Arc<Inner>,
    key: ConnId,
    outgoing: bool,
    messages: mpsc::UnboundedReceiver<Vec<u8>>,
) {
    let Some(conn) = lock(&inner.conns).map.get(&key).map(|c| c.conn.clone()) else { return };
    let opened: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut registry = inner.registry.subscribe();
    registry.mark_changed();
    let mut phase = inner.phase.subscribe();
    let mut streams: JoinSet<()> = JoinSet::new();
    // Not drained at shutdown: they end with the connection.
    let mut control: JoinSet<()> = JoinSet::new();
    control.spawn(crate::control::write(conn.clone(), messages));
    let mut peer_control = false;
    loop {
        if !inner.running() {
            if streams.is_empty() {
                conn.close(CloseCode::Shutdown.varint(), b"node shutting down");
                break;
            }
            tokio::select! {
                _ = streams.join_next() => {}
                _ = conn.closed() => break,
            }
            continue;
        }
        tokio::select! {
            changed = registry.changed(), if outgoing => {
                if changed.is_err() {
                    break;
                }
                let objects: Vec<(String, Arc<dyn Object>)> = registry
                    .borrow_and_update()
                    .iter()
                    .map(|(n, o)| (n.clone(), o.clone()))
                    .collect();
                for (name, object) in objects {
                    if lock(&opened).insert(name.clone()) {
                        let span = tracing::error_span!("stream", object = %name);
                        let task = open_stream(inner.clone(), conn.clone(), name, object);
                        streams.spawn(task.instrument(span));
                    }
                }
            }
            accepted = conn.accept_uni() => match accepted {
                Ok(recv) if !peer_control => {
                    peer_control = true;
                    control.spawn(crate::control::read(inner.clone(), conn.clone(), key, recv));
                }
                Ok(_) => {
                    inner.violation(&conn, CloseCode::DuplicateStream, "a second control stream");
                    break;
                }
                Err(_) => break,
            },
            accepted = conn.accept_bi() => match accepted {
                Ok((send, recv)) => {
                    // The object is named by the stream's first bytes.
                    let span = tracing::error_span!("stream", object = tracing::field::Empty);
                    let task = accept_stream(inner.clone(), conn.clone(), send, recv, opened.clone());
                    streams.spawn(task.instrument(span));
                }
                Err(_) => break,
            },
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
            _ = phase.changed() => {}
        }
    }
    match conn.close_reason() {
        Some(reason) => tracing::info!(reason = %reason, "disconnected"),
        None => tracing::info!("disconnected"),
    }
    inner.unregister(key);
}

fn preamble(name: &str) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(name.len() + 1);
    // Names are checked to fit in a byte when they are registered.
    bytes.push(name.len() as u8);
    bytes.extend_from_slice(name.as_bytes());
    bytes
}

async fn open_stream(inner: Arc<Inner>, conn: Connection, name: String, object: Arc<dyn Object>) {
    let Ok((mut send, recv)) = conn.open_bi().await else { return };
    if send.write_all(&preamble(&name)).await.is_err() {
        return;
    }
    drive(&inner, object, send, recv).await;
}

/// Reads a stream's first bytes: the object's name, one length byte first.
async fn read_preamble(recv: &mut RecvStream) -> Result<String, String> {
    let read = async {
        let mut len = [0u8; 1];
        recv.read_exact(&mut len).await.map_err(|e| e.to_string())?;
        if len[0] == 0 {
            return Err("empty object name".to_string());
        }
        let mut name = vec![0u8; usize::from(len[0])];
        recv.read_exact(&mut name).await.map_err(|e| e.to_string())?;
        String::from_utf8(name).map_err(|_| "object name is not UTF-8".to_string())
    };
    timeout(PREAMBLE_TIMEOUT, read).await.map_err(|_| "no object name in time".to_string())?
}

async fn accept_stream(
    inner: Arc<Inner>,
    conn: Connection,
    send: SendStream,
    mut recv: RecvStream,
    opened: Arc<Mutex<HashSet<String>>>,
) {
    let name = match read_preamble(&mut recv).await {
        Ok(name) => name,
        Err(detail) => return inner.violation(&conn, CloseCode::BadPreamble, &detail),
    };
    tracing::Span::current().record("object", tracing::field::display(&name));
    if !lock(&opened).insert(name.clone()) {
        return inner.violation(&conn, CloseCode::DuplicateStream, &name);
    }
    // An object this node has not replicated yet: the stream waits for it
    // (the stream cap bounds how many can wait), so that nodes may call
    // `replicate` in any order.
    let mut registry = inner.registry.subscribe();
    let mut phase = inner.phase.subscribe();
    let object = tokio::select! {
        // A known object wins over shutdown: the session then drains and
        // ends with a Close like any other.
        biased;
        found = registry.wait_for(|r| r.contains_key(&name)) => match found {
            Ok(r) => r.get(&name).cloned(),
            Err(_) => None,
        },
        _ = phase.wait_for(|p| *p != Phase::Running) => None,
    };
    let Some(object) = object else { return };
    drive(&inner, object, send, recv).await;
}

/// Drops the core's stream when the task ends, however it ends (a task is
/// aborted when its connection goes), keeping its counters.
struct Forget {
    object: Arc<dyn Object>,
    stream: repred::StreamId,
}

impl Drop for Forget {
    fn drop(&mut self) {
        self.object.forget(self.stream);
    }
}

/// Pipes one QUIC stream to and from one core session until either side
/// ends it.
///
/// Reading and writing run side by side: a writer blocked by flow control
/// must not stop the reader, or two peers each waiting for the other to
/// read would deadlock. The writer only asks the core for frames when the
/// previous ones were taken by the socket: that is the backpressure, and a
/// slow peer costs a cursor into the history, not a queue.
///
/// A frame the core refuses ends this stream alone: the core has ended the
/// session and queued a Close with the reason, which the writer sends before
/// it finishes, and the stream is stopped with the reason's code, so that
/// one object's mistake (the same name replicated with two types, say)
/// costs neither the connection nor the other objects.
async fn drive(inner: &Inner, object: Arc<dyn Object>, mut send: SendStream, mut recv: RecvStream) {
    let Ok(stream) = object.open() else { return };
    let _forget = Forget { object: object.clone(), stream };
    let object = &*object;
    let refuse = |recv: &mut RecvStream, e: &repred::PeerMisbehaved| {
        // Logged with the stream's end (`Shared::settle`), as the core
        // reports it.
        inner.count_violation();
        let _ = recv.stop(CloseCode::from(e).varint());
    };
    let reader = async {
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            match recv.read(&mut buf).await {
                Ok(Some(n)) => {
                    if let Err(e) = object.handle(stream, &buf[..n]) {
                        if let SessionError::Peer(e) = e {
                            refuse(&mut recv, &e);
                        }
                        return;
                    }
                    if !object.has_stream(stream) {
                        // The peer sent Close: the session is over.
                        return;
                    }
                }
                Ok(None) | Err(_) => {
                    object.abort(stream);
                    return;
                }
            }
        }
    };
    let writer = async {
        let mut wake = object.wakeups();
        let mut phase = inner.phase.subscribe();
        let mut out = Vec::new();
        let mut draining = false;
        loop {
            // Seen before polling: a change made while polling wakes us again.
            wake.borrow_and_update();
            out.clear();
            loop {
                match object.poll_transmit(stream, &mut out) {
                    Ok(0) => break,
                    Ok(_) if out.len() >= WRITE_BATCH => break,
                    Ok(_) => {}
                    Err(_) => {
                        // One of our own updates does not encode: a bug on
                        // this side, so the session ends, politely.
                        object.close(stream);
                        break;
                    }
                }
            }
            if !out.is_empty() {
                if send.write_all(&out).await.is_err() {
                    object.abort(stream);
                    return;
                }
                continue;
            }
            if !object.has_stream(stream) {
                let _ = send.finish();
                return;
            }
            if draining {
                // Everything pending went out above; now the Close.
                object.close(stream);
                continue;
            }
            // The replica's own timers (lazy relay's deadlines) run here:
            // any stream's writer may fire them, and a fired one wakes all.
            let timer = object.poll_timeout().map(instant_at);
            tokio::select! {
                changed = wake.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                () = sleep_until_some(timer) => object.handle_timeout(),
                _ = phase.wait_for(|p| *p != Phase::Running) => draining = true,
            }
        }
    };
    tokio::join!(reader, writer);
}
