//! The node core: membership and connections as one state machine.

use std::collections::{BTreeMap, VecDeque};
use std::num::{NonZeroU8, NonZeroUsize};
use std::time::Duration;

use foca::{Foca, Member, NoCustomBroadcast, OwnedNotification, PostcardCodec};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use repred::SourceId;

use crate::sync::{self, Known, STATE_CHUNK, Sync, Tally};
use crate::timers::Timers;

mod view;

use crate::{
    Address, CloseWhy, Command, DATAGRAM_HEADER, DATAGRAM_MARKER, Datagram, DatagramError,
    LiveDigest, MemberInfo, MemberState, NodeConfig, NodeEvent, Peer, sender_of,
};
use view::Backoff;

/// Names a connection; the driver picks the numbers.
pub type ConnId = u64;

type Swim<A> = Foca<Peer<A>, PostcardCodec, Xoshiro256PlusPlus, NoCustomBroadcast>;

/// Counters of a node core.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeStats {
    /// Membership datagrams handed out to send.
    pub datagrams_sent: u64,
    /// Their bytes.
    pub bytes_sent: u64,
    /// Membership datagrams handled.
    pub datagrams_received: u64,
    /// Their bytes.
    pub bytes_received: u64,
    /// Datagrams refused: not membership, malformed, or claiming a sender
    /// other than the one the driver authenticated.
    pub datagrams_refused: u64,
    /// Dials asked for.
    pub dials: u64,
    /// Connections closed by this core.
    pub closes: u64,
}

#[derive(Debug)]
enum Timer<A> {
    Swim(foca::Timer<Peer<A>>),
    /// Due at this deadline: only the one `maintain_at` names counts (an
    /// earlier one may have replaced it).
    Maintain(u64),
    Rotate,
    Compare,
    DialTimeout(A, u64),
}

#[derive(Clone, Debug)]
struct Conn<A> {
    peer: SourceId,
    addr: A,
    outgoing: bool,
    /// When it came up.
    since: u64,
}

/// One node's decisions, with no I/O: who is in the cluster (SWIM, by
/// `foca`), which members to keep connections to (an active view of about
/// log2(N) + 1 random members, rotated now and then), when to dial and when
/// to give up.
///
/// Drive it like the core's replicas and quinn-proto's connections:
///
/// 1. inputs, each with the wall time in milliseconds:
///    [`handle_datagram`](NodeCore::handle_datagram) for membership bytes
///    from the network, [`handle_connected`](NodeCore::handle_connected),
///    [`handle_disconnected`](NodeCore::handle_disconnected) and
///    [`handle_dial_failed`](NodeCore::handle_dial_failed) for what became of
///    connections, [`handle_timeout`](NodeCore::handle_timeout) when
///    [`poll_timeout`](NodeCore::poll_timeout) says;
/// 2. outputs: [`poll_transmit`](NodeCore::poll_transmit) (datagrams to
///    send), [`poll_command`](NodeCore::poll_command) (dials and closes),
///    [`poll_event`](NodeCore::poll_event), each until `None`.
///
/// Time and randomness come from the caller (a seed), so a simulator runs
/// the same code on virtual time and one seed replays one run exactly.
///
/// ```
/// use repred_node::{Command, NodeConfig, NodeCore};
/// use repred::SourceId;
///
/// let a_id = SourceId::new("a")?;
/// let b_id = SourceId::new("b")?;
/// let mut a = NodeCore::new(a_id, 1u32, 1, NodeConfig::default(), 7, 0);
/// let mut b = NodeCore::new(b_id, 2u32, 1, NodeConfig::default(), 8, 0);
/// b.bootstrap(0, [1u32]);
/// // Carry datagrams between them until quiet, as a network would.
/// for _ in 0..10 {
///     while let Some(d) = b.poll_transmit() { a.handle_datagram(0, &d.bytes).ok(); }
///     while let Some(d) = a.poll_transmit() { b.handle_datagram(0, &d.bytes).ok(); }
/// }
/// assert!(a.members().iter().any(|m| m.id == b_id));
/// assert!(b.members().iter().any(|m| m.id == a_id));
/// // Each now wants a connection to the other, once its timers run.
/// a.handle_timeout(a.poll_timeout().unwrap());
/// assert!(matches!(a.poll_command(), Some(Command::Dial { addr: 2, .. })));
/// # Ok::<(), repred::InvalidSourceId>(())
/// ```
pub struct NodeCore<A: Address> {
    me: Peer<A>,
    id: SourceId,
    config: NodeConfig,
    swim: Swim<A>,
    runtime: foca::AccumulatingRuntime<Peer<A>>,
    timers: Timers<Timer<A>>,
    rng: Xoshiro256PlusPlus,
    bootstrap: Vec<A>,
    conns: BTreeMap<ConnId, Conn<A>>,
    dialing: BTreeMap<A, u64>,
    backoff: BTreeMap<A, Backoff>,
    maintain_at: Option<u64>,
    transmits: VecDeque<Datagram<A>>,
    messages: VecDeque<(ConnId, Vec<u8>)>,
    commands: VecDeque<Command<A>>,
    events: VecDeque<NodeEvent<A>>,
    stats: NodeStats,
    left: bool,
    /// Whether the membership protocol runs (it knows a live member that
    /// answers). It stops after this node renewed its identity (declared
    /// down: a partition, a long pause) until someone talks to the new one.
    active: bool,
    /// The view compared with neighbours (this node and the members up),
    /// kept up to date from the membership protocol's notifications.
    view: Tally,
    /// When this node last opened a comparison of views.
    last_hello: Option<u64>,
}

