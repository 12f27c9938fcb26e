use repred::Replicated;

#[derive(Replicated)]
struct Nothing;

fn main() {}
