//! The store end to end: restarts, compaction, corruption, crashes.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use repred::{Config, GSet, Network, Replica, SourceId, StreamOpts};
use repred_store::{Store, StoreError};

const NOW: u64 = 1_700_000_000_000;

/// A grow-only set of the numbers written.
type Numbers = GSet<u64>;

#[test]
fn a_restart_resumes_with_state_clock_id_and_later_timestamps() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let (id, clock, last) = {
        let store = Store::open(&path).unwrap();
        let mut r = store.load_or_create::<Numbers>("n", Config::default()).unwrap();
        for i in 0..100 {
            r.update(NOW + 60_000, [i].into()).unwrap();
            if i % 10 == 9 {
                store.save("n", &r).unwrap();
            }
        }
        (r.id(), r.clock().clone(), r.last_timestamp())
    };
    let store = Store::open(&path).unwrap();
    let mut r = store.load::<Numbers>("n", Config::default()).unwrap().unwrap();
    assert_eq!(r.id(), id);
    assert_eq!(r.clock(), &clock);
    assert_eq!(r.state().len(), 100);
    // The wall clock went back a minute: timestamps still increase.
    let t = r.update(NOW, [1_000].into()).unwrap().unwrap();
    assert!(t.ts > last);
    assert_eq!(store.save("n", &r).unwrap(), 1);
}

#[test]
fn the_log_on_disk_is_compacted_into_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let config = Config::default().history_limit(64);
    let store = Store::open(&path).unwrap();
    let mut r = store.load_or_create::<Numbers>("n", config.clone()).unwrap();
    for i in 0..5_000u64 {
        r.update(NOW, [i % 300].into()).unwrap();
        if i % 7 == 0 {
            store.save("n", &r).unwrap();
        }
    }
    // Saved too rarely for the history: a snapshot catches up.
    for i in 0..200u64 {
        r.update(NOW, [10_000 + i].into()).unwrap();
    }
    store.save("n", &r).unwrap();
    let expected = r.state().clone();
    let clock = r.clock().clone();
    drop((r, store));
    let store = Store::open(&path).unwrap();
    let r = store.load::<Numbers>("n", config).unwrap().unwrap();
    assert_eq!(r.state(), &expected);
    assert_eq!(r.clock(), &clock);
    assert!(r.history_len() <= 64);
}

#[test]
fn a_restored_node_is_not_sent_what_it_has() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let mut net = Network::new();
    let peer = net.add(Replica::new(SourceId::new("peer").unwrap(), Numbers::default()));
    let store = Store::open(&path).unwrap();
    let node = net.add(store.load_or_create::<Numbers>("n", Config::default()).unwrap());
    let link = net.link(peer, node);
    for i in 0..20 {
        net.update(peer, [i].into()).unwrap();
        net.update(node, [100 + i].into()).unwrap();
    }
    net.pump();
    store.save("n", &net[node]).unwrap();
    net.cut(link);
    drop(store);
    let store = Store::open(&path).unwrap();
    let back = net.add(store.load::<Numbers>("n", Config::default()).unwrap().unwrap());
    let l = net.link(peer, back);
    net.pump();
    let [(_, sp), (_, sb)] = net.streams(l);
    assert_eq!(net[peer].stream_stats(sp).unwrap().updates_sent, 0);
    assert_eq!(net[back].stream_stats(sb).unwrap().updates_sent, 0);
    assert_eq!(net[back].state(), net[peer].state());
}

/// The amnesia rule: the id lives in the store, so a node whose store was
/// deleted comes back as a new source; its old updates return from peers
/// and its new ones are accepted everywhere.
#[test]
fn an_amnesiac_restart_gets_a_new_id_and_converges() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let mut net = Network::new();
    let peer = net.add(Replica::new(SourceId::new("peer").unwrap(), Numbers::default()));
    let store = Store::open(&path).unwrap();
    let old = net.add(store.load_or_create::<Numbers>("n", Config::default()).unwrap());
    let old_id = net[old].id();
    let link = net.link(peer, old);
    net.update(old, [1].into()).unwrap();
    net.pump();
    net.cut(link);
    drop(store);
    std::fs::remove_file(&path).unwrap();

    let store = Store::open(&path).unwrap();
    let new = net.add(store.load_or_create::<Numbers>("n", Config::default()).unwrap());
    assert_ne!(net[new].id(), old_id);
    net.update(new, [2].into()).unwrap();
    net.link(peer, new);
    net.pump();
    assert_eq!(*net[new].state(), [1, 2].into());
    assert_eq!(net[peer].state(), net[new].state());
}

