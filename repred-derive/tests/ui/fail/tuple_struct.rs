use repred::{Max, Replicated};

#[derive(Replicated)]
struct Pair(Max<u8>, Max<u8>);

fn main() {}
