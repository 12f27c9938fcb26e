//! Placement on the simulator: each node's [`Keeper`] fed by its node
//! core's member list, its commands carried out on the simulated cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use repred::{Reduce, ReplicaError, SourceId, Stamp};
use repred_node::MemberState;
use repred_place::{
    Command, Keeper, KeeperConfig, Placement, Route, RouteConfig, RouteEvent, WriteId,
};

use crate::{NodeIx, ObjectId, Sim};

/// What placement did on a simulated cluster.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PlacerStats {
    /// Replicas created by offers (an object arriving at a new replica).
    pub copies: u64,
    /// Replicas dropped once the replicas covered them.
    pub drops: u64,
    /// Offers that found no connection yet (a link was asked for).
    pub unreachable: u64,
    /// Checks answered.
    pub checks: u64,
}

/// Where the objects stand (see [`Placer::check`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PlacementReport {
    /// Objects held by any live node.
    pub objects: usize,
    /// Objects held by exactly their live replicas, all with one clock and
    /// one state.
    pub settled: usize,
    /// Objects whose holders differ from their replicas: (object, holders,
    /// replicas), the first few.
    pub misplaced: Vec<(ObjectId, Vec<NodeIx>, Vec<NodeIx>)>,
    /// How many objects are misplaced in all.
    pub misplaced_count: usize,
    /// Objects whose holders agree on where they live but not yet on what
    /// they hold.
    pub diverged: usize,
    /// Objects known before but held by no live node now (every holder is
    /// down).
    pub unavailable: usize,
}

impl PlacementReport {
    /// Whether every object is held by exactly its replicas, converged.
    pub fn is_settled(&self) -> bool {
        self.settled == self.objects && self.unavailable == 0
    }
}

/// A node's access to an object it holds no replica of ([`Placer::open`]).
struct Client {
    route: Route,
    /// The replica its copy was seen streaming with, while the route goes
    /// through it: when that stream ends, the route fails it over.
    streaming: Option<NodeIx>,
    /// Writes waiting for a replica's clock to cover them.
    waiting: BTreeMap<WriteId, Stamp>,
    acked: Vec<Stamp>,
    expired: Vec<Stamp>,
}

/// Drives a [`Keeper`] per simulated node: reads each node core's member
/// list when it changed, carries offers (the offered node's keeper decides;
/// taken, it creates an empty replica that syncs over the connection),
/// answers checks with the peer replica's clock (what an acknowledgement
/// carries), drops replicas, and keeps a data link ([`Sim::link`]) to every
/// peer a keeper shares objects with, closing links nobody needs.
///
/// A node that holds no replica of an object can [`open`](Placer::open)
/// it: the node gets a copy of its own, streamed with the replica the
/// placer's [`Route`] for it chose and with no other node
/// ([`Sim::set_peers`], as the transport's placer does with
/// `Node::set_peers`), over a link to that replica if the node cores keep
/// no connection between the two; the placer feeds the route the
/// replicas' clocks to acknowledge the copy's writes, and tells it when
/// the copy's stream with the replica in use ends
/// ([`Route::handle_failed`]). The copy is no placement replica: the
/// keepers never count it.
///
/// Call [`Placer::step`] between runs of the simulation, or use
/// [`Placer::run_for`] which does both.
pub struct Placer {
    config: KeeperConfig,
    keepers: Vec<Option<Keeper<ObjectId>>>,
    seen: Vec<u64>,
    /// When each node's keeper last read its member list.
    synced_at: Vec<u64>,
    index: BTreeMap<SourceId, NodeIx>,
    known: BTreeSet<ObjectId>,
    leaving: BTreeSet<NodeIx>,
    clients: BTreeMap<(NodeIx, ObjectId), Client>,
    route_config: RouteConfig,
    tick_ms: u64,
    stats: PlacerStats,
    /// The member lists the keepers share, the latest last: keepers with
    /// equal lists hold one copy ([`Keeper::share_placement`]) rather than
    /// N lists of N members.
    shared: Vec<Arc<Placement>>,
    share_lists: bool,
}

/// How many distinct member lists [`Placer`] offers a keeper to share: a
/// change spreading through the cluster makes a few at once.
const SHARED_LISTS: usize = 4;

