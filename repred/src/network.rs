//! Replicas linked in memory, for tests, simulations and embedding.

use std::ops::{Index, IndexMut};

use crate::{Reduce, Replica, ReplicaError, SessionError, Stamp, StreamId, StreamOpts};

/// Names a replica in a [`Network`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub usize);

/// Names a link in a [`Network`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LinkId(pub usize);

struct End {
    node: NodeId,
    stream: StreamId,
    /// Bytes this end wrote that the other end has not read yet.
    in_flight: Vec<u8>,
}

struct Link {
    ends: [End; 2],
    up: bool,
    /// Up, but whatever is written is lost: a peer that died without a word,
    /// whose connection nobody has noticed yet.
    dead: bool,
}

/// Replicas and in-memory links between them, on virtual time.
///
/// Each link is a pair of streams piped both ways. Nothing moves until
/// [`step`](Network::step) (one hop: every link delivers what its ends had
/// written) or [`pump`](Network::pump) (step until quiet), so every
/// interleaving is reproducible. Links can be cut (both streams dropped
/// without a word, bytes in flight lost) and made again.
///
/// ```
/// use repred::{Network, Replica, SourceId};
/// # use repred::Reduce;
/// # #[derive(Default, Debug, PartialEq)]
/// # struct Max(u64);
/// # impl Reduce for Max {
/// #     type Update = u64;
/// #     fn reduce(&mut self, u: u64) -> Option<u64> { (u > self.0).then(|| { self.0 = u; u }) }
/// #     fn snapshot(&self) -> u64 { self.0 }
/// # }
/// let mut net = Network::new();
/// let [a, b, c] = ["A", "B", "C"].map(|n| net.add(Replica::new(SourceId::new(n).unwrap(), Max(0))));
/// net.link(a, b);
/// net.link(b, c); // a and c never meet
/// net.update(a, 3)?;
/// net.pump();
/// assert_eq!(net[c].state(), &Max(3));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Network<T: Reduce> {
    nodes: Vec<Replica<T>>,
    links: Vec<Link>,
    now: u64,
    errors: Vec<(LinkId, NodeId, SessionError)>,
}

impl<T: Reduce> Default for Network<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Reduce> Network<T> {
    /// Most steps [`pump`](Network::pump) takes before giving up.
    pub const MAX_STEPS: usize = 100_000;

    /// Where virtual time starts: 2023-11-14, in Unix milliseconds, so that
    /// timestamps look like real ones.
    pub const EPOCH: u64 = 1_700_000_000_000;

    /// An empty network at virtual time [`Network::EPOCH`].
    pub fn new() -> Self {
        Self::starting_at(Self::EPOCH)
    }

    /// An empty network at virtual time `now` (milliseconds).
    pub fn starting_at(now: u64) -> Self {
        Self { nodes: Vec::new(), links: Vec::new(), now, errors: Vec::new() }
    }

    /// Adds a replica.
    pub fn add(&mut self, replica: Replica<T>) -> NodeId {
        self.nodes.push(replica);
        NodeId(self.nodes.len() - 1)
    }

    /// The replicas, in the order they were added.
    pub fn nodes(&self) -> impl Iterator<Item = (NodeId, &Replica<T>)> {
        self.nodes.iter().enumerate().map(|(i, r)| (NodeId(i), r))
    }

    /// Virtual wall time in milliseconds.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Moves virtual time forward.
    pub fn advance(&mut self, millis: u64) {
        self.now += millis;
    }

    /// A local update on `node` at the network's time.
    pub fn update(
        &mut self,
        node: NodeId,
        update: T::Update,
    ) -> Result<Option<Stamp>, ReplicaError> {
        let now = self.now;
        self.nodes[node.0].update(now, update)
    }

    /// Links two replicas with default streams both ways.
    ///
    /// # Panics
    /// If either replica was disposed of.
    pub fn link(&mut self, a: NodeId, b: NodeId) -> LinkId {
        self.link_with(a, StreamOpts::default(), b, StreamOpts::default())
    }

    /// Links two replicas with the given stream options on each side.
    ///
    /// # Panics
    /// If either replica was disposed of.
    pub fn link_with(
        &mut self,
        a: NodeId,
        a_opts: StreamOpts,
        b: NodeId,
        b_opts: StreamOpts,
    ) -> LinkId {
        let sa = self.nodes[a.0].open(a_opts).expect("linking a disposed replica");
        let sb = self.nodes[b.0].open(b_opts).expect("linking a disposed replica");
        let end = |node, stream| End { node, stream, in_flight: Vec::new() };
        self.links.push(Link { ends: [end(a, sa), end(b, sb)], up: true, dead: false });
        LinkId(self.links.len() - 1)
    }

