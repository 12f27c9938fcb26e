use repred::{Max, Replicated};

/// Two mistakes, both reported in one compile.
#[derive(Replicated, Default)]
#[replicated(snapshot = s, colour = "red")]
struct Top {
    #[replicated(skip, skip)]
    top: Max<u8>,
}

fn s(_: &Top) -> u8 {
    0
}

fn main() {}
