//! The shell around the node core: one task owns the node's
//! [`NodeCore`](repred_node::NodeCore), feeds it what happens (membership
//! datagrams, connections made, failed and lost, its timers) and does what
//! it says (sends datagrams, dials, closes).
//!
//! Every decision (who is a member, whom to connect to, when to dial again
//! and when to give up, which connection to trade away) is the core's; this
//! module only executes them with tokio and quinn, as the simulator
//! executes them on virtual time.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use quinn::{Connection, ConnectionError, UdpPoller};
use repred::SourceId;
use repred_node::{Command, ConnId, DATAGRAM_HEADER, Datagram, MemberState, NodeEvent};
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;
use tracing::Instrument;

use crate::CloseCode;
use crate::clock::{instant_at, now_ms, sleep_until_some};
use crate::identity::{SERVER_NAME, peer_id};
use crate::membership::{DatagramSigner, MAX_DATAGRAM, Opener};
use crate::node::{Inner, Phase};
use crate::session::run_connection;
use crate::udp::Received;

/// How long a membership datagram may wait for room in the socket's buffer
/// before it is dropped (as UDP may drop it anyway).
const SEND_WAIT: Duration = Duration::from_millis(100);
/// How often, at most, the driver counts members by state (for the
/// `repred_members` gauges and the log of suspicions, which the node core
/// does not report as events) and publishes the UDP byte totals.
const CENSUS_EVERY: Duration = Duration::from_secs(1);

/// What the node's tasks tell the driver.
#[derive(Debug)]
pub(crate) enum Control {
    /// A connection is up and registered under `key`.
    Connected { key: ConnId, peer: SourceId, addr: SocketAddr, outgoing: bool },
    /// A dial the core asked for did not connect; `refused` says why when
    /// the peer answered and refused the handshake (rather than not
    /// answering).
    DialFailed { addr: SocketAddr, refused: Option<String> },
    /// A registered connection ended.
    Disconnected { key: ConnId },
    /// Leave the cluster (the node shuts down); answered once the goodbye
    /// datagrams are sent.
    Leave(oneshot::Sender<()>),
}

/// The task that owns the node core.
pub(crate) struct Driver {
    inner: Arc<Inner>,
    signer: DatagramSigner,
    opener: Opener,
    datagrams: mpsc::Receiver<Received>,
    control: mpsc::UnboundedReceiver<Control>,
    messages: mpsc::Receiver<(ConnId, Vec<u8>)>,
    poller: Pin<Box<dyn UdpPoller>>,
    /// Who waits for the goodbye datagrams to be sent.
    leaving: Option<oneshot::Sender<()>>,
    /// What tells an operator that this node cannot join.
    bootstrap: Bootstrap,
    /// When members were last counted by state, and what each was then.
    census_at: Option<Instant>,
    states: HashMap<SourceId, MemberState>,
}

/// The bootstrap addresses and which of them refused this node's
/// handshake since it was last in a cluster: when every one has, the node
/// warns once that it runs alone (their cluster is not ours, most likely),
/// instead of retrying in silence forever.
#[derive(Debug, Default)]
struct Bootstrap {
    addrs: Vec<SocketAddr>,
    refused: BTreeMap<SocketAddr, String>,
    warned: bool,
}

impl Bootstrap {
    /// A dial to `addr` failed; `refused` as in [`Control::DialFailed`].
    fn failed(&mut self, addr: SocketAddr, refused: Option<String>, alone: bool) {
        if !self.addrs.contains(&addr) {
            return;
        }
        match refused {
            Some(why) => {
                self.refused.insert(addr, why);
            }
            None => {
                self.refused.remove(&addr);
            }
        }
        if alone && !self.warned && self.refused.len() == self.addrs.len() {
            self.warned = true;
            tracing::warn!(
                refusals = ?self.refused,
                "every bootstrap peer refused this node's handshake, so it runs alone: they \
                 are probably of another cluster (another data directory, or another \
                 cluster.pem); start this node with their cluster's files, or bootstrap it \
                 from members of its own"
            );
        }
    }

