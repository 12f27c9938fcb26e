use repred::Replicated;

/// An update type that cannot travel: no serde.
#[derive(Clone)]
struct Bump(u64);

#[derive(Replicated, Default)]
#[replicated(reduce = merge, update = Bump, snapshot = current)]
struct Counter {
    n: u64,
}

fn merge(c: &mut Counter, b: Bump) -> Option<Bump> {
    (b.0 > c.n).then(|| {
        c.n = b.0;
        b
    })
}

fn current(c: &Counter) -> Bump {
    Bump(c.n)
}

fn main() {}
