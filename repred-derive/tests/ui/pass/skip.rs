use repred::{Max, Reduce, Replicated};

#[derive(Replicated, Default)]
struct Meter {
    peak: Max<u32>,
    /// Local only: a cache the replica never sends.
    #[replicated(skip)]
    renders: u64,
}

fn main() {
    let mut m = Meter::default();
    m.renders += 1;
    let snapshot = m.snapshot();
    assert_eq!(snapshot.peak, Some(Max::default()));
}
