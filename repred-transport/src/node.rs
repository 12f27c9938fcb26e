//! The node: one QUIC endpoint, its connections, and the gossip that picks
//! them.
//!
//! Nothing here decides anything about the protocol: each stream is a pipe
//! between a quinn stream and the core's `handle` / `poll_transmit`, and the
//! rest is choosing whom to talk to.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use quinn::{Connection, RecvStream, SendStream};
use repred::{Config, Identity, Reduce, Replica, SessionError, SourceId};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior, timeout};

use crate::durable::{Durable, OpenStore};
use crate::identity::{Credentials, SERVER_NAME};
use crate::membership::{Beat, Heartbeats, Members};
use crate::object::{Handle, Object, Shared, now_ms};
use crate::{CloseCode, Error};

/// The name of the membership object on the wire.
pub const MEMBERS_OBJECT: &str = "repred/members";

/// Bytes read from a stream at a time.
const READ_CHUNK: usize = 64 << 10;
/// Bytes of frames gathered before a write: enough to fill packets, little
/// enough that flow control, not this buffer, is what holds data back.
const WRITE_BATCH: usize = 256 << 10;
/// How long a stream may take to name its object.
const PREAMBLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for sessions to say goodbye.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest reason text put in a CONNECTION_CLOSE.
const MAX_REASON: usize = 256;

/// How often a node writes its heartbeat unless told otherwise.
///
/// Every heartbeat reaches every node, so membership costs each node about
/// N / 10 heartbeats a second at this default (~1.2 kB/s per node at
/// N = 32, keep-alives and rotation included; see PERFORMANCE.md); one
/// second is ten times that. Nodes a peer is connected to are watched more
/// closely than this anyway: QUIC keep-alives run on every connection.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(10);
/// How old a peer's last heartbeat may be before it counts as down, unless
/// told otherwise: three missed heartbeats.
pub const DEFAULT_DOWN_AFTER: Duration = Duration::from_secs(30);
/// How often a node trades one connection for another, unless told
/// otherwise. Each trade costs a TLS handshake and a Hello per object.
pub const DEFAULT_ROTATE_EVERY: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Running,
    Draining,
    Stopped,
}

#[derive(Clone, Debug)]
struct Settings {
    fanout: usize,
    heartbeat: Duration,
    down_after: Duration,
    rotate_every: Duration,
    dial_timeout: Duration,
    dial_attempts: usize,
    max_connections: usize,
    max_connections_per_peer: usize,
    max_streams_per_connection: u32,
    max_frame: usize,
}

/// Configures and starts a [`Node`].
///
/// ```no_run
/// # async fn run() -> Result<(), repred_transport::Error> {
/// use repred_transport::Node;
///
/// let node = Node::builder()
///     .listen("127.0.0.1:9000".parse().unwrap())
///     .bootstrap(["127.0.0.1:9001".parse().unwrap()])
///     .data_dir("./.repred")
///     .spawn()
///     .await?;
/// # node.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Builder {
    listen: SocketAddr,
    advertise: Option<SocketAddr>,
    bootstrap: Vec<SocketAddr>,
    data_dir: PathBuf,
    durable: bool,
    open_store: OpenStore,
    signing: bool,
    require_signatures: bool,
    trust_snapshots_from: Vec<SourceId>,
    lazy_relay: bool,
    create_cluster: bool,
    deny: Vec<SourceId>,
    settings: Settings,
}

impl Default for Builder {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            advertise: None,
            bootstrap: Vec::new(),
            data_dir: PathBuf::from(".repred"),
            durable: false,
            open_store: OpenStore::default(),
            signing: false,
            require_signatures: false,
            trust_snapshots_from: Vec::new(),
            lazy_relay: true,
            create_cluster: true,
            deny: Vec::new(),
            settings: Settings {
                fanout: 3,
                heartbeat: DEFAULT_HEARTBEAT,
                down_after: DEFAULT_DOWN_AFTER,
                rotate_every: DEFAULT_ROTATE_EVERY,
                dial_timeout: Duration::from_secs(3),
                dial_attempts: 3,
                max_connections: 64,
                max_connections_per_peer: 4,
                max_streams_per_connection: 64,
                max_frame: Config::default().max_frame,
            },
        }
    }
}

impl Builder {
    /// The UDP address to listen on. Default `127.0.0.1:0` (any free port).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// The address peers should dial, when it is not the listening address
    /// (a wildcard listen address, NAT). Default: the bound address, with a
    /// wildcard IP replaced by 127.0.0.1.
    pub fn advertise(mut self, addr: SocketAddr) -> Self {
        self.advertise = Some(addr);
        self
    }

    /// Peers to dial until gossip knows better. Ones that are not up yet are
    /// retried.
    pub fn bootstrap(mut self, addrs: impl IntoIterator<Item = SocketAddr>) -> Self {
        self.bootstrap.extend(addrs);
        self
    }

