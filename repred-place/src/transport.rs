//! Placement on real nodes: a [`Keeper`] per `repred-transport`
//! [`Node`], fed by the node's SWIM membership, its commands carried by a
//! small replicated object (feature `transport`).
//!
//! The keeper decides everything (who holds what, whom to offer an object
//! to, when a copy may go); [`Placer`] only executes it, as
//! `repred-sim`'s placer does on the simulator:
//!
//! - **The carrier.** Every node replicates one control object, the
//!   *directory* ([`DIRECTORY`]): a last-writer-wins map in which each node
//!   writes only its own entries: its life (a random number drawn when the
//!   placer starts) and whether it is leaving, and for every object it
//!   holds, `k` and the object's clock as it last saw it. An entry of a
//!   past life of its node counts for nothing, but for one: each copy its
//!   store keeps until covered (below), which only the node itself reads.
//! - **Offers** ([`Command::Offer`]): an object listed by any node is on
//!   offer to its replicas; a node that is a replica by its own member list
//!   and does not hold it asks its keeper
//!   ([`Keeper::handle_offer`]) and, taken, replicates it, empty, syncing by
//!   the ordinary anti-entropy of the object's streams. The offerer's offer
//!   is taken once the replica lists the object.
//! - **Checks** ([`Command::Check`]): whether the peer's listed clock
//!   covers this node's clock of the object.
//! - **Drops** ([`Command::Drop`]): the object is released
//!   ([`Node::release`]) once no write is under way on it and every live
//!   replica's listed clock still covers this node's; if a write came in
//!   meanwhile, the keeper holds it again and asks again. Released, it is
//!   deleted from the node's store once the object's k live replicas all
//!   list a clock covering the copy as released (fewer than k live ones,
//!   or a member list still filling after a start, keep it), looked at
//!   every round until then (the
//!   store keeps its log meanwhile, for a later return): see
//!   [`Placer::stored`]. Deletions run off the runtime's workers, a
//!   round's in one transaction ([`Node::remove_stored_many`]). The
//!   copies kept are listed in the directory, which is durable too, so a
//!   restart takes the list up; only a copy let go in the moment before a
//!   crash, not listed yet, stays in the store until the node holds the
//!   object again and lets it go again.
//! - **A restart** takes up what the node held in its last life (listed
//!   under its id in the directory; a durable node's store kept each
//!   object), and hands each to its replicas, or keeps it, as the keeper
//!   says.
//! - **A leave** ([`Placer::leave`]): the node's record says it is
//!   leaving; every other node counts it absent from then on
//!   ([`Keeper::handle_leaving`], once per life), so its objects' next
//!   replicas take them while it hands them off and releases each.
//!
//! What it needs and what it does not do (yet):
//!
//! - A durable node ([`Builder::durable`](repred_transport::Builder::durable)):
//!   what a node holds must outlive a restart, and an object released
//!   before its replicas covered it may come back later, which only a
//!   store's log (its source id, its writes) makes safe. One released once
//!   covered is deleted from the store; made again, it writes under a new
//!   id and syncs from the replicas.
//! - Replicas sync over the connections the node core keeps; an object's
//!   stream exists only where both ends hold it, and is not relayed by
//!   nodes that do not. So every two replicas need a connection of their
//!   own: a full mesh, a cluster no larger than one more than
//!   [`Builder::fanout`](repred_transport::Builder::fanout). Connections
//!   chosen for placement (the simulator's data links) are not built on
//!   the transport.
//! - The directory lists every object's holders on every node: fine for
//!   tens of nodes and thousands of objects, not for the 100,000 objects of
//!   the simulator's tests, which carry offers point to point.
//!
//! **A node that holds no replica** of an object opens it all the same
//! ([`Placer::open`], and [`Placer::update`] on such a node): it
//! replicates a copy of its own that is streamed with one live replica
//! only ([`Node::replicate_with`], [`Peers`]), chosen and changed by a
//! [`Route`](crate::Route) that the placer's task runs. The copy is never listed in the
//! directory, so no keeper counts it a holder. A write goes to the copy
//! under the copy's own source id, reaches the replica by the ordinary
//! sync, and is *acknowledged* once a replica's listed clock covers its
//! stamp; the replica in use fails over (the route moves to the next
//! live one, [`Node::set_peers`], which also closes the stream to the one
//! left) when the copy's stream with it ends other than by this node's
//! doing ([`Node::stream_ends`]: the replica released the object or shut
//! down, or the connection was lost), when the member list drops it, or
//! when it does not acknowledge in time; writes it never took reach the
//! next one by the sync. If this node becomes a replica, the copy becomes
//! its replica.
//!
//! [`Command::Offer`]: crate::Command::Offer
//! [`Command::Check`]: crate::Command::Check
//! [`Command::Drop`]: crate::Command::Drop
//! [`Peers`]: repred_transport::Peers

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use repred::{Clock, LwwMap, Reduce, SourceId, Stamp, Stamped};
use repred_transport::{Handle, Node};
use serde::{Deserialize, Serialize};
use tokio::sync::{RwLock, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::{Keeper, KeeperConfig, KeeperStats, Role, RouteConfig};

mod access;
mod round;
mod stored;

use access::Access;
pub use access::ObjectHandle;
use round::run;
use stored::Stored;

/// The name of the directory, the control object every placing node
/// replicates.
pub const DIRECTORY: &str = "repred-place/directory";

/// A directory entry's key: a node's own record, one object it holds, or
/// one copy its store keeps until covered.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
enum Key {
    Node(SourceId),
    Held { node: SourceId, object: String },
    Kept { node: SourceId, object: String },
}

/// A directory entry, written only by the node it is about.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Entry {
    /// The node's placer: its life, and whether it is leaving.
    Node { life: u64, leaving: bool },
    /// The node holds the object (with `k` replicas), and had this clock
    /// of it.
    Held { life: u64, k: u32, clock: Clock },
    /// The node let the object go, and its store keeps the copy until
    /// its k live replicas cover `clock` (the copy as released; `k`:
    /// `None` for the default). Its store outlives the node's lives, so
    /// an entry of any life counts: a restart takes it up (see
    /// `stored.rs`). Other nodes ignore it.
    Kept { k: Option<u32>, clock: Clock },
}

