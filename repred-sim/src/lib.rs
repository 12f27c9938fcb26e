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
//! Twenty nodes on a lossy network split in two halves, each half writes,
//! the network heals, and every replica ends with every write:
//!
//! ```
//! use repred::GSet;
//! use repred_sim::{Sim, SimConfig};
//!
//! let config = SimConfig::new(42).loss(0.02).latency(2, 30);
//! let mut sim = Sim::new(config, GSet::<u32>::default);
//! let first = sim.add_node(&[]);
//! for _ in 1..20 {
//!     sim.add_node(&[first]);
//! }
//! for node in sim.node_ids() {
//!     sim.replicate(node, 0); // every node holds object 0
//! }
//! sim.run_for(5_000);
//!
//! sim.partition(|node| node % 2); // odd and even nodes lose each other
//! sim.update(2, 0, GSet::add(1))?;
//! sim.update(3, 0, GSet::add(2))?;
//! sim.run_for(10_000);
//! assert!(sim.objects_converged(0).is_err(), "apart, the halves differ");
//!
//! sim.heal();
//! let took = sim.run_until(60_000, 500, |s| {
//!     s.membership_converged().is_ok() && s.objects_converged(0).is_ok()
//! });
//! println!("seed {}: whole again {took:?} ms after healing", sim.seed());
//! assert!(took.is_some());
//! assert_eq!(sim.node(7).replica(0).map(|r| r.state().len()), Some(2));
//! # Ok::<(), repred::ReplicaError>(())
//! ```
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
