use repred::Replicated;

/// A value that does not parse: reported once, with no guesses about the
/// rest of the attribute and no follow-on errors.
#[derive(Replicated, Default)]
#[replicated(reduce = 3, update = u64, snapshot = current)]
struct Counter {
    n: u64,
}

fn current(c: &Counter) -> u64 {
    c.n
}

fn main() {}
