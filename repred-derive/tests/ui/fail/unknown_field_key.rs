use repred::{Max, Replicated};

#[derive(Replicated, Default)]
struct Top {
    #[replicated(ignore)]
    top: Max<u8>,
}

fn main() {}
