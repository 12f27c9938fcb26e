use repred::{Max, Network, Reduce, Replica, Replicated, SourceId};

/// A field that can never be a lattice is the only error: the derive leaves
/// it out of what it generates, so the uses of `Account` and `AccountChange`
/// below (as a replica's state, as a node's object) add none of their own.
#[derive(Replicated, Default)]
struct Account {
    balance: Max<u64>,
    owner: String,
}

/// What `repred_transport::Node::replicate` asks of a state.
fn replicate<T>(_name: &str, initial: T) -> T
where
    T: Reduce + Send + 'static,
    T::Update: Send + Sync + 'static,
{
    initial
}

fn main() {
    let mut net = Network::new();
    let a = net.add(Replica::new(SourceId::new("a").unwrap(), Account::default()));
    net.update(a, AccountChange::balance(5)).unwrap();
    net.update(a, AccountChange { balance: Some(Max::new(6)), ..Default::default() }).unwrap();
    let account = replicate("account", Account::default());
    println!("{:?} {:?}", net[a].state().snapshot(), account.snapshot());
}
