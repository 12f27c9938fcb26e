//! `cargo run --example derive`: `#[derive(Replicated)]` in both of its
//! modes.
//!
//! - **Field by field**: each field is a lattice; the derive writes the
//!   merge and `ProfileChange`, with one optional part per field, so a
//!   change to one field travels without the others. `ProfileChange::best(42)`
//!   writes one field, `.with_name(..)` another.
//! - **Your own merge**: `#[replicated(reduce = .., update = .., snapshot = ..)]`
//!   names a function of yours; the derive writes the glue.
//!
//! Three replicas in a line (a - b - c) write, and c prints every update it
//! applies (its subscription: local and remote, with who made it).

use std::collections::BTreeMap;
use std::io::Write;

use repred::{Delivery, GSet, LwwRegister, Max, Network, Replica, Replicated, SourceId};

/// A player's profile, replicated field by field.
#[derive(Replicated, Default, Debug, PartialEq)]
pub struct Profile {
    /// The newest name wins.
    pub name: LwwRegister<String>,
    /// The best score ever.
    pub best: Max<u32>,
    /// Badges only accumulate.
    pub badges: GSet<String>,
    /// Local only: how often this replica drew the profile.
    #[replicated(skip)]
    pub renders: u64,
}

/// Who has been seen, and the latest time each one was: a merge of our
/// own (the later time wins per person), with the update a map of sightings.
#[derive(Replicated, Default, Debug, PartialEq)]
#[replicated(reduce = merge_seen, update = BTreeMap<String, u64>, snapshot = all_seen)]
pub struct LastSeen {
    at: BTreeMap<String, u64>,
}

/// The join: per person, the later time. Returns the sightings that
/// moved a time forward, `None` when none did.
fn merge_seen(
    state: &mut LastSeen,
    update: BTreeMap<String, u64>,
) -> Option<BTreeMap<String, u64>> {
    let mut changed = BTreeMap::new();
    for (who, at) in update {
        let slot = state.at.entry(who.clone()).or_insert(0);
        if at > *slot {
            *slot = at;
            changed.insert(who, at);
        }
    }
    (!changed.is_empty()).then_some(changed)
}

fn all_seen(state: &LastSeen) -> BTreeMap<String, u64> {
    state.at.clone()
}

/// Three replicas of `T` in a line, a - b - c.
fn line<T: repred::Reduce + Default>() -> anyhow::Result<(Network<T>, [repred::NodeId; 3])> {
    let mut net = Network::new();
    let a = net.add(Replica::new(SourceId::new("a")?, T::default()));
    let b = net.add(Replica::new(SourceId::new("b")?, T::default()));
    let c = net.add(Replica::new(SourceId::new("c")?, T::default()));
    net.link(a, b);
    net.link(b, c);
    Ok((net, [a, b, c]))
}

pub fn run(out: &mut impl Write) -> anyhow::Result<()> {
    writeln!(out, "-- field by field: Profile")?;
    let (mut net, [a, b, c]) = line::<Profile>()?;
    let mut at_c = net[c].subscribe();
    net.update(a, ProfileChange::best(42))?;
    net.update(b, ProfileChange::name("bo".to_string()).with_badges(GSet::add("first".into())))?;
    net.update(a, ProfileChange::best(17))?; // below 42: changes nothing, sends nothing
    net.pump();
    for delivery in net[c].changes(&mut at_c) {
        if let Delivery::Change(change) = delivery {
            writeln!(out, "c got from {}: {:?}", change.source, change.change)?;
        }
    }
    net.update(c, ProfileChange { best: Some(Max::new(50)), ..Default::default() })?;
    net.pump();
    anyhow::ensure!(net[a].state() == net[c].state(), "a and c must agree");
    let p = net[a].state();
    writeln!(
        out,
        "a now holds: name {:?}, best {:?}, badges {:?}",
        p.name.get(),
        p.best.get(),
        p.badges.iter().collect::<Vec<_>>()
    )?;

    writeln!(out, "-- your own merge: LastSeen")?;
    let (mut net, [a, _b, c]) = line::<LastSeen>()?;
    let mut at_c = net[c].subscribe();
    net.update(a, BTreeMap::from([("ann".to_string(), 10), ("bo".to_string(), 12)]))?;
    net.update(c, BTreeMap::from([("ann".to_string(), 11), ("bo".to_string(), 9)]))?;
    net.pump();
    for delivery in net[c].changes(&mut at_c) {
        if let Delivery::Change(change) = delivery {
            writeln!(out, "c got from {}: {:?}", change.source, change.change)?;
        }
    }
    anyhow::ensure!(net[a].state() == net[c].state(), "a and c must agree");
    writeln!(out, "everyone holds: {:?}", net[a].state().at)?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    run(&mut std::io::stdout())
}