    /// Keeps every replicated object (not the membership) in
    /// `<data_dir>/node-<port>.redb`: [`Handle::update`](crate::Handle::update)
    /// then returns once the update is on disk, and a node restarted on the
    /// same data directory and port resumes each object with its state,
    /// clock and source id, so peers send it nothing it already has.
    /// Default off: state lives in memory only (the data directory then
    /// holds credentials alone).
    ///
    /// One task per node does the writing (group commit): it encodes every
    /// object's new log entries under that object's lock, commits them all
    /// in one redb transaction (one fsync) with the locks released, and
    /// then wakes every `update` whose entry that commit held. Updates from
    /// peers are saved by the same task, promptly, though nobody waits for
    /// them. The membership object is not kept.
    ///
    /// Entries go to peers only once committed
    /// ([`Replica::hold_until_released`](repred::Replica::hold_until_released)):
    /// an update a crash takes from this node never reached anyone, so it
    /// cannot live on elsewhere while the restarted node, whose later
    /// timestamps cover it, never gets it back. This adds the commit's
    /// latency (one fsync, shared by the group) to every hop through a
    /// durable node.
    ///
    /// When a commit fails (a full disk), the updates waiting on it fail
    /// with [`Error::Storage`]; they stay in the node's state, held back
    /// from peers, and the task retries by itself (reopening the store,
    /// 50 ms after the failure, doubling up to every 2 s) until the
    /// commit goes through; then peers get them.
    pub fn durable(mut self, on: bool) -> Self {
        self.durable = on;
        self
    }

    /// Opens the durable store on a custom redb backend, which `backend`
    /// makes for the store's path (again at each reopen): for tests that
    /// make the disk fail. Default: the file itself.
    #[doc(hidden)]
    pub fn store_backend<B: repred_store::redb::StorageBackend>(
        mut self,
        backend: impl Fn(&std::path::Path) -> std::io::Result<B> + Send + Sync + 'static,
    ) -> Self {
        self.open_store = OpenStore::with_backend(backend);
        self
    }

    /// Signs every update this node makes to its objects with an ed25519 key
    /// kept in `<data_dir>/signing-<port>.key`; the objects' source id is
    /// then derived from that key, so nobody can write in this node's name.
    /// With [`durable`](Builder::durable), keep the key with the store: the
    /// stored objects can only be signed by it. Default off.
    pub fn signing(mut self, on: bool) -> Self {
        self.signing = on;
        self
    }

    /// Refuses updates not signed by their source (relayed ones too): they
    /// are neither applied nor passed on. Default off (signed updates are
    /// verified either way).
    pub fn require_signatures(mut self, on: bool) -> Self {
        self.require_signatures = on;
        self
    }

    /// The signers whose snapshots this node takes when it is strict
    /// ([`require_signatures`](Builder::require_signatures)): each a node's
    /// lasting signing id ([`Node::signing_id`]). A strict node that fell
    /// behind the history of every peer it trusts stays behind rather than
    /// take unverified state ([`Config::trust_snapshots_from`]). Default:
    /// nobody.
    pub fn trust_snapshots_from(mut self, signers: impl IntoIterator<Item = SourceId>) -> Self {
        self.trust_snapshots_from.extend(signers);
        self
    }

    /// Relays other nodes' updates lazily ([`Config::lazy_relay`]): each
    /// node pulls each source from one connected peer and hears of it from
    /// the others in a 25-byte announcement, so an update crosses each
    /// connection it needs to once instead of every connection. Default on;
    /// off, every stream pushes everything its peer lacks (more bytes, one
    /// hop less per relay).
    pub fn lazy_relay(mut self, on: bool) -> Self {
        self.lazy_relay = on;
        self
    }

