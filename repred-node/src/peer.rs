//! Who a member is, as SWIM knows it.

use std::fmt::Debug;

use repred::SourceId;
use serde::{Deserialize, Serialize};

/// What a node's address can be: a socket address in production, a plain
/// number in the simulator. Anything small, ordered and serializable.
pub trait Address:
    Clone + Debug + Eq + Ord + std::hash::Hash + Serialize + for<'de> Deserialize<'de> + 'static
{
}

impl<A> Address for A where
    A: Clone + Debug + Eq + Ord + std::hash::Hash + Serialize + for<'de> Deserialize<'de> + 'static
{
}

/// A member's identity in the membership protocol: its node id, where it
/// listens, and which of its lives (and renewals) this is.
///
/// Two identities at one address are the same node in two lives: the one
/// with the larger `bump` wins, so a restarted node (whose `bump` starts
/// from its start time) replaces its earlier self at once, and a node that
/// was declared down by mistake rejoins as `bump + 1`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Peer<A> {
    /// The node id, bound to its certificate by the transport; `None` for a
    /// bootstrap address whose node is not known yet.
    pub id: Option<SourceId>,
    /// Where it listens.
    pub addr: A,
    /// Its life and renewals: larger is newer.
    pub bump: u64,
}

impl<A> Peer<A> {
    /// A bootstrap address: whoever answers there replaces it.
    pub fn seed(addr: A) -> Self {
        Self { id: None, addr, bump: 0 }
    }
}

impl<A: Address> foca::Identity for Peer<A> {
    type Addr = A;

    fn renew(&self) -> Option<Self> {
        Some(Self { id: self.id, addr: self.addr.clone(), bump: self.bump.wrapping_add(1).max(1) })
    }

    fn addr(&self) -> A {
        self.addr.clone()
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.bump > adversary.bump
    }
}
