//! Repairing what SWIM's dissemination missed, over a connection.
//!
//! SWIM spreads each membership change for a while and then forgets it, so
//! a node that missed one (it joined during a storm of joins, or it saw a
//! member suspected but not the verdict) is corrected only when chance has
//! the right member probe it. Connected nodes therefore compare views now
//! and then: a count and a fingerprint of the members each counts as up
//! (a few bytes; equal views stop there), then, if they differ, the
//! fingerprints of 256 buckets of members, then only the members of the
//! buckets that differ, both ways. What a node takes in is filtered to what
//! changes its view before the membership protocol sees it, one lookup per
//! member carried.
//!
//! The fingerprints are kept up to date as members come and go ([`Tally`]),
//! so comparing equal views costs the same at 10 members and at 10,000.

use std::collections::BTreeSet;

use foca::{Member, State};
use repred::SourceId;
use serde::{Deserialize, Serialize};

use crate::{Address, Peer};

/// Buckets a view is split into when two nodes look for their difference.
pub(crate) const BUCKETS: usize = 256;

/// Members per [`Sync::State`] message.
pub(crate) const STATE_CHUNK: usize = 1_000;

/// What nodes say to each other on a connection's control stream.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Sync<A> {
    /// How many members the sender counts as up, and a fingerprint of
    /// which. `answer` is always false now (it marked a Hello sent back,
    /// which started a second, redundant round); kept for the wire format.
    Hello { members: u32, digest: u64, answer: bool },
    /// The fingerprints of the sender's view, per bucket.
    Buckets(Vec<u64>),
    /// Send me your members in these buckets.
    Want(Vec<u16>),
    /// Members (in every state), in reply.
    State(Vec<Known<A>>),
}

/// A member as a member list carries it.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Known<A> {
    peer: Peer<A>,
    incarnation: u16,
    state: u8,
}

/// A member id's share of a fingerprint: a 64-bit mix of its bytes.
pub(crate) fn fingerprint(id: SourceId) -> u64 {
    let b = id.as_bytes();
    let lo = u64::from_le_bytes(b[..8].try_into().unwrap_or_default());
    let hi = u64::from_le_bytes(b[8..].try_into().unwrap_or_default());
    // splitmix64's finalizer over both halves.
    let mut x = lo ^ hi.rotate_left(29) ^ 0x9E37_79B9_7F4A_7C15;
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn bucket(id: SourceId) -> usize {
    (fingerprint(id) >> 56) as usize % BUCKETS
}

fn rank(state: State) -> u8 {
    match state {
        State::Alive => 0,
        State::Suspect => 1,
        State::Down => 2,
    }
}

/// A count and a fingerprint per bucket of a set of member ids, kept up to
/// date one member at a time: a member's fingerprint is XORed in when it
/// comes up and out when it goes down, so the set's fingerprint never needs
/// a pass over the member list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Tally {
    members: u32,
    buckets: Vec<u64>,
}

impl Tally {
    /// The empty set.
    pub(crate) fn new() -> Self {
        Self { members: 0, buckets: vec![0u64; BUCKETS] }
    }

    /// The set of `ids`.
    pub(crate) fn of(ids: impl IntoIterator<Item = SourceId>) -> Self {
        let mut tally = Self::new();
        for id in ids {
            tally.add(id);
        }
        tally
    }

    /// `id` came up.
    pub(crate) fn add(&mut self, id: SourceId) {
        self.buckets[bucket(id)] ^= fingerprint(id);
        self.members = self.members.wrapping_add(1);
    }

    /// `id` went down (XOR is its own inverse).
    pub(crate) fn remove(&mut self, id: SourceId) {
        self.buckets[bucket(id)] ^= fingerprint(id);
        self.members = self.members.wrapping_sub(1);
    }

    /// How many members.
    pub(crate) fn members(&self) -> u32 {
        self.members
    }

    /// One fingerprint of the whole set (O(buckets), not O(members)).
    pub(crate) fn digest(&self) -> u64 {
        self.buckets.iter().fold(0u64, |acc, b| acc ^ b.rotate_left(17) ^ (acc << 1))
    }

    /// The buckets in which `theirs` differs from this set.
    pub(crate) fn differing(&self, theirs: &[u64]) -> Vec<u16> {
        (0..BUCKETS)
            .filter(|&b| theirs.get(b).copied().unwrap_or_default() != self.buckets[b])
            .map(|b| b as u16)
            .collect()
    }

    /// The fingerprint per bucket.
    pub(crate) fn buckets(&self) -> &[u64] {
        &self.buckets
    }
}

/// A node's view of who is up, counted from scratch: itself and each member
/// up with a node id. What [`Tally`] keeps incrementally, and what it is
/// rebuilt from when an update does not say enough to adjust it.
pub(crate) fn view_of<'a, A: Address + 'a>(
    me: SourceId,
    up: impl Iterator<Item = &'a Member<Peer<A>>>,
) -> Tally {
    Tally::of(std::iter::once(me).chain(up.filter_map(|m| m.id().id)))
}

/// The members (every state) in the given buckets, as a list carries them.
pub(crate) fn members_in<'a, A: Address + 'a>(
    all: impl Iterator<Item = &'a Member<Peer<A>>>,
    buckets: &[u16],
    max: usize,
) -> Vec<Known<A>> {
    let wanted: BTreeSet<usize> = buckets.iter().map(|&b| usize::from(b)).collect();
    all.filter(|m| m.id().id.is_some_and(|id| wanted.contains(&bucket(id))))
        .take(max)
        .map(|m| Known {
            peer: m.id().clone(),
            incarnation: m.incarnation(),
            state: rank(m.state()),
        })
        .collect()
}

/// Of what a peer sent, what changes this node's view: members it does not
/// know, newer identities at an address, and newer states (a higher
/// incarnation, or a worse state at the same one, as SWIM orders them).
/// `known` finds this node's member at an address (foca's index), so a
/// repair costs one lookup per member it carries.
pub(crate) fn news<'a, A: Address + 'a>(
    me: SourceId,
    known: impl Fn(&A) -> Option<&'a Member<Peer<A>>>,
    incoming: Vec<Known<A>>,
    room: usize,
) -> Vec<Member<Peer<A>>> {
    let mut unknown = 0usize;
    let mut out = Vec::new();
    for k in incoming {
        if k.peer.id.is_none() || k.peer.id == Some(me) || k.state > 2 {
            continue;
        }
        let changes = match known(&k.peer.addr) {
            None => {
                unknown += 1;
                unknown <= room
            }
            Some(m) => {
                if *m.id() != k.peer {
                    k.peer.bump > m.id().bump
                } else {
                    (k.incarnation, k.state) > (m.incarnation(), rank(m.state()))
                }
            }
        };
        if changes {
            let state = match k.state {
                0 => State::Alive,
                1 => State::Suspect,
                _ => State::Down,
            };
            out.push(Member::new(k.peer, k.incarnation, state));
        }
    }
    out
}
