use repred::{Max, Replicated};

#[derive(Replicated, Default)]
struct Account {
    balance: Max<u64>,
    owner: String,
}

fn main() {}
