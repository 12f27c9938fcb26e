//! The node: one QUIC endpoint whose port also carries membership, the
//! connections its node core picks, and the objects it replicates over them.
//!
//! What a node is made of, and where: [`Builder`](crate::Builder) binds and
//! starts it (`builder.rs`); the driver task owns the node core and executes
//! it (`driver.rs`); the socket sorts QUIC from membership (`udp.rs`),
//! membership datagrams are signed and checked (`membership.rs`); each
//! connection carries one stream per object (`session.rs`) and the node
//! cores' own messages (`control.rs`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use quinn::Connection;
use repred::{Config, Identity, Reduce, Replica, SourceId};
use repred_node::{ConnId, MemberInfo, NodeCore};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::timeout;
use tokio_stream::wrappers::BroadcastStream;
use tracing::Instrument;

use crate::builder::Settings;
use crate::driver::Control;
use crate::durable::Durable;
use crate::metrics::NodeMetrics;
use crate::object::{Handle, Object, Peers, Shared, StreamEnded, StreamEnds};
use crate::udp::DemuxSocket;
use crate::{CloseCode, Error, Members};

/// How long shutdown waits for sessions to say goodbye.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// How long shutdown waits for the goodbye datagrams to be sent.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest reason text put in a CONNECTION_CLOSE.
const MAX_REASON: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    Running,
    Draining,
    Stopped,
}

pub(crate) type Registry = BTreeMap<String, Arc<dyn Object>>;

pub(crate) struct Conn {
    pub(crate) conn: Connection,
    pub(crate) remote: SocketAddr,
    /// The node core's messages for the peer, to the control stream.
    pub(crate) messages: mpsc::UnboundedSender<Vec<u8>>,
}

#[derive(Default)]
pub(crate) struct Conns {
    pub(crate) map: HashMap<ConnId, Conn>,
    pub(crate) next: ConnId,
}

