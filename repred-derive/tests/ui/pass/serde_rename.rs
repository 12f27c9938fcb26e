use repred::{Max, Replicated};

#[derive(Replicated, Default)]
struct Scores {
    #[serde(rename = "h")]
    high: Max<u32>,
}

fn main() {
    let change = ScoresChange { high: Some(Max::new(1)) };
    let bytes = postcard::to_allocvec(&change).unwrap();
    let back: ScoresChange = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(back, change);
}
