use repred::{LwwRegister, Max, Reduce, Replicated};

#[derive(Replicated, Default)]
struct Inner {
    level: Max<u8>,
}

/// A derived struct is a lattice, so it can be a field of another.
#[derive(Replicated, Default)]
struct Outer {
    inner: Inner,
    label: LwwRegister<String>,
}

fn main() {
    let mut o = Outer::default();
    let c = o.reduce(OuterChange { inner: Some(InnerChange { level: Some(Max::new(2)) }), label: None });
    assert!(c.is_some());
    assert_eq!(o.inner.level.get(), Some(&2));
}