/// What a node's tasks share.
pub(crate) struct Inner {
    pub(crate) id: SourceId,
    pub(crate) addr: SocketAddr,
    pub(crate) endpoint: quinn::Endpoint,
    /// The endpoint's socket, for membership datagrams.
    pub(crate) socket: Arc<DemuxSocket>,
    pub(crate) settings: Settings,
    /// How long a handshake may take, either way.
    pub(crate) dial_timeout: Duration,
    pub(crate) config: Config,
    /// Every replicated object by name; connections watch it to open a
    /// stream for an object replicated after they came up.
    pub(crate) registry: watch::Sender<Registry>,
    pub(crate) live: watch::Sender<Members>,
    /// The node core. Only the driver task changes it; the lock lets
    /// [`Node::membership`] read it.
    pub(crate) core: Mutex<NodeCore<SocketAddr>>,
    /// Reports to the driver.
    pub(crate) control: mpsc::UnboundedSender<Control>,
    /// Peers' node-core messages to the driver, by connection.
    pub(crate) messages: mpsc::Sender<(ConnId, Vec<u8>)>,
    pub(crate) conns: Mutex<Conns>,
    pub(crate) blocked: Mutex<HashSet<SocketAddr>>,
    /// Every task of the node, so that dropping the node stops them all.
    pub(crate) tasks: Mutex<JoinSet<()>>,
    pub(crate) phase: watch::Sender<Phase>,
    pub(crate) violations: AtomicU64,
    pub(crate) refused: AtomicU64,
    /// UDP bytes sent and received over connections that have ended.
    pub(crate) ended_tx: AtomicU64,
    pub(crate) ended_rx: AtomicU64,
    pub(crate) datagrams_sent: AtomicU64,
    pub(crate) datagrams_received: AtomicU64,
    pub(crate) datagrams_refused: AtomicU64,
    pub(crate) membership_tx: AtomicU64,
    pub(crate) membership_rx: AtomicU64,
    /// The node's store, when durable.
    pub(crate) durable: Option<Arc<Durable>>,
    /// This node's lasting signing key, when signing is on: it signs the
    /// updates of durable objects (whose log, and so whose id, outlives
    /// the process) and every snapshot this node sends.
    pub(crate) signer: Option<Identity>,
    /// Signs the updates of objects kept in memory only: a key of this
    /// life, when signing is on.
    pub(crate) life_signer: Option<Identity>,
    /// The source of objects kept in memory only, fresh in every life.
    pub(crate) life_id: SourceId,
    /// The node's span (its id and address): the parent of every task's.
    pub(crate) span: tracing::Span,
    /// The node's metric handles.
    pub(crate) metrics: NodeMetrics,
    /// Every object's streams' ends ([`Node::stream_ends`]).
    pub(crate) stream_ends: broadcast::Sender<StreamEnded>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing here panics while holding a lock; if something did, the data
    // (maps of handles, the node core between two calls) is still whole.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Inner {
    pub(crate) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        lock(&self.tasks).spawn(task.instrument(self.span.clone()));
    }

    /// Counts a stream or connection closed because the peer broke the
    /// protocol.
    pub(crate) fn count_violation(&self) {
        self.violations.fetch_add(1, Ordering::Relaxed);
        self.metrics.violations.increment(1);
    }

    /// Drops the handles of tasks that have ended.
    pub(crate) fn reap(&self) {
        let mut tasks = lock(&self.tasks);
        while tasks.try_join_next().is_some() {}
    }

    pub(crate) fn running(&self) -> bool {
        *self.phase.borrow() == Phase::Running
    }

    pub(crate) fn is_blocked(&self, addr: SocketAddr) -> bool {
        lock(&self.blocked).contains(&addr)
    }

    pub(crate) fn core(&self) -> MutexGuard<'_, NodeCore<SocketAddr>> {
        lock(&self.core)
    }

    /// Tells the driver; nobody listens once it has stopped.
    pub(crate) fn report(&self, control: Control) {
        let _ = self.control.send(control);
    }

    /// Registers a connection; the receiver gets the node core's messages
    /// for its peer.
    pub(crate) fn register(&self, conn: Connection) -> (ConnId, mpsc::UnboundedReceiver<Vec<u8>>) {
        let (messages, outgoing) = mpsc::unbounded_channel();
        let mut conns = lock(&self.conns);
        let key = conns.next;
        conns.next += 1;
        let remote = conn.remote_address();
        conns.map.insert(key, Conn { conn, remote, messages });
        self.metrics.connections_open.increment(1.0);
        (key, outgoing)
    }

    /// Queues a node-core message for the peer on connection `key`; none
    /// if it has ended.
    pub(crate) fn send_message(&self, key: ConnId, message: Vec<u8>) {
        if let Some(c) = lock(&self.conns).map.get(&key) {
            let _ = c.messages.send(message);
        }
    }

    /// Forgets an ended connection, keeping its byte counts, and tells the
    /// core.
    pub(crate) fn unregister(&self, key: ConnId) {
        if let Some(ended) = lock(&self.conns).map.remove(&key) {
            let stats = ended.conn.stats();
            self.ended_tx.fetch_add(stats.udp_tx.bytes, Ordering::Relaxed);
            self.ended_rx.fetch_add(stats.udp_rx.bytes, Ordering::Relaxed);
            self.metrics.connections_open.decrement(1.0);
            self.report(Control::Disconnected { key });
        }
    }

    /// Whether a new connection from `remote` would exceed a cap.
    pub(crate) fn over_cap(&self, remote: SocketAddr) -> bool {
        let conns = lock(&self.conns);
        conns.map.len() >= self.settings.max_connections
            || conns.map.values().filter(|c| c.remote == remote).count()
                >= self.settings.max_connections_per_peer
    }

    /// Closes a connection with a typed code and the reason in words; a
    /// violation code counts as one.
    pub(crate) fn close(&self, key: ConnId, code: CloseCode, detail: &str) {
        if let Some(c) = lock(&self.conns).map.get(&key) {
            if code.is_violation() {
                self.count_violation();
                tracing::warn!(peer_addr = %c.remote, code = ?code, detail, "closing a connection: the peer broke the protocol");
            } else {
                tracing::debug!(peer_addr = %c.remote, code = ?code, detail, "closing a connection");
            }
            c.conn.close(code.varint(), reason(code, detail).as_bytes());
        }
    }

    /// Closes a connection whose peer broke the protocol. The typed reason
    /// is the QUIC application close code; the reason bytes say it in words.
    pub(crate) fn violation(&self, conn: &Connection, code: CloseCode, detail: &str) {
        self.count_violation();
        tracing::warn!(code = ?code, detail, "closing the connection: the peer broke the protocol");
        conn.close(code.varint(), reason(code, detail).as_bytes());
    }

    /// What [`Node::stats`] returns.
    pub(crate) fn stats(&self) -> NodeStats {
        let inner = self;
        let conns = lock(&inner.conns);
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let (membership_tx_bytes, membership_rx_bytes) =
            (load(&inner.membership_tx), load(&inner.membership_rx));
        let (mut udp_tx_bytes, mut udp_rx_bytes) = (
            load(&inner.ended_tx) + membership_tx_bytes,
            load(&inner.ended_rx) + membership_rx_bytes,
        );
        for c in conns.map.values() {
            let stats = c.conn.stats();
            udp_tx_bytes += stats.udp_tx.bytes;
            udp_rx_bytes += stats.udp_rx.bytes;
        }
        NodeStats {
            connections: conns.map.len(),
            violations: load(&inner.violations),
            refused: load(&inner.refused),
            udp_tx_bytes,
            udp_rx_bytes,
            datagrams_sent: load(&inner.datagrams_sent),
            datagrams_received: load(&inner.datagrams_received),
            datagrams_refused: load(&inner.datagrams_refused),
            membership_tx_bytes,
            membership_rx_bytes,
        }
    }
}

