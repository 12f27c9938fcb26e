//! `cargo run --example lattices`: the stock lattices, each written on two
//! replicas while they are apart, then merged.
//!
//! Every section links two replicas (`a` and `b`) only after both have
//! written, so the writes are concurrent, and shows what both hold once the
//! in-memory network has carried everything: the same state, whatever the
//! order the updates met in. The last section nests lattices: a
//! `LatticeMap` of counters and of sets, merged key by key.

use std::fmt::Debug;
use std::io::Write;

use repred::{
    EventLog, GSet, LatticeMap, LwwMap, LwwRegister, Max, Network, OrSet, PnCounter, Reduce,
    Replica, SourceId,
};

fn main() -> anyhow::Result<()> {
    run(&mut std::io::stdout())
}

/// Two replicas of `T`, written by `on_a` and `on_b` before they meet,
/// then linked until quiet; returns `a`'s state, which is `b`'s.
fn apart_then_merged<T>(
    on_a: impl FnOnce(&mut Network<T>, repred::NodeId) -> anyhow::Result<()>,
    on_b: impl FnOnce(&mut Network<T>, repred::NodeId) -> anyhow::Result<()>,
) -> anyhow::Result<T>
where
    T: Reduce + Default + Clone + PartialEq + Debug,
{
    let mut net = Network::new();
    let a = net.add(Replica::new(SourceId::new("a")?, T::default()));
    let b = net.add(Replica::new(SourceId::new("b")?, T::default()));
    on_a(&mut net, a)?;
    net.advance(1); // b writes a millisecond later: b's writes are the newer
    on_b(&mut net, b)?;
    net.link(a, b);
    net.pump();
    anyhow::ensure!(net[a].state() == net[b].state(), "a and b must agree");
    Ok(net[a].state().clone())
}

