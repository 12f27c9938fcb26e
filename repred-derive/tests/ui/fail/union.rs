use repred::Replicated;

#[derive(Replicated)]
union Bits {
    a: u32,
    b: f32,
}

fn main() {}