fn reason(code: CloseCode, detail: &str) -> String {
    let mut reason = format!("{code:?}: {detail}");
    if reason.len() > MAX_REASON {
        let mut end = MAX_REASON;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    reason
}

/// Counters of a node's connections and membership datagrams.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeStats {
    /// Connections open now.
    pub connections: usize,
    /// Streams ended (and connections closed) because the peer broke the
    /// protocol.
    pub violations: u64,
    /// Incoming connections refused (caps, blocked peers).
    pub refused: u64,
    /// UDP payload bytes sent: over every connection registered so far,
    /// open or ended (QUIC headers, encryption, acknowledgements and
    /// handshakes included), plus every membership datagram; IP and UDP
    /// headers and dials that never connected not.
    pub udp_tx_bytes: u64,
    /// UDP payload bytes received, counted the same way (membership
    /// datagrams refused included).
    pub udp_rx_bytes: u64,
    /// Membership datagrams sent.
    pub datagrams_sent: u64,
    /// Membership datagrams taken: authenticated, and accepted by the
    /// node core (or carrying only the sender's certificate).
    pub datagrams_received: u64,
    /// Membership datagrams dropped: an unknown sender without a
    /// certificate, a bad signature, a certificate of another node or
    /// another cluster, a revoked sender, an oversized or malformed
    /// datagram, or one the node core refused (a membership header naming
    /// another sender).
    pub datagrams_refused: u64,
    /// Bytes of membership datagrams sent (part of `udp_tx_bytes`).
    pub membership_tx_bytes: u64,
    /// Bytes of membership datagrams received (part of `udp_rx_bytes`).
    pub membership_rx_bytes: u64,
}