    /// This node is in a cluster (again): warn anew if it ends up alone
    /// and refused again.
    fn joined(&mut self) {
        self.refused.clear();
        self.warned = false;
    }
}

impl Driver {
    pub(crate) fn new(
        inner: Arc<Inner>,
        signer: DatagramSigner,
        opener: Opener,
        datagrams: mpsc::Receiver<Received>,
        control: mpsc::UnboundedReceiver<Control>,
        messages: mpsc::Receiver<(ConnId, Vec<u8>)>,
    ) -> Self {
        let poller = inner.socket.poller();
        Self {
            inner,
            signer,
            opener,
            datagrams,
            control,
            messages,
            poller,
            leaving: None,
            bootstrap: Bootstrap::default(),
            census_at: None,
            states: HashMap::new(),
        }
    }

    /// The addresses the node bootstraps from, for the warning that all of
    /// them refused it.
    pub(crate) fn bootstrap(mut self, addrs: Vec<SocketAddr>) -> Self {
        self.bootstrap.addrs = addrs;
        self
    }

    /// Runs until the node stops: waits for a report, a peer's message, a
    /// datagram or the core's next deadline, hands it over, and executes
    /// what comes out.
    ///
    /// Reports come first: a connection's `Connected` is always handled
    /// before the messages read on it (it was sent before they were read).
    pub(crate) async fn run(mut self) {
        let mut phase = self.inner.phase.subscribe();
        loop {
            self.execute().await;
            self.census();
            self.inner.reap();
            let deadline = self.inner.core().poll_timeout().map(instant_at);
            tokio::select! {
                biased;
                Some(control) = self.control.recv() => self.handle(control),
                Some((key, message)) = self.messages.recv() => self.message(key, &message),
                Some(received) = self.datagrams.recv() => self.datagram(received),
                () = sleep_until_some(deadline) => self.inner.core().handle_timeout(now_ms()),
                _ = phase.wait_for(|p| *p == Phase::Stopped) => return,
            }
        }
    }

    /// Counts members by state for the gauges, logs the suspicions the
    /// node core does not report as events, and publishes the UDP byte
    /// totals: at most once per [`CENSUS_EVERY`], since it walks every
    /// member.
    fn census(&mut self) {
        let now = Instant::now();
        if self.census_at.is_some_and(|at| now < at + CENSUS_EVERY) {
            return;
        }
        self.census_at = Some(now);
        let members = self.inner.core().members();
        let (mut alive, mut suspect, mut down) = (0u32, 0u32, 0u32);
        let mut states = HashMap::with_capacity(members.len());
        for m in members {
            match m.state {
                MemberState::Alive => alive += 1,
                MemberState::Suspect => suspect += 1,
                MemberState::Down => down += 1,
            }
            let before = self.states.get(&m.id).copied();
            match (before, m.state) {
                (Some(MemberState::Suspect), MemberState::Suspect) => {}
                (_, MemberState::Suspect) => {
                    tracing::info!(member = %m.id, member_addr = %m.addr, "member suspected");
                }
                (Some(MemberState::Suspect), MemberState::Alive) => {
                    tracing::info!(member = %m.id, member_addr = %m.addr, "suspicion refuted");
                }
                _ => {}
            }
            states.insert(m.id, m.state);
        }
        self.states = states;
        let metrics = &self.inner.metrics;
        metrics.alive.set(alive);
        metrics.suspect.set(suspect);
        metrics.down.set(down);
        let stats = self.inner.stats();
        metrics.udp_tx.absolute(stats.udp_tx_bytes);
        metrics.udp_rx.absolute(stats.udp_rx_bytes);
    }

    /// A message from the peer's node core on connection `key`.
    fn message(&mut self, key: ConnId, message: &[u8]) {
        let handled = self.inner.core().handle_message(now_ms(), key, message);
        if let Err(e) = handled {
            self.inner.close(key, CloseCode::BadMessage, &e.to_string());
        }
    }

