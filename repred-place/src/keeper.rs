//! Moving objects as membership changes, without loss: a sans-IO state
//! machine per node.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use repred::SourceId;

use crate::placement::{Name, ObjectKey, Placed, Placement, Scheme};

/// How a [`Keeper`] places and moves objects.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeeperConfig {
    /// Replicas per object unless [`Keeper::hold`] says otherwise. Every
    /// node must use the same k for the same object. Default 3.
    pub k: usize,
    /// How replicas are chosen. Default [`Scheme::Neighbours`].
    pub scheme: Scheme,
    /// How long to wait before asking again a replica that refused an
    /// offer (its member list differs from ours for now), could not be
    /// reached, or did not yet cover what this node holds. Default 1 s.
    pub retry_ms: u64,
}

impl Default for KeeperConfig {
    fn default() -> Self {
        Self { k: 3, scheme: Scheme::Neighbours, retry_ms: 1_000 }
    }
}

impl KeeperConfig {
    /// Sets [`KeeperConfig::k`].
    pub fn k(mut self, k: usize) -> Self {
        self.k = k;
        self
    }

    /// Sets [`KeeperConfig::scheme`].
    pub fn scheme(mut self, scheme: Scheme) -> Self {
        self.scheme = scheme;
        self
    }

    /// Sets [`KeeperConfig::retry_ms`].
    pub fn retry_ms(mut self, millis: u64) -> Self {
        self.retry_ms = millis;
        self
    }
}

/// Why this node holds an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// It is one of the object's owners and live: a replica.
    Owner,
    /// It is a live replica only because `owner` is absent: it holds the
    /// object for that owner (a hint) and hands it back when the owner
    /// returns.
    StandIn {
        /// The absent owner it covers.
        owner: SourceId,
    },
    /// It is no replica (any more): it keeps the object, serves it and
    /// offers it to the replicas until every live replica's clock covers
    /// what it holds, then drops it.
    HandingOff,
}

/// What the driver should do for a [`Keeper`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub enum Command<O> {
    /// `to` should hold `object` and is not known to: open the object's
    /// stream to it. Its keeper decides with
    /// [`handle_offer`](Keeper::handle_offer) (it takes the object if its
    /// member list makes it a replica) and the replicas then sync by
    /// ordinary anti-entropy. Report the answer with
    /// [`handle_offer_result`](Keeper::handle_offer_result).
    Offer {
        /// Which object.
        object: O,
        /// Its number of replicas.
        k: usize,
        /// To whom.
        to: SourceId,
        /// Whether this node is leaving: the receiver then counts it
        /// absent already (its member list may not say so yet).
        leaving: bool,
    },
    /// Ask `peer` for its clock of `object`: whether it covers this
    /// node's ([`repred::Clock::covers`]). Report it with
    /// [`handle_check`](Keeper::handle_check).
    Check {
        /// Which object.
        object: O,
        /// Whom.
        peer: SourceId,
    },
    /// Drop this node's replica of `object`: it is no replica, and every
    /// live replica's clock covers what it held.
    Drop {
        /// Which object.
        object: O,
    },
}

#[derive(Clone, Debug)]
struct Held {
    key: ObjectKey,
    k: usize,
    primary: Option<SourceId>,
    placed: Placed,
    role: Role,
    /// Replicas known to hold the object.
    holds: BTreeSet<SourceId>,
    /// Replicas whose clock covered this node's since it last changed.
    covers: BTreeSet<SourceId>,
}

/// Counters of a keeper.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeeperStats {
    /// Offers handed out (retries included).
    pub offers: u64,
    /// Offers of others taken: replicas created here.
    pub taken: u64,
    /// Offers of others refused (not a replica by this node's list).
    pub refused: u64,
    /// Checks handed out.
    pub checks: u64,
    /// Objects dropped after the replicas covered them.
    pub drops: u64,
}

