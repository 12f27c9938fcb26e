//! Configuring and starting a node.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quinn::Runtime;
use repred::{Config, Identity, SourceId};
use repred_node::{NodeConfig, NodeCore};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::clock::now_ms;
use crate::driver::{Driver, accept_loop};
use crate::durable::{Durable, OpenStore};
use crate::identity::Credentials;
use crate::membership::{DatagramSigner, Opener};
use crate::node::{Conns, Inner, Node, Phase, Registry};
use crate::udp::{self, DemuxSocket};
use crate::{Error, Members};

/// The probe period unless told otherwise ([`Builder::heartbeat`]):
/// [`NodeConfig`]'s default. Each node probes one member per period,
/// whatever the cluster's size, so membership costs each node about the
/// same bytes at 10 nodes as at 10,000.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_millis(500);
/// How long a suspected member has to refute it before it is declared
/// down, and how long a silent QUIC connection lasts, unless told otherwise
/// ([`Builder::down_after`]): [`NodeConfig`]'s default suspicion timeout.
pub const DEFAULT_DOWN_AFTER: Duration = Duration::from_secs(2);
/// How often a node trades one connection for another, unless told
/// otherwise ([`Builder::rotate_every`]): [`NodeConfig`]'s default. Each
/// trade costs a TLS handshake and a Hello per object.
pub const DEFAULT_ROTATE_EVERY: Duration = Duration::from_secs(120);

/// How long a QUIC connection may stay silent (keep-alives go every third
/// of it); at least the suspicion timeout.
const CONNECTION_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The transport's own limits.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) max_connections: usize,
    pub(crate) max_connections_per_peer: usize,
    pub(crate) max_streams_per_connection: u32,
    pub(crate) max_frame: usize,
    /// How often the node collects tombstones, if it does.
    pub(crate) collect_every: Option<Duration>,
    /// How long a member declared down still counts as a writer.
    pub(crate) collect_grace: Duration,
    /// How long a peer's snapshot may go without a byte of it.
    pub(crate) snapshot_stall: Duration,
    /// Slowest a peer's snapshot may come in past that, bytes per second.
    pub(crate) snapshot_min_rate: u64,
}

/// How long a member declared down still counts as a writer of an object
/// unless told otherwise ([`Builder::collect_grace`]).
const DEFAULT_COLLECT_GRACE: Duration = Duration::from_secs(3600);

/// Configures and starts a [`Node`].
///
/// Membership and the choice of connections are the node core's
/// ([`repred_node::NodeCore`]), set by a [`NodeConfig`]: SWIM through
/// `foca` (a probe per period, suspicion before a member is declared down),
/// and about log2(N) + 1 connections per node. The knobs of earlier
/// versions map onto it:
///
/// | knob | what it sets now |
/// |---|---|
/// | [`heartbeat`](Builder::heartbeat) | the probe period (and the probe's round-trip allowance, 2/5 of it) |
/// | [`down_after`](Builder::down_after) | the suspicion timeout (QUIC connections idle out after 30 s, keep-alive every 10 s) |
/// | [`fanout`](Builder::fanout) | the least connections a node keeps (`min_active`) |
/// | [`rotate_every`](Builder::rotate_every) | how often a connection is traded for another |
/// | [`dial_timeout`](Builder::dial_timeout) | how long one dial may take |
/// | [`node_config`](Builder::node_config) | everything else |
///
/// Each applies to the configuration in the order called:
/// [`node_config`](Builder::node_config) replaces what was set before it.
///
/// ```no_run
/// # async fn run() -> Result<(), repred_transport::Error> {
/// use std::time::Duration;
/// use repred_node::NodeConfig;
/// use repred_transport::Node;
///
/// let node = Node::builder()
///     .listen("127.0.0.1:9000".parse().unwrap())
///     .bootstrap(["127.0.0.1:9001".parse().unwrap()])
///     .data_dir("./.repred")
///     .node_config(NodeConfig::default().announce_down_every(Duration::from_secs(5)))
///     .heartbeat(Duration::from_millis(500))
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
    node: NodeConfig,
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
            node: NodeConfig::default(),
            settings: Settings {
                max_connections: 64,
                max_connections_per_peer: 4,
                max_streams_per_connection: 64,
                max_frame: Config::default().max_frame,
                collect_every: None,
                collect_grace: DEFAULT_COLLECT_GRACE,
                snapshot_stall: Duration::from_millis(Config::default().snapshot_stall_millis),
                snapshot_min_rate: Config::default().snapshot_min_rate,
            },
        }
    }
}