impl<A: Address> std::fmt::Debug for NodeCore<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCore")
            .field("me", &self.me)
            .field("alive", &self.swim.num_members())
            .field("connections", &self.conns.len())
            .finish_non_exhaustive()
    }
}

impl<A: Address> NodeCore<A> {
    /// A node `id` listening at `addr`, in life `life` (larger in every
    /// restart: the start time in milliseconds will do), its randomness from
    /// `seed`, at wall time `now`.
    ///
    /// # Panics
    /// If `config` does not [check](NodeConfig::check).
    pub fn new(id: SourceId, addr: A, life: u64, config: NodeConfig, seed: u64, now: u64) -> Self {
        if let Err(why) = config.check() {
            panic!("invalid NodeConfig: {why}");
        }
        let me = Peer { id: Some(id), addr, bump: life.max(1) };
        let swim_config = foca::Config {
            probe_period: config.probe_period,
            probe_rtt: config.probe_rtt,
            num_indirect_probes: NonZeroUsize::new(config.indirect_probes)
                .unwrap_or(NonZeroUsize::MIN),
            max_transmissions: NonZeroU8::new(config.max_transmissions).unwrap_or(NonZeroU8::MIN),
            suspect_to_down_after: config.suspect_timeout,
            remove_down_after: Some(Duration::from_secs(15 * 60)),
            max_packet_size: NonZeroUsize::new(1_200).unwrap_or(NonZeroUsize::MIN),
            notify_down_members: true,
            periodic_announce: Some(foca::PeriodicParams {
                frequency: config.announce_every,
                num_members: NonZeroUsize::MIN,
            }),
            periodic_announce_to_down_members: Some(foca::PeriodicParams {
                frequency: config.announce_down_every,
                num_members: NonZeroUsize::new(2).unwrap_or(NonZeroUsize::MIN),
            }),
            periodic_gossip: Some(foca::PeriodicParams {
                frequency: config.gossip_every,
                num_members: NonZeroUsize::new(3).unwrap_or(NonZeroUsize::MIN),
            }),
        };
        let swim = Foca::new(
            me.clone(),
            swim_config,
            Xoshiro256PlusPlus::seed_from_u64(seed),
            PostcardCodec,
        );
        let mut node = Self {
            me,
            id,
            swim,
            runtime: foca::AccumulatingRuntime::new(),
            timers: Timers::default(),
            rng: Xoshiro256PlusPlus::seed_from_u64(seed ^ 0x9E37_79B9_7F4A_7C15),
            bootstrap: Vec::new(),
            conns: BTreeMap::new(),
            dialing: BTreeMap::new(),
            backoff: BTreeMap::new(),
            maintain_at: None,
            transmits: VecDeque::new(),
            messages: VecDeque::new(),
            commands: VecDeque::new(),
            events: VecDeque::new(),
            stats: NodeStats::default(),
            left: false,
            active: false,
            view: Tally::of([id]),
            last_hello: None,
            config,
        };
        let first_rotation = now + node.jitter(node.config.rotate_every);
        node.timers.set(first_rotation, Timer::Rotate);
        let first_compare = now + node.jitter(node.config.compare_every);
        node.timers.set(first_compare, Timer::Compare);
        node.schedule_maintain(now);
        node
    }

    /// This node's id.
    pub fn id(&self) -> SourceId {
        self.id
    }