    fn datagram(&mut self, received: Received) {
        let inner = &self.inner;
        inner.membership_rx.fetch_add(received.bytes.len() as u64, Ordering::Relaxed);
        inner.metrics.membership_rx.increment(received.bytes.len() as u64);
        // A partition (Node::block) drops membership as it drops QUIC.
        if inner.is_blocked(received.from) {
            return;
        }
        let taken = match self.opener.open(&received.bytes, std::time::Instant::now()) {
            // A certificate alone: kept, nothing for the core.
            Ok(bytes) if bytes.len() == DATAGRAM_HEADER => true,
            Ok(bytes) => inner.core().handle_datagram(now_ms(), &bytes).is_ok(),
            Err(_) => false,
        };
        let counter = if taken { &inner.datagrams_received } else { &inner.datagrams_refused };
        counter.fetch_add(1, Ordering::Relaxed);
        if taken {
            inner.metrics.datagrams_received.increment(1);
        } else {
            inner.metrics.datagrams_refused.increment(1);
            tracing::trace!(from = %received.from, "membership datagram refused");
        }
    }

    fn handle(&mut self, control: Control) {
        let now = now_ms();
        let mut core = self.inner.core();
        match control {
            Control::Connected { key, peer, addr, outgoing } => {
                core.handle_connected(now, key, peer, addr, outgoing);
            }
            Control::DialFailed { addr, refused } => {
                core.handle_dial_failed(now, addr);
                let alone = core.live().len() <= 1;
                self.bootstrap.failed(addr, refused, alone);
            }
            Control::Disconnected { key } => core.handle_disconnected(now, key),
            Control::Leave(done) => {
                core.leave(now);
                drop(core);
                // Sent by `execute` before the answer: the caller closes the
                // endpoint next.
                self.leaving = Some(done);
            }
        }
    }

    /// Does what the core asked for: dials, closes, datagrams; and publishes
    /// the live members when membership changed.
    async fn execute(&mut self) {
        let (transmits, commands, live) = {
            let mut core = self.inner.core();
            while let Some((key, message)) = core.poll_message() {
                self.inner.send_message(key, message);
            }
            let transmits: Vec<Datagram<SocketAddr>> =
                std::iter::from_fn(|| core.poll_transmit()).collect();
            let commands: Vec<Command<SocketAddr>> =
                std::iter::from_fn(|| core.poll_command()).collect();
            let mut changed = false;
            while let Some(event) = core.poll_event() {
                changed = true;
                match event {
                    NodeEvent::MemberUp { id, addr } => {
                        // Up again may be a new life, which lost the
                        // certificates it held: attach ours until it says.
                        self.opener.forget_mine(id);
                        self.states.insert(id, MemberState::Alive);
                        tracing::info!(member = %id, member_addr = %addr, "member up");
                    }
                    NodeEvent::MemberDown { id, addr } => {
                        self.states.insert(id, MemberState::Down);
                        tracing::info!(member = %id, member_addr = %addr, "member down");
                    }
                    NodeEvent::Joined => {
                        self.bootstrap.joined();
                        tracing::info!("joined the cluster");
                    }
                    NodeEvent::Isolated => {
                        // Also what the last peer's goodbye looks like.
                        tracing::info!("isolated: every member this node knew is down or gone");
                    }
                    NodeEvent::Rejoined => tracing::warn!(
                        "this node was declared down (a partition, a long pause) and rejoined \
                         under a renewed identity"
                    ),
                    other => tracing::debug!(event = ?other, "membership event"),
                }
            }

            (transmits, commands, changed.then(|| core.live()))
        };
        if let Some(live) = live {
            self.inner.live.send_if_modified(|old| {
                let changed = *old != live;
                *old = live;
                changed
            });
        }
        for command in commands {
            match command {
                Command::Dial { addr, expect } => {
                    tracing::debug!(peer_addr = %addr, expect = ?expect, "dialing");
                    self.inner.spawn(dial(self.inner.clone(), addr));
                }
                Command::Close { conn, reason } => {
                    self.inner.close(conn, CloseCode::from(reason), &format!("{reason:?}"));
                }
            }
        }
        for datagram in transmits {
            self.send(datagram).await;
        }
        if let Some(done) = self.leaving.take() {
            let _ = done.send(());
        }
    }