    /// Where the cluster's and this node's certificates live, and its deny
    /// list (see [`identity`](crate::identity)). Default `./.repred`. An
    /// empty path is refused by [`spawn`](Builder::spawn)
    /// ([`CredentialsError::EmptyDataDir`](crate::CredentialsError::EmptyDataDir)):
    /// it would scatter key files in whatever the current directory is.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = dir.into();
        self
    }

    /// Whether a data directory with no cluster in it (neither
    /// `cluster-ca.pem` nor `cluster.pem`) makes this node the first of a
    /// new cluster. Default on: zero configuration on one machine. Off, such
    /// a directory is
    /// [`CredentialsError::NoCluster`](crate::CredentialsError::NoCluster),
    /// so a node meant to join never starts a cluster of its own by mistake
    /// (see [`Credentials::join`]).
    pub fn create_cluster(mut self, on: bool) -> Self {
        self.create_cluster = on;
        self
    }

    /// Refuses peers with these node ids at the TLS handshake, in both
    /// directions (see [`identity::certificate_id`](crate::identity::certificate_id)),
    /// in addition to those listed in `<data_dir>/revoked`. Ids add up over
    /// calls. A denied peer's updates may still arrive relayed by nodes that
    /// do not deny it: deny it on every node to cut it off.
    pub fn deny(mut self, ids: impl IntoIterator<Item = SourceId>) -> Self {
        self.deny.extend(ids);
        self
    }

    /// How many peers to keep connections to. Default 3.
    pub fn fanout(mut self, peers: usize) -> Self {
        self.settings.fanout = peers;
        self
    }

    /// How often this node writes its heartbeat. Default
    /// [`DEFAULT_HEARTBEAT`] (10 s).
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.settings.heartbeat = every;
        self
    }

    /// How old a peer's last heartbeat may be before it counts as down
    /// (and how long a silent connection lasts). Default
    /// [`DEFAULT_DOWN_AFTER`] (30 s).
    pub fn down_after(mut self, timeout: Duration) -> Self {
        self.settings.down_after = timeout;
        self
    }

    /// How often one connection is closed to make room for another random
    /// peer. Default [`DEFAULT_ROTATE_EVERY`] (30 s).
    pub fn rotate_every(mut self, every: Duration) -> Self {
        self.settings.rotate_every = every;
        self
    }

    /// How long one dial attempt may take. Default 3 s.
    pub fn dial_timeout(mut self, timeout: Duration) -> Self {
        self.settings.dial_timeout = timeout;
        self
    }

    /// Most connections in all. Default 64.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.settings.max_connections = n;
        self
    }

    /// Most connections from one peer address. Default 4.
    pub fn max_connections_per_peer(mut self, n: usize) -> Self {
        self.settings.max_connections_per_peer = n;
        self
    }

    /// Most concurrent streams a peer may open on one connection (one per
    /// replicated object is what a well-behaved peer uses). Default 64.
    pub fn max_streams_per_connection(mut self, n: u32) -> Self {
        self.settings.max_streams_per_connection = n;
        self
    }

    /// Largest frame accepted from a peer, in bytes. Default 16 MiB.
    pub fn max_frame(mut self, bytes: usize) -> Self {
        self.settings.max_frame = bytes;
        self
    }

    /// Binds the socket, loads or creates the credentials, and starts the
    /// node's tasks on the current tokio runtime.
    pub async fn spawn(self) -> Result<Node, Error> {
        let s = self.settings;
        if s.heartbeat.is_zero() || s.down_after <= s.heartbeat || s.rotate_every.is_zero() {
            return Err(Error::Config("need 0 < heartbeat < down_after and rotate_every > 0"));
        }
        let socket = std::net::UdpSocket::bind(self.listen)
            .map_err(|source| Error::Bind { addr: self.listen, source })?;
        let bound =
            socket.local_addr().map_err(|source| Error::Bind { addr: self.listen, source })?;
        let advertise = self.advertise.unwrap_or_else(|| {
            let mut addr = bound;
            if addr.ip().is_unspecified() {
                addr.set_ip(Ipv4Addr::LOCALHOST.into());
            }
            addr
        });
        let dir = self.data_dir.clone();
        let port = bound.port();
        let store_path = self.durable.then(|| dir.join(format!("node-{port}.redb")));
        let key_path = self.signing.then(|| dir.join(format!("signing-{port}.key")));
        let (create_cluster, deny) = (self.create_cluster, self.deny);
        let identity = tokio::task::spawn_blocking(move || {
            let credentials = if create_cluster {
                Credentials::load_or_create(&dir, port)
            } else {
                Credentials::join(&dir, port)
            };
            credentials.map(|c| c.deny(deny))
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))??;
        let signer = match key_path {
            Some(path) => Some(
                tokio::task::spawn_blocking(move || crate::identity::signing_key(&path))
                    .await
                    .map_err(|e| Error::Task(e.to_string()))??,
            ),
            None => None,
        };
        let durable = match store_path {
            Some(path) => {
                let open = self.open_store.clone();
                let store = tokio::task::spawn_blocking(move || open.open(&path))
                    .await
                    .map_err(|e| Error::Task(e.to_string()))?
                    .map_err(|e| Error::Storage(e.to_string()))?;
                Some(Durable::new(store))
            }
            None => None,
        };

        let mut transport = quinn::TransportConfig::default();
        transport
            .max_concurrent_bidi_streams(s.max_streams_per_connection.into())
            .max_concurrent_uni_streams(0u8.into())
            .keep_alive_interval(Some(s.heartbeat.min(s.down_after / 3)))
            .max_idle_timeout(Some(
                quinn::IdleTimeout::try_from(s.down_after)
                    .map_err(|_| Error::Config("down_after is too long for QUIC"))?,
            ));
        let transport = Arc::new(transport);
        let mut server = identity.server_config(transport.clone())?;
        server.max_incoming(s.max_connections);
        let client = identity.client_config(transport)?;
        let mut endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|source| Error::Bind { addr: self.listen, source })?;
        endpoint.set_default_client_config(client);

        let id = identity.id();
        let config = Config::default()
            .max_frame(s.max_frame)
            .require_signatures(self.require_signatures)
            .trust_snapshots_from(self.trust_snapshots_from.iter().copied())
            .lazy_relay(self.lazy_relay);
        // Heartbeats are many and small; a short history and a snapshot for
        // whoever falls behind it keep memory flat. Membership is
        // authenticated by TLS, not by signatures. Its source is the node id
        // (bound to the certificate) and its life is the same in every life
        // of the node: a heartbeat map loses nothing in a restart that the
        // next heartbeat does not replace, and peers must not refuse a
        // restarted node's membership as a reincarnation.
        let mut members_config = config.clone().history_limit(1024).require_signatures(false);
        members_config.allowed_sources = None;
        let members = Shared::new(
            MEMBERS_OBJECT.to_string(),
            Replica::with_config(id, Heartbeats::default(), members_config)
                .with_life(stable_life(id)),
        );
        // The source objects write under when nothing keeps their log: one
        // per life of this node, so a restart never claims updates it lost
        // (see `Replica::new`). Signing nodes derive it from a key of this
        // life and sign snapshots with their lasting key.
        let life_signer = signer.as_ref().map(|_| Identity::generate());
        let life_id = life_signer.as_ref().map_or_else(SourceId::random, Identity::id);
        let registry: Registry =
            BTreeMap::from([(MEMBERS_OBJECT.to_string(), members.clone() as Arc<dyn Object>)]);
        let mut seed = [0u8; 8];
        let _ = getrandom::fill(&mut seed);
        let inner = Arc::new(Inner {
            id,
            addr: advertise,
            endpoint,
            bootstrap: self.bootstrap,
            config,
            registry: watch::Sender::new(registry),
            members: Handle { shared: members },
            live: watch::Sender::new(Members::from([(id, advertise)])),
            conns: Mutex::new(Conns::default()),
            blocked: Mutex::new(HashSet::new()),
            tasks: Mutex::new(JoinSet::new()),
            phase: watch::Sender::new(Phase::Running),
            rng: Mutex::new(u64::from_le_bytes(seed) | 1),
            violations: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            ended_tx: AtomicU64::new(0),
            ended_rx: AtomicU64::new(0),
            durable: durable.clone(),
            signer,
            life_signer,
            life_id,
            settings: s,
        });
        if let Some(durable) = durable {
            inner.spawn(durable.run());
        }
        inner.heartbeat(false);
        inner.spawn(accept_loop(inner.clone()));
        inner.spawn(gossip_loop(inner.clone()));
        Ok(Node { inner })
    }
}

