use repred::{Network, Replica, Replicated, SourceId};

/// With the mode incomplete, a stub impl stands in: the use of `Counter` as
/// a replicated state below adds no error of its own.
#[derive(Replicated, Default)]
#[replicated(reduce = merge, snapshot = current)]
struct Counter {
    n: u64,
}

fn merge(c: &mut Counter, n: u64) -> Option<u64> {
    (n > c.n).then(|| {
        c.n = n;
        n
    })
}

fn current(c: &Counter) -> u64 {
    c.n
}

fn main() {
    let mut net = Network::new();
    let _ = net.add(Replica::new(SourceId::new("a").unwrap(), Counter::default()));
}
