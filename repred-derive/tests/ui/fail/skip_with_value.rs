use repred::{Max, Replicated};

#[derive(Replicated, Default)]
struct Meter {
    peak: Max<u32>,
    #[replicated(skip = true)]
    renders: u64,
}

fn main() {}
