use repred::Replicated;

#[derive(Replicated, Default)]
#[replicated(reduce = a, reduce = b, update = u64, snapshot = s)]
struct Counter {
    n: u64,
}

fn a(_: &mut Counter, _: u64) -> Option<u64> {
    None
}
fn b(_: &mut Counter, _: u64) -> Option<u64> {
    None
}
fn s(c: &Counter) -> u64 {
    c.n
}

fn main() {}