type Registry = BTreeMap<String, Arc<dyn Object>>;

/// The life of a replica whose log may be lost without harm, the same in
/// every life of the node (see where membership is made).
fn stable_life(id: SourceId) -> u64 {
    let bytes = id.as_bytes();
    u64::from_le_bytes(bytes[..8].try_into().unwrap_or([1; 8])).max(1)
}

struct Conn {
    conn: Connection,
    remote: SocketAddr,
    outgoing: bool,
}

#[derive(Default)]
struct Conns {
    map: HashMap<usize, Conn>,
    next: usize,
    dialing: HashSet<SocketAddr>,
}

struct Inner {
    id: SourceId,
    addr: SocketAddr,
    endpoint: quinn::Endpoint,
    settings: Settings,
    bootstrap: Vec<SocketAddr>,
    config: Config,
    /// Every replicated object by name; connections watch it to open a
    /// stream for an object replicated after they came up.
    registry: watch::Sender<Registry>,
    members: Handle<Heartbeats>,
    live: watch::Sender<Members>,
    conns: Mutex<Conns>,
    blocked: Mutex<HashSet<SocketAddr>>,
    /// Every task of the node, so that dropping the node stops them all.
    tasks: Mutex<JoinSet<()>>,
    phase: watch::Sender<Phase>,
    rng: Mutex<u64>,
    violations: AtomicU64,
    refused: AtomicU64,
    /// UDP bytes sent and received over connections that have ended.
    ended_tx: AtomicU64,
    ended_rx: AtomicU64,
    /// The node's store, when durable.
    durable: Option<Arc<Durable>>,
    /// This node's lasting signing key, when signing is on: it signs the
    /// updates of durable objects (whose log, and so whose id, outlives
    /// the process) and every snapshot this node sends.
    signer: Option<Identity>,
    /// Signs the updates of objects kept in memory only: a key of this
    /// life, when signing is on.
    life_signer: Option<Identity>,
    /// The source of objects kept in memory only, fresh in every life.
    life_id: SourceId,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing here panics while holding a lock; if something did, the data
    // (maps of handles) is still consistent.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Inner {
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        lock(&self.tasks).spawn(task);
    }

    fn running(&self) -> bool {
        *self.phase.borrow() == Phase::Running
    }

    fn is_blocked(&self, addr: SocketAddr) -> bool {
        lock(&self.blocked).contains(&addr)
    }

    /// A random number below `n` (n > 0): which peer to dial or drop. Not
    /// for secrets, so a xorshift seeded from the OS is plenty.
    fn random_below(&self, n: usize) -> usize {
        let mut state = lock(&self.rng);
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        (*state % n as u64) as usize
    }

    fn shuffle<T>(&self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.random_below(i + 1));
        }
    }

    fn heartbeat(&self, left: bool) {
        let beat = Beat { addr: self.addr, seen_ms: now_ms(), left };
        // Fails only once disposed, when nobody listens any more.
        let _ = self.members.shared.update(BTreeMap::from([(self.id, beat)]));
    }

    fn refresh_members(&self) {
        let down_after = self.settings.down_after.as_millis() as u64;
        let mut live = self.members.read(|h| h.live(now_ms(), down_after));
        // This node is up for as long as it runs, whatever its clock says.
        if self.running() {
            live.insert(self.id, self.addr);
        }
        self.live.send_if_modified(|old| {
            let changed = *old != live;
            *old = live;
            changed
        });
    }

    fn register(&self, conn: Connection, outgoing: bool) -> usize {
        let mut conns = lock(&self.conns);
        let key = conns.next;
        conns.next += 1;
        let remote = conn.remote_address();
        conns.map.insert(key, Conn { conn, remote, outgoing });
        key
    }

    fn unregister(&self, key: usize) {
        if let Some(ended) = lock(&self.conns).map.remove(&key) {
            let stats = ended.conn.stats();
            self.ended_tx.fetch_add(stats.udp_tx.bytes, Ordering::Relaxed);
            self.ended_rx.fetch_add(stats.udp_rx.bytes, Ordering::Relaxed);
        }
    }

    /// Whether a new connection from `remote` would exceed a cap.
    fn over_cap(&self, remote: SocketAddr) -> bool {
        let conns = lock(&self.conns);
        conns.map.len() >= self.settings.max_connections
            || conns.map.values().filter(|c| c.remote == remote).count()
                >= self.settings.max_connections_per_peer
    }

    /// Closes a connection whose peer broke the protocol. The typed reason
    /// is the QUIC application close code; the reason bytes say it in words.
    fn violation(&self, conn: &Connection, code: CloseCode, detail: &str) {
        self.violations.fetch_add(1, Ordering::Relaxed);
        let mut reason = format!("{code:?}: {detail}");
        if reason.len() > MAX_REASON {
            let mut end = MAX_REASON;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
        }
        conn.close(code.varint(), reason.as_bytes());
    }

    /// Keeps `fanout` peers connected: live peers first, in random order,
    /// then bootstrap addresses nobody has heard of yet.
    fn maintain(self: &Arc<Self>) {
        if !self.running() {
            return;
        }
        let live = self.live.borrow().clone();
        let blocked = lock(&self.blocked).clone();
        let mut conns = lock(&self.conns);
        let connected: HashSet<SocketAddr> = conns.map.values().map(|c| c.remote).collect();
        let busy = connected.len() + conns.dialing.len();
        let want = self.settings.fanout.saturating_sub(busy);
        if want == 0 {
            return;
        }
        let eligible = |a: &SocketAddr| {
            *a != self.addr
                && !connected.contains(a)
                && !conns.dialing.contains(a)
                && !blocked.contains(a)
        };
        let mut peers: Vec<SocketAddr> = live.values().copied().filter(eligible).collect();
        let live_addrs: HashSet<SocketAddr> = live.values().copied().collect();
        let mut boot: Vec<SocketAddr> = self
            .bootstrap
            .iter()
            .copied()
            .filter(|a| eligible(a) && !live_addrs.contains(a))
            .collect();
        boot.sort();
        boot.dedup();
        self.shuffle(&mut peers);
        self.shuffle(&mut boot);
        for addr in peers.into_iter().chain(boot).take(want) {
            conns.dialing.insert(addr);
            self.spawn(dial(self.clone(), addr));
        }
    }

    /// Closes one random outgoing connection when there is a live peer we
    /// are not connected to, so that over time every node talks to everyone.
    fn rotate(&self) {
        if !self.running() {
            return;
        }
        let live = self.live.borrow().clone();
        let conns = lock(&self.conns);
        let connected: HashSet<SocketAddr> = conns.map.values().map(|c| c.remote).collect();
        if connected.len() < self.settings.fanout {
            return;
        }
        let spare = live
            .values()
            .any(|a| *a != self.addr && !connected.contains(a) && !conns.dialing.contains(a));
        let outgoing: Vec<&Conn> = conns.map.values().filter(|c| c.outgoing).collect();
        if !spare || outgoing.is_empty() {
            return;
        }
        let victim = outgoing[self.random_below(outgoing.len())];
        victim.conn.close(CloseCode::Rotated.varint(), b"rotating to another peer");
    }

    /// Dials one random peer that is known but counts as down (and did not
    /// say goodbye). Nodes on either side of a healed partition think the
    /// other side is down; without a probe they would meet again only
    /// through a bootstrap address.
    fn probe(self: &Arc<Self>) {
        if !self.running() {
            return;
        }
        let live = self.live.borrow().clone();
        let live_addrs: HashSet<SocketAddr> = live.values().copied().collect();
        let known: Vec<SocketAddr> = self.members.read(|h| {
            h.0.iter()
                .filter(|(id, b)| !b.left && !live.contains_key(id))
                .map(|(_, b)| b.addr)
                .collect()
        });
        let blocked = lock(&self.blocked).clone();
        let mut conns = lock(&self.conns);
        let connected: HashSet<SocketAddr> = conns.map.values().map(|c| c.remote).collect();
        let mut down: Vec<SocketAddr> = known
            .into_iter()
            .filter(|a| {
                *a != self.addr
                    && !live_addrs.contains(a)
                    && !connected.contains(a)
                    && !conns.dialing.contains(a)
                    && !blocked.contains(a)
            })
            .collect();
        down.sort();
        down.dedup();
        if down.is_empty() {
            return;
        }
        let addr = down[self.random_below(down.len())];
        conns.dialing.insert(addr);
        self.spawn(dial(self.clone(), addr));
    }

    fn reap(&self) {
        let mut tasks = lock(&self.tasks);
        while tasks.try_join_next().is_some() {}
    }
}