    /// Signs and sends one datagram; drops it when it cannot go.
    async fn send(&mut self, datagram: Datagram<SocketAddr>) {
        let inner = &self.inner;
        if inner.is_blocked(datagram.to) {
            return;
        }
        // Our certificate rides along until the peer says it holds it; a
        // bootstrap address's node is unknown, so it always does.
        let attach = datagram.to_id.is_none_or(|id| !self.opener.has_mine(id));
        let have_yours = datagram.to_id.is_some_and(|id| self.opener.knows(id));
        let mut wire = self.signer.seal(&datagram.bytes, attach, have_yours);
        if attach && wire.as_ref().is_ok_and(|w| w.len() > MAX_DATAGRAM) {
            // Too long with it (a member list for a joining node): the
            // certificate goes just before, alone.
            let header = &datagram.bytes[..DATAGRAM_HEADER.min(datagram.bytes.len())];
            if let Ok(alone) = self.signer.seal(header, true, have_yours) {
                self.transmit(datagram.to, &alone).await;
            }
            wire = self.signer.seal(&datagram.bytes, false, have_yours);
        }
        if let Ok(wire) = wire
            && wire.len() <= MAX_DATAGRAM
        {
            self.transmit(datagram.to, &wire).await;
        }
    }

    /// Puts one sealed datagram on the socket, waiting a moment for room
    /// in its buffer if it is full; drops it otherwise, as UDP may.
    async fn transmit(&mut self, to: SocketAddr, wire: &[u8]) {
        let inner = &self.inner;
        let mut sent = inner.socket.send(to, wire);
        if matches!(&sent, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock) {
            let writable = std::future::poll_fn(|cx| self.poller.as_mut().poll_writable(cx));
            if timeout(SEND_WAIT, writable).await.is_ok_and(|r| r.is_ok()) {
                sent = inner.socket.send(to, wire);
            }
        }
        if sent.is_ok() {
            inner.datagrams_sent.fetch_add(1, Ordering::Relaxed);
            inner.membership_tx.fetch_add(wire.len() as u64, Ordering::Relaxed);
            inner.metrics.datagrams_sent.increment(1);
            inner.metrics.membership_tx.increment(wire.len() as u64);
        }
    }
}