/// The control object: see the [module](self).
type Directory = LwwMap<Key, Entry>;

/// Writes to the directory: entries set (`Some`) or deleted (`None`).
type Listing = Vec<(Key, Stamped<Option<Entry>>)>;

/// Errors of a [`Placer`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlaceError {
    /// The node could not replicate, write or release an object.
    #[error(transparent)]
    Transport(#[from] repred_transport::Error),
    /// A write through a replica (this node holds none of the object) was
    /// made on this node's copy, but no replica's clock covered it within
    /// [`RouteConfig::write_timeout_ms`]. It is not lost while this node
    /// keeps its copy: it reaches a replica with a later sync.
    #[error(
        "no replica of {name:?} acknowledged the write {stamp:?} in time; it stays in this node's copy"
    )]
    NotAcknowledged {
        /// The object.
        name: String,
        /// The write's stamp.
        stamp: Stamp,
    },
    /// The name is the directory's.
    #[error("{0:?} is the placement directory's own name")]
    Reserved(String),
    /// Placement on the transport needs a durable node (see the
    /// [module](self)).
    #[error("placement needs a durable node (Builder::durable)")]
    NotDurable,
}

/// How a [`Placer`] runs.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PlacerConfig {
    /// The keepers' settings: k, the scheme, how often to ask again. Every
    /// node must place with the same k and scheme.
    pub keeper: KeeperConfig,
    /// How often the placer reads the member list and the directory, runs
    /// the keeper and publishes what changed. Default 100 ms.
    pub tick: Duration,
    /// How the access of this node to objects it holds no replica of
    /// ([`Placer::open`]) fails over and how long a write waits for its
    /// acknowledgement.
    pub route: RouteConfig,
}

impl Default for PlacerConfig {
    fn default() -> Self {
        Self {
            keeper: KeeperConfig::default(),
            tick: Duration::from_millis(100),
            route: RouteConfig::default(),
        }
    }
}

impl PlacerConfig {
    /// Sets [`PlacerConfig::keeper`].
    pub fn keeper(mut self, keeper: KeeperConfig) -> Self {
        self.keeper = keeper;
        self
    }

    /// Sets [`PlacerConfig::tick`].
    pub fn tick(mut self, tick: Duration) -> Self {
        self.tick = tick;
        self
    }

    /// Sets [`PlacerConfig::route`].
    pub fn route(mut self, route: RouteConfig) -> Self {
        self.route = route;
        self
    }
}

/// One object this node holds.
struct Held<T: Reduce> {
    handle: Handle<T>,
    k: usize,
    /// Writes hold it shared while they run; a drop holds it alone, so
    /// that no acknowledged write lands on a copy being released.
    writes: Arc<RwLock<()>>,
}

