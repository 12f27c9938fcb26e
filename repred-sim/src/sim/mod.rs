//! The event loop: nodes, connections and datagrams on virtual time.

use std::collections::{BTreeMap, BTreeSet};

use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use repred::{Reduce, Replica, ReplicaError, SourceId, Stamp};
use repred_node::NodeCore;

use crate::node::{Object, SimNode, Traffic};
use crate::queue::{Event, Queue};
use crate::{NodeIx, ObjectId, SimConfig};

mod check;
mod wire;

pub use check::Detections;
use wire::{Conn, End};

/// Where virtual time starts: 2023-11-14, in Unix milliseconds, so that
/// hybrid timestamps look like real ones.
pub const EPOCH: u64 = 1_700_000_000_000;

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

    /// Events waiting.
    pub fn pending(&self) -> usize {
        self.queue.len()
    }
}
