use repred::{Reduce, Replicated};
use serde::{Deserialize, Serialize};

/// A generic state that is its own update: the serde and `Clone` bounds the
/// update needs go on the generated impl, not on the struct, and `bound`
/// adds what the merge function needs.
#[derive(Replicated, Default, Clone, Serialize, Deserialize)]
#[replicated(reduce = keep_max, update = Self, bound = "T: Ord + Clone")]
struct Highest<T> {
    value: Option<T>,
}

fn keep_max<T: Ord + Clone>(state: &mut Highest<T>, update: Highest<T>) -> Option<Highest<T>> {
    match (&state.value, update.value) {
        (Some(old), Some(new)) if new <= *old => None,
        (_, None) => None,
        (_, Some(new)) => {
            state.value = Some(new.clone());
            Some(Highest { value: Some(new) })
        }
    }
}

fn main() {
    let mut h = Highest::<u32>::default();
    assert!(h.reduce(Highest { value: Some(4) }).is_some());
    assert!(h.reduce(Highest { value: Some(3) }).is_none());
    assert_eq!(h.snapshot().value, Some(4));
}
