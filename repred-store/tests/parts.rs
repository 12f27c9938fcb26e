//! Snapshots stored in parts: a large state is written and read one part
//! at a time, a failed save leaves the previous snapshot whole, and stores
//! written before parts (one blob in the header) still load.

#[path = "support/full_disk.rs"]
mod full_disk;

use full_disk::Disk;
use repred::{Clock, Config, Entry, Envelope, GSet, LwwMap, Reduce, SourceId, Timestamp};
use repred_store::Store;
use repred_store::redb::{self, ReadableDatabase, ReadableTableMetadata, TableDefinition};
use serde::Serialize;

const NOW: u64 = 1_700_000_000_000;

type Numbers = GSet<u64>;

/// The store's tables, read behind its back (the store is closed first).
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("repred_meta");
const ENTRIES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("repred_entries");
const PARTS: TableDefinition<(&str, u64, u64), &[u8]> = TableDefinition::new("repred_parts");

/// How many parts of every generation the file holds, and the largest.
fn stored_parts(path: &std::path::Path) -> (u64, usize) {
    let db = redb::Database::open(path).unwrap();
    let txn = db.begin_read().unwrap();
    let table = txn.open_table(PARTS).unwrap();
    let largest = redb::ReadableTable::iter(&table)
        .unwrap()
        .map(|item| item.unwrap().1.value().len())
        .max()
        .unwrap_or(0);
    (table.len().unwrap(), largest)
}

/// A state many parts long saves and loads equal, state and clock, one
/// part at a time (none much larger than the target); a later snapshot
/// replaces the parts of the earlier one.
#[test]
fn a_state_of_many_parts_saves_and_loads_equal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let config = Config::default().history_limit(64);
    let (state, clock, map, map_clock) = {
        let store = Store::open(&path).unwrap().part_bytes(4 << 10);
        let mut r = store.load_or_create::<Numbers>("n", config.clone()).unwrap();
        let mut m = store.load_or_create::<LwwMap<u64, String>>("m", config.clone()).unwrap();
        for i in 0..20_000u64 {
            r.update(NOW, [i * 7].into()).unwrap();
        }
        for i in 0..5_000u64 {
            m.update(NOW, LwwMap::set(i, format!("value {i}"))).unwrap();
        }
        // The history dropped what was never saved: both go as snapshots.
        store.save("n", &r).unwrap();
        store.save("m", &m).unwrap();
        (r.state().clone(), r.clock().clone(), m.state().clone(), m.clock().clone())
    };
    let (parts, largest) = stored_parts(&path);
    assert!(parts >= 10, "{parts} parts");
    assert!(largest <= 8 << 10, "a part of {largest} bytes");

    let store = Store::open(&path).unwrap().part_bytes(4 << 10);
    let mut r = store.load::<Numbers>("n", config.clone()).unwrap().unwrap();
    assert_eq!((r.state(), r.clock()), (&state, &clock));
    let m = store.load::<LwwMap<u64, String>>("m", config.clone()).unwrap().unwrap();
    assert_eq!((m.state(), m.clock()), (&map, &map_clock));

    // Another snapshot of a smaller state: the earlier parts are gone.
    for i in 0..100u64 {
        r.update(NOW, [1_000_000 + i].into()).unwrap();
    }
    store.save("n", &r).unwrap();
    let (state, clock) = (r.state().clone(), r.clock().clone());
    drop((r, m, store));
    let (after, _) = stored_parts(&path);
    assert!(after <= parts + 1, "old parts left behind: {parts} then {after}");
    let store = Store::open(&path).unwrap();
    let r = store.load::<Numbers>("n", config).unwrap().unwrap();
    assert_eq!((r.state(), r.clock()), (&state, &clock));
}