/// Why a dial failed.
#[derive(Debug, thiserror::Error)]
enum DialError {
    #[error("not dialing: blocked or shutting down")]
    Refused,
    #[error(transparent)]
    Connect(#[from] quinn::ConnectError),
    #[error(transparent)]
    Connection(#[from] quinn::ConnectionError),
    #[error("handshake timed out")]
    Timeout,
}

impl DialError {
    /// Why the peer refused us, when it answered and refused: a TLS alert
    /// (its certificate is not our cluster's, or ours not its), or a
    /// refused connection (a cap). `None` when it did not answer in time,
    /// or this node gave up itself.
    fn refusal(&self) -> Option<String> {
        match self {
            DialError::Connection(
                e @ (ConnectionError::TransportError(_)
                | ConnectionError::ConnectionClosed(_)
                | ConnectionError::ApplicationClosed(_)
                | ConnectionError::VersionMismatch),
            ) => Some(e.to_string()),
            _ => None,
        }
    }
}

/// The span of one connection: the peer's node id and address, and who
/// dialed. Error level, like the node's, so that its fields frame every
/// event that passes the filter.
fn connection_span(peer: SourceId, addr: SocketAddr, outgoing: bool) -> tracing::Span {
    let direction = if outgoing { "out" } else { "in" };
    tracing::error_span!("conn", peer = %peer, peer_addr = %addr, dir = %direction)
}

/// One attempt: the core decides when to try again.
async fn connect_once(inner: &Inner, addr: SocketAddr) -> Result<Connection, DialError> {
    if !inner.running() || inner.is_blocked(addr) {
        return Err(DialError::Refused);
    }
    let connecting = inner.endpoint.connect(addr, SERVER_NAME)?;
    match timeout(inner.dial_timeout, connecting).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(DialError::Timeout),
    }
}

/// Dials `addr` as the core asked, tells it how that went, and runs the
/// connection.
async fn dial(inner: Arc<Inner>, addr: SocketAddr) {
    let conn = match connect_once(&inner, addr).await {
        Ok(conn) if inner.running() && !inner.is_blocked(addr) => conn,
        Ok(conn) => {
            conn.close(CloseCode::Partitioned.varint(), b"refused");
            return inner.report(Control::DialFailed { addr, refused: None });
        }
        Err(e) => {
            let refused = e.refusal();
            let counter = match &refused {
                Some(_) => &inner.metrics.dial_refused,
                None => &inner.metrics.dial_unreachable,
            };
            counter.increment(1);
            match &refused {
                Some(_) => {
                    tracing::info!(peer_addr = %addr, error = %e, "dial refused by the peer")
                }
                None => tracing::debug!(peer_addr = %addr, error = %e, "dial failed"),
            }
            return inner.report(Control::DialFailed { addr, refused });
        }
    };
    // A verified handshake always names the peer; not assumed.
    let Some(peer) = peer_id(&conn) else {
        conn.close(CloseCode::Released.varint(), b"no peer certificate");
        return inner.report(Control::DialFailed { addr, refused: None });
    };
    let span = connection_span(peer, addr, true);
    inner.metrics.opened_out.increment(1);
    tracing::info!(parent: &span, "connected");
    let (key, outgoing) = inner.register(conn);
    // Reported before the connection can end, on the channel its end is
    // reported on: the core hears of both in order.
    inner.report(Control::Connected { key, peer, addr, outgoing: true });
    run_connection(inner, key, true, outgoing).instrument(span).await;
}

/// Accepts connections within the caps, and tells the core of each.
pub(crate) async fn accept_loop(inner: Arc<Inner>) {
    let mut phase = inner.phase.subscribe();
    loop {
        let incoming = tokio::select! {
            incoming = inner.endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => return,
            },
            _ = phase.wait_for(|p| *p != Phase::Running) => return,
        };
        let remote = incoming.remote_address();
        let refusal = if inner.is_blocked(remote) {
            Some((&inner.metrics.refused_blocked, "blocked"))
        } else if inner.over_cap(remote) {
            Some((&inner.metrics.refused_cap, "over the connection caps"))
        } else {
            None
        };
        if let Some((counter, reason)) = refusal {
            inner.refused.fetch_add(1, Ordering::Relaxed);
            counter.increment(1);
            tracing::info!(peer_addr = %remote, reason, "connection refused");
            incoming.refuse();
            continue;
        }
        let task_inner = inner.clone();
        inner.spawn(async move {
            let inner = task_inner;
            // A handshake that fails (another cluster's certificate, a
            // client without one) ends here: no connection, no streams.
            let conn = match timeout(inner.dial_timeout, incoming).await {
                Ok(Ok(conn)) => conn,
                Ok(Err(
                    e @ (ConnectionError::TransportError(_) | ConnectionError::ConnectionClosed(_)),
                )) => {
                    inner.metrics.refused_handshake.increment(1);
                    return tracing::warn!(
                        peer_addr = %remote,
                        error = %e,
                        "handshake refused: the peer is not admitted to this cluster (another \
                         cluster's certificate, or a revoked one), or it refused ours"
                    );
                }
                Ok(Err(e)) => {
                    return tracing::debug!(peer_addr = %remote, error = %e, "incoming handshake broke off");
                }
                Err(_) => {
                    return tracing::debug!(peer_addr = %remote, "incoming handshake timed out");
                }
            };
            if inner.over_cap(remote) {
                inner.metrics.refused_cap.increment(1);
                tracing::info!(peer_addr = %remote, reason = "over the connection caps", "connection refused");
                conn.close(CloseCode::TooManyConnections.varint(), b"too many connections");
                return;
            }
            let Some(peer) = peer_id(&conn) else {
                conn.close(CloseCode::Released.varint(), b"no peer certificate");
                return;
            };
            let span = connection_span(peer, remote, false);
            inner.metrics.opened_in.increment(1);
            tracing::info!(parent: &span, "admitted");
            let (key, outgoing) = inner.register(conn);
            inner.report(Control::Connected { key, peer, addr: remote, outgoing: false });
            run_connection(inner, key, false, outgoing).instrument(span).await;
        });
    }
}