/// Why one dial attempt failed.
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

async fn connect_once(inner: &Inner, addr: SocketAddr) -> Result<Connection, DialError> {
    if !inner.running() || inner.is_blocked(addr) {
        return Err(DialError::Refused);
    }
    let connecting = inner.endpoint.connect(addr, SERVER_NAME)?;
    match timeout(inner.settings.dial_timeout, connecting).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(DialError::Timeout),
    }
}

/// Dials `addr` with exponential backoff and jitter, then runs the
/// connection. Gossip dials again on a later tick if every attempt failed.
async fn dial(inner: Arc<Inner>, addr: SocketAddr) {
    let s = &inner.settings;
    let backoff = ExponentialBuilder::default()
        .with_min_delay(s.heartbeat / 4)
        .with_max_delay(s.heartbeat * 4)
        .with_max_times(s.dial_attempts)
        .with_jitter();
    let result = (|| connect_once(&inner, addr))
        .retry(backoff)
        .sleep(tokio::time::sleep)
        .when(|e| !matches!(e, DialError::Refused))
        .await;
    let key = match result {
        Ok(conn) if inner.running() && !inner.is_blocked(addr) => Some(inner.register(conn, true)),
        Ok(conn) => {
            conn.close(CloseCode::Partitioned.varint(), b"refused");
            None
        }
        Err(_) => None,
    };
    // Registered before it stops counting as dialing, so that gossip never
    // sees neither and dials twice.
    lock(&inner.conns).dialing.remove(&addr);
    if let Some(key) = key {
        run_connection(inner, key, true).await;
    }
}

