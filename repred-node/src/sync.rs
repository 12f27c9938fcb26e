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
//! changes its view before the membership protocol sees it, so a repair
//! costs O(N) work however many members it carries.

use std::collections::{BTreeSet, HashMap};

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
    /// which; `answer` marks the reply to one, which is not answered.
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

/// A node's view of who is up (itself included): a count, a fingerprint,
/// and the fingerprint per bucket.
pub(crate) struct View {
    pub(crate) members: u32,
    pub(crate) digest: u64,
    pub(crate) buckets: Vec<u64>,
}

impl View {
    pub(crate) fn of<'a, A: Address + 'a>(
        me: SourceId,
        up: impl Iterator<Item = &'a Member<Peer<A>>>,
    ) -> Self {
        let mut buckets = vec![0u64; BUCKETS];
        let mut members = 1;
        buckets[bucket(me)] ^= fingerprint(me);
        for m in up {
            if let Some(id) = m.id().id {
                buckets[bucket(id)] ^= fingerprint(id);
                members += 1;
            }
        }
        let digest = buckets.iter().fold(0u64, |acc, b| acc ^ b.rotate_left(17) ^ (acc << 1));
        Self { members, digest, buckets }
    }

    /// The buckets in which `theirs` differs from this view.
    pub(crate) fn differing(&self, theirs: &[u64]) -> Vec<u16> {
        (0..BUCKETS)
            .filter(|&b| theirs.get(b).copied().unwrap_or_default() != self.buckets[b])
            .map(|b| b as u16)
            .collect()
    }
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
/// One pass over the view, so a repair costs O(N) however much it carries.
pub(crate) fn news<'a, A: Address + 'a>(
    me: SourceId,
    all: impl Iterator<Item = &'a Member<Peer<A>>>,
    incoming: Vec<Known<A>>,
    room: usize,
) -> Vec<Member<Peer<A>>> {
    let mine: HashMap<&A, (&Peer<A>, u16, u8)> =
        all.map(|m| (&m.id().addr, (m.id(), m.incarnation(), rank(m.state())))).collect();
    let mut unknown = 0usize;
    let mut out = Vec::new();
    for k in incoming {
        if k.peer.id.is_none() || k.peer.id == Some(me) || k.state > 2 {
            continue;
        }
        let changes = match mine.get(&k.peer.addr) {
            None => {
                unknown += 1;
                unknown <= room
            }
            Some((peer, incarnation, state)) => {
                if **peer != k.peer {
                    k.peer.bump > peer.bump
                } else {
                    (k.incarnation, k.state) > (*incarnation, *state)
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
