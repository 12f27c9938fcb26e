//! The shared side of repred's fuzz targets: their drivers and invariants
//! ([`harness`], also compiled into the main workspace's
//! `tests/fuzz_generators.rs`) and a `#[derive(Replicated)]` struct for the
//! `derive_change` target and its corpus.

pub mod harness;

use repred::{
    EventLog, GCounter, GSet, LatticeMap, LwwMap, LwwRegister, Max, Min, OrSet, PnCounter,
    Replicated,
};

/// A derived replicated struct with a field of every stock lattice; its
/// generated `ProfileChange` is what the `derive_change` target decodes.
#[derive(Replicated, Default, Debug, Clone, PartialEq)]
pub struct Profile {
    /// Last writer wins.
    pub name: LwwRegister<String>,
    /// A high-water mark.
    pub best: Max<u32>,
    /// A low-water mark.
    pub low: Min<i64>,
    /// Grow-only.
    pub badges: GSet<String>,
    /// Observed-remove.
    pub teams: OrSet<u32>,
    /// Key -> newest value.
    pub settings: LwwMap<String, u32>,
    /// Counts from many writers.
    pub visits: GCounter,
    /// Up and down.
    pub karma: PnCounter,
    /// Key -> a lattice.
    pub scores: LatticeMap<String, Max<u64>>,
    /// Every event once.
    pub log: EventLog<String>,
}