#[test]
fn a_corrupt_or_truncated_store_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.redb");
    std::fs::write(&garbage, b"this is not a database, just some bytes that go on for a while")
        .unwrap();
    assert!(matches!(Store::open(&garbage), Err(StoreError::Corrupt { .. })));

    let path = dir.path().join("truncated.redb");
    {
        let store = Store::open(&path).unwrap();
        let mut r = store.load_or_create::<Numbers>("n", Config::default()).unwrap();
        for i in 0..1_000 {
            r.update(NOW, [i].into()).unwrap();
        }
        store.save("n", &r).unwrap();
    }
    let len = std::fs::metadata(&path).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(len / 3).unwrap();
    drop(file);
    match Store::open(&path) {
        Err(StoreError::Corrupt { .. }) => {}
        // redb may recover a truncated file to its last good commit; then
        // the replica must either load whole or fail to decode, not panic.
        Ok(store) => {
            let _ = store.load::<Numbers>("n", Config::default());
        }
        Err(e) => panic!("expected a corrupt-store error, got {e}"),
    }
}

#[test]
fn another_replica_under_the_same_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("s.redb")).unwrap();
    store.load_or_create::<Numbers>("n", Config::default()).unwrap();
    let stranger = Replica::new(SourceId::new("stranger").unwrap(), Numbers::default());
    assert!(matches!(store.save("n", &stranger), Err(StoreError::WrongReplica { .. })));
    let _ = StreamOpts::default();
}

/// A writer is killed with SIGKILL twenty times at random moments; every
/// update it acknowledged before dying is there after each restart, and the
/// numbers on disk are always a prefix: nothing lost, nothing out of order.
#[test]
fn kill_nine_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.redb");
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next_first = 0u64;
    let mut acked = None;
    for round in 0..20 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let wait_for = 1 + seed % 40;
        let batch = 1 + (seed >> 8) % 64;
        let mut child = Command::new(env!("CARGO_BIN_EXE_repred-store-writer"))
            .arg(&path)
            .arg(next_first.to_string())
            .arg(batch.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the writer starts");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        for _ in 0..wait_for {
            match lines.next() {
                Some(Ok(line)) => {
                    let n: u64 = line.strip_prefix("ack ").unwrap().parse().unwrap();
                    acked = Some(n);
                }
                other => panic!("round {round}: writer stopped early: {other:?}"),
            }
        }
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();

        let store = Store::open(&path).unwrap();
        let r = store.load::<Numbers>("numbers", Config::default()).unwrap().unwrap();
        let have = r.state();
        let top = *have.iter().last().unwrap();
        assert!(top >= acked.unwrap(), "round {round}: ack {acked:?} lost (top {top})");
        assert_eq!(have.len() as u64, top + 1, "round {round}: a prefix, nothing out of order");
        next_first = top + 1;
    }
    std::io::stderr().flush().unwrap();
}

/// Prepared under a lock, committed after it: batches prepared back to back
/// and committed in order hold everything.
#[test]
fn prepared_batches_commit_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let store = Store::open(&path).unwrap();
    let mut r = store.load_or_create::<Numbers>("n", Config::default()).unwrap();
    r.update(NOW, [1].into()).unwrap();
    let first = store.prepare("n", &r).unwrap();
    r.update(NOW, [2].into()).unwrap();
    r.update(NOW, [3].into()).unwrap();
    let second = store.prepare("n", &r).unwrap();
    assert_eq!((first.len(), second.len()), (1, 2));
    assert_eq!(store.commit(first).unwrap(), 1);
    assert_eq!(store.commit(second).unwrap(), 2);
    assert!(store.prepare("n", &r).unwrap().is_empty());
    drop(store);
    let store = Store::open(&path).unwrap();
    let back = store.load::<Numbers>("n", Config::default()).unwrap().unwrap();
    assert_eq!(*back.state(), [1, 2, 3].into());
}

