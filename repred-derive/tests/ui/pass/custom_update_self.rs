use repred::{Reduce, Replicated};
use serde::{Deserialize, Serialize};

/// The state is its own update: the snapshot is a clone.
#[derive(Replicated, Default, Clone, Serialize, Deserialize)]
#[replicated(reduce = union, update = Self)]
struct Flags {
    bits: u64,
}

fn union(state: &mut Flags, update: Flags) -> Option<Flags> {
    let new = update.bits & !state.bits;
    state.bits |= new;
    (new != 0).then_some(Flags { bits: new })
}

fn main() {
    let mut f = Flags::default();
    assert!(f.reduce(Flags { bits: 0b101 }).is_some());
    assert_eq!(f.snapshot().bits, 0b101);
}
