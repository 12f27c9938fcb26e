use repred::{Max, Replicated};

#[derive(Replicated, Default)]
#[replicated(merge = something)]
struct Top {
    top: Max<u8>,
}

fn main() {}