/// A save whose commit fails at any point (the disk fills after a number
/// of writes) leaves the previous snapshot readable: after a reopen the
/// store loads either it or the new one, whole.
#[test]
fn a_failed_snapshot_save_leaves_the_previous_one_readable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let disk = Disk::default();
    let config = Config::default().history_limit(16);
    let store = Store::open_with(&path, disk.backend()).unwrap().part_bytes(1 << 10);
    let mut r = store.load_or_create::<Numbers>("n", config.clone()).unwrap();
    for i in 0..3_000u64 {
        r.update(NOW, [i].into()).unwrap();
    }
    store.save("n", &r).unwrap();
    let before = r.state().clone();
    for i in 3_000..6_000u64 {
        r.update(NOW, [i].into()).unwrap();
    }
    let after = r.state().clone();
    let mut failures = 0;
    for budget in 0.. {
        disk.fill_after(budget);
        let saved = store.save("n", &r);
        disk.set_full(false);
        if saved.is_ok() {
            break;
        }
        failures += 1;
        store.reopen().unwrap();
        let back = store.load::<Numbers>("n", config.clone()).unwrap().unwrap();
        assert!(
            back.state() == &before || back.state() == &after,
            "budget {budget}: a torn snapshot of {} entries",
            back.state().len()
        );
        assert!(budget < 10_000, "the save never succeeded");
    }
    assert!(failures > 3, "the budget must cut saves: only {failures} failed");
    drop(store);
    let store = Store::open(&path).unwrap();
    let back = store.load::<Numbers>("n", config).unwrap().unwrap();
    assert_eq!((back.state(), back.clock()), (&after, r.clock()));
}

/// A header as the previous version wrote it: the base state in one blob.
#[derive(Serialize)]
struct OldMeta {
    id: SourceId,
    last: Timestamp,
    base_seq: u64,
    next_seq: u64,
    base_clock: Clock,
    base: Vec<u8>,
    life: u64,
    floor: Timestamp,
}

/// A store in the previous layout (the base snapshot in the header, two
/// entries after it) loads, and its next save rewrites the base as parts.
#[test]
fn a_store_with_the_base_in_one_blob_loads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let id = SourceId::new("old").unwrap();
    let writer = SourceId::new("writer").unwrap();
    let base: Numbers = (0..1_000u64).collect();
    let base_clock: Clock = [(writer, Timestamp::new(NOW, 5))].into_iter().collect();
    let entries: [Entry<<Numbers as Reduce>::Update>; 2] = [
        Entry::Change(Envelope::new(writer, Timestamp::new(NOW, 6), [5_000u64].into())),
        Entry::Change(Envelope::new(id, Timestamp::new(NOW, 7), [5_001u64].into())),
    ];
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        let meta = OldMeta {
            id,
            last: Timestamp::new(NOW, 7),
            base_seq: 10,
            next_seq: 12,
            base_clock: base_clock.clone(),
            base: postcard::to_allocvec(&base.snapshot()).unwrap(),
            life: 42,
            floor: Timestamp::ZERO,
        };
        let meta = postcard::to_allocvec(&meta).unwrap();
        txn.open_table(META).unwrap().insert("n", meta.as_slice()).unwrap();
        let mut table = txn.open_table(ENTRIES).unwrap();
        for (seq, entry) in (10u64..).zip(&entries) {
            table.insert(("n", seq), postcard::to_allocvec(entry).unwrap().as_slice()).unwrap();
        }
        drop(table);
        txn.commit().unwrap();
    }
    let mut want = base.clone();
    Reduce::reduce(&mut want, [5_000, 5_001].into());

    let store = Store::open(&path).unwrap();
    let mut r = store.load::<Numbers>("n", Config::default()).unwrap().unwrap();
    assert_eq!((r.id(), r.life(), r.state()), (id, 42, &want));
    assert_eq!(r.clock().get(writer), Timestamp::new(NOW, 6));
    assert_eq!(r.clock().get(id), Timestamp::new(NOW, 7));
    assert!(r.last_timestamp() >= Timestamp::new(NOW, 7));

    // The next save stores the base as parts, and the header no longer
    // carries it.
    r.update(NOW, [9_999].into()).unwrap();
    store.save("n", &r).unwrap();
    let (state, clock) = (r.state().clone(), r.clock().clone());
    drop((r, store));
    let (parts, _) = stored_parts(&path);
    assert!(parts >= 1);
    {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_read().unwrap();
        let header = txn.open_table(META).unwrap().get("n").unwrap().unwrap().value().len();
        assert!(header < 200, "the header still holds the base: {header} bytes");
    }
    let store = Store::open(&path).unwrap();
    let r = store.load::<Numbers>("n", Config::default()).unwrap().unwrap();
    assert_eq!((r.state(), r.clock(), r.life()), (&state, &clock, 42));
}

