//! Stock lattices, side by side with the `crdts` crate in the same run.
//!
//! `cargo bench -p repred --bench lattices`

use std::collections::HashMap;

use crdts::{CmRDT, CvRDT, LWWReg, Orswot};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use repred::doc::Seq;
use repred::lattice::{OrSetUpdate, Stamped, Writes};
use repred::{LwwMap, OrSet, Reduce, SourceId, Stamp, Timestamp};

const N: u64 = 100_000;

/// The `crdts` baseline of an LWW map: a register per key.
type CrdtsLww = HashMap<u64, LWWReg<u64, (u64, u64)>>;

fn stamp(i: u64) -> Stamp {
    let source = SourceId::from_bytes(((i % 10) as u128 + 1).to_be_bytes()).expect("not zero");
    Stamp { ts: Timestamp::new(1_700_000_000_000 + i, 0), source }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("lattices");
    g.throughput(Throughput::Elements(N));

    // LWW map: N single-key writes over 1,000 keys, each with its own stamp.
    let writes: Vec<Writes<u64, u64>> = (0..N)
        .map(|i| vec![(i % 1_000, Stamped { stamp: Some(stamp(i)), value: Some(i) })])
        .collect();
    g.bench_function("repred LwwMap apply (100k writes, 1k keys)", |b| {
        b.iter_batched(
            || (LwwMap::<u64, u64>::default(), writes.clone()),
            |(mut map, writes)| {
                for w in writes {
                    map.reduce(w);
                }
                map
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("crdts HashMap<LWWReg> update (100k writes, 1k keys)", |b| {
        b.iter_batched(
            HashMap::<u64, LWWReg<u64, (u64, u64)>>::new,
            |mut map| {
                for i in 0..N {
                    let marker = (1_700_000_000_000 + i, i % 10);
                    map.entry(i % 1_000)
                        .and_modify(|r| r.update(i, marker))
                        .or_insert(LWWReg { val: i, marker });
                }
                map
            },
            BatchSize::LargeInput,
        )
    });

    // OR-set: N adds of 1,000 elements, then a remove of each.
    let adds: Vec<OrSetUpdate<u64>> = (0..N)
        .map(|i| OrSetUpdate { adds: vec![(i % 1_000, Some(stamp(i)))], removes: vec![] })
        .collect();
    g.bench_function("repred OrSet add + remove (100k adds, 1k removes)", |b| {
        b.iter_batched(
            || (OrSet::<u64>::default(), adds.clone()),
            |(mut set, adds)| {
                for a in adds {
                    set.reduce(a);
                }
                for x in 0..1_000 {
                    let rm = set.remove(&x);
                    set.reduce(rm);
                }
                set
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("crdts Orswot add + rm (100k adds, 1k removes)", |b| {
        b.iter_batched(
            Orswot::<u64, u64>::new,
            |mut set| {
                for i in 0..N {
                    let ctx = set.read_ctx().derive_add_ctx(i % 10);
                    let op = set.add(i % 1_000, ctx);
                    set.apply(op);
                }
                for x in 0..1_000 {
                    let ctx = set.contains(&x).derive_rm_ctx();
                    let op = set.rm(x, ctx);
                    set.apply(op);
                }
                set
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();

    merges(c);

    // Seq: one insert in the middle of 100,000 items.
    let mut seq = Seq::<u64>::default();
    let mut positions = Vec::new();
    let mut last = None;
    for _ in 0..N {
        let p = repred::doc::Position::between(last.as_ref(), None);
        positions.push(p.clone());
        last = Some(p);
    }
    let mut fill = repred::doc::SeqUpdate::default();
    for (i, p) in positions.into_iter().enumerate() {
        fill.order.push((format!("i{i}"), Stamped { stamp: Some(stamp(0)), value: Some(p) }));
        fill.values
            .push((format!("i{i}"), Stamped { stamp: Some(stamp(0)), value: Some(i as u64) }));
    }
    seq.reduce(fill);
    let mut g = c.benchmark_group("seq");
    g.bench_function("insert in the middle of 100k items", |b| {
        b.iter_batched(
            || seq.clone(),
            |mut s| {
                let mut u = s.insert_after("i50000", "new", 7);
                Seq::stamp(&mut u, stamp(1));
                s.reduce(u);
                s
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

/// State merges: two replicas that diverged, one's whole state joined into
/// the other's (what a snapshot costs on arrival), against `crdts`' CvRDT
/// merge of the same states.
fn merges(c: &mut Criterion) {
    const KEYS: u64 = 10_000;
    let mut g = c.benchmark_group("merge");
    g.throughput(Throughput::Elements(KEYS));

    // LWW map: both wrote every key; the other's writes are newer for half.
    let write = |k: u64, t: u64| vec![(k, Stamped { stamp: Some(stamp(t)), value: Some(t) })];
    let (mut ours, mut theirs) = (LwwMap::<u64, u64>::default(), LwwMap::<u64, u64>::default());
    let (mut ours_c, mut theirs_c) = (HashMap::new(), HashMap::new());
    for k in 0..KEYS {
        let (t_ours, t_theirs) = if k % 2 == 0 { (k, KEYS + k) } else { (KEYS + k, k) };
        ours.reduce(write(k, t_ours));
        theirs.reduce(write(k, t_theirs));
        ours_c.insert(k, LWWReg { val: t_ours, marker: (1_700_000_000_000 + t_ours, t_ours % 10) });
        theirs_c.insert(
            k,
            LWWReg { val: t_theirs, marker: (1_700_000_000_000 + t_theirs, t_theirs % 10) },
        );
    }
    let snapshot = theirs.snapshot();
    g.bench_function("repred LwwMap merge (10k keys, half newer)", |b| {
        b.iter_batched(
            || (ours.clone(), snapshot.clone()),
            |(mut map, snapshot)| {
                map.reduce(snapshot);
                map
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("crdts HashMap<LWWReg> merge (10k keys, half newer)", |b| {
        b.iter_batched(
            || (ours_c.clone(), theirs_c.clone()),
            |(mut map, theirs): (CrdtsLww, CrdtsLww)| {
                for (k, reg) in theirs {
                    match map.get_mut(&k) {
                        Some(r) => r.merge(reg),
                        None => {
                            map.insert(k, reg);
                        }
                    }
                }
                map
            },
            BatchSize::LargeInput,
        )
    });

    // OR-set: a shared base of 10k elements; we add 1k more, they remove
    // 1k of the base and add 1k others.
    let add = |x: u64, t: u64| OrSetUpdate { adds: vec![(x, Some(stamp(t)))], removes: vec![] };
    let mut base = OrSet::<u64>::default();
    let mut base_c = Orswot::<u64, u64>::new();
    for x in 0..KEYS {
        base.reduce(add(x, x));
        base_c.apply(base_c.add(x, base_c.read_ctx().derive_add_ctx(x % 10)));
    }
    let (mut ours, mut theirs) = (base.clone(), base);
    let (mut ours_c, mut theirs_c) = (base_c.clone(), base_c);
    for i in 0..1_000 {
        ours.reduce(add(KEYS + i, KEYS + i));
        ours_c.apply(ours_c.add(KEYS + i, ours_c.read_ctx().derive_add_ctx(1)));
        let rm = theirs.remove(&i);
        theirs.reduce(rm);
        theirs_c.apply(theirs_c.rm(i, theirs_c.contains(&i).derive_rm_ctx()));
        theirs.reduce(add(2 * KEYS + i, 2 * KEYS + i));
        theirs_c.apply(theirs_c.add(2 * KEYS + i, theirs_c.read_ctx().derive_add_ctx(2)));
    }
    let snapshot = theirs.snapshot();
    g.bench_function("repred OrSet merge (10k elements, 1k added, 1k removed)", |b| {
        b.iter_batched(
            || (ours.clone(), snapshot.clone()),
            |(mut set, snapshot)| {
                set.reduce(snapshot);
                set
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("crdts Orswot merge (10k elements, 1k added, 1k removed)", |b| {
        b.iter_batched(
            || (ours_c.clone(), theirs_c.clone()),
            |(mut set, theirs)| {
                set.merge(theirs);
                set
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