/// A restored replica lives on in its life, so peers that met it before the
/// crash welcome it back instead of refusing it as a reincarnation.
#[test]
fn a_restored_replica_keeps_its_life_and_is_welcomed_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.redb");
    let mut net: Network<GSet<u64>> = Network::new();
    let store = Store::open(&path).unwrap();
    let a = net.add(store.load_or_create::<GSet<u64>>("set", Config::default()).unwrap());
    let b = net.add(Replica::new(SourceId::random(), GSet::default()));
    let life = net[a].life();
    let first = net.link(a, b);
    net.update(a, GSet::add(1)).unwrap();
    net.pump();
    store.save("set", &net[a]).unwrap();
    net.cut(first);
    drop(store);

    let store = Store::open(&path).unwrap();
    let again = net.add(store.load_or_create::<GSet<u64>>("set", Config::default()).unwrap());
    assert_eq!(net[again].life(), life);
    net.update(again, GSet::add(2)).unwrap();
    net.link(again, b);
    net.pump();
    assert!(net.errors().is_empty(), "{:?}", net.errors());
    assert_eq!(net[b].state(), net[again].state());
}

/// A collection is durable: the floor and the forgotten tombstones stay
/// so across a restart, whether the log holds the collection or a
/// snapshot taken after it does.
#[test]
fn a_collection_survives_a_restart_in_the_log_and_in_a_snapshot() {
    use repred::{Clock, LwwMap, Reduce};
    type Map = LwwMap<u32, u32>;
    for compact in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.redb");
        let store = Store::open(&path).unwrap();
        // A history of 8 records compacts the log into a snapshot.
        let config = Config::default().history_limit(if compact { 8 } else { 1_000 });
        let mut net: Network<Map> = Network::new();
        let a = net.add(store.load_or_create::<Map>("map", config.clone()).unwrap());
        for k in 0..20 {
            net.update(a, LwwMap::set(k, k)).unwrap();
            net.advance(1);
            net.update(a, LwwMap::delete(k)).unwrap();
        }
        store.save("map", &net[a]).unwrap();
        let stable = Clock::stable_point([net[a].clock()]);
        assert_eq!(net[a].collect(stable), 20);
        if compact {
            // More than the history holds: the next save is a snapshot,
            // and the collection lives on in its header.
            for k in 100..110 {
                net.update(a, LwwMap::set(k, k)).unwrap();
            }
        }
        store.save("map", &net[a]).unwrap();
        drop(store);

        let store = Store::open(&path).unwrap();
        let back = store.load::<Map>("map", config).unwrap().unwrap();
        assert_eq!(back.floor(), stable, "compact: {compact}");
        let live = if compact { 10 } else { 0 };
        assert_eq!(back.state().entries_hint(), Some(live), "compact: {compact}");
        assert_eq!(back.clock(), net[a].clock());
    }
}

/// A collection drops history below the floor that the store has not
/// saved yet (a replica saved without a hold): the next save is a
/// snapshot, as after the history overflows, and nothing is lost.
#[test]
fn a_store_behind_a_collection_saves_a_snapshot_and_loses_nothing() {
    use repred::{Clock, LwwMap, Reduce};
    type Map = LwwMap<u32, u32>;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.redb");
    let store = Store::open(&path).unwrap();
    let mut net: Network<Map> = Network::new();
    let a = net.add(store.load_or_create::<Map>("map", Config::default()).unwrap());
    let b = net.add(Replica::new(SourceId::new("b").unwrap(), Map::default()));
    net.link(a, b);
    for k in 0..20 {
        net.update(a, LwwMap::set(k, k)).unwrap();
    }
    net.pump();
    assert_eq!(store.save("map", &net[a]).unwrap(), 20, "the log");
    let saved = net[a].end_seq();
    net.advance(1);
    for k in 0..10 {
        net.update(b, LwwMap::delete(k)).unwrap();
    }
    net.update(a, LwwMap::set(100, 1)).unwrap();
    net.pump();
    let stable = Clock::stable_point([net[a].clock(), net[b].clock()]);
    for n in [a, b] {
        net[n].collect(stable);
    }
    assert!(net[a].entries_from(saved).is_err(), "unsaved records went");
    // The log would have been 12 entries: 10 deletes, a write, the
    // collection.
    assert_eq!(store.save("map", &net[a]).unwrap(), 1, "a snapshot");
    drop(store);

    let store = Store::open(&path).unwrap();
    let back = store.load::<Map>("map", Config::default()).unwrap().unwrap();
    assert_eq!(back.state(), net[a].state());
    assert_eq!(back.clock(), net[a].clock());
    assert_eq!(back.floor(), stable);
    assert_eq!(back.state().entries_hint(), Some(11), "10 live keys and 1 more, no tombstone");
}

