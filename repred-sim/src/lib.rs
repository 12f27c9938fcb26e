//! A deterministic discrete-event simulator of repred clusters.
//!
//! [`Sim`] runs many nodes in one process on virtual time: each is the
//! production node core ([`repred_node::NodeCore`]: SWIM membership, the
//! active view, dials, rotation) with production replicas
//! ([`repred::Replica`]) of the objects it holds. The simulator plays the
//! part of the QUIC shell (moving datagrams, stream bytes and timers) and
//! of the network: per-hop latency drawn from a range, datagram loss and
//! duplication, partitions that form and heal, crashes and restarts with or
//! without a store, joins and leaves. One seed replays one run exactly, and
//! every failure message names its seed.
//!
//! Tests run it at 1,000 nodes (`tests/cluster.rs`), benches at 10,000.
//!
//! [`Placer`] runs placement (`repred-place`) on top: each node's keeper
//! fed by its core's member list, objects living on k of N nodes
//! (`tests/placement.rs`, `examples/placement.rs`).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod config;
mod node;
mod placed;
mod queue;
mod sim;

pub use config::SimConfig;
pub use node::{SimNode, Traffic};
pub use placed::{PlacementReport, Placer, PlacerStats};
pub use sim::{Detections, EPOCH, Observer, Sim};

/// A node's index in a simulation, which is also its address.
pub type NodeIx = u32;

/// Names a replicated object in a simulation.
pub type ObjectId = u64;
