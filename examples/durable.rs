//! `cargo run --example durable`: a replica kept in `repred-store` (an
//! embedded redb file) survives a restart with nothing lost.
//!
//! A replica writes notes and saves after each (a save returns once the
//! batch is on disk: one fsync per save, however many entries it holds);
//! then the process "restarts": everything in memory is dropped and the
//! store opened again. The replica comes back with its state, its clock,
//! its history and its id, and its next timestamp is above every saved
//! one even though the wall clock went back. A fresh peer then gets every
//! note from the restarted replica's history.

use std::io::Write;

use repred::{Config, LwwMap, Network, Replica, SourceId};
use repred_store::Store;

type Notes = LwwMap<String, String>;

/// This run's wall clock, in milliseconds (fixed, so the output is too).
const NOW: u64 = 1_700_000_000_000;

pub fn run(out: &mut impl Write) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("node.redb");

    // First life: write and save.
    let (id, last) = {
        let store = Store::open(&path)?;
        let mut notes = store.load_or_create::<Notes>("notes", Config::default())?;
        for (i, (key, text)) in
            [("milk", "2 litres"), ("bread", "rye"), ("milk", "3 litres")].into_iter().enumerate()
        {
            let stamp = notes.update(NOW + i as u64, LwwMap::set(key.into(), text.into()))?;
            let saved = store.save("notes", &notes)?;
            writeln!(
                out,
                "wrote {key} = {text} at {:?}, saved {saved} entry",
                stamp.map(|s| s.ts)
            )?;
        }
        (notes.id(), notes.last_timestamp())
        // The store and the replica are dropped here: the process "stops".
    };

    // Second life: open the same file.
    let store = Store::open(&path)?;
    let mut notes = store.load_or_create::<Notes>("notes", Config::default())?;
    let mut held: Vec<_> = notes.state().iter().collect();
    held.sort();
    writeln!(out, "after the restart: {held:?}")?;
    writeln!(
        out,
        "same id: {}, history of {} entries, clock at {:?}",
        notes.id() == id,
        notes.history_len(),
        notes.clock().get(id)
    )?;
    anyhow::ensure!(notes.id() == id && notes.clock().get(id) == last, "the store lost something");

    // The wall clock went back a minute; timestamps still go forward.
    let stamp = notes.update(NOW - 60_000, LwwMap::set("eggs".into(), "6".into()))?;
    store.save("notes", &notes)?;
    let ts = stamp.map(|s| s.ts).ok_or_else(|| anyhow::anyhow!("the write changed nothing"))?;
    writeln!(
        out,
        "a write with the wall clock a minute back: stamped {ts:?}, after {last:?}: {}",
        ts > last
    )?;
    anyhow::ensure!(ts > last, "a timestamp went backwards");

    // A fresh peer gets everything from the restarted replica.
    let mut net = Network::starting_at(NOW);
    let restarted = net.add(notes);
    let fresh = net.add(Replica::new(SourceId::new("fresh")?, Notes::default()));
    net.link(restarted, fresh);
    net.pump();
    let mut got: Vec<_> = net[fresh].state().iter().collect();
    got.sort();
    writeln!(out, "a fresh peer got: {got:?}")?;
    anyhow::ensure!(net[fresh].state() == net[restarted].state());
    Ok(())
}

fn main() -> anyhow::Result<()> {
    run(&mut std::io::stdout())
}