/// Lattices that order writes by their stamps (last-writer-wins,
/// observed-remove) come back from the log whole: the log keeps each
/// change as it travels, without the stamps that are its envelope's own,
/// and a load must fill them back in before merging (it did not: a
/// restarted `LwwMap` came back empty while its clock said it had
/// everything).
#[test]
fn stamped_lattices_come_back_from_the_log() {
    use repred::{LwwMap, LwwRegister, OrSet, Reduce};

    fn round_trip<T: Reduce + Default + PartialEq + std::fmt::Debug>(writes: Vec<T::Update>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let store = Store::open(&path).unwrap();
        let mut r = store.load_or_create::<T>("x", Config::default()).unwrap();
        for (i, w) in writes.into_iter().enumerate() {
            r.update(NOW + i as u64, w).unwrap().expect("each write changes the state");
            store.save("x", &r).unwrap();
        }
        drop(store);
        let store = Store::open(&path).unwrap();
        let back = store.load::<T>("x", Config::default()).unwrap().unwrap();
        assert_eq!(back.state(), r.state(), "{}", std::any::type_name::<T>());
        assert_eq!(back.clock(), r.clock());
    }

    round_trip::<LwwMap<String, u32>>(vec![
        LwwMap::set("a".into(), 1),
        LwwMap::set("b".into(), 2),
        LwwMap::set("a".into(), 3),
        LwwMap::delete("b".into()),
    ]);
    round_trip::<LwwRegister<u32>>(vec![LwwRegister::set(1), LwwRegister::set(2)]);
    round_trip::<OrSet<u32>>(vec![OrSet::add(7), OrSet::add(8)]);
}

/// A replica that rejoined (stale, started over keeping its own newer
/// writes) and was saved before a peer brought it up is not stale when it
/// comes back: the store keeps the floor it started over below
/// (`Replica::rejoined_below`). Before, the restored replica held its kept
/// write with no trace of the rejoin, a peer's snapshot from above its
/// floor found it stale again, and a second rejoin dropped that write.
#[test]
fn a_replica_saved_after_a_rejoin_comes_back_ready_to_be_brought_up() {
    type Map = repred::LwwMap<String, u32>;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let id = |name: &str| SourceId::new(name).unwrap();
    let mut net = Network::starting_at(NOW);
    let a = net.add(Replica::new(id("a"), Map::default()));
    let b = net.add(Replica::new(id("b"), Map::default()));
    net.update(a, repred::LwwMap::set("ka".to_string(), 1)).unwrap();
    // a holds a write of b's from before they split.
    let early = net.link(a, b);
    net.update(b, repred::LwwMap::set("early".to_string(), 0)).unwrap();
    net.pump();
    net.cut(early);
    // b writes where a cannot hear; a collects past it.
    net.update(b, repred::LwwMap::set("old".to_string(), 2)).unwrap();
    net.advance(10);
    let floor = repred::Timestamp::new(NOW + 5, 0);
    net[a].collect(floor);
    net.link(a, b);
    net.pump();
    assert_eq!(net[b].stale_floor(), Some(floor), "b holds a write below a's floor that a lacks");
    net.advance(10);
    let kept = net.update(b, repred::LwwMap::set("new".to_string(), 3)).unwrap().unwrap();
    let lost = net[b].rejoin(Map::default());
    assert_eq!(lost.len(), 2, "the writes below the floor (a had one of them)");
    assert!(net[b].rejoined_below() >= floor);
    {
        let store = Store::open(&path).unwrap();
        store.save("m", &net[b]).unwrap();
    }
    // b restarts from its store before any peer brought it up.
    let store = Store::open(&path).unwrap();
    let restored = store.load::<Map>("m", Config::default()).unwrap().unwrap();
    assert_eq!(restored.rejoined_below(), net[b].rejoined_below());
    assert!(restored.clock().has(kept.source, kept.ts), "the kept write is there");
    let b2 = net.add(restored);
    net.link(a, b2);
    net.pump();
    assert_eq!(net[b2].stale_floor(), None, "not stale again");
    assert_eq!(net[b2].state(), net[a].state());
    assert_eq!(net[b2].clock(), net[a].clock());
    assert_eq!(net[a].state().get("new"), Some(&3), "the kept write reached a");
}

/// `replica` saved as "a" in a store at `path`, the store closed, and loaded
/// back from a store opened anew: as across a restart.
fn saved_and_loaded(
    path: &std::path::Path,
    replica: &Replica<Numbers>,
    config: Config,
) -> Replica<Numbers> {
    {
        let store = Store::open(path).unwrap();
        store.save("a", replica).unwrap();
    }
    let store = Store::open(path).unwrap();
    store.load::<Numbers>("a", config).unwrap().unwrap()
}

