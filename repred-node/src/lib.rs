//! The node core of repred, with no I/O: membership by SWIM (through
//! [`foca`]), and which members to keep connections to.
//!
//! Three node cores on virtual time, with the caller as their network: it
//! carries each datagram at once, fires each timer when it is due, and
//! prints the members each one learns of.
//!
//! ```
//! use repred::SourceId;
//! use repred_node::{NodeConfig, NodeCore, NodeEvent};
//!
//! // Addresses are any ordered, serializable type: here, the node's index.
//! let mut nodes: Vec<NodeCore<usize>> = (0..3)
//!     .map(|i| {
//!         let id = SourceId::new(format!("node-{i}")).unwrap();
//!         NodeCore::new(id, i, 1, NodeConfig::default(), i as u64, 0)
//!     })
//!     .collect();
//! nodes[1].bootstrap(0, [0]);
//! nodes[2].bootstrap(0, [0]);
//!
//! let mut now = 0;
//! while now < 10_000 {
//!     // Deliver every datagram (the core never touches a socket)...
//!     let mut sent = Vec::new();
//!     for node in &mut nodes {
//!         while let Some(datagram) = node.poll_transmit() {
//!             sent.push(datagram);
//!         }
//!     }
//!     for datagram in sent {
//!         nodes[datagram.to].handle_datagram(now, &datagram.bytes)?;
//!     }
//!     for (i, node) in nodes.iter_mut().enumerate() {
//!         while let Some(event) = node.poll_event() {
//!             if let NodeEvent::MemberUp { id, .. } = event {
//!                 println!("{now:>5} ms: node-{i} sees {id} up");
//!             }
//!         }
//!         // (a real driver also runs `poll_command`: dials and closes)
//!         while node.poll_command().is_some() {}
//!     }
//!     // ...then move time to the next timer due (the core reads no clock).
//!     now = nodes.iter().filter_map(|n| n.poll_timeout()).min().unwrap_or(now + 100).max(now + 1);
//!     for node in &mut nodes {
//!         if node.poll_timeout().is_some_and(|due| due <= now) {
//!             node.handle_timeout(now);
//!         }
//!     }
//! }
//! for node in &nodes {
//!     assert_eq!(node.live().len(), 3, "everyone knows everyone");
//! }
//! # Ok::<(), repred_node::DatagramError>(())
//! ```
//!
//! A [`NodeCore`] is to `repred-transport` what quinn-proto is to quinn: it
//! takes inputs with the time (`handle_*`), and hands back what to do
//! (`poll_*`): membership datagrams to send, connections to dial or close,
//! timers as deadlines, events. The QUIC shell and the deterministic
//! simulator (`repred-sim`) are two drivers of the same code.
//!
//! - **Membership**: SWIM as `foca` implements it: each node probes one
//!   random member per period, asks others to probe indirectly when it gets
//!   no answer, suspects before it declares down, and membership changes
//!   ride on the probes; a member refutes a false suspicion by raising its
//!   incarnation. Nothing periodic grows with N.
//! - **Connections**: an active view of ceil(log2 N) + 1 random live members
//!   (at least 3), so each node holds O(log N) connections whatever N is;
//!   one is traded for another member now and then, dials back off with
//!   jitter, duplicates and connections to down members are closed.
//! - **Trust**: the driver authenticates each datagram's sender (the QUIC
//!   shell checks a signature by the sender's certified key); the core
//!   refuses a datagram whose membership header names anyone else.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod config;
mod datagram;
mod event;
mod member;
mod node;
mod peer;
mod sync;
mod timers;

pub use config::NodeConfig;
pub use datagram::{DATAGRAM_HEADER, DATAGRAM_MARKER, Datagram, DatagramError, sender_of};
pub use event::{CloseWhy, Command, NodeEvent};
pub use member::{LiveDigest, MemberInfo, MemberState};
pub use node::{ConnId, NodeCore, NodeStats};
pub use peer::{Address, Peer};
