//! Durable updates per second: group commit vs one commit per update.
//!
//! `cargo bench -p repred-store --bench store`

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use repred::{Config, LatticeMap, Max};
use repred_store::Store;

const NOW: u64 = 1_700_000_000_000;

/// key -> largest value: a map of max registers, from the stock lattices.
type Registers = LatticeMap<u64, Max<u64>>;

fn write(key: u64, value: u64) -> std::collections::BTreeMap<u64, Max<u64>> {
    Registers::update(key, Max::new(value))
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
            r.update(NOW, write(value % 1_000, value)).expect("an update");
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
