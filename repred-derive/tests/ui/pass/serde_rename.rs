use repred::{GSet, Max, Replicated};

/// `#[serde(...)]` on a field carries over to its part of the change type.
#[derive(Replicated, Default)]
struct Scores {
    /// Short on the wire.
    #[serde(rename = "h")]
    high: Max<u32>,
    #[serde(alias = "everyone")]
    seen: GSet<String>,
}

fn main() {
    let change = ScoresChange { high: Some(Max::new(1)), seen: None };
    let bytes = postcard::to_allocvec(&change).unwrap();
    let back: ScoresChange = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(back, change);

    // postcard has no field names; a self-describing format shows them.
    let json = serde_json::to_value(&change).unwrap();
    assert_eq!(json, serde_json::json!({ "h": 1, "seen": null }));
    let aliased: ScoresChange =
        serde_json::from_str(r#"{ "h": null, "everyone": ["ann"] }"#).unwrap();
    assert_eq!(aliased, ScoresChange { high: None, seen: Some(GSet::add("ann".to_string())) });
}
