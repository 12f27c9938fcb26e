use repred::Replicated;
use serde::{Deserialize, Serialize};

/// `bound` takes where-predicates in a string, as serde's does.
#[derive(Replicated, Default, Clone, Serialize, Deserialize)]
#[replicated(reduce = merge, update = Self, bound = "T Ord")]
struct Highest<T> {
    value: Option<T>,
}

fn merge<T: Ord>(s: &mut Highest<T>, u: Highest<T>) -> Option<Highest<T>> {
    if u.value > s.value {
        s.value = u.value;
    }
    None
}

fn main() {}