/// What the placer's task and its callers share, behind one lock (never
/// held across an await).
struct State<T: Reduce> {
    keeper: Keeper<String>,
    held: BTreeMap<String, Held<T>>,
    /// Objects opened here that this node holds no replica of.
    open: BTreeMap<String, Access<T>>,
    /// The clock last listed for each held object.
    listed: BTreeMap<String, Clock>,
    /// Released objects whose entries are still to be deleted.
    unlist: BTreeSet<String>,
    /// Copies let go whose store still keeps them, until covered (see
    /// `stored.rs`).
    stored: BTreeMap<String, Stored>,
    /// The clock of each copy kept as the directory lists it now.
    kept_listed: BTreeMap<String, Clock>,
    /// Copies kept that a past life listed, taken up by this one and not
    /// checked yet against the clock their store's log has (see
    /// `stored.rs`): not removable until then.
    unchecked: BTreeMap<String, Stored>,
    /// Names being checked: the check has them replicated for a moment.
    checking: BTreeSet<String>,
    /// Whether this life's node record is listed as it stands.
    record_listed: bool,
    /// The lives of other nodes that said they are leaving, told to the
    /// keeper once each.
    departing: BTreeSet<(SourceId, u64)>,
}

struct Shared<T: Reduce> {
    node: Node,
    me: SourceId,
    life: u64,
    directory: Handle<Directory>,
    config: PlacerConfig,
    started: Instant,
    state: Mutex<State<T>>,
    /// Counts the removals of stored copies done: a write that found its
    /// object's copy being removed waits for the next.
    removals: watch::Sender<u64>,
}

/// The directory as one node reads it: the entries of current lives.
#[derive(Default)]
struct View {
    /// Node -> (its life, whether it is leaving), for nodes with a record.
    leaving: BTreeMap<SourceId, (u64, bool)>,
    /// Object -> holder -> (k, clock), current lives only.
    held: BTreeMap<String, BTreeMap<SourceId, (usize, Clock)>>,
    /// Objects listed under this node's id by a past life, with k.
    mine_before: BTreeMap<String, usize>,
    /// Copies this node's store keeps until covered, listed by any life.
    kept: BTreeMap<String, Stored>,
}

impl View {
    fn read(directory: &Directory, me: SourceId, life: u64) -> Self {
        let mut lives = BTreeMap::new();
        let mut view = View::default();
        for (key, entry) in directory.iter() {
            if let (Key::Node(node), Entry::Node { life, leaving }) = (key, entry) {
                lives.insert(*node, *life);
                view.leaving.insert(*node, (*life, *leaving));
            }
        }
        for (key, entry) in directory.iter() {
            if let (Key::Kept { node, object }, Entry::Kept { k, clock }) = (key, entry)
                && *node == me
            {
                let k = k.map(|k| k as usize);
                view.kept.insert(object.clone(), Stored { clock: clock.clone(), k });
                continue;
            }
            let (Key::Held { node, object }, Entry::Held { life: of, k, clock }) = (key, entry)
            else {
                continue;
            };
            let k = *k as usize;
            if *node == me && *of != life {
                view.mine_before.insert(object.clone(), k);
            } else if lives.get(node) == Some(of) {
                view.held.entry(object.clone()).or_default().insert(*node, (k, clock.clone()));
            }
        }
        view
    }