/// Has `keeper` share an equal member list among `shared`, or offers its
/// own to the next ones.
fn share(shared: &mut Vec<Arc<Placement>>, keeper: &mut Keeper<ObjectId>) {
    // Lists no keeper holds any more go.
    shared.retain(|p| Arc::strong_count(p) > 1);
    if shared.iter().rev().any(|p| keeper.share_placement(p)) {
        return;
    }
    shared.push(keeper.shared_placement().clone());
    if shared.len() > SHARED_LISTS {
        shared.remove(0);
    }
}

impl Placer {
    /// A placer whose keepers run with `config`; it steps every `tick_ms`
    /// of virtual time in [`Placer::run_for`].
    pub fn new(config: KeeperConfig, tick_ms: u64) -> Self {
        Self {
            config,
            keepers: Vec::new(),
            seen: Vec::new(),
            synced_at: Vec::new(),
            index: BTreeMap::new(),
            known: BTreeSet::new(),
            leaving: BTreeSet::new(),
            clients: BTreeMap::new(),
            route_config: RouteConfig::default(),
            tick_ms: tick_ms.max(1),
            stats: PlacerStats::default(),
            shared: Vec::new(),
            share_lists: true,
        }
    }

    /// Sets how the routes of [`Placer::open`] fail over and time out.
    pub fn with_routes(mut self, config: RouteConfig) -> Self {
        self.route_config = config;
        self
    }

    /// Whether keepers with equal member lists share one (default: yes;
    /// off, each keeps its own, as on the transport: to measure what it
    /// saves). Decisions are the same either way.
    pub fn share_member_lists(mut self, share: bool) -> Self {
        self.share_lists = share;
        self
    }

    /// How many distinct member lists the keepers hold, and how many
    /// members they have in all: what the keepers' lists cost, in
    /// members kept (about 90 bytes each).
    pub fn member_lists(&self) -> (usize, usize) {
        let mut seen: BTreeSet<*const Placement> = BTreeSet::new();
        let mut members = 0;
        for keeper in self.keepers.iter().flatten() {
            let list = keeper.shared_placement();
            if seen.insert(Arc::as_ptr(list)) {
                members += list.len();
            }
        }
        (seen.len(), members)
    }

    /// Counters.
    pub fn stats(&self) -> PlacerStats {
        self.stats
    }

    /// Node `node`'s keeper, if it runs one.
    pub fn keeper(&self, node: NodeIx) -> Option<&Keeper<ObjectId>> {
        self.keepers.get(node as usize).and_then(Option::as_ref)
    }

    /// The node an id names.
    pub fn node_of(&self, id: SourceId) -> Option<NodeIx> {
        self.index.get(&id).copied()
    }

    /// Starts a keeper on every node of `sim` that is up and has none
    /// (new nodes, restarted ones); a restarted node's keeper takes over
    /// the objects its store kept.
    pub fn adopt<T: Reduce>(&mut self, sim: &Sim<T>) {
        let now = sim.now();
        for node in sim.node_ids() {
            let n = sim.node(node);
            self.index.insert(n.id(), node);
            let i = node as usize;
            if self.keepers.len() <= i {
                self.keepers.resize_with(i + 1, || None);
                self.seen.resize(i + 1, u64::MAX);
                self.synced_at.resize(i + 1, 0);
            }
            if !n.is_up() {
                self.keepers[i] = None;
                continue;
            }
            if self.keepers[i].is_some() {
                continue;
            }
            let mut keeper = Keeper::new(n.id(), self.config.clone());
            keeper.sync_members(now, members(sim, node));
            if self.share_lists {
                share(&mut self.shared, &mut keeper);
            }
            self.seen[i] = n.membership_events();
            self.synced_at[i] = now;
            for object in n.objects() {
                if !self.clients.contains_key(&(node, object)) {
                    keeper.hold(now, object, None);
                }
            }
            self.keepers[i] = Some(keeper);
        }
    }

