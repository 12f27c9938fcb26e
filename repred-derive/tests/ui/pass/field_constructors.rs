use repred::{GSet, LwwMap, LwwRegister, Max, Network, Replica, Replicated, SourceId};

/// A change to one field, written in one call; several, chained.
#[derive(Replicated, Default)]
pub struct Player {
    pub name: LwwRegister<String>,
    pub best: Max<u32>,
    badges: GSet<String>,
    notes: LwwMap<String, String>,
    /// A field named like a builder of another: that builder is left out.
    with_best: Max<u8>,
    /// No constructor (it would hide `Default::default`); `with_default` is there.
    default: Max<u8>,
    r#type: Max<u8>,
}

#[derive(Replicated, Default)]
struct Generic<T: Ord + Clone + serde::Serialize + serde::de::DeserializeOwned> {
    top: Max<T>,
}

fn main() {
    assert_eq!(PlayerChange::best(42), PlayerChange { best: Some(Max::new(42)), ..Default::default() });
    assert_eq!(
        PlayerChange::name("bo".to_string()).with_badges(GSet::add("first".into())),
        PlayerChange {
            name: Some(LwwRegister::set("bo".into())),
            badges: Some(GSet::add("first".into())),
            ..Default::default()
        }
    );
    let change = PlayerChange::notes(LwwMap::set("k".into(), "v".into()))
        .with_default(1)
        .with_with_best(2)
        .with_type(3);
    assert_eq!(change.default, Some(Max::new(1)));
    assert_eq!(PlayerChange::default(), PlayerChange { ..Default::default() });
    assert_eq!(PlayerChange::r#type(3u8).r#type, Some(Max::new(3)));
    assert_eq!(GenericChange::top(7u64).top, Some(Max::new(7)));

    let mut net = Network::new();
    let a = net.add(Replica::new(SourceId::new("a").unwrap(), Player::default()));
    let b = net.add(Replica::new(SourceId::new("b").unwrap(), Player::default()));
    net.link(a, b);
    let mut seen = net[b].subscribe();
    net.update(a, PlayerChange::best(42).with_name("bo".to_string())).unwrap();
    net.pump();
    assert_eq!(net[b].state().best.get(), Some(&42));
    // A received change prints what changed, and nothing else.
    let printed: Vec<String> = net[b]
        .changes(&mut seen)
        .map(|d| match d {
            repred::Delivery::Change(c) => format!("{:?}", c.change),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(printed, [r#"PlayerChange { name: LwwRegister(Some("bo")), best: Max(Some(42)) }"#]);
    let _ = Generic::<u8>::default().top;
}
