use repred::Replicated;

#[derive(Replicated, Default)]
#[replicated(update = u64)]
struct Counter {
    n: u64,
}

fn main() {}