    /// Creates `object` on `node` (empty), which offers it to its replicas
    /// if they are others.
    pub fn create<T: Reduce>(&mut self, sim: &mut Sim<T>, node: NodeIx, object: ObjectId) {
        sim.replicate(node, object);
        self.known.insert(object);
        let now = sim.now();
        if let Some(k) = self.keepers.get_mut(node as usize).and_then(Option::as_mut) {
            k.hold(now, object, None);
        }
    }

    /// A write on `node`'s replica of `object` (which it must hold).
    pub fn write<T: Reduce>(
        &mut self,
        sim: &mut Sim<T>,
        node: NodeIx,
        object: ObjectId,
        update: T::Update,
    ) -> Result<Option<Stamp>, ReplicaError> {
        let stamp = sim.update(node, object, update)?;
        if let (Some(client), Some(stamp)) = (self.clients.get_mut(&(node, object)), stamp) {
            let write = client.route.wrote(sim.now(), stamp);
            client.waiting.insert(write, stamp);
        } else if let Some(k) = self.keepers.get_mut(node as usize).and_then(Option::as_mut) {
            k.changed(&object);
        }
        Ok(stamp)
    }

    /// Opens `object` on `node`, which holds no replica of it (else
    /// nothing happens: write to its replica): the node gets a copy of its
    /// own, which syncs with one live replica chosen by a [`Route`];
    /// [`Placer::write`] on the node then writes to the copy, and
    /// [`Placer::acknowledged`] lists the writes a replica's clock covers.
    /// Returns the replica chosen, if any is live.
    pub fn open<T: Reduce>(
        &mut self,
        sim: &mut Sim<T>,
        node: NodeIx,
        object: ObjectId,
    ) -> Option<NodeIx> {
        let keeper = self.keeper(node)?;
        if keeper.role(&object).is_some() {
            return None;
        }
        let me = keeper.id();
        let replicas = keeper.place(&object, None).replicas;
        if sim.node(node).replica(object).is_none() {
            // Streamed with nobody until the route attaches.
            sim.replicate_with(node, object, BTreeSet::new());
        }
        let mut route = Route::new(self.route_config.clone());
        route.set_replicas(sim.now(), replicas.into_iter().filter(|r| *r != me));
        let client = Client {
            route,
            streaming: None,
            waiting: BTreeMap::new(),
            acked: Vec::new(),
            expired: Vec::new(),
        };
        self.clients.insert((node, object), client);
        self.routes(sim, node);
        self.via(node, object)
    }

    /// Closes `node`'s access to `object` ([`Placer::open`]): its copy is
    /// dropped (writes not acknowledged yet may be lost with it).
    pub fn close<T: Reduce>(&mut self, sim: &mut Sim<T>, node: NodeIx, object: ObjectId) {
        if self.clients.remove(&(node, object)).is_some() {
            sim.release(node, object);
        }
    }

    /// The route of `node`'s access to `object`, if it is open.
    pub fn route(&self, node: NodeIx, object: ObjectId) -> Option<&Route> {
        self.clients.get(&(node, object)).map(|c| &c.route)
    }

    /// The replica `node`'s access to `object` goes through now.
    pub fn via(&self, node: NodeIx, object: ObjectId) -> Option<NodeIx> {
        self.route(node, object)?.via().and_then(|id| self.node_of(id))
    }

    /// The stamps of `node`'s writes to `object` through its access that a
    /// replica acknowledged, in the order they were.
    pub fn acknowledged(&self, node: NodeIx, object: ObjectId) -> &[Stamp] {
        self.clients.get(&(node, object)).map_or(&[], |c| &c.acked)
    }

    /// The stamps of `node`'s writes to `object` that no replica
    /// acknowledged in time ([`RouteEvent::Expired`]).
    pub fn expired(&self, node: NodeIx, object: ObjectId) -> &[Stamp] {
        self.clients.get(&(node, object)).map_or(&[], |c| &c.expired)
    }