/// Rows of each table under `name`: (header, log entries, parts).
fn rows_of(path: &std::path::Path, name: &str) -> (usize, usize, usize) {
    let db = redb::Database::open(path).unwrap();
    let txn = db.begin_read().unwrap();
    let meta = txn.open_table(META).unwrap();
    let header = usize::from(redb::ReadableTable::get(&meta, name).unwrap().is_some());
    let entries = txn.open_table(ENTRIES).unwrap();
    let logged =
        redb::ReadableTable::range(&entries, (name, 0)..=(name, u64::MAX)).unwrap().count();
    let parts = txn.open_table(PARTS).unwrap();
    let range = (name, 0, 0)..=(name, u64::MAX, u64::MAX);
    let stored = redb::ReadableTable::range(&parts, range).unwrap().count();
    (header, logged, stored)
}

/// `Store::remove` deletes a replica's header, log and snapshot parts in
/// one go, and nothing of any other replica: a load finds nothing, before
/// and after a reopen, and a replica made again under the name starts
/// from scratch.
#[test]
fn a_removed_replica_is_gone_from_the_file_and_the_others_stay() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let config = Config::default().history_limit(16);
    let (gone_id, kept) = {
        let store = Store::open(&path).unwrap().part_bytes(256);
        let mut gone = store.load_or_create::<Numbers>("gone", config.clone()).unwrap();
        let mut kept = store.load_or_create::<Numbers>("kept", config.clone()).unwrap();
        // Past the history limit: a snapshot in several parts, then a log
        // after it.
        for i in 0..200u64 {
            gone.update(NOW, [i].into()).unwrap();
            kept.update(NOW, [i * 2].into()).unwrap();
            if i % 50 == 49 {
                store.save("gone", &gone).unwrap();
                store.save("kept", &kept).unwrap();
            }
        }
        for i in 0..5u64 {
            gone.update(NOW, [1_000 + i].into()).unwrap();
        }
        store.save("gone", &gone).unwrap();
        (gone.id(), kept.state().clone())
    };
    let (header, logged, parts) = rows_of(&path, "gone");
    assert_eq!(header, 1);
    assert!(logged > 0 && parts > 1, "a log and a snapshot in parts: {logged}, {parts}");

    let store = Store::open(&path).unwrap();
    assert!(store.remove("gone").unwrap());
    assert!(store.load::<Numbers>("gone", config.clone()).unwrap().is_none());
    assert!(!store.remove("gone").unwrap(), "nothing left to remove");
    assert!(!store.remove("never").unwrap());
    drop(store);
    assert_eq!(rows_of(&path, "gone"), (0, 0, 0), "no row of it left");
    let (header, _, parts) = rows_of(&path, "kept");
    assert_eq!(header, 1);
    assert!(parts > 0);

    let store = Store::open(&path).unwrap();
    assert!(store.load::<Numbers>("gone", config.clone()).unwrap().is_none(), "after a reopen");
    let kept_again = store.load::<Numbers>("kept", config.clone()).unwrap().unwrap();
    assert_eq!(kept_again.state(), &kept);
    let again = store.load_or_create::<Numbers>("gone", config).unwrap();
    assert_ne!(again.id(), gone_id, "made again: a new source id");
    assert!(again.state().is_empty());
}

/// Delivers what `from` sends on `at` to `to` on `to_at`, frame by frame,
/// leaving out a snapshot's end (kind 13) if `cut`, until `to` closes the
/// stream. Returns whether anything went.
fn deliver(
    from: &mut repred::Replica<Numbers>,
    at: repred::StreamId,
    to: &mut repred::Replica<Numbers>,
    to_at: repred::StreamId,
    cut: bool,
) -> bool {
    let mut sent = Vec::new();
    while from.poll_transmit(at, &mut sent).unwrap_or(0) > 0 {}
    let mut rest = sent.as_slice();
    while rest.len() >= 4 {
        let len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
        let (frame, after) = rest.split_at(4 + len);
        // A stream `to` closed (as stale, say) takes nothing more: the
        // caller's checks say why.
        if !(cut && frame[4] == 13) && to.handle(to_at, NOW, frame).is_err() {
            break;
        }
        rest = after;
    }
    !sent.is_empty()
}