/// A replica saved after a rejoin that left it without some of its own
/// writes (gone from its log), before a snapshot brought them back, still
/// asks for one when it comes back (`Replica::rejoin_missing`). Before, the
/// restored replica stopped asking, and as its clock claims those writes
/// no peer sent them by history: they were lost from its state for good.
#[test]
fn a_replica_saved_after_a_rejoin_still_asks_for_its_missing_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let id = |name: &str| SourceId::new(name).unwrap();
    let small = Config::default().history_limit(2);
    let mut net = Network::starting_at(NOW);
    let a = net.add(Replica::with_config(id("a"), Numbers::default(), small.clone()));
    let c = net.add(Replica::new(id("c"), Numbers::default()));
    let link = net.link(a, c);
    for i in 1..=3 {
        net.update(a, [i].into()).unwrap();
    }
    net.pump();
    net.cut(link);
    // Its log kept the last two: the first is gone from it.
    net[a].rejoin(Numbers::default());
    let missing = net[a].rejoin_missing();
    assert!(missing > repred::Timestamp::ZERO);
    assert!(!net[a].state().contains(&1));
    let restored = saved_and_loaded(&path, &net[a], small);
    assert_eq!(restored.rejoin_missing(), missing);
    let a2 = net.add(restored);
    net.link(a2, c);
    net.pump();
    assert!(net[a2].state().contains(&1), "the write gone from its log is back");
    assert_eq!(net[a2].state(), net[c].state());
    assert_eq!(net[a2].rejoin_missing(), repred::Timestamp::ZERO, "brought up: it asks no more");
}

/// A replica saved after a rejoin and a snapshot that brought back some of
/// the own writes it lacked, not all, comes back asking only peers holding
/// more of them (`Replica::rejoin_held`). Before, the restored replica asked
/// every peer holding any of its writes, and the one that had already sent
/// what it had sent its whole state again for nothing.
#[test]
fn a_replica_saved_after_a_rejoin_asks_only_peers_holding_more_of_its_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let id = |name: &str| SourceId::new(name).unwrap();
    let small = Config::default().history_limit(2);
    let mut net = Network::starting_at(NOW);
    let a = net.add(Replica::with_config(id("a"), Numbers::default(), small.clone()));
    let c = net.add(Replica::new(id("c"), Numbers::default()));
    let d = net.add(Replica::new(id("d"), Numbers::default()));
    // d has a's first write only; c has all four.
    let to_d = net.link(a, d);
    net.update(a, [1].into()).unwrap();
    net.pump();
    net.cut(to_d);
    let to_c = net.link(a, c);
    for i in 2..=4 {
        net.update(a, [i].into()).unwrap();
    }
    net.pump();
    net.cut(to_c);
    // Its log kept the last two: the first two are gone from it.
    net[a].rejoin(Numbers::default());
    assert!(net[a].rejoin_missing() > repred::Timestamp::ZERO);
    // d, which takes nothing from a, brings back the first write.
    let takes_nothing = StreamOpts { sends: false, ..StreamOpts::default() };
    let link = net.link_with(a, takes_nothing.clone(), d, StreamOpts::default());
    net.pump();
    net.cut(link);
    let held = net[a].rejoin_held();
    assert_eq!(held, net[d].clock().get(id("a")), "what d had of a's writes is back");
    assert!(net[a].state().contains(&1) && !net[a].state().contains(&2));
    assert!(net[a].rejoin_missing() > held, "the second write is still missing");
    let restored = saved_and_loaded(&path, &net[a], small);
    assert_eq!(restored.rejoin_held(), held);
    let a2 = net.add(restored);
    // d holds nothing of a's beyond what came back: no snapshot again.
    let taken = net[a2].stats().snapshots;
    net.link_with(a2, takes_nothing, d, StreamOpts::default());
    net.pump();
    assert_eq!(net[a2].stats().snapshots, taken, "d sent its state again");
    // c holds the rest, and is asked.
    net.link(a2, c);
    net.pump();
    assert!(net[a2].state().contains(&2), "the write gone from its log is back");
    assert_eq!(net[a2].state(), net[c].state());
    assert_eq!(net[a2].rejoin_missing(), repred::Timestamp::ZERO, "brought up: it asks no more");
}
