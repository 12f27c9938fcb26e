use repred::Replicated;

#[derive(Replicated)]
enum Light {
    On,
    Off,
}

fn main() {}
