//! The shell around the node core: one task owns the node's
//! [`NodeCore`](repred_node::NodeCore), feeds it what happens (membership
//! datagrams, connections made, failed and lost, its timers) and does what
//! it says (sends datagrams, dials, closes).
//!
//! Every decision (who is a member, whom to connect to, when to dial again
//! and when to give up, which connection to trade away) is the core's; this
//! module only executes them with tokio and quinn, as the simulator
//! executes them on virtual time.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use quinn::{Connection, UdpPoller};
use repred::SourceId;
use repred_node::{Command, ConnId, DATAGRAM_HEADER, Datagram, NodeEvent};
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;

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

/// What the node's tasks tell the driver.
#[derive(Debug)]
pub(crate) enum Control {
    /// A connection is up and registered under `key`.
    Connected { key: ConnId, peer: SourceId, addr: SocketAddr, outgoing: bool },
    /// A dial the core asked for did not connect.
    DialFailed { addr: SocketAddr },
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
        Self { inner, signer, opener, datagrams, control, messages, poller, leaving: None }
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
    }

    fn handle(&mut self, control: Control) {
        let now = now_ms();
        let mut core = self.inner.core();
        match control {
            Control::Connected { key, peer, addr, outgoing } => {
                core.handle_connected(now, key, peer, addr, outgoing);
            }
            Control::DialFailed { addr } => core.handle_dial_failed(now, addr),
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
                if let NodeEvent::MemberUp { id, .. } = event {
                    // Up again may be a new life, which lost the
                    // certificates it held: attach ours until it says.
                    self.opener.forget_mine(id);
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
                Command::Dial { addr, .. } => {
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
            return inner.report(Control::DialFailed { addr });
        }
        Err(_) => return inner.report(Control::DialFailed { addr }),
    };
    // A verified handshake always names the peer; not assumed.
    let Some(peer) = peer_id(&conn) else {
        conn.close(CloseCode::Released.varint(), b"no peer certificate");
        return inner.report(Control::DialFailed { addr });
    };
    let (key, outgoing) = inner.register(conn);
    // Reported before the connection can end, on the channel its end is
    // reported on: the core hears of both in order.
    inner.report(Control::Connected { key, peer, addr, outgoing: true });
    run_connection(inner, key, true, outgoing).await;
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
        if inner.is_blocked(remote) || inner.over_cap(remote) {
            inner.refused.fetch_add(1, Ordering::Relaxed);
            incoming.refuse();
            continue;
        }
        let task_inner = inner.clone();
        inner.spawn(async move {
            let inner = task_inner;
            // A handshake that fails (another cluster's certificate, a
            // client without one) ends here: no connection, no streams.
            let Ok(Ok(conn)) = timeout(inner.dial_timeout, incoming).await else { return };
            if inner.over_cap(remote) {
                conn.close(CloseCode::TooManyConnections.varint(), b"too many connections");
                return;
            }
            let Some(peer) = peer_id(&conn) else {
                conn.close(CloseCode::Released.varint(), b"no peer certificate");
                return;
            };
            let (key, outgoing) = inner.register(conn);
            inner.report(Control::Connected { key, peer, addr: remote, outgoing: false });
            run_connection(inner, key, false, outgoing).await;
        });
    }
}
