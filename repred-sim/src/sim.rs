//! The event loop: nodes, connections and datagrams on virtual time.

use std::collections::{BTreeMap, BTreeSet};

use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use repred::{Reduce, Replica, ReplicaError, SourceId, Stamp, StreamOpts};
use repred_node::{Command, ConnId, LiveDigest, NodeCore, NodeEvent};

use crate::node::{Object, SimNode, Traffic};
use crate::queue::{Event, Queue};
use crate::{NodeIx, ObjectId, SimConfig};

/// Where virtual time starts: 2023-11-14, in Unix milliseconds, so that
/// hybrid timestamps look like real ones.
pub const EPOCH: u64 = 1_700_000_000_000;

/// One end of a simulated connection.
#[derive(Clone, Copy, Debug)]
struct End {
    node: NodeIx,
    life: u32,
    local: ConnId,
}

/// A simulated QUIC connection: reliable, ordered per direction, with
/// latency; dead once severed (a close, a crash, a partition).
#[derive(Debug)]
struct Conn {
    ends: [End; 2],
    severed: bool,
    /// Per direction (by receiving side), when the last bytes arrive: later
    /// bytes never overtake them.
    arrives: [u64; 2],
    closed: [bool; 2],
}

/// What a run observed of failure detection.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct Detections {
    /// Per crashed node, how long after its crash each live node marked it
    /// down, in milliseconds.
    pub latencies: BTreeMap<SourceId, Vec<u64>>,
    /// Members marked down while they were up (false positives).
    pub false_downs: u64,
}

/// A deterministic discrete-event simulation of a repred cluster.
///
/// Every node runs the production [`NodeCore`] (SWIM membership, the active
/// view, dials, rotation) and production [`Replica`]s of the objects it
/// holds; the simulator only moves bytes and timers, as the QUIC shell
/// does, on virtual time with per-hop latency, datagram loss and
/// duplication, partitions, crashes and restarts. One seed replays one run
/// exactly: every random choice, the network's and the nodes', comes from
/// it, and events at the same moment happen in the order they were made.
///
/// ```
/// use repred::GSet;
/// use repred_sim::{Sim, SimConfig};
///
/// let mut sim = Sim::new(SimConfig::new(1), GSet::<u64>::default);
/// let first = sim.add_node(&[]);
/// for _ in 0..9 {
///     sim.add_node(&[first]);
/// }
/// for node in sim.node_ids() {
///     sim.replicate(node, 0);
/// }
/// sim.update(first, 0, GSet::add(42)).unwrap();
/// sim.run_for(20_000);
/// sim.membership_converged().unwrap();
/// sim.objects_converged(0).unwrap();
/// ```
pub struct Sim<T: Reduce> {
    config: SimConfig,
    now: u64,
    rng: Xoshiro256PlusPlus,
    queue: Queue,
    nodes: Vec<SimNode<T>>,
    conns: BTreeMap<u64, Conn>,
    next_conn: u64,
    make: Box<dyn Fn() -> T>,
    crashed_at: BTreeMap<SourceId, u64>,
    detections: Detections,
    events_run: u64,
    by_kind: [u64; 6],
    observer: Option<Observer<T>>,
}

/// Called after a node took in stream bytes of an object from a peer:
/// `(now, node, peer, object, replica)`.
pub type Observer<T> = Box<dyn FnMut(u64, NodeIx, NodeIx, ObjectId, &Replica<T>)>;

impl<T: Reduce> Sim<T> {
    /// An empty world; `make` makes each new replica's initial state.
    pub fn new(config: SimConfig, make: impl Fn() -> T + 'static) -> Self {
        Self {
            rng: Xoshiro256PlusPlus::seed_from_u64(config.seed),
            config,
            now: EPOCH,
            queue: Queue::default(),
            nodes: Vec::new(),
            conns: BTreeMap::new(),
            next_conn: 0,
            make: Box::new(make),
            crashed_at: BTreeMap::new(),
            detections: Detections::default(),
            events_run: 0,
            by_kind: [0; 6],
            observer: None,
        }
    }

    /// The seed this run replays from.
    pub fn seed(&self) -> u64 {
        self.config.seed
    }

    /// The settings.
    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// Virtual time, in Unix milliseconds.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Events handled so far.
    pub fn events_run(&self) -> u64 {
        self.events_run
    }

    /// Watches every replica that takes in bytes from a peer (to trace how
    /// an update spreads, say).
    pub fn observe_with(&mut self, observer: Observer<T>) {
        self.observer = Some(observer);
    }