impl Builder {
    /// The UDP address to listen on. Default `127.0.0.1:0` (any free port).
    ///
    /// On port 0 the node's certificate is made for this run and written
    /// nowhere (unless the data directory holds a `node-0.pem`), so a node
    /// id lasts one run and no file is left per run; a durable store
    /// ([`durable`](Builder::durable)) and a signing key
    /// ([`signing`](Builder::signing)) are still named after the port
    /// bound, so give such nodes a fixed port.
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

    /// Addresses to join the cluster through: each is asked for the member
    /// list (a membership datagram carrying this node's certificate), and
    /// asked again, and dialed, while this node knows no live member.
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
    /// them. Membership is not kept: a restarted node rejoins under a new
    /// life, which replaces its old one at once everywhere.
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

    /// The node core's settings, all of them (see the table above). Knobs
    /// called after this one adjust it; those called before are replaced.
    /// Default [`NodeConfig::default`].
    pub fn node_config(mut self, config: NodeConfig) -> Self {
        self.node = config;
        self
    }

    /// The least connections this node keeps ([`NodeConfig::min_active`]):
    /// it keeps log2(N) + 1 once the cluster is larger. Default 3.
    pub fn fanout(mut self, peers: usize) -> Self {
        self.node.min_active = peers;
        self.node.max_active = self.node.max_active.max(peers);
        self.node.max_connections = self.node.max_connections.max(peers);
        self
    }