pub fn run(out: &mut impl Write) -> anyhow::Result<()> {
    // Registers: the largest value wins; the newest write wins.
    let best: Max<u32> = apart_then_merged(
        |net, a| {
            net.update(a, Max::set(40))?;
            Ok(())
        },
        |net, b| {
            net.update(b, Max::set(35))?;
            Ok(())
        },
    )?;
    writeln!(out, "Max: a wrote 40, b wrote 35 -> both hold {:?}", best.get())?;

    let colour: LwwRegister<String> = apart_then_merged(
        |net, a| {
            net.update(a, LwwRegister::set("red".to_string()))?;
            Ok(())
        },
        |net, b| {
            net.update(b, LwwRegister::set("blue".to_string()))?;
            Ok(())
        },
    )?;
    writeln!(out, "LwwRegister: a wrote red, b wrote blue later -> both hold {:?}", colour.get())?;

    // A map of last-writer-wins keys: scuttlebutt's model.
    let settings: LwwMap<String, String> = apart_then_merged(
        |net, a| {
            net.update(a, LwwMap::set("theme".into(), "dark".into()))?;
            net.update(a, LwwMap::set("lang".into(), "en".into()))?;
            Ok(())
        },
        |net, b| {
            net.update(b, LwwMap::set("theme".into(), "light".into()))?;
            {
                net.update(b, LwwMap::set("font".into(), "serif".into()))?;
                Ok(())
            }
        },
    )?;
    let mut keys: Vec<_> = settings.iter().collect();
    keys.sort();
    writeln!(out, "LwwMap: each key's newest write -> {keys:?}")?;

    // Sets: one that only grows, one with removes.
    let seen: GSet<String> = apart_then_merged(
        |net, a| {
            net.update(a, GSet::add_all(["ann".into(), "bo".into()]))?;
            Ok(())
        },
        |net, b| {
            net.update(b, GSet::add("cy".into()))?;
            Ok(())
        },
    )?;
    writeln!(out, "GSet: a added ann and bo, b added cy -> {:?}", seen.iter().collect::<Vec<_>>())?;

    // b removes the milk it saw while a, apart, adds milk again: the
    // remove takes out only the add b saw, so a's new add stays.
    let mut net = Network::new();
    let a = net.add(Replica::new(SourceId::new("a")?, OrSet::<String>::default()));
    let b = net.add(Replica::new(SourceId::new("b")?, OrSet::<String>::default()));
    net.update(a, OrSet::add_all(["milk".into(), "eggs".into()]))?;
    let link = net.link(a, b);
    net.pump();
    net.cut(link);
    let remove = net[b].state().remove(&"milk".to_string());
    net.update(b, remove)?;
    let remove = net[b].state().remove(&"eggs".to_string());
    net.update(b, remove)?;
    net.update(a, OrSet::add("milk".into()))?;
    net.link(a, b);
    net.pump();
    anyhow::ensure!(net[a].state() == net[b].state());
    writeln!(
        out,
        "OrSet: b removed milk and eggs while a added milk again -> {:?}",
        net[a].state().iter().collect::<Vec<_>>()
    )?;

    // Counters: each writer's total travels, so a repeat never counts twice.
    let mut net = Network::new();
    let a = net.add(Replica::new(SourceId::new("a")?, PnCounter::default()));
    let b = net.add(Replica::new(SourceId::new("b")?, PnCounter::default()));
    let (a_id, b_id) = (net[a].id(), net[b].id());
    let up = net[a].state().increment(a_id, 5);
    net.update(a, up)?;
    let down = net[b].state().decrement(b_id, 2);
    net.update(b, down)?;
    net.link(a, b);
    net.pump();
    writeln!(out, "PnCounter: a +5, b -2 -> {} on both", net[b].state().value())?;

    // Every event kept, once, in stamp order.
    let log: EventLog<String> = apart_then_merged(
        |net, a| {
            net.update(a, EventLog::emit(["a joined".into()]))?;
            Ok(())
        },
        |net, b| {
            net.update(b, EventLog::emit(["b joined".into(), "b said hi".into()]))?;
            Ok(())
        },
    )?;
    let events: Vec<&String> = log.iter().map(|(_, e)| e).collect();
    writeln!(out, "EventLog: {events:?}")?;

    // Composed: a map of lattices, merged key by key.
    type Votes = LatticeMap<String, PnCounter>;
    let mut net = Network::new();
    let a = net.add(Replica::new(SourceId::new("a")?, Votes::default()));
    let b = net.add(Replica::new(SourceId::new("b")?, Votes::default()));
    let (a_id, b_id) = (net[a].id(), net[b].id());
    let vote = |net: &Network<Votes>, node, id, topic: &str, up: bool| {
        let current = net[node].state().get(topic).cloned().unwrap_or_default();
        let part = if up { current.increment(id, 1) } else { current.decrement(id, 1) };
        Votes::update(topic.to_string(), part)
    };
    let v = vote(&net, a, a_id, "rust", true);
    net.update(a, v)?;
    let v = vote(&net, a, a_id, "tabs", false);
    net.update(a, v)?;
    let v = vote(&net, b, b_id, "rust", true);
    net.update(b, v)?;
    net.link(a, b);
    net.pump();
    let tally: Vec<(&String, i128)> = net[a].state().iter().map(|(k, c)| (k, c.value())).collect();
    writeln!(out, "LatticeMap<String, PnCounter>: votes per topic -> {tally:?}")?;

    type Tags = LatticeMap<String, GSet<String>>;
    let tags: Tags = apart_then_merged(
        |net, a| {
            net.update(a, Tags::update("post-1".into(), GSet::add("rust".into())))?;
            Ok(())
        },
        |net, b| {
            net.update(b, Tags::update("post-1".into(), GSet::add("crdt".into())))?;
            Ok(())
        },
    )?;
    let post: Vec<&String> = tags.get("post-1").map(|s| s.iter().collect()).unwrap_or_default();
    writeln!(out, "LatticeMap<String, GSet<String>>: tags of post-1 -> {post:?}")?;
    Ok(())
}