    /// Events handled so far by kind: datagrams, node timers, replica
    /// timers, handshakes, stream bytes (control messages included),
    /// connection ends.
    pub fn events_by_kind(&self) -> [u64; 6] {
        self.by_kind
    }

    /// Every node ever added (up or not), in the order added.
    pub fn node_ids(&self) -> impl Iterator<Item = NodeIx> + use<T> {
        0..self.nodes.len() as NodeIx
    }

    /// The nodes that are up.
    pub fn up_nodes(&self) -> Vec<NodeIx> {
        self.node_ids().filter(|&n| self.nodes[n as usize].up).collect()
    }

    /// One node.
    pub fn node(&self, node: NodeIx) -> &SimNode<T> {
        &self.nodes[node as usize]
    }

    /// What failure detection looked like so far.
    pub fn detections(&self) -> &Detections {
        &self.detections
    }

    fn node_id(index: NodeIx) -> SourceId {
        let mut bytes = *b"sim-node\0\0\0\0\0\0\0\0";
        bytes[8..12].copy_from_slice(&index.to_be_bytes());
        bytes[12] = 1;
        SourceId::from_bytes(bytes).unwrap_or_else(|_| SourceId::random())
    }

    fn node_seed(&self, index: NodeIx, life: u32) -> u64 {
        self.config.seed ^ (u64::from(index) << 20) ^ (u64::from(life) << 52) ^ 0x5EED
    }

