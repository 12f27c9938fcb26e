//! Durable updates per second: group commit vs one commit per update.
//!
//! `cargo bench -p repred-store --bench store`

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use repred::{Config, Reduce};
use repred_store::Store;

const NOW: u64 = 1_700_000_000_000;

/// key -> newest value: a map of max registers, 1,000 keys.
#[derive(Default)]
struct Registers(BTreeMap<u64, u64>);

impl Reduce for Registers {
    type Update = BTreeMap<u64, u64>;

    fn reduce(&mut self, update: Self::Update) -> Option<Self::Update> {
        let mut changed = BTreeMap::new();
        for (k, v) in update {
            let slot = self.0.entry(k).or_insert(0);
            if v > *slot {
                *slot = v;
                changed.insert(k, v);
            }
        }
        (!changed.is_empty()).then_some(changed)
    }

    fn snapshot(&self) -> Self::Update {
        self.0.clone()
    }
}

/// Makes `updates` local updates, saving every `batch`; returns the time.
fn run(updates: u64, batch: u64) -> Duration {
    let dir = tempfile::tempdir().expect("a temp dir");
    let store = Store::open(dir.path().join("bench.redb")).expect("the store opens");
    let config = Config::default().history_limit(65_536);
    let mut r = store.load_or_create::<Registers>("r", config).expect("a replica");
    let mut value = 1;
    let start = Instant::now();
    let mut made = 0;
    while made < updates {
        for _ in 0..batch {
            r.update(NOW, [(value % 1_000, value)].into()).expect("an update");
            value += 1;
        }
        made += batch;
        store.save("r", &r).expect("a save");
    }
    start.elapsed()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("durable updates");
    g.sample_size(10);
    for (updates, batch) in [(200, 1), (20_000, 100), (100_000, 1_000), (100_000, 10_000)] {
        g.throughput(Throughput::Elements(updates));
        g.bench_function(format!("batch {batch}"), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| run(updates, batch)).sum())
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
