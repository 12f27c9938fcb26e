use repred::{GSet, Max, Reduce, Replicated};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Bounds the fields need are added to the impls, not demanded here.
#[derive(Replicated)]
struct Pair<T: Ord> {
    top: Max<T>,
    all: GSet<T>,
}

impl<T: Ord> Default for Pair<T> {
    fn default() -> Self {
        Pair { top: Max::default(), all: GSet::default() }
    }
}

fn merge<T: Ord + Clone + Serialize + DeserializeOwned>(p: &mut Pair<T>, x: T) {
    p.reduce(PairChange { top: Some(Max::new(x.clone())), all: Some(GSet::add(x)) });
}

fn main() {
    let mut p = Pair::<u8>::default();
    merge(&mut p, 3);
    assert_eq!(p.top.get(), Some(&3));
}