/// A peer of a repred cluster: a QUIC endpoint that replicates named objects
/// with the peers its node core picks.
///
/// Dropping a node stops it at once, as a crash would; [`Node::shutdown`]
/// says goodbye first.
pub struct Node {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.inner.id)
            .field("addr", &self.inner.addr)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// A builder with the defaults.
    pub fn builder() -> crate::Builder {
        crate::Builder::default()
    }

    /// This node's id, derived from its certificate's public key: what its
    /// membership datagrams carry and its peers verify. Its objects write
    /// under their own ids ([`Handle::source`]): one that lives as long as
    /// the object's log (in the store of a durable node, or derived from
    /// the lasting signing key), else a fresh one in every life of the
    /// node, so that a restart can never claim updates it lost.
    pub fn id(&self) -> SourceId {
        self.inner.id
    }

    /// The address peers dial to reach this node.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// The id of this node's lasting signing key, when signing is on: what
    /// strict peers list in
    /// [`Builder::trust_snapshots_from`](crate::Builder::trust_snapshots_from)
    /// to take this node's snapshots. It also writes this node's durable
    /// objects; objects kept in memory only write under a key of this life
    /// ([`Handle::source`]).
    pub fn signing_id(&self) -> Option<SourceId> {
        self.inner.signer.as_ref().map(Identity::id)
    }

    /// Replicates `initial` under `name` with every peer that replicates the
    /// same name.
    ///
    /// Names are 1 to 255 bytes; those starting with `repred/` are the
    /// transport's own. Both sides must use the same type for a name: a peer
    /// whose frames do not decode is disconnected.
    pub fn replicate<T>(&self, name: &str, initial: T) -> Result<Handle<T>, Error>
    where
        T: Reduce + Send + 'static,
        T::Update: Send + Sync + 'static,
    {
        self.replicate_with(name, initial, Peers::All)
    }

    /// Replicates `initial` under `name` as [`replicate`](Node::replicate)
    /// does, but streams it only with the `peers` given (by node id): a
    /// node that reads and writes an object through one chosen peer that
    /// replicates it (`repred-place` does, for a node that is no replica
    /// of the object). Change the set with [`Node::set_peers`].
    pub fn replicate_with<T>(
        &self,
        name: &str,
        initial: T,
        peers: Peers,
    ) -> Result<Handle<T>, Error>
    where
        T: Reduce + Send + 'static,
        T::Update: Send + Sync + 'static,
    {
        if name.is_empty() || name.len() > usize::from(u8::MAX) {
            return Err(Error::InvalidName { name: name.into(), reason: "must be 1 to 255 bytes" });
        }
        if name.starts_with("repred/") {
            return Err(Error::InvalidName { name: name.into(), reason: "repred/ is reserved" });
        }
        if !self.inner.running() {
            return Err(Error::Shutdown);
        }
        let config = self.inner.config.clone();
        let durable = self.inner.durable.clone();
        // Held until the object is registered: no removal of its stored
        // copy runs between the load and then (see `Node::remove_stored`).
        let _loading = durable.as_ref().map(|d| d.claim_load(name)).transpose()?;
        let replica = match &durable {
            // Loading is a few small reads; done in place, before any peer
            // can see the object.
            Some(d) => match &self.inner.signer {
                Some(identity) => {
                    d.store().load_onto_signed(name, identity.clone(), initial, config)
                }
                None => d.store().load_onto(name, initial, config),
            }
            .map_err(|e| Error::Storage(e.to_string()))?,
            None => match &self.inner.life_signer {
                Some(identity) => Replica::with_identity(identity.clone(), initial, config),
                None => Replica::with_config(self.inner.life_id, initial, config),
            },
        };
        let mut replica = match &self.inner.signer {
            Some(lasting) => replica.sign_snapshots_with(lasting.clone()),
            None => replica,
        };
        if durable.is_some() {
            // Peers get an entry only once it is on disk (see `durable`).
            replica.hold_until_released();
        }
        // Weak: the node owns its objects, not they the node.
        let node = Arc::downgrade(&self.inner);
        let shared = Shared::with_store(
            name.to_string(),
            replica,
            durable.clone(),
            &self.inner.metrics.label,
            peers,
            self.inner.stream_ends.clone(),
            Box::new(move || {
                if let Some(inner) = node.upgrade() {
                    inner.registry.send_modify(|_| {});
                }
            }),
        );
        tracing::debug!(parent: &self.inner.span, object = %name, "replicating");
        if let Some(d) = &durable {
            d.register(&(shared.clone() as Arc<dyn crate::durable::Persist>));
        }
        let mut taken = false;
        self.inner.registry.send_if_modified(|registry| {
            taken = registry.contains_key(name);
            if !taken {
                registry.insert(name.to_string(), shared.clone() as Arc<dyn Object>);
            }
            !taken
        });
        if taken {
            return Err(Error::AlreadyReplicated(name.to_string()));
        }
        Ok(Handle { shared })
    }

    /// Changes which peers `name` is streamed with (see [`Peers`]): streams
    /// with peers the new set admits are opened or taken from now on (on
    /// connections up already, too), and streams open with peers it does
    /// not admit are closed, each with a Close saying
    /// [`CloseReason::Closed`](repred::CloseReason::Closed) (the peer's
    /// [`Node::stream_ends`] reports it as
    /// [`EndReason::Remote`](repred::EndReason::Remote)). The connection
    /// goes on, and a stream of the object may come again on it if a later
    /// set admits the peer. Returns whether `name` is replicated here.
    pub fn set_peers(&self, name: &str, peers: Peers) -> bool {
        let object = self.inner.registry.borrow().get(name).cloned();
        let Some(object) = object else { return false };
        object.set_peers(peers);
        // Connections and streams waiting for the object look again.
        self.inner.registry.send_modify(|_| {});
        true
    }

    /// Every stream of any object of this node that ends from now on, with
    /// its peer and why: for a driver that streams an object with one
    /// chosen peer ([`Node::replicate_with`]) and moves to another when
    /// that stream ends, rather than when the peer is declared down. A
    /// stream ends when either end closes it (a release, a set of peers
    /// that dropped the other, a shutdown, a refusal) or it is lost (its
    /// connection ended without a Close: the peer crashed and its endpoint
    /// closed the connection, the network failed and the connection idled
    /// out, or the node core closed the connection).
    pub fn stream_ends(&self) -> StreamEnds {
        StreamEnds { inner: BroadcastStream::new(self.inner.stream_ends.subscribe()) }
    }

    /// The live members (alive or suspected, not yet declared down), this
    /// node included, updated whenever the set changes.
    pub fn members(&self) -> watch::Receiver<Members> {
        self.inner.live.subscribe()
    }

    /// Every member this node knows of, itself included, with what it
    /// believes of each (alive, suspected, down): for a UI. Members declared
    /// down are remembered for 15 minutes.
    pub fn membership(&self) -> Vec<MemberInfo<SocketAddr>> {
        self.inner.core().members()
    }

    /// The addresses of the peers connected now (either direction).
    pub fn connected(&self) -> Vec<SocketAddr> {
        let mut addrs: Vec<SocketAddr> =
            lock(&self.inner.conns).map.values().map(|c| c.remote).collect();
        addrs.sort();
        addrs.dedup();
        addrs
    }

    /// Counters of connections, membership datagrams and the bytes they
    /// carried.
    pub fn stats(&self) -> NodeStats {
        self.inner.stats()
    }

    /// Fault injection: refuses connections and membership datagrams to and
    /// from these peer addresses, and closes the connections open now, as a
    /// network partition would. For tests and drills; [`Node::unblock_all`]
    /// heals it.
    pub fn block(&self, addrs: impl IntoIterator<Item = SocketAddr>) {
        let blocked = {
            let mut blocked = lock(&self.inner.blocked);
            blocked.extend(addrs);
            blocked.clone()
        };
        for c in lock(&self.inner.conns).map.values() {
            if blocked.contains(&c.remote) {
                c.conn.close(CloseCode::Partitioned.varint(), b"partitioned");
            }
        }
    }

    /// Lifts every [`Node::block`].
    pub fn unblock_all(&self) {
        lock(&self.inner.blocked).clear();
    }

    /// Leaves the cluster cleanly: lets every session send what it has and
    /// a Close, then tells a few members it leaves (SWIM spreads it, so
    /// peers mark this node down at once rather than after failed probes),
    /// then closes every connection with [`CloseCode::Shutdown`] and the
    /// endpoint with the same code. Bounded: sessions that do not finish in
    /// two seconds are cut.
    ///
    /// The sessions drain before the goodbye, not after: a member that
    /// learns a peer is down closes its connections to it, which would cut
    /// the sessions short.
    pub async fn shutdown(self) {
        let inner = &self.inner;
        if !inner.running() {
            return;
        }
        inner.phase.send_replace(Phase::Draining);
        let drained = async {
            while !lock(&inner.conns).map.is_empty() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        let _ = timeout(DRAIN_TIMEOUT, drained).await;
        let (left, sent) = oneshot::channel();
        inner.report(Control::Leave(left));
        let _ = timeout(LEAVE_TIMEOUT, sent).await;
        let objects: Vec<Arc<dyn Object>> = inner.registry.borrow().values().cloned().collect();
        for object in objects {
            object.dispose();
        }
        for c in lock(&inner.conns).map.values() {
            c.conn.close(CloseCode::Shutdown.varint(), b"node shutting down");
        }
        inner.endpoint.close(CloseCode::Shutdown.varint(), b"node shut down");
        let _ = timeout(Duration::from_secs(1), inner.endpoint.wait_idle()).await;
        if let Some(durable) = &inner.durable {
            // What peers sent last is saved too (nobody waits for it, so
            // it may still be pending). A failure here loses nothing that
            // was acknowledged.
            let _ = timeout(DRAIN_TIMEOUT, durable.flush()).await;
            durable.stop();
        }
        inner.phase.send_replace(Phase::Stopped);
        lock(&inner.tasks).abort_all();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // The tasks hold the node's state alive; stopping them is what frees
        // it. Their connections close as their last handles go.
        lock(&self.inner.tasks).abort_all();
        if let Some(durable) = &self.inner.durable {
            // The writer is gone with the tasks: updates still waiting for
            // it fail instead of hanging.
            durable.stop();
        }
    }
}
