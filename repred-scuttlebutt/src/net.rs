//! Thin tokio shells over [`Node`]: TCP (or any `AsyncRead + AsyncWrite`)
//! and WebSocket. Each connection is one stream; a protocol error ends that
//! connection only.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};
use tokio::sync::{broadcast, watch};

use crate::{Event, Json, Node, NodeError, StreamError, StreamId, StreamOpts};

/// Why a connection ended badly. Only that connection ends; the node and
/// its other connections go on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// Reading or writing the connection failed.
    #[error("the connection failed")]
    Io(#[from] std::io::Error),
    /// The peer broke the protocol (a malformed, oversize or unexpected
    /// line, a wrong header, an update before the header); nothing of that
    /// line was applied.
    #[error("the peer broke the protocol")]
    Protocol(#[from] StreamError),
    /// The WebSocket layer failed.
    #[cfg(feature = "websocket")]
    #[error("the websocket failed")]
    WebSocket(#[source] Box<tokio_tungstenite::tungstenite::Error>),
}

#[cfg(feature = "websocket")]
impl From<tokio_tungstenite::tungstenite::Error> for TransportError {
    fn from(e: tokio_tungstenite::tungstenite::Error) -> Self {
        TransportError::WebSocket(Box::new(e))
    }
}

/// Wall time in milliseconds since the Unix epoch.
pub fn now_millis() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

struct Inner {
    node: Mutex<Node>,
    /// Bumped whenever a connection or a local write may have something new
    /// to send: every writer wakes and polls.
    changed: watch::Sender<u64>,
    events: broadcast::Sender<Event>,
}

/// A [`Node`] shared by its connections. Cheap to clone.
///
/// ```no_run
/// use repred_scuttlebutt::{Node, Peer, StreamOpts};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let peer = Peer::new(Node::new(&Node::random_id())?);
/// peer.set("hello", serde_json::json!("world"))?;
/// // Serve JavaScript peers on TCP: `net.connect(port)` piped to
/// // `model.createStream()` and back.
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:9999").await?;
/// tokio::spawn({
///     let peer = peer.clone();
///     async move { peer.serve_tcp(listener, StreamOpts::default()).await }
/// });
/// // Or connect to one.
/// peer.connect_tcp("127.0.0.1:8888", StreamOpts::default()).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Peer {
    inner: Arc<Inner>,
}

impl Peer {
    /// Shares `node`.
    pub fn new(node: Node) -> Self {
        let (changed, _) = watch::channel(0);
        let (events, _) = broadcast::channel(1024);
        Peer { inner: Arc::new(Inner { node: Mutex::new(node), changed, events }) }
    }

    fn lock(&self) -> MutexGuard<'_, Node> {
        // A panic while locked leaves a node whose every step completed or
        // did not start; carrying on is safe.
        self.inner.node.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the node, then wakes every connection to send what it
    /// may have made (use this for anything that changes the node).
    pub fn with<R>(&self, f: impl FnOnce(&mut Node) -> R) -> R {
        let result = self.quietly(f);
        self.inner.changed.send_modify(|v| *v = v.wrapping_add(1));
        result
    }

    /// Runs `f` on the node without waking anyone; passes on its events.
    fn quietly<R>(&self, f: impl FnOnce(&mut Node) -> R) -> R {
        let mut node = self.lock();
        let result = f(&mut node);
        while let Some(event) = node.poll_event() {
            // Nobody listening is fine.
            let _ = self.inner.events.send(event);
        }
        result
    }

    /// `model.set(key, value)` now; sent to every connection.
    pub fn set(&self, key: &str, value: impl Into<Json>) -> Result<bool, NodeError> {
        let value = value.into();
        self.with(|node| node.set(now_millis(), key, value))
    }

    /// The map as `model.toJSON()` text.
    pub fn to_json(&self) -> String {
        self.lock().model().to_json()
    }

    /// Reads the node without waking anyone.
    pub fn read<R>(&self, f: impl FnOnce(&Node) -> R) -> R {
        f(&self.lock())
    }

    /// A receiver that changes whenever the node may have changed.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }

    /// The node's events from now on (headers, syncs, ends), from every
    /// connection.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    /// Connects to a TCP peer and runs one stream until it ends.
    pub async fn connect_tcp(
        &self,
        addr: impl ToSocketAddrs,
        opts: StreamOpts,
    ) -> Result<(), TransportError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        self.run(stream, opts).await
    }

    /// Accepts TCP peers for ever, one stream each (each in a task of its
    /// own, ending alone). Returns only if accepting fails.
    pub async fn serve_tcp(
        &self,
        listener: TcpListener,
        opts: StreamOpts,
    ) -> Result<(), TransportError> {
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let (peer, opts) = (self.clone(), opts.clone());
            tokio::spawn(async move { peer.run(stream, opts).await });
        }
    }

    /// Runs one stream over a byte connection until it ends: the peer ends
    /// it, it breaks the protocol, or it does not tail and has synced.
    pub async fn run<S: AsyncRead + AsyncWrite>(
        &self,
        io: S,
        opts: StreamOpts,
    ) -> Result<(), TransportError> {
        let id = self.with(|node| node.open(opts));
        let _close = CloseOnDrop { peer: self, id };
        let (mut rd, mut wr) = tokio::io::split(io);
        let reader = async {
            let mut buf = vec![0u8; 64 << 10];
            loop {
                let n = rd.read(&mut buf).await?;
                let now = now_millis();
                if n == 0 {
                    self.with(|node| node.handle_end(id, now))?;
                    return Ok::<(), TransportError>(());
                }
                self.with(|node| node.handle(id, now, &buf[..n]))?;
            }
        };
        let writer = async {
            let mut changed = self.changes();
            let mut out = Vec::with_capacity(64 << 10);
            loop {
                changed.borrow_and_update();
                let open = self.pull(id, &mut out);
                if !out.is_empty() {
                    wr.write_all(&out).await?;
                    out.clear();
                    continue;
                }
                if !open {
                    let _ = wr.shutdown().await;
                    return Ok::<(), TransportError>(());
                }
                if changed.changed().await.is_err() {
                    return Ok(());
                }
            }
        };
        drive(reader, writer).await
    }

    /// Takes what the stream has to send (up to about 1 MiB); whether it is
    /// still open.
    fn pull(&self, id: StreamId, out: &mut Vec<u8>) -> bool {
        self.quietly(|node| {
            while node.poll_transmit(id, out) > 0 && out.len() < 1 << 20 {}
            node.is_open(id)
        })
    }
}

