//! One connection's streams: one bidirectional stream per replicated
//! object, each a pipe between a quinn stream and the object's sans-IO
//! session.
//!
//! Nothing here decides anything about the protocol: each stream is a pipe
//! between a quinn stream and the core's `handle` / `poll_transmit`, opened
//! once the core says it may (`Replica::receiving_snapshot`).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quinn::{Connection, RecvStream, SendStream};
use repred::SessionError;
use repred_node::ConnId;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::timeout;
use tracing::Instrument;

use crate::CloseCode;
use crate::clock::{instant_at, sleep_until_some};
use crate::node::{Inner, Phase, lock};
use crate::object::{Object, Released};

/// Bytes read from a stream at a time.
const READ_CHUNK: usize = 64 << 10;
/// Bytes of frames gathered before a write: enough to fill packets, little
/// enough that flow control, not this buffer, is what holds data back.
const WRITE_BATCH: usize = 256 << 10;
/// How long a stream may take to name its object.
const PREAMBLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a stream waits to open while its object takes in a snapshot
/// (see [`await_snapshots`]).
const SNAPSHOT_WAIT: Duration = Duration::from_secs(30);
/// How often that wait looks again, whatever woke it or did not.
const SNAPSHOT_LOOK: Duration = Duration::from_millis(250);
/// How long a peer's stream for an object may wait for this side's last
/// stream of it to end (the peer ended it, and opened another at once,
/// after this node released the object) before it counts as a duplicate.
const REOPEN_WAIT: Duration = Duration::from_secs(2);

/// The objects a connection has a stream of, one each.
#[derive(Default)]
struct Streamed {
    names: Mutex<HashSet<String>>,
    /// Bumped whenever a name is free again.
    freed: watch::Sender<u64>,
}

/// A connection's stream of one object. The name is free again when it
/// is dropped, with the stream's task, unless [`kept`](Claim::end): a
/// stream that ended for any reason but one end's choice (a release, or a
/// set of peers that dropped the other) keeps its name taken for as long
/// as the connection lasts (one stream per object per connection, refused
/// or not).
struct Claim {
    streamed: Arc<Streamed>,
    name: String,
    kept: bool,
}

impl Claim {
    /// Frees the name if either end ended the stream on purpose (released
    /// the object, or dropped the other from its peers), so that it may be
    /// streamed again; keeps it taken otherwise. Whether it was freed.
    fn end(mut self, released: Option<Released>) -> bool {
        self.kept = released.is_none();
        !self.kept
    }
}

impl Streamed {
    fn claim(self: &Arc<Self>, name: &str) -> Option<Claim> {
        lock(&self.names).insert(name.to_string()).then(|| Claim {
            streamed: self.clone(),
            name: name.to_string(),
            kept: false,
        })
    }

    /// Claims `name`, waiting up to [`REOPEN_WAIT`] for its last stream
    /// to end.
    async fn claim_within(self: &Arc<Self>, name: &str) -> Option<Claim> {
        let mut freed = self.freed.subscribe();
        let wait = async {
            loop {
                if let Some(claim) = self.claim(name) {
                    return Some(claim);
                }
                if freed.changed().await.is_err() {
                    return None;
                }
            }
        };
        timeout(REOPEN_WAIT, wait).await.ok().flatten()
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        lock(&self.streamed.names).remove(&self.name);
        self.streamed.freed.send_modify(|n| *n = n.wrapping_add(1));
    }
}

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
    // Objects replicated with chosen peers only are streamed only with
    // those (`Node::replicate_with`).
    let peer = crate::identity::peer_id(&conn);
    let streamed: Arc<Streamed> = Arc::default();
    let mut registry = inner.registry.subscribe();
    registry.mark_changed();
    let mut phase = inner.phase.subscribe();
    // Each says whether its name is free again.
    let mut streams: JoinSet<bool> = JoinSet::new();
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
                    // One being released, or not for this peer, waits for
                    // the registry to change.
                    if object.is_disposed() || !object.admits(peer) {
                        continue;
                    }
                    if let Some(claim) = streamed.claim(&name) {
                        let span = tracing::error_span!("stream", object = %name);
                        let task = open_stream(inner.clone(), conn.clone(), peer, claim, object);
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
                    let task = accept_stream(inner.clone(), conn.clone(), peer, send, recv, streamed.clone());
                    streams.spawn(task.instrument(span));
                }
                Err(_) => break,
            },
            Some(done) = streams.join_next(), if !streams.is_empty() => {
                if outgoing && done.unwrap_or(false) {
                    // One end released the object or dropped the other
                    // from its peers: a new stream, if this side's set
                    // admits the peer, waits at the peer's end in case it
                    // replicates the object again or admits this node
                    // again (the accepting side cannot open one).
                    registry.mark_changed();
                }
            }
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

