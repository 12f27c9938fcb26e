//! `cargo run --example signed`: signed updates, and forgeries refused.
//!
//! Alice's replica signs every update it makes (ed25519; her source id is
//! derived from her public key, so nobody can claim it). Bob's replica is
//! strict: it takes only updates whose signature holds for the source they
//! claim. Alice's real update reaches Bob; then Mallory tries three ways to
//! write in Alice's name, and Bob refuses each with a typed reason, his
//! state and clock untouched.

use std::io::Write;

use repred::{
    Clock, Config, Envelope, Identity, LwwMap, Network, Outcome, Replica, SourceId, Timestamp,
};

type Board = LwwMap<String, String>;

pub fn run(out: &mut impl Write) -> anyhow::Result<()> {
    // Fixed secrets keep the output the same on every run; use
    // `Identity::generate()` and keep the secret beside your store.
    let alice = Identity::from_secret([1; 32]);
    let mallory = Identity::from_secret([66; 32]);
    let mut net = Network::new();
    let a = net.add(Replica::with_identity(alice.clone(), Board::default(), Config::default()));
    let strict = Config::default().require_signatures(true);
    let b = net.add(Replica::with_config(SourceId::new("bob")?, Board::default(), strict));
    net.link(a, b);
    net.update(a, LwwMap::set("motd".into(), "hello from alice".into()))?;
    net.pump();
    writeln!(
        out,
        "alice ({}) signs; bob holds motd = {:?}",
        alice.id(),
        net[b].state().get("motd")
    )?;

    // Alice's real update, as it travelled.
    let real: Envelope<_> = net[a]
        .history(&Clock::new())
        .into_iter()
        .next()
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("alice's update is in her history"))?;
    let later = Timestamp::new(net.now() + 10, 0);
    let forged_change = LwwMap::set("motd".to_string(), "send mallory your password".to_string());

    // 1. Unsigned, in Alice's name.
    let unsigned = Envelope::new(alice.id(), later, forged_change.clone());
    // 2. Signed by Mallory's key, in Alice's name.
    let mut wrong_key = unsigned.clone();
    let bytes = postcard::to_allocvec(&forged_change)?;
    wrong_key.signature = Some(Box::new(mallory.sign(later, &bytes)));
    // 3. Alice's real signature, on a change Mallory altered.
    let mut tampered = real.clone();
    tampered.change = forged_change;
    tampered.ts = later;

    let now = net.now();
    for (what, envelope) in [
        ("unsigned, in alice's name", unsigned),
        ("signed by mallory's key, in alice's name", wrong_key),
        ("alice's signature on an altered change", tampered),
    ] {
        let outcome = net[b].apply(now, envelope);
        let verdict = match &outcome {
            Outcome::Rejected(reason) => format!("refused: {reason}"),
            other => format!("TAKEN: {other:?}"),
        };
        writeln!(out, "forged ({what}): {verdict}")?;
        anyhow::ensure!(matches!(outcome, Outcome::Rejected(_)), "bob took a forgery");
    }
    writeln!(
        out,
        "bob still holds motd = {:?}; his clock of alice is still {:?}; refused: {}",
        net[b].state().get("motd"),
        net[b].clock().get(alice.id()),
        net[b].stats().rejected
    )?;
    anyhow::ensure!(net[b].state().get("motd").map(String::as_str) == Some("hello from alice"));
    Ok(())
}

fn main() -> anyhow::Result<()> {
    run(&mut std::io::stdout())
}