    /// How often this node probes a member: SWIM's protocol period
    /// ([`NodeConfig::probe_period`]), with 2/5 of it for the probe's answer
    /// before others are asked to probe ([`NodeConfig::probe_rtt`]).
    /// Failure detection takes a few periods plus the suspicion timeout.
    /// Default [`DEFAULT_HEARTBEAT`] (500 ms).
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.node.probe_period = every;
        self.node.probe_rtt = every * 2 / 5;
        self
    }

    /// How long a suspected member has to refute the suspicion before it
    /// is declared down ([`NodeConfig::suspect_timeout`]). (A silent QUIC
    /// connection lasts 30 s, with a keep-alive every 10 s: SWIM, not the
    /// connections, finds dead peers.)
    /// Default [`DEFAULT_DOWN_AFTER`] (2 s).
    pub fn down_after(mut self, timeout: Duration) -> Self {
        self.node.suspect_timeout = timeout;
        self
    }

    /// How often one connection is closed to make room for another random
    /// member ([`NodeConfig::rotate_every`], jittered). Default
    /// [`DEFAULT_ROTATE_EVERY`] (120 s).
    pub fn rotate_every(mut self, every: Duration) -> Self {
        self.node.rotate_every = every;
        self
    }

    /// How long one dial (or an incoming handshake) may take
    /// ([`NodeConfig::dial_timeout`]); a failed dial is tried again after a
    /// growing, jittered wait. Default 3 s.
    pub fn dial_timeout(mut self, timeout: Duration) -> Self {
        self.node.dial_timeout = timeout;
        self
    }

    /// Most connections in all, incoming ones included: past it new ones
    /// are refused, and the node core sheds the newest incoming ones.
    /// Default 64 (it also caps [`NodeConfig::max_connections`]).
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

    /// How long a peer's snapshot of an object may go without a byte of
    /// it before the node refuses it and closes the stream ([`SnapshotRefusal::Stalled`](repred::SnapshotRefusal::Stalled),
    /// in [`Handle::refusals`](crate::Handle::refusals)): while one comes
    /// in, the object's new streams wait for it and its collection waits.
    /// The stream's name is freed, so the peer may send it again on a
    /// new stream.
    /// Default 30 s ([`Config::snapshot_stall_millis`](repred::Config::snapshot_stall_millis)).
    pub fn snapshot_stall_timeout(mut self, timeout: Duration) -> Self {
        self.settings.snapshot_stall = timeout;
        self
    }

    /// Slowest a peer's snapshot of an object may come in, in bytes per
    /// second, once [`snapshot_stall_timeout`](Self::snapshot_stall_timeout)
    /// has passed since it began: a sender that trickles it in (a byte now
    /// and then restarts the stall wait) is refused
    /// ([`SnapshotRefusal::TooSlow`](repred::SnapshotRefusal::TooSlow)), as
    /// one that goes quiet is, and may send it again on a new stream. Zero:
    /// no minimum. The rate is each snapshot's: objects whose snapshots come
    /// in over one connection share it, so keep the rate under the link's
    /// speed divided by how many may come at once. Default 256 B/s
    /// ([`Config::snapshot_min_rate`](repred::Config::snapshot_min_rate)).
    pub fn snapshot_min_rate(mut self, bytes_per_sec: u64) -> Self {
        self.settings.snapshot_min_rate = bytes_per_sec;
        self
    }

    /// Forgets old deletes (tombstones of OR-set removes, last-writer-wins
    /// deletes, the history under them) by itself: every `period`, each
    /// object is collected ([`Replica::collect`](repred::Replica::collect))
    /// at the newest point that every member that can still write it has
    /// provably passed. Default off: deletes are kept for ever.
    ///
    /// The members that can still write an object are those alive or
    /// suspected, and those declared down less than the grace period ago
    /// ([`collect_grace`](Builder::collect_grace)); for each, the node
    /// needs a synced stream of the object with
    /// it, which shows what the member holds (see
    /// [`Replica::peer_heard`](repred::Replica::peer_heard)). A member with
    /// none (one not connected to this node, one that does not replicate
    /// the object, one down within the grace period) holds every
    /// collection back; so does being alone, and so does streaming the
    /// object with chosen peers only ([`Peers::Only`]), and so does a
    /// stream of it that has not synced yet. Every synced stream counts,
    /// a writer's or not. Every writer must therefore
    /// be connected to this node: a cluster within the
    /// [`fanout`](Builder::fanout). A member shows it passed a point by
    /// sending something newer: one that took others' changes and has not
    /// written since shows it by itself, once a period
    /// ([`Replica::show_progress`](repred::Replica::show_progress)), so
    /// the newest deletes go a period or two after every member took them.
    /// Every member should collect: one that does not holds the point
    /// where it last wrote.
    /// [`Handle::collections`] and
    /// [`Handle::collection_blocked`] say what happened.
    ///
    /// The cost: a member away longer than the grace period is not waited
    /// for; if it comes back holding deletes the others forgot, its
    /// streams end as stale ([`Event::Stale`](repred::Event::Stale)), it
    /// syncs with no peer, and it must rejoin
    /// ([`Handle::rejoin`](crate::Handle::rejoin), or
    /// [`Handle::rejoin_when_stale`](crate::Handle::rejoin_when_stale) to
    /// have the node do it), losing its writes below the floor that the
    /// others never got. So may a member whose connection closed while
    /// updates sent to it were on their way.
    ///
    /// [`Peers::Only`]: crate::Peers::Only
    /// [`Handle::collections`]: crate::Handle::collections
    /// [`Handle::collection_blocked`]: crate::Handle::collection_blocked
    pub fn collect_every(mut self, period: Duration) -> Self {
        self.settings.collect_every = Some(period);
        self
    }

    /// How long a member declared down (or forgotten by the membership)
    /// still counts as a writer whose clock a collection waits for
    /// ([`collect_every`](Builder::collect_every)). Longer keeps tombstones
    /// longer while a member is down; shorter makes a member away that long
    /// come back stale. Default one hour.
    pub fn collect_grace(mut self, grace: Duration) -> Self {
        self.settings.collect_grace = grace;
        self
    }

    /// Binds the socket, loads or creates the credentials, and starts the
    /// node's tasks on the current tokio runtime.
    pub async fn spawn(self) -> Result<Node, Error> {
        let s = self.settings;
        let mut node_config = self.node;
        node_config.max_connections = node_config.max_connections.min(s.max_connections);
        node_config.max_active = node_config.max_active.min(node_config.max_connections);
        node_config.min_active = node_config.min_active.min(node_config.max_active);
        node_config.check().map_err(Error::Config)?;
        if s.collect_every.is_some_and(|p| p.is_zero()) {
            return Err(Error::Config("collect_every must be longer than zero"));
        }
        if s.snapshot_stall < Duration::from_millis(1) {
            return Err(Error::Config("snapshot_stall_timeout must be at least 1 ms"));
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
        // The certificate goes by the port asked for: with 0 (any free
        // port) it is made for this run and never written, since a file
        // named after a port picked at random would never be found again.
        let cert_port = self.listen.port();
        let store_path = self.durable.then(|| dir.join(format!("node-{port}.redb")));
        let key_path = self.signing.then(|| dir.join(format!("signing-{port}.key")));
        let (create_cluster, deny) = (self.create_cluster, self.deny);
        let identity = tokio::task::spawn_blocking(move || {
            let credentials = if create_cluster {
                Credentials::load_or_create(&dir, cert_port)
            } else {
                Credentials::join(&dir, cert_port)
            };
            credentials.map(|c| c.deny(deny))
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))??;
        // Before anything is opened: a key that cannot sign membership is a
        // typed error now, not silence later.
        let signer = DatagramSigner::new(&identity)?;
        let opener = Opener::new(identity.peer_verifier()?, identity.denied().clone());
        let signer_key = match key_path {
            Some(path) => Some(
                tokio::task::spawn_blocking(move || crate::identity::signing_key(&path))
                    .await
                    .map_err(|e| Error::Task(e.to_string()))??,
            ),
            None => None,
        };
        let metrics = crate::metrics::NodeMetrics::new(identity.id());
        let durable = match store_path {
            Some(path) => {
                let open = self.open_store.clone();
                let store = tokio::task::spawn_blocking(move || open.open(&path))
                    .await
                    .map_err(|e| Error::Task(e.to_string()))?
                    .map_err(|e| Error::Storage(e.to_string()))?;
                Some(Durable::new(store, metrics.store.clone()))
            }
            None => None,
        };

        // SWIM, not QUIC, is what finds a dead peer (and then the core
        // closes its connections), so connections need keep-alives only to
        // stay open through NATs and idle periods: one every 10 s, and a
        // silent connection lasts 30 s. Keep-alives on O(log N) connections
        // would otherwise be most of an idle node's traffic.
        let idle = CONNECTION_IDLE_TIMEOUT.max(node_config.suspect_timeout);
        let mut transport = quinn::TransportConfig::default();
        transport
            .max_concurrent_bidi_streams(s.max_streams_per_connection.into())
            // One each way: the node cores' messages.
            .max_concurrent_uni_streams(1u8.into())
            .keep_alive_interval(Some(idle / 3))
            .max_idle_timeout(Some(
                quinn::IdleTimeout::try_from(idle)
                    .map_err(|_| Error::Config("down_after is too long for QUIC"))?,
            ));
        let transport = Arc::new(transport);
        let mut server = identity.server_config(transport.clone())?;
        server.max_incoming(s.max_connections);
        let client = identity.client_config(transport)?;
        // One socket for QUIC and membership: quinn reads it through the
        // demultiplexer, which hands membership datagrams to the driver.
        let (datagrams_tx, datagrams) = mpsc::channel(udp::QUEUE);
        let bind_err = |source| Error::Bind { addr: self.listen, source };
        let raw = quinn::TokioRuntime.wrap_udp_socket(socket).map_err(bind_err)?;
        let demux = Arc::new(DemuxSocket::new(raw, datagrams_tx));
        let mut endpoint = quinn::Endpoint::new_with_abstract_socket(
            udp::endpoint_config(),
            Some(server),
            demux.clone(),
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(bind_err)?;
        endpoint.set_default_client_config(client);

        let id = identity.id();
        // Error level, so that the node's id and address frame every event
        // of it that any filter lets through (warnings included); a span
        // costs nothing per update, only per node, connection and stream.
        let span = tracing::error_span!("node", id = %id, addr = %advertise);
        crate::metrics::describe();
        let config = Config::default()
            .max_frame(s.max_frame)
            .snapshot_stall_millis(u64::try_from(s.snapshot_stall.as_millis()).unwrap_or(u64::MAX))
            .snapshot_min_rate(s.snapshot_min_rate)
            .require_signatures(self.require_signatures)
            .trust_snapshots_from(self.trust_snapshots_from.iter().copied())
            .lazy_relay(self.lazy_relay);
        // The source objects write under when nothing keeps their log: one
        // per life of this node, so a restart never claims updates it lost
        // (see `Replica::new`). Signing nodes derive it from a key of this
        // life and sign snapshots with their lasting key.
        let life_signer = signer_key.as_ref().map(|_| Identity::generate());
        let life_id = life_signer.as_ref().map_or_else(SourceId::random, Identity::id);
        // The node core: its life is the start time, so this life's
        // identity replaces the last one's wherever they meet; its
        // randomness is the operating system's.
        let now = now_ms();
        let mut seed = [0u8; 8];
        let _ = getrandom::fill(&mut seed);
        let dial_timeout = node_config.dial_timeout;
        let mut core =
            NodeCore::new(id, advertise, now, node_config, u64::from_le_bytes(seed), now);
        core.bootstrap(now, self.bootstrap.iter().copied());
        let (control, control_rx) = mpsc::unbounded_channel();
        let (messages, messages_rx) = mpsc::channel(crate::control::QUEUE);
        let inner = Arc::new(Inner {
            id,
            addr: advertise,
            endpoint,
            socket: demux,
            settings: s,
            dial_timeout,
            config,
            registry: watch::Sender::new(Registry::new()),
            stream_ends: tokio::sync::broadcast::Sender::new(crate::object::STREAM_ENDS_CAPACITY),
            live: watch::Sender::new(Members::from([(id, advertise)])),
            core: Mutex::new(core),
            control,
            messages,
            conns: Mutex::new(Conns::default()),
            blocked: Mutex::default(),
            tasks: Mutex::new(JoinSet::new()),
            phase: watch::Sender::new(Phase::Running),
            violations: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            ended_tx: AtomicU64::new(0),
            ended_rx: AtomicU64::new(0),
            datagrams_sent: AtomicU64::new(0),
            datagrams_received: AtomicU64::new(0),
            datagrams_refused: AtomicU64::new(0),
            membership_tx: AtomicU64::new(0),
            membership_rx: AtomicU64::new(0),
            durable: durable.clone(),
            signer: signer_key,
            life_signer,
            life_id,
            span: span.clone(),
            metrics,
        });
        tracing::info!(
            parent: &span,
            bootstrap = ?self.bootstrap,
            durable = self.durable,
            data_dir = %self.data_dir.display(),
            "node started"
        );
        if let Some(durable) = durable {
            inner.spawn(durable.run());
        }
        inner.spawn(accept_loop(inner.clone()));
        let driver = Driver::new(inner.clone(), signer, opener, datagrams, control_rx, messages_rx)
            .bootstrap(self.bootstrap);
        inner.spawn(driver.run());
        if let Some(every) = inner.settings.collect_every {
            inner.spawn(crate::collect::run(inner.clone(), every, inner.settings.collect_grace));
        }
        Ok(Node { inner })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_constants_are_the_node_cores_defaults() {
        let config = NodeConfig::default();
        assert_eq!(DEFAULT_HEARTBEAT, config.probe_period);
        assert_eq!(DEFAULT_DOWN_AFTER, config.suspect_timeout);
        assert_eq!(DEFAULT_ROTATE_EVERY, config.rotate_every);
        let b = Builder::default().heartbeat(Duration::from_millis(100)).fanout(30);
        assert_eq!(b.node.probe_rtt, Duration::from_millis(40));
        assert!(b.node.check().is_ok(), "{:?}", b.node.check());
    }
}
