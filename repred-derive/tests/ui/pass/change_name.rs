use repred::{Max, Reduce, Replicated};

/// The user already has a `ScoreChange`: name the companion type instead.
#[allow(dead_code)]
struct ScoreChange;

#[derive(Replicated, Default)]
#[replicated(change = ScoreDelta)]
pub struct Score {
    pub best: Max<u32>,
}

fn main() {
    let mut s = Score::default();
    let delta: Option<ScoreDelta> = s.reduce(ScoreDelta { best: Some(Max::new(5)) });
    assert_eq!(delta, Some(ScoreDelta { best: Some(Max::new(5)) }));
}
