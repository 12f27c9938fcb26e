use repred::Replicated;

/// `change` and `skip` belong to field-wise replication, not to a custom reduce.
#[derive(Replicated, Default, Clone, serde::Serialize, serde::Deserialize)]
#[replicated(reduce = merge, update = Self, change = CounterDelta)]
struct Counter {
    n: u64,
    #[replicated(skip)]
    local: u64,
}

fn merge(c: &mut Counter, u: Counter) -> Option<Counter> {
    (u.n > c.n).then(|| {
        c.n = u.n;
        u
    })
}

fn main() {}
