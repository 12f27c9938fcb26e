use repred::{Max, Reduce, Replicated};

/// A lattice written by hand.
#[derive(Default)]
struct Union(u64);

impl Reduce for Union {
    type Update = u64;
    fn reduce(&mut self, bits: u64) -> Option<u64> {
        let new = bits & !self.0;
        self.0 |= new;
        (new != 0).then_some(new)
    }
    fn snapshot(&self) -> u64 {
        self.0
    }
}

#[derive(Replicated, Default)]
struct Mixed {
    flags: Union,
    top: Max<i64>,
}

fn main() {
    let mut m = Mixed::default();
    assert!(m.reduce(MixedChange { flags: Some(0b11), top: None }).is_some());
    assert_eq!(m.flags.0, 0b11);
}
