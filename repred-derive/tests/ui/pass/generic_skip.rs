use repred::{Max, Reduce, Replicated};

/// A lifetime and a type parameter used only by local fields: the change
/// type must still compile (it carries neither).
#[derive(Replicated)]
struct View<'a, T> {
    top: Max<u32>,
    #[replicated(skip)]
    label: Option<&'a str>,
    #[replicated(skip)]
    local: Vec<T>,
}

fn main() {
    let name = String::from("main");
    let mut v = View::<'_, u8> { top: Max::default(), label: Some(&name), local: vec![1] };
    assert!(v.reduce(ViewChange { top: Some(Max::new(2)), ..Default::default() }).is_some());
    assert_eq!(v.snapshot(), ViewChange { top: Some(Max::new(2)), ..Default::default() });
    assert_eq!(v.local.len(), 1);
    assert_eq!(v.label, Some("main"));
}

/// A const parameter no replicated field uses, and a where clause.
#[derive(Replicated)]
struct Window<T, const N: usize>
where
    T: Ord,
{
    top: Max<T>,
    #[replicated(skip)]
    slots: [u8; N],
}

#[allow(dead_code)]
fn window() {
    let mut w = Window::<u8, 4> { top: Max::default(), slots: [0; 4] };
    let _ = w.reduce(WindowChange { top: Some(Max::new(1)) });
    let _ = w.slots;
}