    fn fresh_writer(&mut self) -> SourceId {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.rng.random::<u64>().to_le_bytes());
        bytes[8..].copy_from_slice(&self.rng.random::<u64>().to_le_bytes());
        bytes[15] |= 1;
        SourceId::from_bytes(bytes).unwrap_or_else(|_| SourceId::random())
    }

    /// Adds a node that joins through `bootstrap`; returns its index (also
    /// its address).
    pub fn add_node(&mut self, bootstrap: &[NodeIx]) -> NodeIx {
        let index = self.nodes.len() as NodeIx;
        let id = Self::node_id(index);
        let seed = self.node_seed(index, 0);
        let core = NodeCore::new(id, index, self.now, self.config.node.clone(), seed, self.now);
        self.nodes.push(SimNode {
            id,
            up: true,
            life: 0,
            core,
            objects: BTreeMap::new(),
            conns: BTreeMap::new(),
            next_conn: 0,
            timer_at: None,
            dirty: BTreeSet::new(),
            traffic: Traffic::default(),
            group: 0,
            links: BTreeSet::new(),
            membership_events: 0,
        });
        let now = self.now;
        self.nodes[index as usize].core.bootstrap(now, bootstrap.iter().copied());
        self.flush(index);
        index
    }

    /// Makes `node` hold `object` (from its initial state): it replicates
    /// with every connected peer that holds it too.
    pub fn replicate(&mut self, node: NodeIx, object: ObjectId) {
        let writer = self.fresh_writer();
        let replica = Replica::with_config(writer, (self.make)(), self.config.replica.clone());
        self.hold(node, object, replica);
    }

    /// Makes `node` hold `object` (from its initial state), streamed only
    /// with `peers` (the transport's `Node::replicate_with`): what a node
    /// that goes through one replica of an object holds.
    pub fn replicate_with(&mut self, node: NodeIx, object: ObjectId, peers: BTreeSet<NodeIx>) {
        let writer = self.fresh_writer();
        let replica = Replica::with_config(writer, (self.make)(), self.config.replica.clone());
        self.hold_with(node, object, replica, Some(peers));
    }

    /// Makes `node` hold `object` as `replica`.
    pub fn hold(&mut self, node: NodeIx, object: ObjectId, replica: Replica<T>) {
        self.hold_with(node, object, replica, None);
    }

    fn hold_with(
        &mut self,
        node: NodeIx,
        object: ObjectId,
        replica: Replica<T>,
        peers: Option<BTreeSet<NodeIx>>,
    ) {
        let n = &mut self.nodes[node as usize];
        if n.objects.contains_key(&object) {
            return;
        }
        let mut held = Object::new(replica);
        held.peers = peers;
        n.objects.insert(object, held);
        let conns: Vec<u64> = n.conns.values().copied().collect();
        let mut peers = BTreeSet::new();
        for conn in conns {
            self.open_stream(conn, object);
            if let Some(c) = self.conns.get(&conn) {
                peers.extend(c.ends.iter().map(|e| e.node).filter(|&p| p != node));
            }
        }
        self.nodes[node as usize].dirty.insert(object);
        self.flush(node);
        // The peers' new streams have their Hellos to send too.
        for peer in peers {
            self.flush(peer);
        }
    }

    /// Runs `f` on `node`'s replica of `object` in place (its streams go
    /// on), then sends what it has to say; `None` if the node does not
    /// hold the object. For what the application does to a replica, such
    /// as [`Replica::collect`].
    pub fn with_replica<R>(
        &mut self,
        node: NodeIx,
        object: ObjectId,
        f: impl FnOnce(&mut Replica<T>) -> R,
    ) -> Option<R> {
        let n = &mut self.nodes[node as usize];
        let o = n.objects.get_mut(&object)?;
        let result = f(&mut o.replica);
        n.dirty.insert(object);
        self.flush(node);
        Some(result)
    }

    /// Changes which peers `node` streams `object` with (`None`: every
    /// peer that holds it), as the transport's `Node::set_peers`: its
    /// streams with peers the set drops end at both ends (the transport's
    /// peer gets a Close; here both ends abort at once, as
    /// [`Sim::release`] does), and streams open on its connections with
    /// peers the set admits that hold the object. Nothing if the node does
    /// not hold it.
    pub fn set_peers(&mut self, node: NodeIx, object: ObjectId, peers: Option<BTreeSet<NodeIx>>) {
        let Some(o) = self.nodes[node as usize].objects.get_mut(&object) else { return };
        o.peers = peers;
        let conns: Vec<u64> = self.nodes[node as usize].conns.values().copied().collect();
        let mut touched = BTreeSet::new();
        for conn in conns {
            let Some(c) = self.conns.get(&conn) else { continue };
            let peer = c.ends[usize::from(c.ends[0].node == node)].node;
            let admitted = self.nodes[node as usize].objects[&object].admits(peer);
            if admitted {
                self.open_stream(conn, object);
            } else {
                let o = self.nodes[node as usize].objects.get_mut(&object).expect("held");
                if let Some(stream) = o.streams.remove(&conn) {
                    o.replica.abort(stream);
                }
                if let Some(o) = self.nodes[peer as usize].objects.get_mut(&object)
                    && let Some(stream) = o.streams.remove(&conn)
                {
                    o.replica.abort(stream);
                }
            }
            touched.insert(peer);
        }
        self.nodes[node as usize].dirty.insert(object);
        self.flush(node);
        for peer in touched {
            self.nodes[peer as usize].dirty.insert(object);
            self.flush(peer);
        }
    }

    /// Whether `node` has a stream of `object` with `peer` (on a
    /// connection it has not seen end).
    pub fn is_streaming(&self, node: NodeIx, object: ObjectId, peer: NodeIx) -> bool {
        let Some(o) = self.nodes[node as usize].objects.get(&object) else { return false };
        o.streams
            .keys()
            .any(|conn| self.conns.get(conn).is_some_and(|c| c.ends.iter().any(|e| e.node == peer)))
    }

    /// Makes `node` drop its replica of `object`; returns it.
    pub fn release(&mut self, node: NodeIx, object: ObjectId) -> Option<Replica<T>> {
        let mut held = self.nodes[node as usize].objects.remove(&object)?;
        let peers: Vec<(u64, usize)> = held
            .streams
            .keys()
            .filter_map(|conn| {
                let c = self.conns.get(conn)?;
                let side = usize::from(c.ends[0].node == node);
                Some((*conn, side))
            })
            .collect();
        held.abort_all();
        // The peers' streams for it end as if the peer closed them.
        for (conn, side) in peers {
            let End { node: peer, .. } = self.conns[&conn].ends[side];
            if let Some(o) = self.nodes[peer as usize].objects.get_mut(&object)
                && let Some(stream) = o.streams.remove(&conn)
            {
                o.replica.abort(stream);
            }
        }
        Some(held.replica)
    }

    /// A local update on `node`'s replica of `object`.
    ///
    /// # Panics
    /// If the node does not hold the object.
    pub fn update(
        &mut self,
        node: NodeIx,
        object: ObjectId,
        update: T::Update,
    ) -> Result<Option<Stamp>, ReplicaError> {
        let now = self.now;
        let n = &mut self.nodes[node as usize];
        let o = n.objects.get_mut(&object).expect("the node holds the object");
        let stamp = o.replica.update(now, update)?;
        n.dirty.insert(object);
        self.flush(node);
        Ok(stamp)
    }

    /// Runs every event up to `millis` from now.
    pub fn run_for(&mut self, millis: u64) {
        let until = self.now + millis;
        while let Some((at, event)) = self.queue.pop_until(until) {
            self.now = at;
            self.events_run += 1;
            self.handle(event);
        }
        self.now = until;
    }

    /// Runs until `done` holds (checked every `every` ms of virtual time)
    /// or `limit` ms pass; returns how long it took, or `None`.
    pub fn run_until(
        &mut self,
        limit: u64,
        every: u64,
        mut done: impl FnMut(&Self) -> bool,
    ) -> Option<u64> {
        let start = self.now;
        while self.now - start < limit {
            self.run_for(every.min(limit - (self.now - start)));
            if done(self) {
                return Some(self.now - start);
            }
        }
        None
    }

    /// Crashes `node`: it stops at once; its peers notice its connections
    /// gone after the connection timeout, and membership in time.
    pub fn crash(&mut self, node: NodeIx) {
        let n = &mut self.nodes[node as usize];
        if !n.up {
            return;
        }
        n.up = false;
        let id = n.id;
        for o in n.objects.values_mut() {
            o.abort_all();
        }
        let conns: Vec<u64> = std::mem::take(&mut n.conns).into_values().collect();
        n.links.clear();
        self.crashed_at.insert(id, self.now);
        for conn in conns {
            self.sever(conn, node, self.config.conn_timeout_ms);
        }
    }

    /// Leaves cleanly: tells some members, then stops.
    pub fn leave(&mut self, node: NodeIx) {
        let now = self.now;
        self.nodes[node as usize].core.leave(now);
        self.flush(node);
        self.crash(node);
        self.crashed_at.remove(&self.nodes[node as usize].id);
    }

    /// Restarts a crashed node in a new life, joining through `bootstrap`.
    /// With `keep_store`, its replicas come back as they were (a durable
    /// node: everything it took in was committed); without, it starts
    /// empty under fresh writer ids (the amnesia rule).
    pub fn restart(&mut self, node: NodeIx, keep_store: bool, bootstrap: &[NodeIx]) {
        let now = self.now;
        let life = self.nodes[node as usize].life + 1;
        let seed = self.node_seed(node, life);
        let id = self.nodes[node as usize].id;
        let core = NodeCore::new(id, node, now, self.config.node.clone(), seed, now);
        let objects: Vec<ObjectId> = self.nodes[node as usize].objects.keys().copied().collect();
        {
            let n = &mut self.nodes[node as usize];
            n.up = true;
            n.life = life;
            n.core = core;
            n.timer_at = None;
            n.conns.clear();
            n.links.clear();
            n.next_conn = 0;
        }
        self.crashed_at.remove(&id);
        if !keep_store {
            for object in objects {
                let writer = self.fresh_writer();
                let replica =
                    Replica::with_config(writer, (self.make)(), self.config.replica.clone());
                self.nodes[node as usize].objects.insert(object, Object::new(replica));
            }
        }
        self.nodes[node as usize].core.bootstrap(now, bootstrap.iter().copied());
        self.flush(node);
    }

    /// Splits the network: nodes in different groups reach each other no
    /// more (connections between them are noticed gone after the timeout).
    pub fn partition(&mut self, group_of: impl Fn(NodeIx) -> u32) {
        for (i, n) in self.nodes.iter_mut().enumerate() {
            n.group = group_of(i as NodeIx);
        }
        let cut: Vec<(u64, NodeIx)> = self
            .conns
            .iter()
            .filter(|(_, c)| !c.severed)
            .filter(|(_, c)| {
                let [a, b] = c.ends;
                self.nodes[a.node as usize].group != self.nodes[b.node as usize].group
            })
            .map(|(&k, c)| (k, c.ends[0].node))
            .collect();
        for (conn, _) in cut {
            self.sever(conn, NodeIx::MAX, self.config.conn_timeout_ms);
        }
    }

    /// Changes the datagram loss from now on.
    pub fn set_loss(&mut self, probability: f64) {
        self.config.loss = probability;
    }

    /// Heals every partition.
    pub fn heal(&mut self) {
        for n in &mut self.nodes {
            n.group = 0;
        }
    }

    /// Ends a connection: no more bytes cross it; each end other than
    /// `except` learns it after `after` ms (`except` knows already).
    fn sever(&mut self, conn: u64, except: NodeIx, after: u64) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        if c.severed {
            return;
        }
        c.severed = true;
        for side in 0..2 {
            if c.ends[side].node == except {
                c.closed[side] = true;
            } else {
                self.queue.push(self.now + after, Event::Closed { conn, side });
            }
        }
    }

    fn latency(&mut self) -> u64 {
        let (min, max) = self.config.latency_ms;
        self.rng.random_range(min..=max)
    }

    fn reachable(&self, a: NodeIx, b: NodeIx) -> bool {
        let (a, b) = (&self.nodes[a as usize], &self.nodes[b as usize]);
        b.up && a.group == b.group
    }

    fn handle(&mut self, event: Event) {
        self.by_kind[match &event {
            Event::Datagram { .. } => 0,
            Event::NodeTimer { .. } => 1,
            Event::ObjectTimer { .. } => 2,
            Event::Handshake { .. } | Event::Link { .. } => 3,
            Event::Bytes { .. } | Event::Control { .. } => 4,
            Event::Closed { .. } => 5,
        }] += 1;
        match event {
            Event::Datagram { to, bytes } => {
                let now = self.now;
                let n = &mut self.nodes[to as usize];
                if !n.up {
                    return;
                }
                let _ = n.core.handle_datagram(now, &bytes);
                self.flush(to);
            }
            Event::NodeTimer { node, life } => {
                let n = &mut self.nodes[node as usize];
                if !n.up || n.life != life || n.timer_at != Some(self.now) {
                    return;
                }
                n.timer_at = None;
                n.core.handle_timeout(self.now);
                self.flush(node);
            }
            Event::ObjectTimer { node, life, object } => {
                let now = self.now;
                let n = &mut self.nodes[node as usize];
                if !n.up || n.life != life {
                    return;
                }
                let Some(o) = n.objects.get_mut(&object) else { return };
                if o.timer_at != Some(now) {
                    return;
                }
                o.timer_at = None;
                o.replica.handle_timeout(now);
                n.dirty.insert(object);
                self.flush(node);
            }
            Event::Handshake { from, from_life, to } => {
                let dialer = &self.nodes[from as usize];
                if !dialer.up || dialer.life != from_life || !self.reachable(from, to) {
                    // The dial times out at the dialer, by its own timer.
                    return;
                }
                self.connect(from, to);
            }
            Event::Link { from, from_life, to } => {
                let dialer = &self.nodes[from as usize];
                if !dialer.up
                    || dialer.life != from_life
                    || !self.reachable(from, to)
                    || self.connected(from, to)
                {
                    return;
                }
                self.link_up(from, to);
            }
            Event::Bytes { conn, side, object, bytes } => {
                let Some(c) = self.conns.get(&conn) else { return };
                if c.severed {
                    return;
                }
                let End { node, life, .. } = c.ends[side];
                let now = self.now;
                let n = &mut self.nodes[node as usize];
                if !n.up || n.life != life {
                    return;
                }
                n.traffic.stream_bytes_received += bytes.len() as u64;
                let Some(o) = n.objects.get_mut(&object) else { return };
                let Some(&stream) = o.streams.get(&conn) else { return };
                if o.replica.handle(stream, now, &bytes).is_err() {
                    o.streams.remove(&conn);
                }
                n.dirty.insert(object);
                if let Some(observe) = &mut self.observer {
                    let peer = self.conns[&conn].ends[1 - side].node;
                    let replica = &self.nodes[node as usize].objects[&object].replica;
                    observe(now, node, peer, object, replica);
                }
                self.flush(node);
            }
            Event::Control { conn, side, bytes } => {
                let Some(c) = self.conns.get(&conn) else { return };
                if c.severed {
                    return;
                }
                let End { node, life, local } = c.ends[side];
                let now = self.now;
                let n = &mut self.nodes[node as usize];
                if !n.up || n.life != life {
                    return;
                }
                n.traffic.stream_bytes_received += bytes.len() as u64;
                let _ = n.core.handle_message(now, local, &bytes);
                self.flush(node);
            }
            Event::Closed { conn, side } => {
                let Some(c) = self.conns.get_mut(&conn) else { return };
                c.closed[side] = true;
                let End { node, life, local } = c.ends[side];
                if c.closed == [true, true] {
                    self.conns.remove(&conn);
                }
                let now = self.now;
                let n = &mut self.nodes[node as usize];
                if !n.up || n.life != life || n.conns.remove(&local).is_none() {
                    return;
                }
                if !n.links.remove(&local) {
                    n.core.handle_disconnected(now, local);
                }
                for o in n.objects.values_mut() {
                    if let Some(stream) = o.streams.remove(&conn) {
                        o.replica.abort(stream);
                    }
                }
                self.flush(node);
            }
        }
    }

    /// A handshake completed: the connection is up at both ends, with a
    /// stream per object both hold.
    fn connect(&mut self, from: NodeIx, to: NodeIx) {
        let key = self.next_conn;
        self.next_conn += 1;
        let mut ends = [End { node: from, life: 0, local: 0 }; 2];
        for (side, node) in [(0, from), (1, to)] {
            let n = &mut self.nodes[node as usize];
            let local = n.next_conn;
            n.next_conn += 1;
            n.conns.insert(local, key);
            ends[side] = End { node, life: n.life, local };
        }
        self.conns.insert(key, Conn { ends, severed: false, arrives: [0; 2], closed: [false; 2] });
        let now = self.now;
        for (side, (node, peer)) in [(from, to), (to, from)].into_iter().enumerate() {
            let peer_id = self.nodes[peer as usize].id;
            let local = ends[side].local;
            self.nodes[node as usize].core.handle_connected(now, local, peer_id, peer, side == 0);
        }
        self.open_shared_streams(key, from, to);
    }

    /// Opens a stream on connection `key` for every object both ends hold,
    /// and sends what that makes each end say.
    fn open_shared_streams(&mut self, key: u64, from: NodeIx, to: NodeIx) {
        let shared: Vec<ObjectId> = self.nodes[from as usize]
            .objects
            .keys()
            .filter(|o| self.nodes[to as usize].objects.contains_key(o))
            .copied()
            .collect();
        for object in shared {
            self.open_stream(key, object);
        }
        self.flush(from);
        self.flush(to);
    }

    /// A data link is up: a connection the node cores do not know (not in
    /// their views, never rotated), with a stream per object both hold.
    fn link_up(&mut self, from: NodeIx, to: NodeIx) {
        let key = self.next_conn;
        self.next_conn += 1;
        let mut ends = [End { node: from, life: 0, local: 0 }; 2];
        for (side, node) in [(0, from), (1, to)] {
            let n = &mut self.nodes[node as usize];
            let local = n.next_conn;
            n.next_conn += 1;
            n.conns.insert(local, key);
            n.links.insert(local);
            ends[side] = End { node, life: n.life, local };
        }
        self.conns.insert(key, Conn { ends, severed: false, arrives: [0; 2], closed: [false; 2] });
        self.open_shared_streams(key, from, to);
    }

    /// Opens a data link from `from` to `to`, beside the connections the
    /// node cores keep: the objects both hold sync over it (placement links
    /// the replicas of an object, which the cores' random views would not).
    /// Up after a round trip if `to` is up and reachable and the two are
    /// not connected already; otherwise nothing happens (ask again).
    pub fn link(&mut self, from: NodeIx, to: NodeIx) {
        if from == to || !self.nodes[from as usize].up {
            return;
        }
        let rtt = self.latency() + self.latency();
        let life = self.nodes[from as usize].life;
        self.queue.push(self.now + rtt, Event::Link { from, from_life: life, to });
    }

    /// Closes the data links between `a` and `b`: gone at `a` at once, at
    /// `b` one hop later.
    pub fn unlink(&mut self, a: NodeIx, b: NodeIx) {
        let links: Vec<(ConnId, u64)> = {
            let n = &self.nodes[a as usize];
            n.links
                .iter()
                .filter_map(|local| {
                    let key = *n.conns.get(local)?;
                    let c = self.conns.get(&key)?;
                    c.ends.iter().any(|e| e.node == b).then_some((*local, key))
                })
                .collect()
        };
        for (local, key) in links {
            let n = &mut self.nodes[a as usize];
            n.conns.remove(&local);
            n.links.remove(&local);
            for o in n.objects.values_mut() {
                if let Some(stream) = o.streams.remove(&key) {
                    o.replica.abort(stream);
                }
            }
            let hop = self.latency();
            self.sever(key, a, hop);
        }
    }

    /// Whether `a` and `b` have a connection that still carries bytes (one
    /// of the cores' or a data link).
    pub fn connected(&self, a: NodeIx, b: NodeIx) -> bool {
        let n = &self.nodes[a as usize];
        n.conns.values().any(|key| {
            self.conns.get(key).is_some_and(|c| !c.severed && c.ends.iter().any(|e| e.node == b))
        })
    }

    /// The peers `node` has data links to.
    pub fn links(&self, node: NodeIx) -> Vec<NodeIx> {
        let n = &self.nodes[node as usize];
        n.links
            .iter()
            .filter_map(|local| {
                let c = self.conns.get(n.conns.get(local)?)?;
                c.ends.iter().find(|e| e.node != node).map(|e| e.node)
            })
            .collect()
    }

    /// Opens `object`'s stream on both ends of a connection, if both hold it.
    fn open_stream(&mut self, conn: u64, object: ObjectId) {
        let Some(c) = self.conns.get(&conn) else { return };
        if c.severed {
            return;
        }
        let ends = c.ends;
        // Each end holds it, has no stream of it here yet, and streams it
        // with the other.
        let both = ends.iter().zip(ends.iter().rev()).all(|(e, other)| {
            let n = &self.nodes[e.node as usize];
            n.objects
                .get(&object)
                .is_some_and(|o| !o.streams.contains_key(&conn) && o.admits(other.node))
        });
        if !both {
            return;
        }
        for end in ends {
            let n = &mut self.nodes[end.node as usize];
            let o = n.objects.get_mut(&object).expect("checked above");
            if let Ok(stream) = o.replica.open(StreamOpts::default()) {
                o.streams.insert(conn, stream);
            }
            n.dirty.insert(object);
        }
    }

    /// Carries out what a node's core and replicas have to say.
    fn flush(&mut self, node: NodeIx) {
        let now = self.now;
        loop {
            let n = &mut self.nodes[node as usize];
            if !n.up {
                return;
            }
            if let Some(d) = n.core.poll_transmit() {
                n.traffic.datagrams += 1;
                n.traffic.datagram_bytes += d.bytes.len() as u64 + self.config.datagram_overhead;
                self.send_datagram(node, d.to, d.bytes);
                continue;
            }
            if let Some(command) = n.core.poll_command() {
                match command {
                    Command::Dial { addr, .. } => {
                        let rtt = self.latency() + self.latency();
                        let life = self.nodes[node as usize].life;
                        self.queue.push(
                            now + rtt,
                            Event::Handshake { from: node, from_life: life, to: addr },
                        );
                    }
                    Command::Close { conn, .. } => self.close(node, conn),
                }
                continue;
            }
            if let Some((local, bytes)) = n.core.poll_message() {
                if let Some(&conn) = n.conns.get(&local) {
                    self.send_control(node, conn, bytes);
                }
                continue;
            }
            if let Some(event) = n.core.poll_event() {
                self.observe(node, event);
                continue;
            }
            break;
        }
        let n = &mut self.nodes[node as usize];
        if let Some(at) = n.core.poll_timeout()
            && n.timer_at.is_none_or(|t| at < t)
        {
            n.timer_at = Some(at.max(now));
            let life = n.life;
            self.queue.push(at.max(now), Event::NodeTimer { node, life });
        }
        let dirty = std::mem::take(&mut self.nodes[node as usize].dirty);
        for object in dirty {
            self.transmit(node, object);
        }
    }

    /// Sends what `object`'s streams on `node` have to send, and arms its
    /// timer.
    fn transmit(&mut self, node: NodeIx, object: ObjectId) {
        let now = self.now;
        let life = self.nodes[node as usize].life;
        let Some(o) = self.nodes[node as usize].objects.get_mut(&object) else { return };
        let mut outgoing = Vec::new();
        for (&conn, &stream) in &o.streams {
            let mut buf = Vec::new();
            while let Ok(n) = o.replica.poll_transmit(stream, &mut buf) {
                if n == 0 {
                    break;
                }
            }
            if !buf.is_empty() {
                outgoing.push((conn, buf));
            }
        }
        // Streams the core ended are gone once their Close went out.
        let open: BTreeSet<repred::StreamId> = o.replica.open_streams().collect();
        o.streams.retain(|_, s| open.contains(s) || o.replica.stream_stats(*s).is_some());
        while o.replica.poll_event().is_some() {}
        if let Some(at) = o.replica.poll_timeout()
            && o.timer_at.is_none_or(|t| at < t)
        {
            let at = at.max(now);
            o.timer_at = Some(at);
            self.queue.push(at, Event::ObjectTimer { node, life, object });
        }
        for (conn, bytes) in outgoing {
            self.send_bytes(node, conn, object, bytes);
        }
    }

    fn send_datagram(&mut self, from: NodeIx, to: NodeIx, bytes: Vec<u8>) {
        if to as usize >= self.nodes.len() || self.rng.random_bool(self.config.loss) {
            return;
        }
        if !self.reachable(from, to) {
            return;
        }
        if self.rng.random_bool(self.config.duplicate) {
            let at = self.now + self.latency();
            self.queue.push(at, Event::Datagram { to, bytes: bytes.clone() });
        }
        let at = self.now + self.latency();
        self.queue.push(at, Event::Datagram { to, bytes });
    }

    fn send_bytes(&mut self, from: NodeIx, conn: u64, object: ObjectId, bytes: Vec<u8>) {
        if let Some((at, side)) = self.stream_arrival(from, conn, bytes.len()) {
            self.queue.push(at, Event::Bytes { conn, side, object, bytes });
        }
    }

    fn send_control(&mut self, from: NodeIx, conn: u64, bytes: Vec<u8>) {
        let overhead = self.config.packet_overhead * (bytes.len() as u64).div_ceil(1_200);
        self.nodes[from as usize].traffic.control_bytes += bytes.len() as u64 + overhead;
        if let Some((at, side)) = self.stream_arrival(from, conn, bytes.len()) {
            self.queue.push(at, Event::Control { conn, side, bytes });
        }
    }

    /// Counts `len` stream bytes sent by `from` on `conn`; when and at
    /// which end they arrive, if the connection still carries anything.
    /// Stream bytes are reliable and ordered: never before earlier ones.
    fn stream_arrival(&mut self, from: NodeIx, conn: u64, len: usize) -> Option<(u64, usize)> {
        let latency = self.latency();
        let overhead = self.config.packet_overhead * (len as u64).div_ceil(1_200);
        self.nodes[from as usize].traffic.stream_bytes += len as u64 + overhead;
        let c = self.conns.get_mut(&conn)?;
        if c.severed {
            return None;
        }
        let side = usize::from(c.ends[0].node == from);
        let at = (self.now + latency).max(c.arrives[side]);
        c.arrives[side] = at;
        Some((at, side))
    }

    /// `node`'s core closed a connection: gone here at once, at the peer
    /// one hop later.
    fn close(&mut self, node: NodeIx, local: ConnId) {
        let now = self.now;
        let n = &mut self.nodes[node as usize];
        let Some(conn) = n.conns.remove(&local) else { return };
        n.core.handle_disconnected(now, local);
        for o in n.objects.values_mut() {
            if let Some(stream) = o.streams.remove(&conn) {
                o.replica.abort(stream);
            }
        }
        let hop = self.latency();
        self.sever(conn, node, hop);
    }

    fn observe(&mut self, node: NodeIx, event: NodeEvent<NodeIx>) {
        if matches!(event, NodeEvent::MemberUp { .. } | NodeEvent::MemberDown { .. }) {
            self.nodes[node as usize].membership_events += 1;
        }
        if let NodeEvent::MemberDown { id, .. } = event {
            match self.crashed_at.get(&id) {
                Some(&at) => {
                    let latency = self.now - at;
                    self.detections.latencies.entry(id).or_default().push(latency);
                }
                None => {
                    // Down while up: a false positive, unless it left.
                    let up = self.nodes.iter().any(|n| n.id == id && n.up && !n.core.has_left());
                    if up && self.nodes[node as usize].up {
                        self.detections.false_downs += 1;
                    }
                }
            }
        }
    }

    /// Whether every node that is up sees exactly the nodes that are up as
    /// its live members; what differs if not.
    pub fn membership_converged(&self) -> Result<(), String> {
        let up: BTreeSet<SourceId> = self.nodes.iter().filter(|n| n.up).map(|n| n.id).collect();
        // Each core keeps a count and fingerprint of its live members: equal
        // to those of the nodes up, it sees them (but for a 64-bit
        // collision). O(N) for the cluster where comparing member lists is
        // O(N^2): at 10,000 nodes, milliseconds against most of a minute.
        let expected = LiveDigest::of(up.iter().copied());
        for (i, n) in self.nodes.iter().enumerate() {
            if !n.up || n.core.live_digest() == expected {
                continue;
            }
            let live: BTreeSet<SourceId> = n.core.live().into_keys().collect();
            if live != up {
                let missing: Vec<&SourceId> = up.difference(&live).collect();
                let extra: Vec<&SourceId> = live.difference(&up).collect();
                let state = |id: &SourceId| {
                    n.core.members().into_iter().find(|m| m.id == *id).map(|m| m.state)
                };
                let first = missing.first().or(extra.first()).map(|id| (**id, state(id)));
                return Err(format!(
                    "seed {}: node {i} sees {} live ({} missing, {} not up; first {first:?}) of {}",
                    self.config.seed,
                    live.len(),
                    missing.len(),
                    extra.len(),
                    up.len()
                ));
            }
        }
        Ok(())
    }

    /// Whether every up node that holds `object` has the same clock and
    /// the same state as the others; what differs if not.
    pub fn objects_converged(&self, object: ObjectId) -> Result<(), String>
    where
        T: PartialEq,
    {
        let mut first: Option<(usize, &Replica<T>)> = None;
        for (i, n) in self.nodes.iter().enumerate() {
            if !n.up {
                continue;
            }
            let Some(r) = n.replica(object) else { continue };
            match first {
                None => first = Some((i, r)),
                Some((j, f)) => {
                    if f.clock() != r.clock() {
                        return Err(format!(
                            "seed {}: object {object}: clocks of nodes {j} and {i} differ ({} and {} sources)",
                            self.config.seed,
                            f.clock().len(),
                            r.clock().len()
                        ));
                    }
                    if f.state() != r.state() {
                        return Err(format!(
                            "seed {}: object {object}: states of nodes {j} and {i} differ",
                            self.config.seed
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Events waiting.
    pub fn pending(&self) -> usize {
        self.queue.len()
    }
}
