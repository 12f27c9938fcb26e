//! Objects that live on k of N nodes, Dynamo-style, with no lookup service.
//!
//! Every node learns the member list (SWIM, in `repred-node`); from it,
//! every node computes for any object name the same ordered list of k
//! replicas ([`Placement`]). Nobody is asked where an object lives and no
//! node is special. [`Keeper`] is the per-node state machine that moves
//! objects as membership changes, without loss: it offers an object to
//! replicas that lack it, keeps a replica it should no longer hold until the
//! new replicas' clocks cover it, and lets the next live node stand in for
//! an absent owner until the owner returns (hinted handoff). [`Route`] is
//! the access of a node that holds no replica of an object: its copy syncs
//! with one live replica, failing over to the next, and says which of its
//! writes a replica acknowledged.
//!
//! ```
//! use repred::SourceId;
//! use repred_place::{ObjectKey, Placement};
//!
//! let node = |i: u32| SourceId::new(format!("node-{i}")).unwrap();
//! let mut placement = Placement::default();
//! for i in 0..8 {
//!     placement.set(node(i), true); // a live member, as SWIM reports it
//! }
//! // Every node computes the same three replicas for a name, asking nobody.
//! let key = ObjectKey::of(b"users/42");
//! let replicas = placement.replicas(key, 3);
//! println!("users/42 lives on {replicas:?}");
//! assert_eq!(replicas.len(), 3);
//!
//! // A ninth node joins: only some objects move, and only onto it.
//! let before: Vec<Vec<SourceId>> =
//!     (0..1_000).map(|i| placement.replicas(ObjectKey::of(format!("o{i}").as_bytes()), 3)).collect();
//! placement.set(node(8), true);
//! let mut moved = 0;
//! for (i, old) in before.iter().enumerate() {
//!     let new = placement.replicas(ObjectKey::of(format!("o{i}").as_bytes()), 3);
//!     if &new != old {
//!         moved += 1;
//!         assert!(new.contains(&node(8)), "an object moves only to make room for the newcomer");
//!     }
//! }
//! println!("{moved} of 1,000 objects gained node-8 as a replica");
//! assert!(moved > 0 && moved < 600);
//! ```
//!
//! Both are sans-IO, like the other cores of repred: no sockets, no clock,
//! no randomness. `repred-sim` drives them over the simulator's node cores
//! and replicas; with the feature `transport`, `transport::Placer`
//! drives a keeper on a `repred-transport` QUIC node.
//!
//! **The placement** ([`Scheme::Neighbours`], the default): the member of
//! highest *rendezvous weight* for an object (a 64-bit mix of a hash of the
//! node id and a hash of the object's name) is its primary; the other k - 1
//! replicas are the primary's successors on a ring of the members ordered
//! by another hash of their ids. A node's load is then the objects of itself
//! and its k - 1 ring predecessors: a sum of k independent rendezvous draws,
//! as even as rendezvous hashing itself (max/mean 1.2 at 300 objects per
//! node), while a node shares objects with only 2(k - 1) others, so it keeps
//! its replicas in sync over O(k) connections whatever N is. With
//! [`Scheme::Rendezvous`] the replicas are the k heaviest members instead:
//! exactly the floor of movement, but every node shares objects with nearly
//! every other.
//!
//! **Consistency**: eventual. Replicas are ordinary repred replicas that sync
//! by anti-entropy; a read on one replica returns what that replica has, and
//! its clock says how fresh that is (which writes of which sources it
//! includes). A write is acknowledged by the replica that took it (for a
//! node going through a [`Route`], once a replica's clock covers it); it is
//! safe from that replica's loss once another replica's clock covers it.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod keeper;
mod placement;
mod route;
#[cfg(feature = "transport")]
pub mod transport;

pub use keeper::{Command, Keeper, KeeperConfig, KeeperStats, Role};
pub use placement::{Name, ObjectKey, Placed, Placement, Scheme};
pub use route::{Route, RouteConfig, RouteEvent, RouteStats, WriteId};
