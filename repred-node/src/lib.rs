//! The node core of repred, with no I/O: membership by SWIM (through
//! [`foca`]), and which members to keep connections to.
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
mod node;
mod peer;
mod sync;
mod timers;

pub use config::NodeConfig;
pub use node::{
    CloseWhy, Command, ConnId, DATAGRAM_HEADER, DATAGRAM_MARKER, Datagram, DatagramError,
    MemberInfo, MemberState, NodeCore, NodeEvent, NodeStats, sender_of,
};
pub use peer::{Address, Peer};