    fn lists(&self, node: SourceId, object: &str) -> Option<&Clock> {
        self.held.get(object).and_then(|h| h.get(&node)).map(|(_, c)| c)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding it; the keeper between two calls is
    // whole.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Places objects of type `T` on k of the nodes of a cluster, from one
/// node: runs a [`Keeper`] for the node in a task of its own (see the
/// [module](self) for how its commands are carried).
///
/// Dropping it stops the task and drops the node: a crash.
/// [`Placer::shutdown`] shuts the node down cleanly.
pub struct Placer<T: Reduce> {
    shared: Arc<Shared<T>>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl<T: Reduce> std::fmt::Debug for Placer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Placer").field("node", &self.shared.me).finish_non_exhaustive()
    }
}

impl<T> Placer<T>
where
    T: Reduce + Default + Send + 'static,
    T::Update: Send + Sync + 'static,
{
    /// Starts placing on `node`, which must be durable: replicates the
    /// directory and starts the task (on the current tokio runtime).
    pub fn spawn(node: Node, config: PlacerConfig) -> Result<Self, PlaceError> {
        if !node.is_durable() {
            return Err(PlaceError::NotDurable);
        }
        let directory = node.replicate(DIRECTORY, Directory::default())?;
        let me = node.id();
        let life = u64::from_le_bytes(
            SourceId::random().as_bytes()[..8].try_into().expect("16 bytes hold 8"),
        );
        let keeper = Keeper::new(me, config.keeper.clone());
        let state = State {
            keeper,
            held: BTreeMap::new(),
            open: BTreeMap::new(),
            listed: BTreeMap::new(),
            unlist: BTreeSet::new(),
            stored: BTreeMap::new(),
            kept_listed: BTreeMap::new(),
            unchecked: BTreeMap::new(),
            checking: BTreeSet::new(),
            record_listed: false,
            departing: BTreeSet::new(),
        };
        let shared = Arc::new(Shared {
            node,
            me,
            life,
            directory,
            config,
            started: Instant::now(),
            state: Mutex::new(state),
            removals: watch::Sender::new(0),
        });
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(shared.clone(), stopped));
        Ok(Self { shared, stop, task: Some(task) })
    }

    /// The node it places on.
    pub fn node(&self) -> &Node {
        &self.shared.node
    }

    /// Holds `name` here (a new object, empty, or this node's copy if it
    /// holds one): the keeper offers it to its replicas, and hands it off
    /// if this node is none of them.
    pub fn create(&self, name: &str) -> Result<(), PlaceError> {
        if name == DIRECTORY {
            return Err(PlaceError::Reserved(name.to_string()));
        }
        let shared = &self.shared;
        let mut state = lock(&shared.state);
        if state.held.contains_key(name) {
            return Ok(());
        }
        shared.hold(&mut state, name)
    }

    /// Opens `name` on this node, whether it holds a replica of it or not:
    /// a handle to read it, write it and follow its changes. On a node the
    /// member list makes a replica, it holds the object (as
    /// [`Placer::create`]); on any other, it makes a copy that goes
    /// through one live replica (see the [module](self)). The access
    /// stays open until [`Placer::close`] (or the placer stops); opening
    /// it again is cheap. Fails with
    /// [`Error::Removing`](repred_transport::Error::Removing) while this
    /// node's store is deleting a copy of it it let go (a few
    /// milliseconds; [`ObjectHandle::update`] waits that out by itself).
    pub fn open(&self, name: &str) -> Result<ObjectHandle<T>, PlaceError> {
        if name == DIRECTORY {
            return Err(PlaceError::Reserved(name.to_string()));
        }
        self.shared.copy(name)?;
        Ok(ObjectHandle { shared: self.shared.clone(), name: name.to_string() })
    }

    /// Closes this node's access to `name`, if it holds no replica of it:
    /// its copy is released, and its store keeps the copy's log until
    /// the object's k live replicas *all* list a clock covering it; the
    /// placer's task then deletes it ([`Node::remove_stored_many`],
    /// [`Placer::stored`]). One covering replica is not enough: an
    /// acknowledged write is on that replica, but if it crashed before
    /// syncing the others and never came back, the copy would be the
    /// write's only other home. Until then, opening the object again
    /// resumes the copy and syncs what no replica took. (A replica that
    /// crashed for good is covered for once the member list declares it
    /// down and its stand-in has synced.) Writes still waiting for an
    /// acknowledgement fail with [`PlaceError::NotAcknowledged`]; each
    /// reached a replica or is in the copy's log. Returns whether an
    /// access was open.
    pub async fn close(&self, name: &str) -> Result<bool, PlaceError> {
        let shared = &self.shared;
        let access = lock(&shared.state).open.remove(name);
        let Some(access) = access else { return Ok(false) };
        let handle = access.handle.clone();
        drop(access);
        shared.node.release(name).await?;
        // Released: the copy takes nothing more, its clock is final.
        let clock = handle.clock();
        let mut state = lock(&shared.state);
        // Not if this node holds it again meanwhile, nor opened it again.
        if !state.held.contains_key(name) && !state.open.contains_key(name) {
            state.stored.insert(name.to_string(), Stored { clock, k: None });
        }
        Ok(true)
    }

    /// Writes to `name` ([`ObjectHandle::update`]): on a node that holds a
    /// replica, acknowledged (on disk) when it returns; on any other,
    /// through a replica, acknowledged once a replica's clock covers it.
    pub async fn update(&self, name: &str, update: T::Update) -> Result<Option<Stamp>, PlaceError> {
        self.open(name)?.update(update).await
    }