    /// This node's membership identity (its bump grows when it renews).
    pub fn identity(&self) -> &Peer<A> {
        &self.me
    }

    /// The settings.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// Counters.
    pub fn stats(&self) -> NodeStats {
        self.stats
    }

    /// Addresses to join through: each is asked for the member list now,
    /// and again while this node knows no live member.
    pub fn bootstrap(&mut self, now: u64, addrs: impl IntoIterator<Item = A>) {
        let seeds: Vec<A> = addrs.into_iter().filter(|a| *a != self.me.addr).collect();
        for addr in &seeds {
            if !self.bootstrap.contains(addr) {
                self.bootstrap.push(addr.clone());
            }
        }
        self.announce_to_seeds(now);
        self.schedule_maintain(now);
    }

    fn announce_to_seeds(&mut self, now: u64) {
        for addr in self.bootstrap.clone() {
            // Whoever answers at that address replaces the placeholder.
            let _ = self.swim.announce(Peer::seed(addr), &mut self.runtime);
        }
        self.drain(now);
    }

    /// A membership datagram from the network. The driver vouches for the
    /// sender id in its envelope (the QUIC shell checks a signature by that
    /// node's certified key); the membership header must name the same
    /// node, or the datagram is refused: nobody speaks in another's name.
    pub fn handle_datagram(&mut self, now: u64, bytes: &[u8]) -> Result<(), DatagramError> {
        let result = self.datagram(bytes);
        match &result {
            Ok(()) => {
                self.stats.datagrams_received += 1;
                self.stats.bytes_received += bytes.len() as u64;
            }
            Err(_) => self.stats.datagrams_refused += 1,
        }
        self.drain(now);
        result
    }

    fn datagram(&mut self, bytes: &[u8]) -> Result<(), DatagramError> {
        let sender = sender_of(bytes).ok_or(DatagramError::NotMembership)?;
        let body = &bytes[DATAGRAM_HEADER..];
        let header = foca::Codec::<Peer<A>>::decode_header(&mut PostcardCodec, body)
            .map_err(|e| DatagramError::Malformed(e.to_string()))?;
        if header.src.id != Some(sender) {
            return Err(DatagramError::WrongSender { claimed: header.src.id, sender });
        }
        if self.swim.iter_membership_state().len() >= self.config.max_members {
            // A full table takes news only from members it knows.
            let known = self.swim.iter_membership_state().any(|m| m.id().id == Some(sender));
            if !known {
                return Err(DatagramError::Refused("member table full".into()));
            }
        }
        self.swim
            .handle_data(body, &mut self.runtime)
            .map_err(|e| DatagramError::Refused(e.to_string()))
    }

    /// Runs what is due at `now`.
    pub fn handle_timeout(&mut self, now: u64) {
        while let Some(timer) = self.timers.pop_due(now) {
            match timer {
                Timer::Swim(t) => {
                    let _ = self.swim.handle_timer(t, &mut self.runtime);
                }
                Timer::Maintain(at) => {
                    if self.maintain_at == Some(at) {
                        self.maintain_at = None;
                        self.maintain(now);
                    }
                }
                Timer::Rotate => self.rotate(now),
                Timer::Compare => self.compare(now),
                Timer::DialTimeout(addr, since) => {
                    if self.dialing.get(&addr) == Some(&since) {
                        self.handle_dial_failed(now, addr);
                    }
                }
            }
            self.drain(now);
        }
    }