/// Three rounds of a snapshot from `sender` to `d`, its end left out.
fn deliver_cut(
    sender: &mut repred::Replica<Numbers>,
    p: repred::StreamId,
    d: &mut repred::Replica<Numbers>,
    s: repred::StreamId,
) {
    for _ in 0..3 {
        deliver(d, s, sender, p, false);
        deliver(sender, p, d, s, true);
    }
}

/// A sender of 2,000 entries in parts of 512 bytes, collected up to its
/// last write: a fresh peer is sent a snapshot from that floor.
fn collected_sender() -> repred::Replica<Numbers> {
    let sending = Config::default().snapshot_part_bytes(512);
    let mut sender =
        repred::Replica::with_config(SourceId::new("a").unwrap(), Numbers::default(), sending);
    for i in 0..2_000u64 {
        sender.update(NOW, [i].into()).unwrap();
    }
    sender.collect(sender.last_timestamp());
    sender
}

/// Delivers both ways, whole, until neither side has more to send.
fn exchange(
    sender: &mut repred::Replica<Numbers>,
    p: repred::StreamId,
    d: &mut repred::Replica<Numbers>,
    s: repred::StreamId,
) {
    let mut rounds = 0;
    while deliver(d, s, sender, p, false) | deliver(sender, p, d, s, false) {
        rounds += 1;
        assert!(rounds < 16, "the exchange ends");
    }
}

/// A fresh replica restarted from its store while a snapshot from its
/// peer's collection floor, above its own, was coming in: the log names
/// the floor of the parts it holds (`Entry::Receiving`), so the snapshot
/// sent again from that floor is taken. (Assuming its own floor, 0, the
/// restarted replica found the retry stale and had to rejoin.)
#[test]
fn a_snapshot_cut_by_a_restart_is_taken_again_from_its_floor() {
    use repred::StreamOpts;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let mut sender = collected_sender();
    assert!(sender.floor() > Timestamp::ZERO);
    let store = Store::open(&path).unwrap();
    let mut d = store.load_or_create::<Numbers>("d", Config::default()).unwrap();
    store.save("d", &d).unwrap();
    let (p, s) =
        (sender.open(StreamOpts::default()).unwrap(), d.open(StreamOpts::default()).unwrap());
    deliver_cut(&mut sender, p, &mut d, s);
    assert!(d.holds_cut_snapshot(), "{} entries merged", d.state().len());
    assert!(d.state().len() > 100, "parts merged: {}", d.state().len());
    store.save("d", &d).unwrap();
    drop((d, store));

    let store = Store::open(&path).unwrap();
    let mut d = store.load::<Numbers>("d", Config::default()).unwrap().unwrap();
    assert!(d.holds_cut_snapshot(), "the parts came back, and what they are");
    sender.abort(p);
    let (p, s) =
        (sender.open(StreamOpts::default()).unwrap(), d.open(StreamOpts::default()).unwrap());
    exchange(&mut sender, p, &mut d, s);
    assert_eq!(d.stale_floor(), None);
    assert_eq!(d.stats().snapshots, 1);
    assert_eq!(d.state(), sender.state());
    assert_eq!(d.clock(), sender.clock());
    assert!(!d.holds_cut_snapshot());
}

