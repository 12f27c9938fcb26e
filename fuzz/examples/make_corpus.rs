//! Writes the seed corpus of every fuzz target from real exchanges:
//! `cargo run --release --example make_corpus` (in `fuzz/`). Seeds are
//! named `seed-*`; libFuzzer's own finds (hex names) are not committed.
//!
//! - `corpus/session/`: what each peer sent the replica under test in
//!   real exchanges (`harness::transcripts`: signed and unsigned, lazy
//!   relay, snapshots forced by short histories, proofs and advances,
//!   closes), chunked as sent; and, per exchange and stream, one input per
//!   frame kind: that stream's Hello and its first frame of the kind (of a
//!   snapshot's clock chunk, part or end, with the snapshot's frames before
//!   it).
//! - `corpus/snapshot/`: the snapshot frames (begin, clock, parts, end) of real
//!   exchanges, taken off the wire between real replicas of `Model` (one
//!   part), `LwwMap<String, String>` (two) and `OrSet<u32>` (three),
//!   unsigned and signed (by the trusted signer and by another).
//! - `corpus/store/`: store files written by `repred_store::Store`.
//! - `corpus/derive_change/`: encoded `ProfileChange`s of real writes.
//! - `corpus/<target>/seed-crash-*`: the reproducers in `fuzz/crashes/`.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use repred::{LwwMap, OrSet, Reduce, Replica};
use repred_fuzz::harness::{
    self, NOW, OP_BYTES, Recorder, SNAPSHOT_BEGIN, SNAPSHOT_KINDS, frames, ops, run_session,
    snapshot_frames, transcripts,
};
use repred_fuzz::{Profile, ProfileChange};
use repred_store::Store;
use repred_suite::Model;

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    fs::write(dir.join(format!("seed-{name}")), bytes).expect("write a seed");
}

fn session(root: &Path) {
    let dir = root.join("session");
    fs::create_dir_all(&dir).unwrap();
    for (name, input) in transcripts() {
        let report = run_session(&input);
        println!("session {name}: {} bytes, {report:?}", input.len());
        write(&dir, name, &input);
        let flags = input[0];
        for slot in 0..4u8 {
            let stream: Vec<u8> = ops(&input)
                .into_iter()
                .filter(|(code, _)| code & 3 == slot && (code >> 2) & 3 == OP_BYTES)
                .flat_map(|(_, payload)| payload)
                .collect();
            let frames = frames(&stream);
            let Some(hello) = frames.first() else { continue };
            let mut kinds = BTreeSet::new();
            for (n, frame) in frames.iter().enumerate().skip(1) {
                let Some(&kind) = frame.get(4) else { continue };
                if kinds.insert(kind) {
                    let mut rec = Recorder::new(flags, 0);
                    rec.bytes(0, hello);
                    // A clock chunk, a part or an end comes after its
                    // begin and the snapshot's frames before it.
                    if kind != SNAPSHOT_BEGIN && SNAPSHOT_KINDS.contains(&kind) {
                        let begin = frames[..n].iter().rposition(|f| f.get(4) == Some(&3));
                        for earlier in &frames[begin.unwrap_or(n)..n] {
                            if earlier.get(4).is_some_and(|k| SNAPSHOT_KINDS.contains(k)) {
                                rec.bytes(0, earlier);
                            }
                        }
                    }
                    rec.bytes(0, frame);
                    write(&dir, &format!("{name}-slot{slot}-kind{kind}"), &rec.input);
                }
            }
        }
    }
}

fn snapshot(root: &Path) {
    let dir = root.join("snapshot");
    fs::create_dir_all(&dir).unwrap();
    for signer in [None, Some(7u8), Some(2)] {
        let tag = signer.map_or("unsigned".to_string(), |n| format!("signed{n}"));
        let peer = signer.unwrap_or(2);
        // Every variant of the small one; the multi-part ones (a few KB)
        // after a Hello only, to keep the corpus small.
        let emit = |kind: u8, name: &str, frames: Vec<Vec<u8>>| {
            let kinds: Vec<u8> = frames.iter().map(|f| f[4]).collect();
            let stream = frames.concat();
            let hows: &[(u8, &str)] = match kind {
                0 => &[(3, "hello-sync"), (7, "seeded"), (0, "bare")],
                _ => &[(3, "hello-sync")],
            };
            for &(bits, how) in hows {
                let mut input = vec![b'S', kind, bits, peer];
                input.extend_from_slice(&stream);
                write(&dir, &format!("{name}-{tag}-{how}"), &input);
            }
            println!("snapshot {name} {tag}: frames of kinds {kinds:?}, {} bytes", stream.len());
        };
        emit(0, "model", snapshot_frames(&mut harness::snapshot_source(signer)));
        emit(1, "lww", snapshot_frames(&mut harness::lww_source(signer, 70, 5)));
        emit(2, "orset", snapshot_frames(&mut harness::orset_source(signer, 100)));
    }
}