async fn accept_loop(inner: Arc<Inner>) {
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
            let dial_timeout = task_inner.settings.dial_timeout;
            // A handshake that fails (another cluster's certificate, a
            // client without one) ends here: no connection, no streams.
            let Ok(Ok(conn)) = timeout(dial_timeout, incoming).await else { return };
            if task_inner.over_cap(remote) {
                conn.close(CloseCode::TooManyConnections.varint(), b"too many connections");
                return;
            }
            let key = task_inner.register(conn, false);
            run_connection(task_inner, key, false).await;
        });
    }
}

async fn gossip_loop(inner: Arc<Inner>) {
    let s = inner.settings.clone();
    let mut beat = tokio::time::interval(s.heartbeat);
    beat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut rotate = tokio::time::interval_at(Instant::now() + s.rotate_every, s.rotate_every);
    rotate.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut changed = inner.members.shared.wakeups();
    let mut phase = inner.phase.subscribe();
    loop {
        tokio::select! {
            _ = beat.tick() => {
                inner.heartbeat(false);
                inner.reap();
                inner.refresh_members();
                inner.maintain();
            }
            _ = rotate.tick() => {
                inner.rotate();
                inner.probe();
            }
            r = changed.changed() => {
                if r.is_err() {
                    return;
                }
                inner.refresh_members();
            }
            _ = phase.wait_for(|p| *p != Phase::Running) => return,
        }
    }
}