/// One node's share of placement, with no I/O: which objects it holds
/// and why, which replicas it must offer them to, when it may drop one.
///
/// Every node runs one, fed the same member list (from SWIM, say), so
/// all agree where each object lives without asking anyone. The rules:
///
/// - **Placement**: an object's replicas are the first k live members of
///   its preference list ([`Placement`]).
/// - **Offers**: a node that holds an object offers it to every replica
///   not known to hold it; the replica takes it if its own list makes it
///   a replica, and the two sync by the ordinary anti-entropy of their
///   streams. A refused or unreachable offer is made again after
///   [`KeeperConfig::retry_ms`].
/// - **Drops without loss**: a node that is no replica of an object
///   (membership moved it, or it is leaving) keeps it and keeps serving
///   it until every live replica has acknowledged by its clock that it
///   covers what this node held; only then does it drop it. Any change
///   here in between (a write it took) asks again.
/// - **Hinted handoff**: while an owner is absent (declared down but not
///   forgotten), the next live member stands in; when the owner is back,
///   the stand-in is no replica any more, offers the object to the owner
///   (which resyncs from its own store's clock) and drops it once covered.
///
/// Drive it like the other cores: inputs `hold`, `sync_members` /
/// `set_member` / `remove_member`, `handle_offer`, `handle_offer_result`,
/// `handle_check`, `changed`, `handle_timeout`; outputs `poll_command`
/// (until `None`) and `poll_timeout`.
///
/// ```
/// use repred::SourceId;
/// use repred_place::{Command, Keeper, KeeperConfig};
///
/// let ids: Vec<SourceId> = (0..5).map(|i| SourceId::new(format!("n{i}")).unwrap()).collect();
/// let mut keepers: Vec<Keeper<String>> =
///     ids.iter().map(|&id| Keeper::new(id, KeeperConfig::default())).collect();
/// for k in &mut keepers {
///     k.sync_members(0, ids.iter().map(|&id| (id, true)));
/// }
/// // Node 0 creates an object; it offers it to the replicas.
/// keepers[0].hold(0, "doc".to_string(), None);
/// while let Some(command) = keepers[0].poll_command() {
///     if let Command::Offer { object, k, to, leaving } = command {
///         let i = ids.iter().position(|&id| id == to).unwrap();
///         let taken = keepers[i].handle_offer(0, object.clone(), k, ids[0], leaving);
///         keepers[0].handle_offer_result(0, &object, to, taken);
///     }
/// }
/// let holders = keepers.iter().filter(|k| k.role(&"doc".to_string()).is_some()).count();
/// assert!(holders >= 3);
/// ```
#[derive(Debug)]
pub struct Keeper<O: Name> {
    me: SourceId,
    config: KeeperConfig,
    /// Copied on write: keepers whose member lists are equal may share one
    /// ([`Keeper::share_placement`]), as the simulator's thousands do.
    placement: Arc<Placement>,
    leaving: bool,
    /// Members that said they are leaving, counted absent until the
    /// membership protocol too says they are down.
    departed: BTreeSet<SourceId>,
    objects: BTreeMap<O, Held>,
    pending: BTreeSet<O>,
    /// Other nodes this node shares objects with, and how many.
    peers: BTreeMap<SourceId, usize>,
    commands: VecDeque<Command<O>>,
    retry_at: Option<u64>,
    stats: KeeperStats,
}

impl<O: Name> Keeper<O> {
    /// The keeper of node `me`, which is a live member to itself.
    pub fn new(me: SourceId, config: KeeperConfig) -> Self {
        let mut placement = Placement::new(config.scheme);
        placement.set(me, true);
        Self {
            me,
            config,
            placement: Arc::new(placement),
            leaving: false,
            departed: BTreeSet::new(),
            objects: BTreeMap::new(),
            pending: BTreeSet::new(),
            peers: BTreeMap::new(),
            commands: VecDeque::new(),
            retry_at: None,
            stats: KeeperStats::default(),
        }
    }

    /// This node.
    pub fn id(&self) -> SourceId {
        self.me
    }

    /// The settings.
    pub fn config(&self) -> &KeeperConfig {
        &self.config
    }

