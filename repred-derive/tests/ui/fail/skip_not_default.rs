use repred::{Max, Replicated};

struct Connection;

#[derive(Replicated)]
struct Live {
    top: Max<u8>,
    #[replicated(skip)]
    socket: Connection,
}

fn main() {}
