//! The JSON line codec: updates/s encoded and decoded, alone and through a
//! node (history out of a map; decode + apply into a fresh one).
//!
//! `cargo bench -p repred-scuttlebutt --bench codec -- --warm-up-time 1 --measurement-time 3`

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use repred_scuttlebutt::line::{self, Line};
use repred_scuttlebutt::{Json, Node, StreamOpts};

const NOW: u64 = 1_700_000_000_000;
const N: u64 = 100_000;

/// `N` updates as a JavaScript peer sends them: 100 sources with
/// createId()-style 39-digit ids, 1,000 keys, short string values,
/// monotonic-timestamp floats.
fn transcript() -> Vec<u8> {
    let sources: Vec<String> = (0..100)
        .map(|i| format!("{:039X}", 0x9E37_79B9_7F4A_7C15_u64.wrapping_mul(i + 1)))
        .collect();
    let mut out = Vec::with_capacity(N as usize * 80);
    line::write_header(&mut out, "J", std::iter::empty(), None);
    for i in 0..N {
        let ts = (NOW - 1_000) as f64 + (i / 100) as f64 * 0.01 + 1.0 / 1001.0;
        let value = Json::string(&format!("value {i}"));
        line::write_update(
            &mut out,
            &format!("key{}", i % 1_000),
            &value,
            ts,
            &sources[(i % 100) as usize],
        );
    }
    line::write_sync(&mut out);
    out
}

fn bench(c: &mut Criterion) {
    let input = transcript();
    let mut g = c.benchmark_group("scuttlebutt codec");
    g.throughput(Throughput::Elements(N));

    g.bench_function("encode update lines (100k)", |b| {
        let value = Json::string("value 12345");
        let source = "C7B3D2A4E0F9E8B1A3C5D7E9F1A3B5C7D9E1F3";
        let mut out = Vec::with_capacity(N as usize * 80);
        b.iter(|| {
            out.clear();
            for i in 0..N {
                line::write_update(
                    &mut out,
                    "key123",
                    &value,
                    NOW as f64 + i as f64 * 0.25,
                    source,
                );
            }
            out.len()
        })
    });

    g.bench_function("decode update lines (100k)", |b| {
        b.iter(|| {
            let mut n = 0;
            for l in input.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                if let Ok(Line::Update(_)) = line::parse(l, true) {
                    n += 1;
                }
            }
            assert_eq!(n, N);
        })
    });

    g.bench_function("decode + apply through a node (100k)", |b| {
        b.iter_batched(
            || Node::new("R").unwrap(),
            |mut node| {
                let s = node.open(StreamOpts::default());
                node.handle(s, NOW, &input).unwrap();
                assert_eq!(node.stream_stats(s).unwrap().applied, N);
                node
            },
            BatchSize::LargeInput,
        )
    });

    // History of a 100,000-key map to a fresh peer.
    let mut full = Node::new("R").unwrap();
    for i in 0..N {
        full.set(NOW, &format!("key{i}"), Json::string("value 12345")).unwrap();
    }
    g.bench_function("encode history through a node (100k keys)", |b| {
        let mut out = Vec::with_capacity(N as usize * 80);
        b.iter(|| {
            out.clear();
            let s = full.open(StreamOpts::read_only().tail(false));
            while full.poll_transmit(s, &mut out) > 0 {}
            out.len()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
