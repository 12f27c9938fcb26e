//! Which members hold an object: a pure function of the member list.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use repred::SourceId;
use sha2::{Digest, Sha256};

/// An object's place in the hash space: 64 bits of the SHA-256 of its
/// name. Every node computes the same key for the same name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey(pub u64);

impl ObjectKey {
    /// The key of a name (any bytes).
    pub fn of(name: &[u8]) -> Self {
        Self(hash64(b"repred-place/object", name))
    }
}

/// What can name a placed object: anything that hashes to an
/// [`ObjectKey`] the same way on every node.
pub trait Name: Ord + Clone + fmt::Debug {
    /// Its key.
    fn key(&self) -> ObjectKey;
}

impl Name for String {
    fn key(&self) -> ObjectKey {
        ObjectKey::of(self.as_bytes())
    }
}

impl Name for Vec<u8> {
    fn key(&self) -> ObjectKey {
        ObjectKey::of(self)
    }
}

/// A number names an object by its eight big-endian bytes (the
/// simulator's objects).
impl Name for u64 {
    fn key(&self) -> ObjectKey {
        ObjectKey::of(&self.to_be_bytes())
    }
}

fn hash64(domain: &[u8], bytes: &[u8]) -> u64 {
    let mut h = Sha256::new();
    h.update([domain.len() as u8]);
    h.update(domain);
    h.update(bytes);
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(first)
}

/// SplitMix64's finalizer: a bijection of 64-bit words in which every
/// input bit flips each output bit with probability about one half.
#[inline]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// How the replicas of an object are chosen from the members.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Scheme {
    /// The member of highest rendezvous weight for the object is its
    /// primary; the others are the primary's successors on a ring of the
    /// members ordered by a hash of their ids. Spread is that of rendezvous
    /// hashing (each node's load is a sum of k independent draws), and a
    /// node shares objects with only its 2(k - 1) ring neighbours, so it
    /// needs O(k) connections to keep its replicas in sync whatever N. A
    /// join or a departure moves about (2k - 1)/k of the floor.
    #[default]
    Neighbours,
    /// The k members of highest rendezvous weight (highest random weight).
    /// Moves exactly the floor on a join or a departure and spreads a
    /// failed node's objects over the whole cluster, but a node shares
    /// objects with nearly every other node.
    Rendezvous,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Member {
    /// Hashed into every rendezvous weight.
    weight: u64,
    /// Place on the ring.
    ring: u64,
    live: bool,
}

/// Where one object lives, as one node's member list has it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Placed {
    /// The first k members of the object's preference list, up or not:
    /// the nodes that own it.
    pub owners: Vec<SourceId>,
    /// The first k live members of the preference list: the nodes that
    /// should hold it now. A replica that is not an owner stands in for an
    /// absent one (Dynamo's hinted handoff) and hands the object back when
    /// the owner returns.
    pub replicas: Vec<SourceId>,
}

impl Placed {
    /// Whether `node` should hold the object now.
    pub fn is_replica(&self, node: SourceId) -> bool {
        self.replicas.contains(&node)
    }

    /// The live replicas standing in for absent owners, each with the
    /// owner it covers (in preference order: the first stand-in covers the
    /// first absent owner).
    pub fn stand_ins(&self) -> Vec<(SourceId, SourceId)> {
        let absent = self.owners.iter().filter(|o| !self.replicas.contains(o));
        let covering = self.replicas.iter().filter(|r| !self.owners.contains(r));
        covering.copied().zip(absent.copied()).collect()
    }
}

/// The member list as placement sees it, and the function from an object
/// to its replicas. Pure: no I/O, no clock, no randomness. Two nodes with
/// the same members (whatever the order they learned them in) place every
/// object alike.
///
/// Members are *live* (alive or suspected: they answer, or may) or
/// *absent* (declared down, not yet forgotten). An object's **owners** are
/// the first k members of its preference list; its **replicas** are the
/// first k live ones. While an owner is absent the next live member on the
/// list stands in for it; once the owner is forgotten
/// ([`Placement::remove`]) the stand-in owns the object.
///
/// ```
/// use repred::SourceId;
/// use repred_place::{ObjectKey, Placement};
///
/// let ids: Vec<SourceId> = (0..10).map(|i| SourceId::new(format!("n{i}")).unwrap()).collect();
/// let mut a = Placement::default();
/// let mut b = Placement::default();
/// for id in &ids {
///     a.set(*id, true);
/// }
/// for id in ids.iter().rev() {
///     b.set(*id, true);
/// }
/// let key = ObjectKey::of(b"users/42");
/// let placed = a.place(key, 3);
/// assert_eq!(placed.replicas.len(), 3);
/// assert_eq!(placed, b.place(key, 3), "the order members were learned in does not matter");
/// // One replica is declared down: the next member stands in for it.
/// a.set(placed.replicas[1], false);
/// let now = a.place(key, 3);
/// assert_eq!(now.owners, placed.owners);
/// assert_eq!(now.stand_ins().len(), 1);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    scheme: Scheme,
    members: BTreeMap<SourceId, Member>,
    ring: BTreeSet<(u64, SourceId)>,
    live: usize,
}

impl Placement {
    /// No members yet, placing by `scheme`.
    pub fn new(scheme: Scheme) -> Self {
        Self { scheme, ..Self::default() }
    }

