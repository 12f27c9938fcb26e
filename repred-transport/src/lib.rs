//! repred over QUIC: peers that replicate named objects with no leader.
//!
//! Two nodes on this machine replicating a struct of your own
//! (`#[derive(Replicated)]`, see [`repred`]): a change written on one is
//! applied on the other, and every change, from anywhere, can be followed
//! as a [`Stream`](tokio_stream::Stream) ([`StreamExt`] is re-exported
//! here for its `next`).
//!
//! ```
//! use repred::{GSet, Max, Replicated};
//! use repred_transport::{Node, StreamExt};
//!
//! #[derive(Replicated, Default)]
//! struct Board {
//!     high: Max<u64>,
//!     players: GSet<String>,
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let data = dir.path();
//! // Nodes sharing a data directory share a cluster (its CA is made there).
//! let a = Node::builder().listen("127.0.0.1:0".parse()?).data_dir(data).spawn().await?;
//! let b = Node::builder()
//!     .listen("127.0.0.1:0".parse()?)
//!     .bootstrap([a.addr()])
//!     .data_dir(data)
//!     .spawn()
//!     .await?;
//! let on_a = a.replicate("board", Board::default())?;
//! let on_b = b.replicate("board", Board::default())?;
//!
//! let mut changes = on_b.changes();
//! on_a.update(BoardChange::high(42).with_players(GSet::add("ann".into()))).await?;
//! # let wait = async {
//! while let Some(Ok(applied)) = changes.next().await {
//!     println!("{} wrote {:?}", applied.source, applied.change);
//!     if on_b.read(|board| board.high.get() == Some(&42)) {
//!         break;
//!     }
//! }
//! # };
//! # tokio::time::timeout(std::time::Duration::from_secs(30), wait).await?;
//! assert!(on_b.read(|board| board.players.contains(&"ann".to_string())));
//! a.shutdown().await;
//! b.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! A [`Node`] is one QUIC endpoint (quinn, rustls with ring). It replicates
//! any number of named objects, each a [`repred::Replica`] driven through the
//! core's sans-IO session API: per connection, one bidirectional stream per
//! object, whose first bytes name the object (one length byte, then the
//! UTF-8 name) and whose rest is the core's frames. The transport adds
//! nothing to the protocol; it moves bytes, reads the clock and picks peers.
//!
//! - **Admission**: every node has its own key pair and a certificate signed
//!   by the cluster's certificate authority; both ends of a connection verify
//!   the other against it (mutual TLS 1.3). See [`identity`].
//! - **Membership**: SWIM, through the node core
//!   ([`repred_node::NodeCore`], which uses `foca`): each node probes one
//!   member per period, suspects before it declares a member down, and
//!   membership changes ride on the probes, so its cost per node does not
//!   grow with the cluster. Its datagrams share the node's UDP port with
//!   QUIC and are signed with the node's certified key ([`membership`]);
//!   [`Node::members`] watches the live set, [`Node::membership`] shows
//!   what the node believes of each member.
//! - **Connections**: the node core keeps about log2(N) + 1 connections
//!   (at least [`Builder::fanout`]) to random live members, trades one for
//!   another now and then, dials again after a jittered, growing wait, and
//!   closes duplicates and connections to members declared down; updates
//!   reach everyone by relays over those connections. This crate is the
//!   shell that executes its decisions with tokio and quinn.
//! - **Misbehaviour**: a peer that sends a frame the core refuses is
//!   disconnected with a [`CloseCode`] as the QUIC application error code and
//!   the reason in words; nothing of that frame is applied.
//! - **Observing**: spans per node, connection (the peer's node id and
//!   address) and stream (the object's name), and events for dials,
//!   admissions and refusals with their reason, sessions synced with what
//!   they moved, snapshots, commits and membership changes, through
//!   `tracing`; counters and gauges through the `metrics` facade, listed
//!   in [`metrics`]. Neither costs anything without a subscriber or a
//!   recorder.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod builder;
mod clock;
mod close;
mod collect;
mod control;
mod driver;
mod durable;
pub mod identity;
pub mod membership;
pub mod metrics;
mod node;
mod object;
mod release;
mod session;
mod udp;

use std::collections::BTreeMap;
use std::net::SocketAddr;

pub use builder::{Builder, DEFAULT_DOWN_AFTER, DEFAULT_HEARTBEAT, DEFAULT_ROTATE_EVERY};
pub use close::CloseCode;
pub use collect::CollectionBlocked;
pub use identity::{ClusterCa, Credentials, CredentialsError, NodeCertificate};
pub use node::{Node, NodeStats};
pub use object::{
    Applied, Changes, Handle, Lagged, Peers, Refusal, StreamEnded, StreamEnds, Traffic,
};
use repred::SourceId;
/// The node core this crate executes, re-exported for its configuration
/// ([`NodeConfig`](repred_node::NodeConfig)) and what
/// [`Node::membership`] returns.
pub use repred_node;
/// `next()` and the other combinators for [`Handle::changes`]: re-exported
/// so that `use repred_transport::StreamExt;` is all a reader needs.
pub use tokio_stream::StreamExt;

/// The live members: node id -> the address it listens on, this node
/// included.
pub type Members = BTreeMap<SourceId, SocketAddr>;
/// The QUIC implementation, re-exported for tools and tests that speak to a
/// node directly.
pub use quinn;

/// Errors of the transport's API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The UDP socket could not be bound or set up; what the operating
    /// system said is the [`source`](std::error::Error::source), not part of
    /// the message, so a chain printer says it once.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The credentials could not be loaded or made.
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    /// A background task failed to run.
    #[error("a background task failed: {0}")]
    Task(String),
    /// The builder's settings do not fit together.
    #[error("invalid configuration: {0}")]
    Config(&'static str),
    /// An object of this name is replicated already.
    #[error("an object named {0:?} is replicated already")]
    AlreadyReplicated(String),
    /// The node's stored copy of this object is being deleted
    /// ([`Node::remove_stored`]); a replica of it can be made again once
    /// that is done (a few milliseconds), and then starts from scratch.
    #[error("the stored copy of {0:?} is being removed; replicate it again once that is done")]
    Removing(String),
    /// The name cannot name an object.
    #[error("invalid object name {name:?}: {reason}")]
    InvalidName {
        /// The name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The node has shut down.
    #[error("the node has shut down")]
    Shutdown,
    /// The object's replica refused a local update: a `reduce` panicked on
    /// an earlier one ([`ReplicaError::Poisoned`](repred::ReplicaError::Poisoned);
    /// [`Handle::rejoin`] starts it over), or the change could not be
    /// signed.
    #[error(transparent)]
    Replica(repred::ReplicaError),
    /// The node's store could not be opened, read or written.
    #[error("storage: {0}")]
    Storage(String),
}