/// Runs a connection's reader and writer together: a reader that fails ends
/// the connection at once; one that reaches the end lets the writer flush.
async fn drive(
    reader: impl Future<Output = Result<(), TransportError>>,
    writer: impl Future<Output = Result<(), TransportError>>,
) -> Result<(), TransportError> {
    tokio::pin!(reader, writer);
    tokio::select! {
        read = &mut reader => {
            read?;
            writer.await
        }
        written = &mut writer => written,
    }
}

/// Ends the stream in the node however the connection's future ends
/// (finished, failed, or dropped).
struct CloseOnDrop<'a> {
    peer: &'a Peer,
    id: StreamId,
}

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        let id = self.id;
        self.peer.quietly(|node| {
            if node.is_open(id) {
                node.close(id);
                node.poll_transmit(id, &mut Vec::new());
            }
        });
    }
}

#[cfg(feature = "websocket")]
mod websocket {
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncRead, AsyncWrite};
    use tokio::net::TcpListener;
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::Message;

    use super::{CloseOnDrop, Peer, TransportError, drive, now_millis};
    use crate::StreamOpts;

    impl Peer {
        /// Connects to a WebSocket peer (`ws://host:port/path`) and runs one
        /// stream until it ends.
        pub async fn connect_websocket(
            &self,
            url: &str,
            opts: StreamOpts,
        ) -> Result<(), TransportError> {
            let (ws, _) = tokio_tungstenite::connect_async(url).await?;
            self.run_websocket(ws, opts).await
        }

        /// Accepts WebSocket peers for ever, one stream each.
        pub async fn serve_websocket(
            &self,
            listener: TcpListener,
            opts: StreamOpts,
        ) -> Result<(), TransportError> {
            loop {
                let (stream, _) = listener.accept().await?;
                let _ = stream.set_nodelay(true);
                let (peer, opts) = (self.clone(), opts.clone());
                tokio::spawn(async move {
                    let ws = tokio_tungstenite::accept_async(stream).await?;
                    peer.run_websocket(ws, opts).await
                });
            }
        }

        /// Runs one stream over an open WebSocket. Messages are pieces of
        /// the line stream, text or binary, as JavaScript's
        /// `websocket-stream` (or `ws` with `stream.write(message)`) makes
        /// them; this side sends whole lines, one batch a text message.
        pub async fn run_websocket<S: AsyncRead + AsyncWrite + Unpin>(
            &self,
            ws: WebSocketStream<S>,
            opts: StreamOpts,
        ) -> Result<(), TransportError> {
            let id = self.with(|node| node.open(opts));
            let _close = CloseOnDrop { peer: self, id };
            let (mut sink, mut messages) = ws.split();
            let reader = async {
                while let Some(message) = messages.next().await {
                    let now = now_millis();
                    match message? {
                        Message::Text(text) => {
                            self.with(|node| node.handle(id, now, text.as_bytes()))?
                        }
                        Message::Binary(bytes) => self.with(|node| node.handle(id, now, &bytes))?,
                        Message::Close(_) => break,
                        // Pings are answered by tungstenite itself.
                        _ => {}
                    }
                }
                self.with(|node| node.handle_end(id, now_millis()))?;
                Ok(())
            };
            let writer = async {
                let mut changed = self.changes();
                let mut out = Vec::with_capacity(64 << 10);
                loop {
                    changed.borrow_and_update();
                    let open = self.pull(id, &mut out);
                    if !out.is_empty() {
                        let batch = std::mem::take(&mut out);
                        // Lines are UTF-8 (JSON written from strings).
                        let message = match String::from_utf8(batch) {
                            Ok(text) => Message::text(text),
                            Err(e) => Message::binary(e.into_bytes()),
                        };
                        sink.send(message).await?;
                        continue;
                    }
                    if !open {
                        let _ = sink.close().await;
                        return Ok(());
                    }
                    if changed.changed().await.is_err() {
                        return Ok(());
                    }
                }
            };
            drive(reader, writer).await
        }
    }
}