    /// The member list as this keeper has it.
    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// The member list as this keeper has it, shared: what
    /// [`Keeper::share_placement`] of another keeper takes.
    pub fn shared_placement(&self) -> &Arc<Placement> {
        &self.placement
    }

    /// Takes `other` as its member list if it is equal to this keeper's
    /// own (same members, same liveness, same scheme): a saving of memory
    /// for a driver that runs many keepers in one process (the simulator:
    /// a list of N members per keeper is N^2 in all), changing nothing of
    /// what the keeper decides. The next change of its list copies it.
    /// Whether it is shared now.
    pub fn share_placement(&mut self, other: &Arc<Placement>) -> bool {
        if Arc::ptr_eq(&self.placement, other) {
            return true;
        }
        if *self.placement != **other {
            return false;
        }
        self.placement = other.clone();
        true
    }

    /// Sets a member in the list, copying a shared list only if it
    /// changes; whether it changed.
    fn set_placement(&mut self, id: SourceId, live: bool) -> bool {
        if self.placement.contains(id) && self.placement.is_live(id) == live {
            return false;
        }
        Arc::make_mut(&mut self.placement).set(id, live)
    }

    /// Forgets a member, copying a shared list only if it was there.
    fn remove_placement(&mut self, id: SourceId) -> bool {
        self.placement.contains(id) && Arc::make_mut(&mut self.placement).remove(id)
    }

    /// Whether [`Keeper::leave`] was called.
    pub fn is_leaving(&self) -> bool {
        self.leaving
    }

    /// Counters.
    pub fn stats(&self) -> KeeperStats {
        self.stats
    }

    /// Where `object` lives by this node's list, with `k` replicas (or the
    /// default): whom a client reads and writes through.
    pub fn place(&self, object: &O, k: Option<usize>) -> Placed {
        self.placement.place(object.key(), k.unwrap_or(self.config.k))
    }

    /// This node holds `object` (it created it, or a store restored it),
    /// with `k` replicas or the default. If it is no replica, it offers it
    /// to the replicas and drops it once they cover it.
    pub fn hold(&mut self, now: u64, object: O, k: Option<usize>) {
        if self.objects.contains_key(&object) {
            return;
        }
        let k = k.unwrap_or(self.config.k);
        self.insert(object.clone(), k, None);
        self.work(now, &object);
    }

    /// This node dropped `object` on its own (not by a [`Command::Drop`]):
    /// forget it.
    pub fn forget(&mut self, object: &O) {
        if let Some(h) = self.objects.remove(object) {
            self.unref(&h.placed.replicas);
            self.pending.remove(object);
        }
    }

    /// Why this node holds `object`, if it does.
    pub fn role(&self, object: &O) -> Option<Role> {
        self.objects.get(object).map(|h| h.role)
    }

