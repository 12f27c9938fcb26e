use repred::{GSet, LwwRegister, Max, Reduce, Replicated};

/// A player, replicated field by field.
#[derive(Replicated, Default)]
struct Player {
    /// Newest name wins.
    name: LwwRegister<String>,
    best: Max<u32>,
    badges: GSet<String>,
}

fn main() {
    let mut p = Player::default();
    let change = p.reduce(PlayerChange { best: Some(Max::new(3)), ..Default::default() });
    assert_eq!(change.and_then(|c| c.best), Some(Max::new(3)));
    assert_eq!(p.badges.len(), 0);
    let _ = &p.name;
}
