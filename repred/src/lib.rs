//! repred: replicate application state between peers, with no leader.
//!
//! Annotate your own state struct and it becomes a replicated type: each
//! field a lattice (or your own merge function), changes travel field by
//! field, and every replica converges.
//!
//! ```
//! use repred::{Delivery, GSet, LwwRegister, Max, Network, Replica, Replicated, SourceId};
//!
//! #[derive(Replicated, Default, Debug, PartialEq)]
//! struct Player {
//!     name: LwwRegister<String>,
//!     best: Max<u32>,
//!     badges: GSet<String>,
//! }
//!
//! let mut net = Network::new();
//! let a = net.add(Replica::new(SourceId::new("a")?, Player::default()));
//! let b = net.add(Replica::new(SourceId::new("b")?, Player::default()));
//! net.link(a, b);
//! let mut seen = net[b].subscribe();
//! net.update(a, PlayerChange::best(42))?; // a change to one field
//! net.update(b, PlayerChange::name("bo".to_string()).with_badges(GSet::add("first".into())))?;
//! net.pump();
//! assert_eq!(net[a].state(), net[b].state());
//! assert_eq!(net[a].state().best.get(), Some(&42));
//! // Every change b applied, local or remote, with who made it.
//! let changes: Vec<String> = net[b]
//!     .changes(&mut seen)
//!     .filter_map(|d| match d {
//!         Delivery::Change(c) => Some(format!("{}: {:?}", c.source, c.change)),
//!         Delivery::Lagged { .. } => None,
//!     })
//!     .collect();
//! assert_eq!(changes, [
//!     r#"b: PlayerChange { name: LwwRegister(Some("bo")), badges: GSet({"first"}) }"#,
//!     "a: PlayerChange { best: Max(Some(42)) }",
//! ]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A user writes one commutative, idempotent merge, [`Reduce::reduce`], and a
//! [`Replica`] does the rest: it stamps local updates, keeps a [`Clock`] of
//! who has seen what, records a bounded history, and runs the per-peer
//! protocol (Hello with the clock, the missing history or a snapshot, Sync,
//! then live updates) as a pure state machine. Bytes and time are passed in;
//! nothing here touches a socket, a thread or the wall clock, so the same
//! core runs over QUIC (`repred-transport`), a file, or the in-memory
//! [`Network`] used throughout the tests.
//!
//! ```
//! use std::collections::BTreeSet;
//! use repred::{Network, Reduce, Replica, SourceId};
//!
//! /// A grow-only set: the union is the merge.
//! #[derive(Default, Debug, PartialEq)]
//! struct Seen(BTreeSet<u32>);
//!
//! impl Reduce for Seen {
//!     type Update = BTreeSet<u32>;
//!     fn reduce(&mut self, update: BTreeSet<u32>) -> Option<BTreeSet<u32>> {
//!         let new: BTreeSet<u32> = update.into_iter().filter(|x| self.0.insert(*x)).collect();
//!         (!new.is_empty()).then_some(new)
//!     }
//!     fn snapshot(&self) -> BTreeSet<u32> {
//!         self.0.clone()
//!     }
//! }
//!
//! let mut net = Network::new();
//! let a = net.add(Replica::new(SourceId::new("A")?, Seen::default()));
//! let b = net.add(Replica::new(SourceId::new("B")?, Seen::default()));
//! net.update(a, [1, 2].into())?; // before linking: travels as history
//! net.link(a, b);
//! net.update(b, [3].into())?; // after: travels live
//! net.pump();
//! assert_eq!(net[a].state(), net[b].state());
//! assert_eq!(net[a].clock(), net[b].clock());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod clock;
mod config;
pub mod doc;
mod envelope;
mod event;
mod frame;
mod history;
pub mod lattice;
#[cfg(feature = "laws")]
pub mod laws;
mod network;
mod outcome;
mod reconcile;
mod reduce;
mod replica;
mod session;
mod signing;
mod snapshot;
mod source;
mod source_table;
mod timestamp;

pub use clock::Clock;
pub use config::Config;
pub use envelope::Envelope;
pub use event::{EndReason, Event, StreamId};
pub use frame::{
    ClockSummary, CloseReason, FRAME_HEADER_LEN, Hello, PROTOCOL_VERSION, PeerMisbehaved,
};
pub use history::Entry;
pub use lattice::{
    EventLog, GCounter, GSet, LatticeMap, LwwMap, LwwRegister, Max, Min, OrSet, PnCounter, Stamped,
};
pub use network::{LinkId, Network, NodeId};
pub use outcome::{Outcome, Rejection, SnapshotRefusal};
pub use reduce::Reduce;
pub use replica::{Change, Changes, Delivery, Replica, ReplicaError, Stats, Subscription};
pub use session::{SessionError, StreamOpts, StreamStats};
pub use signing::{
    ChangeDigest, ChannelBinding, HelloClaims, Identity, Proof, Signature, VerifyError,
    change_digest, source_id_of,
};
pub use source::{InvalidSourceId, SourceId};
pub use timestamp::{Stamp, Timestamp};

#[cfg(feature = "derive")]
pub use repred_derive::Replicated;

/// What generated code refers to; not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use serde;

    /// A derived struct's snapshot cursor: which field, and where in it.
    pub fn read_part_cursor(cursor: Option<&[u8]>) -> (u32, Option<Vec<u8>>) {
        let at = crate::lattice::Phase::read(cursor);
        (at.phase, at.inner)
    }

    /// The cursor after a part of field `field` that ended at `inner`.
    pub fn next_part_cursor(field: u32, inner: Option<Vec<u8>>, fields: u32) -> Option<Vec<u8>> {
        crate::lattice::Phase::next(field, inner, fields)
    }
}
