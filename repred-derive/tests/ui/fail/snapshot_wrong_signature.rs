use repred::Replicated;

#[derive(Replicated, Default)]
#[replicated(reduce = merge, update = u64, snapshot = current)]
struct Counter {
    n: u64,
}

fn merge(c: &mut Counter, n: u64) -> Option<u64> {
    (n > c.n).then(|| {
        c.n = n;
        n
    })
}

/// Returns a reference, not the update itself.
fn current(c: &Counter) -> &u64 {
    &c.n
}

fn main() {}