    /// The stream each side of a link uses.
    pub fn streams(&self, link: LinkId) -> [(NodeId, StreamId); 2] {
        let [a, b] = &self.links[link.0].ends;
        [(a.node, a.stream), (b.node, b.stream)]
    }

    /// Whether a link is still up.
    pub fn is_up(&self, link: LinkId) -> bool {
        self.links[link.0].up
    }

    /// Cuts a link: both streams are dropped without a Close and bytes in
    /// flight are lost. Link the pair again to resume.
    pub fn cut(&mut self, link: LinkId) {
        let l = &mut self.links[link.0];
        l.up = false;
        for end in &mut l.ends {
            end.in_flight.clear();
            self.nodes[end.node.0].abort(end.stream);
        }
    }

    /// Makes a link silently lose everything written to it from now on
    /// (`true`), as when a peer dies and nobody has noticed yet: its streams
    /// stay open at both ends. `false` delivers again (what was lost stays
    /// lost).
    pub fn set_dead(&mut self, link: LinkId, dead: bool) {
        self.links[link.0].dead = dead;
    }

    /// Protocol errors seen so far: on which link, at which node.
    pub fn errors(&self) -> &[(LinkId, NodeId, SessionError)] {
        &self.errors
    }

    /// Lets one end of a link write out everything it has to send.
    pub fn flush(&mut self, link: LinkId, side: usize) -> usize {
        let l = &mut self.links[link.0];
        if !l.up {
            return 0;
        }
        let end = &mut l.ends[side];
        let node = &mut self.nodes[end.node.0];
        let mut total = 0;
        loop {
            match node.poll_transmit(end.stream, &mut end.in_flight) {
                Ok(0) => break,
                Ok(n) => total += n,
                Err(e) => {
                    self.errors.push((link, end.node, e));
                    break;
                }
            }
        }
        total
    }

    /// Delivers up to `max` bytes written by one end of a link to the other.
    pub fn deliver(&mut self, link: LinkId, side: usize, max: usize) -> usize {
        let now = self.now;
        let l = &mut self.links[link.0];
        if !l.up {
            return 0;
        }
        let n = l.ends[side].in_flight.len().min(max);
        if n == 0 {
            return 0;
        }
        let bytes: Vec<u8> = l.ends[side].in_flight.drain(..n).collect();
        if l.dead {
            return n;
        }
        let to = &l.ends[1 - side];
        if let Err(e) = self.nodes[to.node.0].handle(to.stream, now, &bytes) {
            self.errors.push((link, to.node, e));
        }
        n
    }

    /// One hop: replicas whose timers are due handle them
    /// ([`Replica::handle_timeout`]), every link's ends write what they
    /// have, then every link delivers it. Returns the bytes moved.
    pub fn step(&mut self) -> usize {
        let now = self.now;
        for node in &mut self.nodes {
            if node.poll_timeout().is_some_and(|due| due <= now) {
                node.handle_timeout(now);
            }
        }
        for i in 0..self.links.len() {
            self.flush(LinkId(i), 0);
            self.flush(LinkId(i), 1);
        }
        let mut moved = 0;
        for i in 0..self.links.len() {
            moved += self.deliver(LinkId(i), 0, usize::MAX);
            moved += self.deliver(LinkId(i), 1, usize::MAX);
        }
        moved
    }

    /// Steps until nothing moves; returns the number of steps that moved
    /// bytes.
    ///
    /// # Panics
    /// After [`Network::MAX_STEPS`] steps that all moved bytes, which means
    /// the protocol never goes quiet.
    pub fn pump(&mut self) -> usize {
        for steps in 0..Self::MAX_STEPS {
            if self.step() == 0 {
                return steps;
            }
        }
        panic!("the network did not go quiet within {} steps", Self::MAX_STEPS);
    }
}

impl<T: Reduce> Index<NodeId> for Network<T> {
    type Output = Replica<T>;

    fn index(&self, node: NodeId) -> &Replica<T> {
        &self.nodes[node.0]
    }
}

impl<T: Reduce> IndexMut<NodeId> for Network<T> {
    fn index_mut(&mut self, node: NodeId) -> &mut Replica<T> {
        &mut self.nodes[node.0]
    }
}
