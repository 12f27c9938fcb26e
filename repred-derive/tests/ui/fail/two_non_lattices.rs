use repred::{Max, Replicated};

/// Both plain fields are reported, each at its own type.
#[derive(Replicated, Default)]
struct Account {
    balance: Max<u64>,
    owner: String,
    history: Vec<u64>,
}

fn main() {}