/// Parts of a snapshot cut on its way to a replica whose clock claims a
/// peer's write (it was brought up by history before) do not count as cut
/// parts, nor after a restart: its floor comes from what it holds, so a
/// snapshot from that floor is as safe on top of them as on top of the
/// rest, and one from a higher floor finds it stale anyway. Counted, they
/// made a replica with a clock, brought up by history since, stale at its
/// next snapshot from its own floor, until a rejoin. (A clock that claims
/// only the replica's own writes vouches for nothing: `tests/collect.rs`
/// `a_cut_snapshot_is_not_mixed_after_the_floor_is_raised_over_it`.)
#[test]
fn parts_cut_on_their_way_to_a_replica_with_a_clock_are_not_counted() {
    use repred::StreamOpts;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let sending = Config::default().history_limit(1).snapshot_part_bytes(512);
    let mut sender =
        repred::Replica::with_config(SourceId::new("a").unwrap(), Numbers::default(), sending);
    sender.update(NOW, [0].into()).unwrap();
    let store = Store::open(&path).unwrap();
    let mut d = store.load_or_create::<Numbers>("d", Config::default()).unwrap();
    let (p, s) =
        (sender.open(StreamOpts::default()).unwrap(), d.open(StreamOpts::default()).unwrap());
    for _ in 0..3 {
        deliver(&mut d, s, &mut sender, p, false);
        deliver(&mut sender, p, &mut d, s, false);
    }
    assert_eq!(d.stats().snapshots, 0, "brought up by history");
    assert_eq!(d.clock(), sender.clock());
    d.abort(s);
    sender.abort(p);
    for i in 1..2_000u64 {
        sender.update(NOW, [i].into()).unwrap();
    }
    let (p, s) =
        (sender.open(StreamOpts::default()).unwrap(), d.open(StreamOpts::default()).unwrap());
    deliver_cut(&mut sender, p, &mut d, s);
    assert!(d.state().len() > 100, "parts merged: {}", d.state().len());
    assert!(d.receiving_snapshot(), "behind the sender's history: a snapshot");
    d.abort(s);
    assert_eq!(d.cut_parts_floor(), None);
    assert!(!d.holds_cut_snapshot());
    store.save("d", &d).unwrap();
    drop((d, store));

    let store = Store::open(&path).unwrap();
    let d = store.load::<Numbers>("d", Config::default()).unwrap().unwrap();
    assert!(d.state().len() > 100);
    assert_eq!(d.cut_parts_floor(), None, "nor after a restart");
}

/// A fresh replica's first snapshot is cut, and saved as a base (its
/// history too short to keep the parts' records); the snapshot is sent
/// again and ends, its parts changing nothing (the state holds them), so
/// the log after the base says only that it ended. A restart brings back
/// the whole state: a base saved empty would come back with the clock
/// claiming everything and none of it, lost for good.
#[test]
fn a_cut_snapshot_saved_then_ended_loses_nothing_across_a_restart() {
    use repred::StreamOpts;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let mut sender = collected_sender();
    let config = Config::default().history_snapshot_bytes(1 << 10);
    let store = Store::open(&path).unwrap();
    let mut d = store.load_or_create::<Numbers>("d", config.clone()).unwrap();
    store.save("d", &d).unwrap();
    let (p, s) =
        (sender.open(StreamOpts::default()).unwrap(), d.open(StreamOpts::default()).unwrap());
    deliver_cut(&mut sender, p, &mut d, s);
    assert!(d.holds_cut_snapshot());
    assert!(d.entries_from(0).is_err(), "the parts' records are gone: a base it is");
    store.save("d", &d).unwrap();

    d.abort(s);
    sender.abort(p);
    let (p, s) =
        (sender.open(StreamOpts::default()).unwrap(), d.open(StreamOpts::default()).unwrap());
    exchange(&mut sender, p, &mut d, s);
    assert_eq!(d.stats().snapshots, 1);
    assert_eq!(d.state(), sender.state());
    store.save("d", &d).unwrap();
    drop((d, store));

    let store = Store::open(&path).unwrap();
    let d = store.load::<Numbers>("d", config).unwrap().unwrap();
    assert_eq!(d.clock(), sender.clock());
    assert_eq!(d.state().len(), sender.state().len(), "the state the clock claims came back");
    assert_eq!(d.state(), sender.state());
    assert!(!d.holds_cut_snapshot());
}

