use repred::{GSet, Max, Reduce, Replicated};

/// Field names that match the generated code's own locals, and a merge
/// function named like the parameter it receives.
#[derive(Replicated, Default)]
struct Busy {
    update: Max<u8>,
    change: Max<u8>,
    part: GSet<u8>,
    stamp: Max<u8>,
    f: Max<u8>,
    other: Max<u8>,
}

#[derive(Replicated, Default)]
#[replicated(reduce = update, update = u64, snapshot = snapshot)]
struct Named {
    n: u64,
}

fn update(state: &mut Named, n: u64) -> Option<u64> {
    (n > state.n).then(|| {
        state.n = n;
        n
    })
}

fn snapshot(state: &Named) -> u64 {
    state.n
}

mod shadowed {
    use ::repred::{Max, Replicated};

    /// Names the generated code uses, shadowed where the derive expands.
    #[allow(dead_code)]
    pub struct Option;
    #[allow(dead_code)]
    pub struct Some;
    #[allow(dead_code)]
    pub trait Clone {}
    #[allow(dead_code)]
    pub trait Default {}
    #[allow(dead_code)]
    mod core {}
    #[allow(dead_code)]
    mod repred {}

    #[derive(Replicated)]
    pub struct Inside {
        pub top: Max<u8>,
    }
}

fn main() {
    let mut b = Busy::default();
    let change = BusyChange { update: Some(Max::new(1)), part: Some(GSet::add(2)), ..Default::default() };
    assert!(b.reduce(change.clone()).is_some());
    assert!(b.reduce(change).is_none());
    let _ = format!("{:?}", b.snapshot());
    let mut n = Named::default();
    assert_eq!(n.reduce(3), Some(3));
    assert_eq!(n.snapshot(), 3);
    let i = shadowed::Inside { top: Max::new(1) };
    assert_eq!(i.snapshot(), shadowed::InsideChange { top: Some(Max::new(1)) });
}