    /// Steps the routes of `node`'s accesses: the replicas as its keeper
    /// places them, the clocks of those it is connected to, the end of the
    /// stream with the replica in use, due timeouts; the copy streamed
    /// with the replica chosen alone, over a link if need be.
    fn routes<T: Reduce>(&mut self, sim: &mut Sim<T>, node: NodeIx) {
        let now = sim.now();
        let objects: Vec<ObjectId> =
            self.clients.range((node, 0)..=(node, ObjectId::MAX)).map(|(&(_, o), _)| o).collect();
        for object in objects {
            let Some(keeper) = self.keeper(node) else { return };
            let me = keeper.id();
            let mut replicas = keeper.place(&object, None).replicas;
            replicas.retain(|r| *r != me);
            let clocks: Vec<(SourceId, repred::Clock)> = replicas
                .iter()
                .filter_map(|&id| {
                    let t = self.node_of(id)?;
                    let held = sim.node(t).replica(object)?;
                    sim.connected(node, t).then(|| (id, held.clock().clone()))
                })
                .collect();
            // The replica in use as the stream saw it, before the new list
            // may move the route on: it is the one to fail if that stream
            // ended, not whichever the list moved the route to.
            let via_id = self.route(node, object).and_then(|r| r.via());
            let via = self.via(node, object);
            let streaming = via.is_some_and(|v| sim.is_streaming(node, object, v));
            let Some(client) = self.clients.get_mut(&(node, object)) else { continue };
            let route = &mut client.route;
            route.set_replicas(now, replicas);
            for (id, clock) in &clocks {
                route.handle_clock(now, *id, clock);
            }
            // The stream with the replica in use ended (its connection was
            // seen gone, or the replica released the object): the
            // transport's placer learns it from `Node::stream_ends`.
            match (via, streaming) {
                (Some(v), true) => client.streaming = Some(v),
                (Some(v), false) if client.streaming == Some(v) => {
                    client.streaming = None;
                    if let Some(id) = via_id {
                        route.handle_failed(now, id);
                    }
                }
                _ => {}
            }
            if route.poll_timeout().is_some_and(|at| at <= now) {
                route.handle_timeout(now);
            }
            let mut attach = None;
            let mut moved = false;
            while let Some(event) = route.poll_event() {
                match event {
                    RouteEvent::Attach { to } => {
                        attach = Some(to);
                        moved = true;
                        client.streaming = None;
                    }
                    RouteEvent::Detach => {
                        attach = None;
                        moved = true;
                        client.streaming = None;
                    }
                    RouteEvent::Acked { write, .. } => {
                        client.acked.extend(client.waiting.remove(&write));
                    }
                    RouteEvent::Expired { write } => {
                        client.expired.extend(client.waiting.remove(&write));
                    }
                }
            }
            let attach = attach.and_then(|to| self.node_of(to));
            if moved {
                // Streamed with the replica chosen alone, as the
                // transport's `Peers::only`.
                sim.set_peers(node, object, Some(attach.into_iter().collect()));
            }
            if let Some(t) = attach
                && !sim.connected(node, t)
            {
                sim.link(node, t);
            }
        }
    }

    /// The live replicas of `object` as `node` sees them: where a client
    /// on `node` reads and writes.
    pub fn replicas(&self, node: NodeIx, object: ObjectId) -> Vec<NodeIx> {
        let Some(k) = self.keeper(node) else { return Vec::new() };
        k.place(&object, None).replicas.iter().filter_map(|id| self.node_of(*id)).collect()
    }

    /// Crashes `node` (its keeper stops with it).
    /// Its accesses ([`Placer::open`]) end, their copies with them.
    pub fn crash<T: Reduce>(&mut self, sim: &mut Sim<T>, node: NodeIx) {
        sim.crash(node);
        if let Some(k) = self.keepers.get_mut(node as usize) {
            *k = None;
        }
        let open: Vec<(NodeIx, ObjectId)> =
            self.clients.range((node, 0)..=(node, ObjectId::MAX)).map(|(&key, _)| key).collect();
        for (node, object) in open {
            self.clients.remove(&(node, object));
            sim.release(node, object);
        }
    }

    /// Restarts `node` (see [`Sim::restart`]) with a new keeper.
    pub fn restart<T: Reduce>(
        &mut self,
        sim: &mut Sim<T>,
        node: NodeIx,
        keep_store: bool,
        bootstrap: &[NodeIx],
    ) {
        sim.restart(node, keep_store, bootstrap);
        self.adopt(sim);
    }