    /// The objects this node holds, with why.
    pub fn objects(&self) -> impl Iterator<Item = (&O, Role)> + '_ {
        self.objects.iter().map(|(o, h)| (o, h.role))
    }

    /// How many objects this node holds.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// The objects held for an absent owner (hints), with the owner.
    pub fn hints(&self) -> impl Iterator<Item = (&O, SourceId)> + '_ {
        self.objects.iter().filter_map(|(o, h)| match h.role {
            Role::StandIn { owner } => Some((o, owner)),
            _ => None,
        })
    }

    /// Where `object` lives as this node last computed it, if it holds it.
    pub fn placed(&self, object: &O) -> Option<&Placed> {
        self.objects.get(object).map(|h| &h.placed)
    }

    /// Whether nothing is waiting: every held object's replicas are known
    /// to hold it, and nothing waits to be dropped.
    pub fn is_settled(&self) -> bool {
        self.pending.is_empty()
    }

    /// The other nodes this node shares objects with (the replicas of what
    /// it holds): the connections it needs for them.
    pub fn peers(&self) -> impl Iterator<Item = SourceId> + '_ {
        self.peers.keys().copied()
    }

    /// Whether this node needs a connection to `peer` (see
    /// [`Keeper::peers`]).
    pub fn wants(&self, peer: SourceId) -> bool {
        self.peers.contains_key(&peer)
    }

    /// The whole member list, `(id, live)`, as the membership protocol has
    /// it now: members missing from it are forgotten. This node is always
    /// live to itself (until it leaves).
    pub fn sync_members(&mut self, now: u64, members: impl IntoIterator<Item = (SourceId, bool)>) {
        let mut seen = BTreeSet::new();
        let mut added = Vec::new();
        let mut changed = false;
        for (id, live) in members {
            if id == self.me {
                continue;
            }
            seen.insert(id);
            let live = self.counted_live(id, live);
            let new = !self.placement.contains(id);
            if self.set_placement(id, live) {
                changed = true;
                if new {
                    added.push(id);
                }
            }
        }
        let gone: Vec<SourceId> = self
            .placement
            .members()
            .map(|(id, _)| id)
            .filter(|id| *id != self.me && !seen.contains(id))
            .collect();
        for id in &gone {
            self.remove_placement(*id);
        }
        if changed || !gone.is_empty() {
            self.refresh(now, &added, &gone);
        }
    }

    /// Whether to count `id` live, as membership says it is (`live`): a
    /// member that said it is leaving counts absent until membership
    /// declares it down, after which a new life of it is live again.
    fn counted_live(&mut self, id: SourceId, live: bool) -> bool {
        if !self.departed.contains(&id) {
            return live;
        }
        if !live {
            self.departed.remove(&id);
        }
        false
    }

    /// One member joined, came back (`live`) or was declared down.
    pub fn set_member(&mut self, now: u64, id: SourceId, live: bool) {
        if id == self.me {
            return;
        }
        let live = self.counted_live(id, live);
        let new = !self.placement.contains(id);
        if self.set_placement(id, live) {
            let added = if new { vec![id] } else { Vec::new() };
            self.refresh(now, &added, &[]);
        }
    }

    /// One member is forgotten (it left for good, or was absent too long):
    /// the objects it owned are owned by others from now on.
    pub fn remove_member(&mut self, now: u64, id: SourceId) {
        self.departed.remove(&id);
        if id != self.me && self.remove_placement(id) {
            self.refresh(now, &[], &[id]);
        }
    }

    /// This node leaves the cluster: it is no replica of anything, hands
    /// every object to its replicas and drops each once covered. Leave
    /// for good once [`Keeper::is_empty`].
    pub fn leave(&mut self, now: u64) {
        self.leaving = true;
        self.set_placement(self.me, false);
        self.refresh(now, &[], &[]);
    }

    /// Another node offers `object` (with `k` replicas): whether this node
    /// takes it (it is a replica by its own list, or holds it already).
    /// Taking it means creating an empty replica and syncing with the
    /// offerer (and the other replicas) as usual. An offer from a node
    /// that is `leaving` counts that node absent from now on (until the
    /// membership protocol has declared it down, after which a new life
    /// of it is live again).
    pub fn handle_offer(
        &mut self,
        now: u64,
        object: O,
        k: usize,
        from: SourceId,
        leaving: bool,
    ) -> bool {
        if leaving {
            self.handle_leaving(now, from);
        }
        if let Some(h) = self.objects.get_mut(&object) {
            if h.placed.replicas.contains(&from) {
                h.holds.insert(from);
            }
            return true;
        }
        let placed = self.placement.place(object.key(), k);
        if self.leaving || !placed.is_replica(self.me) {
            self.stats.refused += 1;
            return false;
        }
        self.stats.taken += 1;
        self.insert(object.clone(), k, Some(from));
        self.work(now, &object);
        true
    }

    /// Member `id` said it is leaving (by an offer, or however the driver
    /// learned it): count it absent from now on, until the membership
    /// protocol has declared it down (after which a new life of it is live
    /// again). Say it once per life of the leaver: said again after the
    /// membership declared it down, it would count a new life absent.
    pub fn handle_leaving(&mut self, now: u64, id: SourceId) {
        if id != self.me && self.departed.insert(id) {
            let new = !self.placement.contains(id);
            self.set_placement(id, false);
            let added = if new { vec![id] } else { Vec::new() };
            self.refresh(now, &added, &[]);
        }
    }

    /// What became of an [`Command::Offer`]: taken (the peer holds the
    /// object now) or not (refused or unreachable: offered again later).
    pub fn handle_offer_result(&mut self, now: u64, object: &O, to: SourceId, taken: bool) {
        let Some(h) = self.objects.get_mut(object) else { return };
        if taken {
            h.holds.insert(to);
            self.settle(now, object);
        } else {
            self.schedule(now);
        }
    }

    /// What a [`Command::Check`] learned: whether `peer`'s clock covers
    /// this node's (then the peer also holds the object). Not covering:
    /// asked again later.
    pub fn handle_check(&mut self, now: u64, object: &O, peer: SourceId, covers: bool) {
        let Some(h) = self.objects.get_mut(object) else { return };
        if covers {
            h.holds.insert(peer);
            h.covers.insert(peer);
            self.settle(now, object);
        } else {
            self.schedule(now);
        }
    }

    /// This node's replica of `object` changed (it took a write): the
    /// replicas' earlier acknowledgements no longer cover it.
    pub fn changed(&mut self, object: &O) {
        if let Some(h) = self.objects.get_mut(object) {
            h.covers.clear();
        }
    }

    /// Runs what is due: offers and checks asked again.
    pub fn handle_timeout(&mut self, now: u64) {
        if self.retry_at.is_none_or(|at| at > now) {
            return;
        }
        self.retry_at = None;
        let pending: Vec<O> = self.pending.iter().cloned().collect();
        for object in pending {
            self.work(now, &object);
        }
    }

    /// When [`Keeper::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.retry_at
    }

    /// The next thing to do.
    pub fn poll_command(&mut self) -> Option<Command<O>> {
        self.commands.pop_front()
    }

    fn schedule(&mut self, now: u64) {
        if self.retry_at.is_none() {
            self.retry_at = Some(now + self.config.retry_ms);
        }
    }

    fn role_of(&self, placed: &Placed) -> Role {
        if !placed.is_replica(self.me) {
            return Role::HandingOff;
        }
        if placed.owners.contains(&self.me) {
            return Role::Owner;
        }
        let owner = placed
            .stand_ins()
            .into_iter()
            .find(|(stand_in, _)| *stand_in == self.me)
            .map_or(self.me, |(_, owner)| owner);
        Role::StandIn { owner }
    }

    fn insert(&mut self, object: O, k: usize, from: Option<SourceId>) {
        let key = object.key();
        let primary = match self.config.scheme {
            Scheme::Neighbours => self.placement.primary(key),
            _ => None,
        };
        let placed = self.compute(key, k, primary);
        let role = self.role_of(&placed);
        let holds: BTreeSet<SourceId> =
            from.into_iter().filter(|f| placed.replicas.contains(f)).collect();
        self.add_refs(&placed.replicas);
        self.objects
            .insert(object, Held { key, k, primary, placed, role, holds, covers: BTreeSet::new() });
    }

    fn compute(&self, key: ObjectKey, k: usize, primary: Option<SourceId>) -> Placed {
        match (self.config.scheme, primary) {
            (Scheme::Neighbours, Some(p)) => self.placement.place_from(p, k),
            _ => self.placement.place(key, k),
        }
    }

    fn add_refs(&mut self, replicas: &[SourceId]) {
        for r in replicas.iter().filter(|r| **r != self.me) {
            *self.peers.entry(*r).or_default() += 1;
        }
    }

    fn unref(&mut self, replicas: &[SourceId]) {
        for r in replicas.iter().filter(|r| **r != self.me) {
            if let Some(n) = self.peers.get_mut(r) {
                *n -= 1;
                if *n == 0 {
                    self.peers.remove(r);
                }
            }
        }
    }

    /// The member list changed: members `added` joined, `removed` were
    /// forgotten (and any may have changed liveness). Recomputes every
    /// held object: a cached primary changes only if a newcomer outweighs
    /// it or it was forgotten.
    fn refresh(&mut self, now: u64, added: &[SourceId], removed: &[SourceId]) {
        let neighbours = self.config.scheme == Scheme::Neighbours;
        let mut moved = Vec::new();
        let objects: Vec<O> = self.objects.keys().cloned().collect();
        for object in objects {
            let h = &self.objects[&object];
            let (key, k) = (h.key, h.k);
            let mut primary = h.primary;
            if neighbours {
                let stale =
                    primary.is_none_or(|p| removed.contains(&p) || !self.placement.contains(p));
                if stale {
                    primary = self.placement.primary(key);
                } else if let Some(p) = primary {
                    let mut best = (self.placement.weight(p, key).unwrap_or(0), p);
                    for a in added {
                        if let Some(w) = self.placement.weight(*a, key) {
                            best = best.max((w, *a));
                        }
                    }
                    primary = Some(best.1);
                }
            }
            let placed = self.compute(key, k, primary);
            let role = self.role_of(&placed);
            let h = &self.objects[&object];
            if placed == h.placed && role == h.role {
                self.objects.get_mut(&object).expect("held").primary = primary;
                continue;
            }
            let old = h.placed.replicas.clone();
            self.unref(&old);
            self.add_refs(&placed.replicas);
            let h = self.objects.get_mut(&object).expect("held");
            h.primary = primary;
            h.holds.retain(|r| placed.replicas.contains(r));
            h.covers.retain(|r| placed.replicas.contains(r));
            h.placed = placed;
            h.role = role;
            moved.push(object);
        }
        for object in moved {
            self.work(now, &object);
        }
    }

    /// Hands out what `object` needs now: offers to replicas not known to
    /// hold it; for an object being handed off, checks of those that hold
    /// it, and the drop once all cover it.
    fn work(&mut self, now: u64, object: &O) {
        let Some(h) = self.objects.get(object) else { return };
        let mut outstanding = false;
        let handing_off = h.role == Role::HandingOff;
        for r in h.placed.replicas.iter().filter(|r| **r != self.me) {
            if !h.holds.contains(r) {
                let (k, leaving) = (h.k, self.leaving);
                self.commands.push_back(Command::Offer {
                    object: object.clone(),
                    k,
                    to: *r,
                    leaving,
                });
                self.stats.offers += 1;
                outstanding = true;
            } else if handing_off && !h.covers.contains(r) {
                self.commands.push_back(Command::Check { object: object.clone(), peer: *r });
                self.stats.checks += 1;
                outstanding = true;
            }
        }
        if outstanding {
            self.pending.insert(object.clone());
            self.schedule(now);
        } else {
            self.settle(now, object);
        }
    }

    /// Drops a handed-off object once every live replica covers it; marks
    /// an object settled once nothing is outstanding.
    fn settle(&mut self, now: u64, object: &O) {
        let Some(h) = self.objects.get(object) else { return };
        let others: Vec<SourceId> =
            h.placed.replicas.iter().copied().filter(|r| *r != self.me).collect();
        let all_hold = others.iter().all(|r| h.holds.contains(r));
        if h.role == Role::HandingOff {
            if !others.is_empty() && others.iter().all(|r| h.covers.contains(r)) {
                let h = self.objects.remove(object).expect("held");
                self.unref(&h.placed.replicas);
                self.pending.remove(object);
                self.stats.drops += 1;
                self.commands.push_back(Command::Drop { object: object.clone() });
                return;
            }
            if all_hold && !others.is_empty() {
                // Everyone has it; the checks go on at the next retry.
                self.pending.insert(object.clone());
                self.schedule(now);
                return;
            }
            if others.is_empty() {
                // No live replica to hand it to: keep it until one is up.
                self.pending.remove(object);
                return;
            }
        }
        if all_hold {
            self.pending.remove(object);
        }
    }
}