    /// When [`handle_timeout`](NodeCore::handle_timeout) is next due.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.timers.next()
    }

    /// The next membership datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Datagram<A>> {
        self.transmits.pop_front()
    }

    /// The next dial or close.
    pub fn poll_command(&mut self) -> Option<Command<A>> {
        self.commands.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<NodeEvent<A>> {
        self.events.pop_front()
    }

    /// A connection is up: to `peer` (the node id its certificate proves),
    /// at `addr`, dialed by us (`outgoing`) or by them.
    pub fn handle_connected(
        &mut self,
        now: u64,
        conn: ConnId,
        peer: SourceId,
        addr: A,
        outgoing: bool,
    ) {
        if outgoing {
            self.dialing.remove(&addr);
            self.backoff.remove(&addr);
        }
        if peer == self.id {
            self.close(conn, CloseWhy::ToSelf);
            return;
        }
        let twin =
            self.conns.iter().find(|(_, c)| c.peer == peer).map(|(&k, c)| (k, c.outgoing, c.since));
        if let Some((old, old_outgoing, old_since)) = twin {
            let simultaneous = now.saturating_sub(old_since) <= self.dial_timeout_ms();
            if !simultaneous {
                // A node dials a peer only when it has no connection to it:
                // this peer lost ours (it restarted, or its end timed out),
                // so ours is stale.
                self.conns.remove(&old);
                self.close(old, CloseWhy::Duplicate);
            } else {
                // Both dialed at once: both sides keep the connection
                // dialed by the smaller id.
                let keep_outgoing = self.id < peer;
                if outgoing == keep_outgoing && old_outgoing != keep_outgoing {
                    self.conns.remove(&old);
                    self.close(old, CloseWhy::Duplicate);
                } else {
                    self.close(conn, CloseWhy::Duplicate);
                    return;
                }
            }
        }
        if !outgoing && self.conns.len() >= self.config.max_connections {
            self.close(conn, CloseWhy::TooMany);
            return;
        }
        self.conns.insert(conn, Conn { peer, addr, outgoing, since: now });
        // The dialer opens the comparison (one exchange repairs both ends;
        // two, one from each end, cost a second pass over both member
        // lists for nothing), at most once per quarter of `compare_every`:
        // a node that just joined fills its view with a dozen dials, and
        // each comparison while its view still differs sends it most of the
        // member list again (at 10,000 nodes, most of a forming cluster's
        // work). Its first connection repairs it; the periodic comparison
        // does the rest.
        let spacing = self.config.compare_every.as_millis() as u64 / 4;
        if outgoing && self.last_hello.is_none_or(|t| now.saturating_sub(t) >= spacing) {
            self.send_hello(now, conn);
        }
        self.schedule_maintain(now);
    }

    /// The next message for a peer on a connection: the driver carries it
    /// on the connection's control stream, in order, and hands it to the
    /// other end's [`handle_message`](NodeCore::handle_message).
    pub fn poll_message(&mut self) -> Option<(ConnId, Vec<u8>)> {
        self.messages.pop_front()
    }

    /// A message from the peer on connection `conn` (see
    /// [`poll_message`](NodeCore::poll_message)): how connected nodes repair
    /// what SWIM's dissemination missed (see the `sync` module). The
    /// transport authenticated the peer; what it says of others is taken as
    /// updates like those that ride on probes, and only those that change
    /// this node's view, at most [`NodeConfig::max_members`] in all.
    pub fn handle_message(
        &mut self,
        now: u64,
        conn: ConnId,
        bytes: &[u8],
    ) -> Result<(), DatagramError> {
        if !self.conns.contains_key(&conn) {
            return Ok(());
        }
        let message: Sync<A> =
            postcard::from_bytes(bytes).map_err(|e| DatagramError::Malformed(e.to_string()))?;
        match message {
            Sync::Hello { digest, .. } => {
                // Equal views: nothing more. Otherwise the buckets say where
                // they differ; the peer then sends its members of those
                // buckets and asks for ours, so one round repairs both
                // ends. (A Hello back, as `answer` once asked, started a
                // second round over the same buckets: twice the members
                // sent for the same repair.)
                if digest != self.view.digest() {
                    self.send_sync(conn, &Sync::Buckets(self.view.buckets().to_vec()));
                }
            }
            Sync::Buckets(theirs) => {
                let differing = self.view.differing(&theirs);
                if !differing.is_empty() {
                    self.send_members(conn, &differing);
                    self.send_sync(conn, &Sync::Want(differing));
                }
            }
            Sync::Want(buckets) => self.send_members(conn, &buckets),
            Sync::State(members) => {
                let room =
                    self.config.max_members.saturating_sub(self.swim.iter_membership_state().len());
                let swim = &self.swim;
                let news = sync::news(self.id, |addr| swim.member_at(addr), members, room);
                // The cluster knows these already: not spread again.
                let _ = self.swim.apply_many(news.into_iter(), false, &mut self.runtime);
            }
        }
        self.drain(now);
        Ok(())
    }

    /// Tells the peer on `conn` how many members this node counts as up,
    /// and a fingerprint of which.
    fn send_hello(&mut self, now: u64, conn: ConnId) {
        self.last_hello = Some(now);
        let (members, digest) = (self.view.members(), self.view.digest());
        self.send_sync(conn, &Sync::Hello { members, digest, answer: false });
    }

    /// Sends the members of `buckets`, in chunks.
    fn send_members(&mut self, conn: ConnId, buckets: &[u16]) {
        let members =
            sync::members_in(self.swim.iter_membership_state(), buckets, self.config.max_members);
        let mut members = members.into_iter();
        loop {
            let chunk: Vec<Known<A>> = members.by_ref().take(STATE_CHUNK).collect();
            if chunk.is_empty() {
                break;
            }
            self.send_sync(conn, &Sync::State(chunk));
        }
    }

    fn send_sync(&mut self, conn: ConnId, message: &Sync<A>) {
        if let Ok(bytes) = postcard::to_allocvec(message) {
            self.messages.push_back((conn, bytes));
        }
    }

    /// A connection ended, for whatever reason.
    pub fn handle_disconnected(&mut self, now: u64, conn: ConnId) {
        if self.conns.remove(&conn).is_some() {
            self.schedule_maintain(now);
        }
    }

    /// A dial to `addr` failed (or timed out): it is tried again after a
    /// growing, jittered wait.
    pub fn handle_dial_failed(&mut self, now: u64, addr: A) {
        self.dialing.remove(&addr);
        let failures = self.backoff.get(&addr).map_or(0, |b| b.failures).saturating_add(1);
        let base = self.config.dial_backoff.as_millis() as u64;
        let max = self.config.max_dial_backoff.as_millis() as u64;
        let wait = base.saturating_mul(1 << failures.min(20).saturating_sub(1)).min(max);
        let wait = self.jitter(Duration::from_millis(wait));
        self.backoff.insert(addr, Backoff { failures, until: now + wait });
        self.schedule_maintain(now + wait);
    }

    /// Leaves the cluster: tells a few members, so that everyone knows at
    /// once instead of after a failed probe, and stops dialing.
    pub fn leave(&mut self, now: u64) {
        let _ = self.swim.leave_cluster(&mut self.runtime);
        self.left = true;
        self.drain(now);
    }

    /// Whether [`leave`](NodeCore::leave) was called.
    pub fn has_left(&self) -> bool {
        self.left
    }

    /// Every member this node knows of (itself included), with what it
    /// believes of each.
    pub fn members(&self) -> Vec<MemberInfo<A>> {
        let mut out: Vec<MemberInfo<A>> = self
            .swim
            .iter_membership_state()
            .filter_map(|m| {
                let id = m.id().id?;
                let state = match m.state() {
                    foca::State::Alive => MemberState::Alive,
                    foca::State::Suspect => MemberState::Suspect,
                    foca::State::Down => MemberState::Down,
                };
                Some(MemberInfo { id, addr: m.id().addr.clone(), state })
            })
            .collect();
        let me = if self.left { MemberState::Down } else { MemberState::Alive };
        out.push(MemberInfo { id: self.id, addr: self.me.addr.clone(), state: me });
        out.sort_by_key(|m| m.id);
        out.dedup_by(|a, b| a.id == b.id);
        out
    }

    /// The members up (alive or suspect), this node included: node id ->
    /// address.
    pub fn live(&self) -> BTreeMap<SourceId, A> {
        let mut live: BTreeMap<SourceId, A> = self
            .swim
            .iter_members()
            .filter_map(|m| Some((m.id().id?, m.id().addr.clone())))
            .collect();
        if !self.left {
            live.insert(self.id, self.me.addr.clone());
        }
        live
    }

    /// How many members this node counts as up and a fingerprint of which,
    /// as [`LiveDigest::of`] the ids of [`live`](NodeCore::live) gives, in
    /// O(1) (kept up to date as members come and go).
    pub fn live_digest(&self) -> LiveDigest {
        if self.left {
            // The view compared with neighbours counts this node still.
            let mut view = self.view.clone();
            view.remove(self.id);
            LiveDigest::from_tally(&view)
        } else {
            LiveDigest::from_tally(&self.view)
        }
    }

    /// How many connections this node has, and to whom.
    pub fn connections(&self) -> impl Iterator<Item = (ConnId, SourceId, bool)> + '_ {
        self.conns.iter().map(|(&k, c)| (k, c.peer, c.outgoing))
    }

    /// Compares views with one neighbour: a node that missed a change SWIM
    /// has stopped spreading (a join during a storm of joins) catches up
    /// here, for a few bytes when the views are equal.
    fn compare(&mut self, now: u64) {
        let next = now + self.jitter(self.config.compare_every);
        self.timers.set(next, Timer::Compare);
        if self.left || self.conns.is_empty() {
            return;
        }
        let keys: Vec<ConnId> = self.conns.keys().copied().collect();
        let conn = keys[self.rng.random_range(0..keys.len())];
        self.send_hello(now, conn);
    }

    /// While the membership protocol is stopped (before joining, or after
    /// a renewal), asks the seeds and a few members it knows, in any state,
    /// to take it in: an announcement is accepted by address, so it reaches
    /// a member whatever identity this node has for it. Without this, two
    /// nodes that renew at once (the two sides of a healed partition) would
    /// each wait for the other to speak first.
    fn rejoin(&mut self, now: u64) {
        let known: Vec<Peer<A>> = self
            .swim
            .iter_membership_state()
            .filter(|m| m.id().id.is_some())
            .map(|m| m.id().clone())
            .collect();
        for _ in 0..known.len().min(3) {
            let pick = known[self.rng.random_range(0..known.len())].clone();
            let _ = self.swim.announce(pick, &mut self.runtime);
        }
        self.announce_to_seeds(now);
    }

    /// Moves what the membership protocol asked for into our queues.
    fn drain(&mut self, now: u64) {
        while let Some((to, bytes)) = self.runtime.to_send() {
            let mut out = Vec::with_capacity(DATAGRAM_HEADER + bytes.len());
            out.push(DATAGRAM_MARKER);
            out.extend_from_slice(self.id.as_bytes());
            out.extend_from_slice(&bytes);
            self.stats.datagrams_sent += 1;
            self.stats.bytes_sent += out.len() as u64;
            self.transmits.push_back(Datagram { to: to.addr.clone(), to_id: to.id, bytes: out });
        }
        while let Some((after, timer)) = self.runtime.to_schedule() {
            self.timers.set(now + after.as_millis() as u64, Timer::Swim(timer));
        }
        let mut changed = false;
        let mut recount = false;
        while let Some(notification) = self.runtime.to_notify() {
            match notification {
                OwnedNotification::MemberUp(peer) => {
                    // Every member up counts in the view, as `view_of` counts.
                    if let Some(id) = peer.id {
                        self.view.add(id);
                    }
                    if let Some(id) = peer.id.filter(|id| *id != self.id) {
                        self.events.push_back(NodeEvent::MemberUp { id, addr: peer.addr });
                        changed = true;
                    }
                }
                OwnedNotification::MemberDown(peer) => {
                    if let Some(id) = peer.id {
                        self.view.remove(id);
                        self.member_gone(id, peer.addr);
                        changed = true;
                    }
                }
                // A member's new life or renewal replaced the old one at
                // its address; whether it is up is told separately (an Up
                // or Down follows when that changed). A new life of the same
                // node leaves the view as it was; another node id at that
                // address (rare) changes it only if the member was up, which
                // the notification does not say: count again.
                OwnedNotification::Rename(old, new) => {
                    recount |= old.id != new.id;
                    changed = true;
                }
                OwnedNotification::Active => {
                    self.active = true;
                    self.events.push_back(NodeEvent::Joined);
                }
                OwnedNotification::Idle => {
                    self.active = false;
                    self.events.push_back(NodeEvent::Isolated);
                }
                OwnedNotification::Rejoin(me) => {
                    self.me = me;
                    self.active = false;
                    self.events.push_back(NodeEvent::Rejoined);
                }
                OwnedNotification::Defunct => self.active = false,
            }
        }
        if recount {
            self.view = sync::view_of(self.id, self.swim.iter_members());
        }
        if changed {
            self.schedule_maintain(now);
        }
    }

    /// A member's identity was declared down (a newer life of it would
    /// have replaced that identity first, so the node is gone).
    fn member_gone(&mut self, id: SourceId, addr: A) {
        self.events.push_back(NodeEvent::MemberDown { id, addr });
        let gone: Vec<ConnId> =
            self.conns.iter().filter(|(_, c)| c.peer == id).map(|(&k, _)| k).collect();
        for conn in gone {
            self.conns.remove(&conn);
            self.close(conn, CloseWhy::PeerDown);
        }
    }

    /// Teaches this node members it learned elsewhere (a restart restoring
    /// what it knew): they are probed like any other.
    pub fn remember(&mut self, now: u64, members: impl IntoIterator<Item = Peer<A>>) {
        let members: Vec<Member<Peer<A>>> =
            members.into_iter().filter(|p| p.id != Some(self.id)).map(Member::alive).collect();
        let _ = self.swim.apply_many(members.into_iter(), true, &mut self.runtime);
        self.drain(now);
    }
}