    /// Starts a graceful leave: `node` hands every object to its replicas
    /// (each dropped once covered) and leaves the cluster once it holds
    /// nothing (checked at each step); the simulation goes on meanwhile.
    pub fn start_leave<T: Reduce>(&mut self, sim: &Sim<T>, node: NodeIx) {
        let now = sim.now();
        if let Some(k) = self.keepers.get_mut(node as usize).and_then(Option::as_mut) {
            k.leave(now);
            self.leaving.insert(node);
        }
    }

    /// Whether `node` is still handing off before it leaves.
    pub fn is_leaving(&self, node: NodeIx) -> bool {
        self.leaving.contains(&node)
    }

    /// Runs the simulation for `millis`, stepping the keepers every tick.
    pub fn run_for<T: Reduce>(&mut self, sim: &mut Sim<T>, millis: u64) {
        let until = sim.now() + millis;
        while sim.now() < until {
            let step = self.tick_ms.min(until - sim.now());
            sim.run_for(step);
            self.step(sim);
        }
    }

    /// Runs until `done` holds (checked every `every` ms) or `limit` ms
    /// pass; how long it took, or `None`.
    pub fn run_until<T: Reduce>(
        &mut self,
        sim: &mut Sim<T>,
        limit: u64,
        every: u64,
        mut done: impl FnMut(&Self, &Sim<T>) -> bool,
    ) -> Option<u64> {
        let start = sim.now();
        while sim.now() - start < limit {
            self.run_for(sim, every.min(limit - (sim.now() - start)));
            if done(self, sim) {
                return Some(sim.now() - start);
            }
        }
        None
    }

    /// One pass over every node: membership read where it changed, due
    /// retries, commands carried out, links opened and closed.
    pub fn step<T: Reduce>(&mut self, sim: &mut Sim<T>) {
        let now = sim.now();
        let nodes: Vec<NodeIx> = sim.node_ids().collect();
        for &node in &nodes {
            let i = node as usize;
            let Some(keeper) = self.keepers.get_mut(i).and_then(Option::as_mut) else { continue };
            if !sim.node(node).is_up() {
                self.keepers[i] = None;
                continue;
            }
            // The member list is read again when it changed, at most once
            // a second (failure detection takes seconds anyway).
            let events = sim.node(node).membership_events();
            if self.seen[i] != events && now >= self.synced_at[i] + 1_000 {
                self.seen[i] = events;
                self.synced_at[i] = now;
                keeper.sync_members(now, members(sim, node));
                if self.share_lists {
                    share(&mut self.shared, keeper);
                }
            }
            if keeper.poll_timeout().is_some_and(|at| at <= now) {
                keeper.handle_timeout(now);
            }
            self.commands(sim, node);
            self.routes(sim, node);
        }
        for &node in &nodes {
            self.links(sim, node);
        }
        let done: Vec<NodeIx> = self
            .leaving
            .iter()
            .copied()
            .filter(|&n| self.keeper(n).is_none_or(|k| k.is_empty()))
            .collect();
        for node in done {
            self.leaving.remove(&node);
            sim.leave(node);
            self.keepers[node as usize] = None;
        }
    }

    /// Carries out what `node`'s keeper asks for.
    fn commands<T: Reduce>(&mut self, sim: &mut Sim<T>, node: NodeIx) {
        let now = sim.now();
        let i = node as usize;
        let Some(mut keeper) = self.keepers[i].take() else { return };
        let me = keeper.id();
        while let Some(command) = keeper.poll_command() {
            match command {
                Command::Offer { object, k, to, leaving } => {
                    let taken = match self.node_of(to) {
                        Some(t) if sim.connected(node, t) => {
                            let taken = self.keepers[t as usize]
                                .as_mut()
                                .is_some_and(|tk| tk.handle_offer(now, object, k, me, leaving));
                            if taken && sim.node(t).replica(object).is_none() {
                                sim.replicate(t, object);
                                self.stats.copies += 1;
                            }
                            if taken && self.clients.remove(&(t, object)).is_some() {
                                // A copy it had open is its replica now,
                                // streamed with every holder.
                                sim.set_peers(t, object, None);
                            }
                            taken
                        }
                        Some(t) => {
                            sim.link(node, t);
                            self.stats.unreachable += 1;
                            false
                        }
                        None => false,
                    };
                    keeper.handle_offer_result(now, &object, to, taken);
                }
                Command::Check { object, peer } => {
                    let covers = match (self.node_of(peer), sim.node(node).replica(object)) {
                        (Some(t), Some(mine)) if sim.connected(node, t) => {
                            self.stats.checks += 1;
                            sim.node(t)
                                .replica(object)
                                .is_some_and(|r| r.clock().covers(mine.clock()))
                        }
                        (Some(t), _) => {
                            sim.link(node, t);
                            false
                        }
                        (None, _) => false,
                    };
                    keeper.handle_check(now, &object, peer, covers);
                }
                Command::Drop { object } => {
                    sim.release(node, object);
                    self.stats.drops += 1;
                }
            }
        }
        self.keepers[i] = Some(keeper);
    }