    /// The scheme.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// Adds a member, or sets whether it is live; returns whether anything
    /// changed.
    pub fn set(&mut self, id: SourceId, live: bool) -> bool {
        match self.members.get_mut(&id) {
            Some(m) if m.live == live => false,
            Some(m) => {
                m.live = live;
                if live {
                    self.live += 1;
                } else {
                    self.live -= 1;
                }
                true
            }
            None => {
                let bytes = id.as_bytes();
                let member = Member {
                    weight: hash64(b"repred-place/weight", bytes),
                    ring: hash64(b"repred-place/ring", bytes),
                    live,
                };
                self.ring.insert((member.ring, id));
                self.members.insert(id, member);
                self.live += usize::from(live);
                true
            }
        }
    }

    /// Forgets a member (it left for good, or was absent long enough);
    /// returns whether it was there.
    pub fn remove(&mut self, id: SourceId) -> bool {
        let Some(m) = self.members.remove(&id) else { return false };
        self.ring.remove(&(m.ring, id));
        self.live -= usize::from(m.live);
        true
    }

    /// Whether `id` is a member (live or absent).
    pub fn contains(&self, id: SourceId) -> bool {
        self.members.contains_key(&id)
    }

    /// Whether `id` is a live member.
    pub fn is_live(&self, id: SourceId) -> bool {
        self.members.get(&id).is_some_and(|m| m.live)
    }

    /// Members, live or absent.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether there are no members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Live members.
    pub fn live_count(&self) -> usize {
        self.live
    }

    /// Every member and whether it is live, by id.
    pub fn members(&self) -> impl Iterator<Item = (SourceId, bool)> + '_ {
        self.members.iter().map(|(id, m)| (*id, m.live))
    }

    /// `id`'s rendezvous weight for `key`, if it is a member.
    pub fn weight(&self, id: SourceId, key: ObjectKey) -> Option<u64> {
        self.members.get(&id).map(|m| mix(m.weight ^ key.0))
    }

    /// The member of highest rendezvous weight for `key` (ties, which take
    /// a 64-bit collision, go to the greater id): the head of its
    /// preference list.
    pub fn primary(&self, key: ObjectKey) -> Option<SourceId> {
        self.members.iter().map(|(id, m)| (mix(m.weight ^ key.0), *id)).max().map(|(_, id)| id)
    }

    /// Where the object of `key` lives when it has `k` replicas.
    pub fn place(&self, key: ObjectKey, k: usize) -> Placed {
        match self.scheme {
            Scheme::Neighbours => match self.primary(key) {
                Some(primary) => self.place_from(primary, k),
                None => Placed::default(),
            },
            Scheme::Rendezvous => self.top(key, k),
        }
    }

    /// The live replicas of `key` (see [`Placement::place`]).
    pub fn replicas(&self, key: ObjectKey, k: usize) -> Vec<SourceId> {
        self.place(key, k).replicas
    }

    /// [`Scheme::Neighbours`]' placement of an object whose primary is
    /// known (a keeper caches each object's primary, and only a join or a
    /// forgotten member can change it): `primary` and its successors on
    /// the ring.
    ///
    /// # Panics
    /// If `primary` is not a member.
    pub fn place_from(&self, primary: SourceId, k: usize) -> Placed {
        let m = self.members[&primary];
        let start = (m.ring, primary);
        let walk = self.ring.range(start..).chain(self.ring.range(..start)).map(|(_, id)| *id);
        let mut placed = Placed { owners: Vec::with_capacity(k), replicas: Vec::with_capacity(k) };
        for id in walk {
            if placed.owners.len() >= k && placed.replicas.len() >= k {
                break;
            }
            if placed.owners.len() < k {
                placed.owners.push(id);
            }
            if placed.replicas.len() < k && self.members[&id].live {
                placed.replicas.push(id);
            }
        }
        placed
    }

    /// The ring neighbours of `id` within `k - 1` steps either way,
    /// skipping absent members: whom a node shares objects with under
    /// [`Scheme::Neighbours`].
    pub fn neighbours(&self, id: SourceId, k: usize) -> Vec<SourceId> {
        let Some(m) = self.members.get(&id) else { return Vec::new() };
        let start = (m.ring, id);
        let live = |(_, n): &&(u64, SourceId)| *n != id && self.members[n].live;
        let after = self.ring.range(start..).chain(self.ring.range(..start)).filter(live);
        let before =
            self.ring.range(..start).rev().chain(self.ring.range(start..).rev()).filter(live);
        let mut out: Vec<SourceId> = after.take(k.saturating_sub(1)).map(|(_, n)| *n).collect();
        for (_, n) in before.take(k.saturating_sub(1)) {
            if !out.contains(n) {
                out.push(*n);
            }
        }
        out
    }

    /// [`Scheme::Rendezvous`]: the k heaviest members, and the k heaviest
    /// live ones.
    fn top(&self, key: ObjectKey, k: usize) -> Placed {
        let mut owners: Vec<(u64, SourceId)> = Vec::with_capacity(k + 1);
        let mut replicas: Vec<(u64, SourceId)> = Vec::with_capacity(k + 1);
        let insert = |top: &mut Vec<(u64, SourceId)>, entry: (u64, SourceId)| {
            if top.len() == k && top.last().is_none_or(|last| *last >= entry) {
                return;
            }
            let at = top.partition_point(|e| *e > entry);
            top.insert(at, entry);
            top.truncate(k);
        };
        if k == 0 {
            return Placed::default();
        }
        for (id, m) in &self.members {
            let entry = (mix(m.weight ^ key.0), *id);
            insert(&mut owners, entry);
            if m.live {
                insert(&mut replicas, entry);
            }
        }
        Placed {
            owners: owners.into_iter().map(|(_, id)| id).collect(),
            replicas: replicas.into_iter().map(|(_, id)| id).collect(),
        }
    }
}