fn store(root: &Path) {
    let dir = root.join("store");
    fs::create_dir_all(&dir).unwrap();
    let tmp = std::env::temp_dir().join(format!("repred-make-corpus-{}", std::process::id()));
    fs::create_dir_all(&tmp).unwrap();
    let file = |name: &str| tmp.join(format!("{name}.redb"));
    let copy = |name: &str| {
        let bytes = fs::read(file(name)).unwrap();
        println!("store {name}: {} bytes", bytes.len());
        write(&dir, name, &bytes);
    };
    {
        let _ = Store::open(file("empty")).unwrap();
    }
    copy("empty");
    {
        let store = Store::open(file("model")).unwrap();
        let mut r = store.load_or_create::<Model>("model", repred::Config::default()).unwrap();
        for i in 0..20u64 {
            r.update(NOW + i, Model::set(&format!("k{}", i % 4), "v")).unwrap();
        }
        store.save("model", &r).unwrap();
    }
    copy("model");
    {
        let store = Store::open(file("both")).unwrap();
        let config = repred::Config::default().history_limit(4);
        let mut r = store.load_or_create::<Model>("model", config.clone()).unwrap();
        let mut l = store.load_or_create::<LwwMap<String, String>>("lww", config).unwrap();
        for i in 0..30u64 {
            r.update(NOW + i, Model::set(&format!("k{}", i % 4), "v")).unwrap();
            l.update(NOW + i, LwwMap::set(format!("k{}", i % 4), format!("v{i}"))).unwrap();
            if i % 10 == 9 {
                store.save("model", &r).unwrap();
                store.save("lww", &l).unwrap();
            }
        }
    }
    copy("both");
    {
        // A header whose next sequence is below its base (a damaged or
        // crafted file): found by the store target, `Store::save` then
        // subtracts with overflow.
        {
            let store = Store::open(file("meta-next-before-base")).unwrap();
            let r = store.load_or_create::<Model>("model", repred::Config::default()).unwrap();
            store.save("model", &r).unwrap();
        }
        let db = repred_store::redb::Database::create(file("meta-next-before-base")).unwrap();
        let meta: repred_store::redb::TableDefinition<&str, &[u8]> =
            repred_store::redb::TableDefinition::new("repred_meta");
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(meta).unwrap();
            // (id, last, base_seq, next_seq, base_clock, base, life), as
            // the store's header is laid out.
            let header = (harness::id("me"), repred::Timestamp::new(NOW, 0), 5u64, 2u64);
            let mut bytes = postcard::to_allocvec(&header).unwrap();
            bytes.extend(
                postcard::to_allocvec(&(repred::Clock::new(), Vec::<u8>::new(), 1u64)).unwrap(),
            );
            table.insert("model", bytes.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    let crashes = Path::new(env!("CARGO_MANIFEST_DIR")).join("crashes/store");
    fs::create_dir_all(&crashes).unwrap();
    fs::copy(file("meta-next-before-base"), crashes.join("meta-next-before-base")).unwrap();
    let _ = fs::remove_dir_all(&tmp);
}

fn derive_change(root: &Path) {
    let dir = root.join("derive_change");
    fs::create_dir_all(&dir).unwrap();
    let writer = harness::id("writer");
    let mut profile = Replica::new(writer, Profile::default());
    let changes = vec![
        ProfileChange { name: Some(repred::LwwRegister::set("ann".into())), ..Default::default() },
        ProfileChange {
            best: Some(repred::Max::new(42)),
            low: Some(repred::Min::new(-3)),
            ..Default::default()
        },
        ProfileChange { badges: Some(repred::GSet::add("first".into())), ..Default::default() },
        ProfileChange { teams: Some(OrSet::add(7)), ..Default::default() },
        ProfileChange { settings: Some(LwwMap::set("theme".into(), 2)), ..Default::default() },
        ProfileChange {
            visits: Some(repred::GCounter::default().increment(writer, 3)),
            ..Default::default()
        },
        ProfileChange {
            karma: Some(repred::PnCounter::default().decrement(writer, 2)),
            ..Default::default()
        },
        ProfileChange {
            scores: Some(repred::LatticeMap::<String, repred::Max<u64>>::update(
                "q".into(),
                repred::Max::new(9),
            )),
            ..Default::default()
        },
        ProfileChange {
            log: Some(repred::EventLog::emit(["joined".to_string(), "left".to_string()])),
            ..Default::default()
        },
    ];
    let mut all = vec![3u8];
    for (n, change) in changes.into_iter().enumerate() {
        let bytes = postcard::to_allocvec(&change).unwrap();
        let mut input = vec![n as u8];
        input.extend_from_slice(&bytes);
        write(&dir, &format!("field{n}"), &input);
        all.extend_from_slice(&bytes);
        profile.update(NOW + n as u64, change).unwrap();
    }
    write(&dir, "all-fields", &all);
    // The whole state as one change: what a snapshot carries.
    let mut input = vec![5u8];
    input.extend_from_slice(&postcard::to_allocvec(&profile.state().snapshot()).unwrap());
    write(&dir, "snapshot", &input);
    println!("derive_change: {} seeds", fs::read_dir(&dir).unwrap().count());
}

/// The reproducers of what the targets found (`fuzz/crashes/<target>/`)
/// go into the corpus too, so that every run tries them first.
fn crashes(root: &Path) {
    let crashes = Path::new(env!("CARGO_MANIFEST_DIR")).join("crashes");
    for target in fs::read_dir(&crashes).unwrap() {
        let target = target.unwrap();
        // Only a target's own directory: the reproducers of open findings
        // in redb (`store-abort/` aborts the process, `store-memory/`
        // takes a GiB) would stop or slow every run.
        if target.file_name().to_string_lossy().contains('-') {
            continue;
        }
        for file in fs::read_dir(target.path()).unwrap() {
            let file = file.unwrap();
            let name = format!("crash-{}", file.file_name().to_string_lossy());
            let dir = root.join(target.file_name());
            write(&dir, &name, &fs::read(file.path()).unwrap());
            println!("{}: {name}", target.file_name().to_string_lossy());
        }
    }
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    session(&root);
    snapshot(&root);
    store(&root);
    derive_change(&root);
    crashes(&root);
}