/// Runs one connection: opens a stream per object (on the dialing side),
/// accepts the peer's, and on shutdown lets them drain before closing.
async fn run_connection(inner: Arc<Inner>, key: usize, outgoing: bool) {
    let Some(conn) = lock(&inner.conns).map.get(&key).map(|c| c.conn.clone()) else { return };
    let opened: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut registry = inner.registry.subscribe();
    registry.mark_changed();
    let mut phase = inner.phase.subscribe();
    let mut streams: JoinSet<()> = JoinSet::new();
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
                        streams.spawn(open_stream(inner.clone(), conn.clone(), name, object));
                    }
                }
            }
            accepted = conn.accept_bi() => match accepted {
                Ok((send, recv)) => {
                    let task = accept_stream(inner.clone(), conn.clone(), send, recv, opened.clone());
                    streams.spawn(task);
                }
                Err(_) => break,
            },
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
            _ = phase.changed() => {}
        }
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
    let Ok(expect) = expected_peer(&inner, &conn, &name) else { return };
    let Ok((mut send, recv)) = conn.open_bi().await else { return };
    if send.write_all(&preamble(&name)).await.is_err() {
        return;
    }
    let scope = scope_of(&name);
    drive(&inner, &conn, object, expect, scope, send, recv).await;
}

/// What a protocol violation on a stream closes. The membership stream is
/// the node's own protocol: a peer that breaks it is cut off. Any other
/// object's stream ends alone, with the reason sent to the peer in a Close
/// frame and as the code that stops the stream, so that one object's
/// mistake (the same name replicated with two types, say) costs neither
/// the connection nor membership.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scope {
    Connection,
    Stream,
}

fn scope_of(name: &str) -> Scope {
    if name == MEMBERS_OBJECT { Scope::Connection } else { Scope::Stream }
}

