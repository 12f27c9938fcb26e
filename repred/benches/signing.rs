//! The cost of signing: signed local updates and verified remote applies.
//!
//! `cargo bench -p repred --bench signing`

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use repred::{Config, Identity, Reduce, Replica, StreamOpts};

const NOW: u64 = 1_700_000_000_000;
const N: u64 = 1_000;

#[derive(Default)]
struct Max(u64);

impl Reduce for Max {
    type Update = u64;

    fn reduce(&mut self, u: u64) -> Option<u64> {
        (u > self.0).then(|| {
            self.0 = u;
            u
        })
    }

    fn snapshot(&self) -> u64 {
        self.0
    }
}

fn signed(secret: u8, config: Config) -> Replica<Max> {
    Replica::with_identity(Identity::from_secret([secret; 32]), Max::default(), config)
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("signing");
    g.throughput(Throughput::Elements(N));
    for (name, sign) in [("unsigned local update", false), ("signed local update", true)] {
        g.bench_function(format!("{name} ({N})"), |b| {
            b.iter_batched(
                || {
                    if sign {
                        signed(1, Config::default())
                    } else {
                        Replica::new(repred::SourceId::random(), Max::default())
                    }
                },
                |mut r| {
                    for i in 1..=N {
                        r.update(NOW, i).unwrap();
                    }
                    r
                },
                BatchSize::SmallInput,
            )
        });
    }
    let mut origin = signed(1, Config::default());
    for i in 1..=N {
        origin.update(NOW, i).unwrap();
    }
    let s = origin.open(StreamOpts::send_only().tail(false)).unwrap();
    let mut transcript = Vec::new();
    while origin.poll_transmit(s, &mut transcript).unwrap() > 0 {}
    g.bench_function(format!("verify + apply one frame batch ({N} signed updates)"), |b| {
        b.iter_batched(
            || signed(2, Config::default().require_signatures(true)),
            |mut r| {
                let s = r.open(StreamOpts::receive_only()).unwrap();
                r.handle(s, NOW, &transcript).unwrap();
                assert_eq!(r.stats().applied, N);
                r
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
    println!("signed transcript: {} bytes for {N} updates", transcript.len());
}

criterion_group!(benches, bench);
criterion_main!(benches);
