use repred::Replicated;

#[derive(Replicated, Default)]
#[replicated(reduce = merge, update = u64, snapshot = current)]
struct Counter {
    n: u64,
}

/// Takes the state by value and returns a bool: not a reduce.
fn merge(c: Counter, n: u64) -> bool {
    c.n == n
}

fn current(c: &Counter) -> u64 {
    c.n
}

fn main() {}
