mod model {
    use repred::{GSet, Replicated};

    #[derive(Replicated, Default)]
    pub struct Board {
        pub(crate) pins: GSet<u32>,
    }
}

use repred::{GSet, Reduce};

fn main() {
    let mut b = model::Board::default();
    let change = model::BoardChange { pins: Some(GSet::add(7)) };
    assert!(b.reduce(change).is_some());
    assert!(b.pins.contains(&7));
}