/// Opens this side's stream of an object; whether its name is free again.
async fn open_stream(
    inner: Arc<Inner>,
    conn: Connection,
    peer: Option<repred::SourceId>,
    claim: Claim,
    object: Arc<dyn Object>,
) -> bool {
    let Ok((mut send, recv)) = conn.open_bi().await else { return claim.end(None) };
    if send.write_all(&preamble(&claim.name)).await.is_err() {
        return claim.end(None);
    }
    let Some(binding) = crate::identity::channel_binding(&conn, send.id(), &claim.name) else {
        return claim.end(None);
    };
    let released = drive(&inner, object, peer, binding, send, recv).await;
    claim.end(released)
}

/// Waits, up to [`SNAPSHOT_WAIT`], while the object takes in a peer's
/// snapshot ([`Replica::receiving_snapshot`](repred::Replica::receiving_snapshot)):
/// a stream opened meanwhile shows its peer the clock of before it, and a
/// peer at another collection floor would answer with a snapshot the
/// replica declines, its stream coming again at once, and again, for as
/// long as the first snapshot takes. This side's session does not exist
/// yet: the peer's waits for its Hello (or its bytes wait in the stream).
/// When to open is the replica's to say; this only waits.
async fn await_snapshots(inner: &Inner, object: &dyn Object) {
    let mut wake = object.wakeups();
    let mut phase = inner.phase.subscribe();
    let wait = async {
        loop {
            // Seen before looking: a snapshot that ends meanwhile wakes us.
            wake.borrow_and_update();
            if !object.receiving_snapshot() || !inner.running() {
                return;
            }
            tokio::select! {
                changed = wake.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                // A stream that ends without frames handled wakes nobody.
                () = tokio::time::sleep(SNAPSHOT_LOOK) => {}
                _ = phase.wait_for(|p| *p != Phase::Running) => return,
            }
        }
    };
    if timeout(SNAPSHOT_WAIT, wait).await.is_err() {
        tracing::debug!("opening the stream while a snapshot is still coming in");
    }
}

