use repred::{Max, Replicated};

/// A plain type of one's own.
#[derive(Default)]
struct Settings {
    theme: u8,
}

/// Both plain fields are reported, each at its own type: a std type by the
/// derive (it knows none is a lattice), one's own type by the compiler.
#[derive(Replicated, Default)]
struct Account {
    balance: Max<u64>,
    owner: String,
    settings: Settings,
}

fn main() {}