/// A fresh replica holding parts of a snapshot that never ended, its
/// history too short to keep their records: saved, its base holds them
/// with the floor they are from, so a restart brings them back as what
/// they are, not as a fresh replica's state with nothing to say so (which
/// would take a higher floor's snapshot on top of them).
#[test]
fn a_cut_snapshot_is_saved_as_a_base_with_its_floor() {
    use repred::StreamOpts;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let sending = Config::default().history_limit(1).snapshot_part_bytes(512);
    let mut sender =
        repred::Replica::with_config(SourceId::new("a").unwrap(), Numbers::default(), sending);
    for i in 0..2_000u64 {
        sender.update(NOW, [i].into()).unwrap();
    }
    let config = Config::default().history_snapshot_bytes(1 << 10);
    let store = Store::open(&path).unwrap();
    let mut d = store.load_or_create::<Numbers>("d", config.clone()).unwrap();
    store.save("d", &d).unwrap();
    let (p, s) =
        (sender.open(StreamOpts::default()).unwrap(), d.open(StreamOpts::default()).unwrap());
    let mut hello = Vec::new();
    sender.poll_transmit(p, &mut hello).unwrap();
    d.handle(s, NOW, &hello).unwrap();
    let mut reply = Vec::new();
    d.poll_transmit(s, &mut reply).unwrap();
    sender.handle(p, NOW, &reply).unwrap();
    let mut sent = Vec::new();
    while sender.poll_transmit(p, &mut sent).unwrap() > 0 {}
    // Every frame but the snapshot's end (kind 13), then the link is cut.
    let mut rest = sent.as_slice();
    while rest.len() >= 4 {
        let len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
        let (frame, after) = rest.split_at(4 + len);
        if frame[4] != 13 {
            d.handle(s, NOW, frame).unwrap();
        }
        rest = after;
    }
    d.abort(s);
    assert!(d.state().len() > 100, "parts merged: {}", d.state().len());
    assert!(d.clock().is_empty());
    assert!(d.holds_cut_snapshot());
    assert!(d.entries_from(0).is_err(), "the parts' records are gone: a base it is");
    let (held, floor) = (d.state().clone(), d.cut_parts_floor());
    assert_eq!(floor, Some(Timestamp::ZERO), "the sender's floor");
    store.save("d", &d).unwrap();
    drop((d, store));

    let (parts, _) = stored_parts(&path);
    assert!(parts > 0, "the cut snapshot's parts are stored");
    let store = Store::open(&path).unwrap();
    let restored = store.load::<Numbers>("d", config).unwrap().unwrap();
    assert_eq!(restored.state(), &held);
    assert!(restored.clock().is_empty());
    assert!(restored.holds_cut_snapshot());
    assert_eq!(restored.cut_parts_floor(), floor);
}

/// A replica found stale for cut parts it holds keeps that verdict across
/// a restart: it holds at its own floor too, and once that floor rose to
/// the verdict's (here by hand) and the clock claims a peer's write,
/// nothing would find it again, so a snapshot from that floor would be
/// merged over the parts. (The verdict comes from a peer holding nothing,
/// at a floor above the parts': the replica's clock covers its empty one,
/// so only the parts tell.)
#[test]
fn a_verdict_for_cut_parts_is_kept_across_a_restart() {
    use repred::StreamOpts;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let mut sender = collected_sender();
    let store = Store::open(&path).unwrap();
    let mut d = store.load_or_create::<Numbers>("d", Config::default()).unwrap();
    let (p, s) =
        (sender.open(StreamOpts::default()).unwrap(), d.open(StreamOpts::default()).unwrap());
    deliver_cut(&mut sender, p, &mut d, s);
    // The link is cut before the end.
    d.abort(s);
    assert!(d.holds_cut_snapshot());
    // A peer's write by history, above the floor to come.
    let high = Timestamp::new(NOW + 1_000, 0);
    let mut w = repred::Replica::new(SourceId::new("w").unwrap(), Numbers::default());
    w.update(NOW + 2_000, [9_999u64].into()).unwrap();
    let (p, s) = (w.open(StreamOpts::default()).unwrap(), d.open(StreamOpts::default()).unwrap());
    exchange(&mut w, p, &mut d, s);
    assert!(d.clock().get(w.id()) > high);
    // A peer holding nothing, at a floor above the parts'.
    let mut nothing = repred::Replica::new(SourceId::new("e").unwrap(), Numbers::default());
    nothing.collect(high);
    let (p, s) =
        (nothing.open(StreamOpts::default()).unwrap(), d.open(StreamOpts::default()).unwrap());
    exchange(&mut nothing, p, &mut d, s);
    assert_eq!(d.stale_floor(), Some(high), "the parts are from below it");
    d.collect(high);
    assert_eq!(d.stale_floor(), Some(high), "at its own floor too");
    store.save("d", &d).unwrap();
    drop((d, store));

    let store = Store::open(&path).unwrap();
    let d = store.load::<Numbers>("d", Config::default()).unwrap().unwrap();
    assert!(d.cut_parts_floor().is_some_and(|f| f < high), "the parts came back");
    assert_eq!(d.floor(), high);
    assert_eq!(d.stale_floor(), Some(high), "the verdict came back");
}
