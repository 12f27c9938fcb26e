//! Hot paths of the core: local update, remote apply, history, frames.
//!
//! `cargo bench -p repred --bench core`

use std::collections::HashMap;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use repred::{Clock, Config, Envelope, Reduce, Replica, SourceId, StreamOpts, Timestamp};

const NOW: u64 = 1_700_000_000_000;
const N: u64 = 100_000;

/// A map of max registers: small updates, the shape of most real states.
#[derive(Default)]
struct Registers(HashMap<u64, u64>);

impl Reduce for Registers {
    type Update = (u64, u64);

    fn reduce(&mut self, (key, value): (u64, u64)) -> Option<(u64, u64)> {
        let slot = self.0.entry(key).or_insert(0);
        (value > *slot).then(|| {
            *slot = value;
            (key, value)
        })
    }

    fn snapshot(&self) -> (u64, u64) {
        // Benchmarks never fall behind the history; a real map would send
        // all entries.
        (0, 0)
    }
}

fn config() -> Config {
    Config::default().history_limit(N as usize)
}

fn sources() -> Vec<SourceId> {
    (0..100).map(|i| SourceId::new(format!("s{i}")).unwrap()).collect()
}

/// `N` updates from 100 sources, as they would arrive.
fn envelopes() -> Vec<Envelope<(u64, u64)>> {
    let sources = sources();
    (0..N)
        .map(|i| {
            let ts = Timestamp::new(NOW, (i / 100) as u16 + 1);
            Envelope::new(sources[(i % 100) as usize], ts, (i % 1_000, i + 1))
        })
        .collect()
}

fn filled() -> Replica<Registers> {
    let mut r = Replica::with_config(SourceId::new("r").unwrap(), Registers::default(), config());
    for e in envelopes() {
        r.apply(NOW, e);
    }
    r
}

fn transcript(r: &mut Replica<Registers>) -> Vec<u8> {
    let s = r.open(StreamOpts::send_only().tail(false)).unwrap();
    let mut out = Vec::with_capacity(4 << 20);
    while r.poll_transmit(s, &mut out).unwrap() > 0 {}
    out
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("core");
    g.throughput(Throughput::Elements(N));

    g.bench_function("local update (100k)", |b| {
        b.iter_batched(
            || Replica::with_config(SourceId::new("a").unwrap(), Registers::default(), config()),
            |mut r| {
                for i in 0..N {
                    r.update(NOW, (i % 1_000, i + 1)).unwrap();
                }
                r
            },
            BatchSize::LargeInput,
        )
    });

    let updates = envelopes();
    g.bench_function("remote apply (100k, 100 sources)", |b| {
        b.iter_batched(
            || {
                let r = Replica::with_config(
                    SourceId::new("r").unwrap(),
                    Registers::default(),
                    config(),
                );
                (r, updates.clone())
            },
            |(mut r, updates)| {
                for e in updates {
                    r.apply(NOW, e);
                }
                r
            },
            BatchSize::LargeInput,
        )
    });

    let full = filled();
    let half: Clock = sources().into_iter().map(|s| (s, Timestamp::new(NOW, 500))).collect();
    g.bench_function("history(clock) (100k records, half missing)", |b| {
        b.iter(|| full.history(&half).len())
    });

    g.bench_function("encode: poll_transmit (100k)", |b| {
        b.iter_batched(filled, |mut r| transcript(&mut r).len(), BatchSize::LargeInput)
    });

    let bytes = transcript(&mut filled());
    g.bench_function("decode + apply: handle (100k)", |b| {
        b.iter_batched(
            || Replica::with_config(SourceId::new("b").unwrap(), Registers::default(), config()),
            |mut r| {
                let s = r.open(StreamOpts::receive_only()).unwrap();
                r.handle(s, NOW, &bytes).unwrap();
                r
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
    println!(
        "wire: {} bytes for {N} updates ({:.1} B/update)",
        bytes.len(),
        bytes.len() as f64 / N as f64
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