/// On the membership stream, the id the peer's Hello must carry: the one
/// its certificate stands for. A peer's membership source id is its node
/// id, and the TLS handshake proved which node it is, so a Hello claiming
/// another is a lie. Other objects' ids are not tied to certificates (they
/// are random, or derived from a signing key), so they are not checked.
///
/// `Err` when the connection was closed because there is nothing to check
/// against (not possible after a verified handshake, but not assumed).
fn expected_peer(inner: &Inner, conn: &Connection, name: &str) -> Result<Option<SourceId>, ()> {
    if name != MEMBERS_OBJECT {
        return Ok(None);
    }
    match crate::identity::peer_id(conn) {
        Some(id) => Ok(Some(id)),
        None => {
            inner.violation(conn, CloseCode::WrongPeerId, "no peer certificate to check");
            Err(())
        }
    }
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
    let Ok(expect) = expected_peer(&inner, &conn, &name) else { return };
    let scope = scope_of(&name);
    drive(&inner, &conn, object, expect, scope, send, recv).await;
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
/// With `expect`, the peer's Hello must carry that id: its first frame is
/// read and handled alone, and the connection closed with
/// [`CloseCode::WrongPeerId`] before anything after it is applied.
#[allow(clippy::too_many_arguments)]
async fn drive(
    inner: &Inner,
    conn: &Connection,
    object: Arc<dyn Object>,
    expect: Option<SourceId>,
    scope: Scope,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    let Ok(stream) = object.open() else { return };
    let _forget = Forget { object: object.clone(), stream };
    let object = &*object;
    // A violation: the core has ended the stream and queued a Close with
    // the reason, which the writer sends before it finishes.
    let refuse = |recv: &mut RecvStream, e: &repred::PeerMisbehaved| {
        let code = CloseCode::from(e);
        match scope {
            Scope::Connection => inner.violation(conn, code, &e.to_string()),
            Scope::Stream => {
                inner.violations.fetch_add(1, Ordering::Relaxed);
                let _ = recv.stop(code.varint());
            }
        }
    };
    let reader = async {
        if let Some(want) = expect {
            let Some(first) = first_frame(&mut recv, inner.settings.max_frame).await else {
                object.abort(stream);
                return;
            };
            if let Err(e) = object.handle(stream, &first) {
                if let SessionError::Peer(e) = e {
                    refuse(&mut recv, &e);
                }
                return;
            }
            // No id means the first frame was not a Hello but a Close: the
            // core has ended the session, and the loop below notices.
            if let Some(got) = object.peer_id(stream)
                && got != want
            {
                let detail = format!("the Hello claims {got:?}, the certificate is {want:?}");
                inner.violation(conn, CloseCode::WrongPeerId, &detail);
                return;
            }
            if !object.has_stream(stream) {
                return;
            }
        }
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
            let timer = object
                .poll_timeout()
                .map(|due| Instant::now() + Duration::from_millis(due.saturating_sub(now_ms())));
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

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Reads exactly the first frame of a stream (the core's frames are a
/// four-byte little-endian length, then that many bytes), so that it can be
/// handled before anything after it. A length over `max_frame` is returned
/// alone, for the core to refuse. `None` when the stream ends first.
async fn first_frame(recv: &mut RecvStream, max_frame: usize) -> Option<Vec<u8>> {
    let read = async {
        let mut header = [0u8; 4];
        recv.read_exact(&mut header).await.ok()?;
        let len = u32::from_le_bytes(header) as usize;
        let mut frame = header.to_vec();
        if len <= max_frame {
            frame.resize(4 + len, 0);
            recv.read_exact(&mut frame[4..]).await.ok()?;
        }
        Some(frame)
    };
    // As long as a stream may take to name its object: a peer that says
    // nothing holds one stream slot, no more.
    timeout(PREAMBLE_TIMEOUT, read).await.ok().flatten()
}

/// Counters of a node's connections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeStats {
    /// Connections open now.
    pub connections: usize,
    /// Connections closed because the peer broke the protocol.
    pub violations: u64,
    /// Incoming connections refused (caps, blocked peers).
    pub refused: u64,
    /// UDP payload bytes sent over every connection registered so far, open
    /// or ended: QUIC headers, encryption, acknowledgements and handshakes
    /// included; IP and UDP headers and dials that never connected not.
    pub udp_tx_bytes: u64,
    /// UDP payload bytes received, counted the same way.
    pub udp_rx_bytes: u64,
}

/// A peer of a repred cluster: a QUIC endpoint that replicates named objects
/// with the peers gossip picks.
///
/// Dropping a node stops it at once, as a crash would; [`Node::shutdown`]
/// says goodbye first.
pub struct Node {
    inner: Arc<Inner>,
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
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// This node's id, derived from its certificate's public key: what its
    /// membership entries carry and its peers verify. Its objects write
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
    /// [`Builder::trust_snapshots_from`] to take this node's snapshots. It
    /// also writes this node's durable objects; objects kept in memory
    /// only write under a key of this life ([`Handle::source`]).
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
        let shared = Shared::with_store(name.to_string(), replica, durable.clone());
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

    /// The live members, this node included, updated whenever the set
    /// changes.
    pub fn members(&self) -> watch::Receiver<Members> {
        self.inner.live.subscribe()
    }

    /// The membership object itself: every heartbeat this node has seen.
    pub fn heartbeats(&self) -> Handle<Heartbeats> {
        self.inner.members.clone()
    }

    /// The addresses of the peers connected now (either direction).
    pub fn connected(&self) -> Vec<SocketAddr> {
        let mut addrs: Vec<SocketAddr> =
            lock(&self.inner.conns).map.values().map(|c| c.remote).collect();
        addrs.sort();
        addrs.dedup();
        addrs
    }

    /// Counters of connections and of the bytes they carried.
    pub fn stats(&self) -> NodeStats {
        let conns = lock(&self.inner.conns);
        let (mut udp_tx_bytes, mut udp_rx_bytes) = (
            self.inner.ended_tx.load(Ordering::Relaxed),
            self.inner.ended_rx.load(Ordering::Relaxed),
        );
        for c in conns.map.values() {
            let stats = c.conn.stats();
            udp_tx_bytes += stats.udp_tx.bytes;
            udp_rx_bytes += stats.udp_rx.bytes;
        }
        NodeStats {
            connections: conns.map.len(),
            violations: self.inner.violations.load(Ordering::Relaxed),
            refused: self.inner.refused.load(Ordering::Relaxed),
            udp_tx_bytes,
            udp_rx_bytes,
        }
    }

    /// Fault injection: refuses connections to and from these peer
    /// addresses, and closes the ones open now, as a network partition
    /// would. For tests and drills; [`Node::unblock_all`] heals it.
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

    /// Leaves the cluster cleanly: writes a goodbye heartbeat (peers mark
    /// this node down at once), lets every session send what it has and a
    /// Close, closes every connection with [`CloseCode::Shutdown`] and the
    /// endpoint with the same code. Bounded: sessions that do not finish in
    /// two seconds are cut.
    pub async fn shutdown(self) {
        let inner = &self.inner;
        if !inner.running() {
            return;
        }
        inner.heartbeat(true);
        inner.phase.send_replace(Phase::Draining);
        let drained = async {
            while !lock(&inner.conns).map.is_empty() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        let _ = timeout(DRAIN_TIMEOUT, drained).await;
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
