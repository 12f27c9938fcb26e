use repred::{Reduce, Replicated};

#[derive(Replicated, Default)]
#[replicated(reduce = keep_max, update = u64, snapshot = current)]
struct Highest {
    value: u64,
}

fn keep_max(state: &mut Highest, update: u64) -> Option<u64> {
    (update > state.value).then(|| {
        state.value = update;
        update
    })
}

fn current(state: &Highest) -> u64 {
    state.value
}

fn main() {
    let mut h = Highest::default();
    assert_eq!(h.reduce(4), Some(4));
    assert_eq!(h.snapshot(), 4);
}