/// Writes `out` to the peer; `false` when the stream is over. While the
/// peer's flow control holds the write back, the object's timers run here
/// too (no other task may be there to run them): a peer that takes none of
/// a snapshot sent to it is ended by them
/// ([`PeerMisbehaved::SnapshotUnread`](repred::PeerMisbehaved::SnapshotUnread)),
/// and the write with it, where it would wait for as long as the peer
/// likes. (A write is cancelled only where it wrote nothing.)
async fn write_out(
    send: &mut SendStream,
    out: &[u8],
    object: &dyn Object,
    stream: repred::StreamId,
) -> bool {
    let mut written = 0;
    while written < out.len() {
        let timer = object.poll_timeout().map(instant_at);
        tokio::select! {
            wrote = send.write(&out[written..]) => match wrote {
                Ok(n) => {
                    written += n;
                    // A slow peer is not a gone one (see `Replica::sent`).
                    object.sent(stream);
                }
                Err(_) => {
                    object.abort(stream);
                    return false;
                }
            },
            () = sleep_until_some(timer) => {
                object.handle_timeout();
                // Ended meanwhile with no Close to send (what is written
                // is all it gets): a Close queued is sent as usual.
                if !object.has_stream(stream) {
                    let _ = send.reset(CloseCode::Misbehaved.varint());
                    return false;
                }
            }
        }
    }
    true
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
    peer: Option<repred::SourceId>,
    send: SendStream,
    mut recv: RecvStream,
    streamed: Arc<Streamed>,
) -> bool {
    let name = match read_preamble(&mut recv).await {
        Ok(name) => name,
        Err(detail) => {
            inner.violation(&conn, CloseCode::BadPreamble, &detail);
            return false;
        }
    };
    tracing::Span::current().record("object", tracing::field::display(&name));
    let Some(claim) = streamed.claim_within(&name).await else {
        inner.violation(&conn, CloseCode::DuplicateStream, &name);
        return false;
    };
    // An object this node has not replicated yet: the stream waits for it
    // (the stream cap bounds how many can wait), so that nodes may call
    // `replicate` in any order. So does one replicated with other peers
    // only, until its peers admit this one.
    let mut registry = inner.registry.subscribe();
    let mut phase = inner.phase.subscribe();
    let object = tokio::select! {
        // A known object wins over shutdown: the session then drains and
        // ends with a Close like any other.
        biased;
        // Not one being released: the stream waits for the next.
        found = registry.wait_for(|r| r.get(&name).is_some_and(|o| !o.is_disposed() && o.admits(peer))) => match found {
            Ok(r) => r.get(&name).cloned(),
            Err(_) => None,
        },
        _ = phase.wait_for(|p| *p != Phase::Running) => None,
    };
    let Some(object) = object else { return claim.end(None) };
    let Some(binding) = crate::identity::channel_binding(&conn, send.id(), &name) else {
        return claim.end(None);
    };
    let released = drive(&inner, object, peer, binding, send, recv).await;
    claim.end(released)
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
///
/// Returns which end, if either, ended the stream on purpose
/// ([`Object::released`]).
async fn drive(
    inner: &Inner,
    object: Arc<dyn Object>,
    peer: Option<repred::SourceId>,
    binding: repred::ChannelBinding,
    mut send: SendStream,
    mut recv: RecvStream,
) -> Option<Released> {
    await_snapshots(inner, &*object).await;
    // Disposed of: the node is releasing it (or shutting down).
    let Ok(stream) = object.open(peer, Some(binding)) else { return Some(Released::Here) };
    let _forget = Forget { object: object.clone(), stream };
    let object = &*object;
    let refuse = |recv: &mut RecvStream, e: &repred::PeerMisbehaved| {
        // Logged with the stream's end (`Shared::settle`), as the core
        // reports it.
        inner.count_violation();
        let _ = recv.stop(CloseCode::from(e).varint());
    };
    // The writer gave the stream up mid-write (see `write_out`): the
    // reader stops too, rather than wait for a peer that may never write.
    let given_up = tokio::sync::Notify::new();
    // Whether the peer sent anything at all.
    let reader = async {
        let mut buf = vec![0u8; READ_CHUNK];
        let mut heard = false;
        loop {
            let read = tokio::select! {
                read = recv.read(&mut buf) => read,
                () = given_up.notified() => {
                    let _ = recv.stop(CloseCode::Misbehaved.varint());
                    return heard;
                }
            };
            match read {
                Ok(Some(n)) => {
                    heard |= n > 0;
                    if let Err(e) = object.handle(stream, &buf[..n]) {
                        if let SessionError::Peer(e) = e {
                            refuse(&mut recv, &e);
                        }
                        return heard;
                    }
                    if !object.has_stream(stream) {
                        // The peer sent Close: the session is over.
                        return heard;
                    }
                }
                Ok(None) | Err(_) => {
                    object.abort(stream);
                    return heard;
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
                        // this side, so the session ends. Without a Close:
                        // a Close (`Closed`) tells the peer the stream may
                        // come again, as after a set of peers dropped it,
                        // and a new one would fail the same way, again and
                        // again. The stream just finishes, and its name
                        // stays taken on this connection at both ends.
                        object.abort(stream);
                        break;
                    }
                }
            }
            if !out.is_empty() {
                if !write_out(&mut send, &out, object, stream).await {
                    given_up.notify_one();
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
    let (heard, ()) = tokio::join!(reader, writer);
    // A peer that ended the stream without a word had no session with
    // this one: it let the object go just as the stream came (see
    // `Node::release`), and the stream may come again.
    object.released(stream).or((!heard).then_some(Released::Peer))
}
