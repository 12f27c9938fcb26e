use repred::{Max, Network, Replica, Replicated, SourceId};

/// A misspelt key is the only error: the impls are still generated, so the
/// uses of `Top` and `TopChange` below add none of their own.
#[derive(Replicated, Default)]
struct Top {
    #[replicated(skipp)]
    top: Max<u8>,
}

fn main() {
    let mut net = Network::new();
    let a = net.add(Replica::new(SourceId::new("a").unwrap(), Top::default()));
    net.update(a, TopChange { top: Some(Max::new(1)) }).unwrap();
}