    /// The objects opened here that this node holds no replica of
    /// ([`Placer::open`]), each with the replica its copy goes through now.
    pub fn opened(&self) -> Vec<(String, Option<SourceId>)> {
        let state = lock(&self.shared.state);
        state.open.iter().map(|(name, a)| (name.clone(), a.route.via())).collect()
    }

    /// Reads this node's replica of `name`, if it holds one (see
    /// [`Placer::open`] to read an object this node holds no replica of).
    pub fn read<R>(&self, name: &str, f: impl FnOnce(&T) -> R) -> Option<R> {
        let handle = lock(&self.shared.state).held.get(name).map(|h| h.handle.clone())?;
        Some(handle.read(f))
    }

    /// This node's clock of `name` (which writes its copy includes), if it
    /// holds one.
    pub fn clock(&self, name: &str) -> Option<Clock> {
        lock(&self.shared.state).held.get(name).map(|h| h.handle.clock())
    }

    /// This node's handle of `name`, if it holds a copy: to follow its
    /// changes. Write through [`Placer::update`], which a drop waits for.
    pub fn handle(&self, name: &str) -> Option<Handle<T>> {
        lock(&self.shared.state).held.get(name).map(|h| h.handle.clone())
    }

    /// The objects this node holds now, with why (`None`: dropped by the
    /// keeper, being released).
    pub fn holdings(&self) -> Vec<(String, Option<Role>)> {
        let state = lock(&self.shared.state);
        state.held.keys().map(|name| (name.clone(), state.keeper.role(name))).collect()
    }

    /// The live replicas of `name` by this node's member list, in
    /// preference order.
    pub fn replicas(&self, name: &str) -> Vec<SourceId> {
        lock(&self.shared.state).keeper.place(&name.to_string(), None).replicas
    }

    /// Whether nothing is waiting: every object held here is known to be
    /// on its replicas, and nothing waits to be dropped or released.
    pub fn is_settled(&self) -> bool {
        let state = lock(&self.shared.state);
        state.keeper.is_settled() && state.held.len() == state.keeper.len()
    }

    /// The keeper's counters.
    pub fn stats(&self) -> KeeperStats {
        lock(&self.shared.state).keeper.stats()
    }

    /// Leaves the cluster gracefully: this node is no replica of anything
    /// from now on ([`Keeper::leave`]); it says so in the directory, so
    /// that the other nodes count it absent at once and the next replicas
    /// of its objects take them; it hands each object off and releases it
    /// once every live replica's clock covers it, and deletes it from its
    /// store once k live replicas cover the copy as released (see
    /// [`Placer::stored`]); then it shuts down. Writes on this node meanwhile still land (on
    /// its copies, handed off with the rest). In a cluster of k nodes or
    /// fewer, an object has fewer than k live replicas besides this node:
    /// a copy every one of them covers cannot go, and `leave` does not
    /// wait for it; it stays in the store and listed in the directory
    /// (one more home of the object's writes), deleted by a later life
    /// once k live replicas cover it. Returns whether everything
    /// was handed off (and deleted, or kept so) within `limit`; if not, it shuts down
    /// all the same, and what it still held is covered as after a crash
    /// (stand-ins, and its store on a return).
    pub async fn leave(self, limit: Duration) -> bool {
        {
            let mut state = lock(&self.shared.state);
            let now = self.shared.now();
            state.keeper.leave(now);
            state.record_listed = false;
        }
        let shared = self.shared.clone();
        let handed_off = async {
            loop {
                let placed = {
                    let state = lock(&shared.state);
                    state.keeper.is_empty() && state.held.is_empty()
                };
                if placed && shared.kept_handed_off() {
                    return;
                }
                tokio::time::sleep(shared.config.tick).await;
            }
        };
        let done = tokio::time::timeout(limit, handed_off).await.is_ok();
        drop(shared);
        self.shutdown().await;
        done
    }

    /// Stops placing and shuts the node down cleanly (see
    /// [`Node::shutdown`]). Objects stay where they are: their replicas
    /// see the node go as they would see it crash (use [`Placer::leave`]
    /// to hand them off first).
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        let shared = self.shared.clone();
        drop(self);
        if let Ok(shared) = Arc::try_unwrap(shared) {
            let Shared { node, state, directory, .. } = shared;
            drop((state, directory));
            node.shutdown().await;
        }
    }
}

impl<T: Reduce> Drop for Placer<T> {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