    /// Opens a link to every peer `node`'s keeper needs and is not
    /// connected to; closes its links nobody at either end needs.
    fn links<T: Reduce>(&mut self, sim: &mut Sim<T>, node: NodeIx) {
        let Some(keeper) = self.keeper(node) else { return };
        let mut wanted: Vec<NodeIx> = keeper.peers().filter_map(|p| self.node_of(p)).collect();
        wanted.extend(self.vias(node));
        for t in wanted {
            if sim.node(t).is_up() && !sim.connected(node, t) {
                sim.link(node, t);
            }
        }
        let me = sim.node(node).id();
        let vias: BTreeSet<NodeIx> = self.vias(node).collect();
        for t in sim.links(node) {
            let theirs =
                self.keeper(t).is_some_and(|k| k.wants(me)) || self.vias(t).any(|v| v == node);
            let mine =
                self.keeper(node).is_some_and(|k| k.wants(sim.node(t).id())) || vias.contains(&t);
            if !theirs && !mine {
                sim.unlink(node, t);
            }
        }
    }

    /// The replicas `node`'s accesses go through.
    fn vias(&self, node: NodeIx) -> impl Iterator<Item = NodeIx> + '_ {
        self.clients
            .range((node, 0)..=(node, ObjectId::MAX))
            .filter_map(|(_, c)| c.route.via().and_then(|id| self.node_of(id)))
    }

    /// Where every object stands: held by exactly its live replicas (as
    /// the keeper of the first live node computes them) with one clock and
    /// one state, or not. The copies of nodes that opened an object
    /// ([`Placer::open`]) are no replicas and do not count.
    pub fn check<T: Reduce + PartialEq>(&self, sim: &Sim<T>) -> PlacementReport {
        let mut holders: BTreeMap<ObjectId, Vec<NodeIx>> = BTreeMap::new();
        for node in sim.up_nodes() {
            for object in sim.node(node).objects() {
                if !self.clients.contains_key(&(node, object)) {
                    holders.entry(object).or_default().push(node);
                }
            }
        }
        let mut report = PlacementReport {
            objects: holders.len(),
            unavailable: self.known.iter().filter(|o| !holders.contains_key(o)).count(),
            ..PlacementReport::default()
        };
        let Some(judge) = sim.up_nodes().into_iter().find(|&n| self.keeper(n).is_some()) else {
            return report;
        };
        for (object, held) in holders {
            let mut replicas = self.replicas(judge, object);
            replicas.sort_unstable();
            if held != replicas {
                report.misplaced_count += 1;
                if report.misplaced.len() < 5 {
                    report.misplaced.push((object, held, replicas));
                }
                continue;
            }
            let first = sim.node(held[0]).replica(object).expect("held");
            let same = held[1..].iter().all(|&n| {
                let r = sim.node(n).replica(object).expect("held");
                r.clock() == first.clock() && r.state() == first.state()
            });
            if same {
                report.settled += 1;
            } else {
                report.diverged += 1;
            }
        }
        report
    }
}

/// `node`'s member list as its core has it: alive and suspected members
/// are live, members declared down are absent.
fn members<T: Reduce>(sim: &Sim<T>, node: NodeIx) -> Vec<(SourceId, bool)> {
    sim.node(node)
        .core()
        .members()
        .into_iter()
        .map(|m| (m.id, m.state != MemberState::Down))
        .collect()
}
