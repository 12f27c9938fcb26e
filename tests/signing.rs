//! Signed updates: self-certifying ids, verification through relays, and
//! the heritage cases that need a verifier (A9, D59).

mod common;

use common::{NOW, events, id, replica};
use repred::{
    Clock, Config, Envelope, Event, Identity, Network, Outcome, Rejection, Replica, VerifyError,
};
use repred_suite::{Model, Names};

fn signed<T: repred::Reduce + Default>(secret: u8, config: Config) -> Replica<T> {
    Replica::with_identity(Identity::from_secret([secret; 32]), T::default(), config)
}

fn strict() -> Config {
    Config::default().require_signatures(true)
}

/// Rust shape: ids are self-certifying, so "d knows only key1" becomes an
/// allow-list of e's id; f's own validly signed update is refused as
/// `NotAllowed`, and f writing in e's name is `Unverified`.
#[test]
fn a09_secure() {
    let e_id = Identity::from_secret([1; 32]).id();
    let mut net = Network::new();
    let e = net.add(signed::<Model>(1, Config::default()));
    let d = net.add(signed::<Model>(3, strict().allow_only([e_id])));
    let f = net.add(signed::<Model>(2, Config::default()));
    net.update(e, Model::set("hello", "{world:true}")).unwrap();
    net.link(e, d);
    net.pump();
    assert_eq!(net[d].state().get("hello"), Some("{world:true}"));
    assert_eq!(net[d].stats().applied, 1, "e's update reaches d exactly once");
    events(&mut net[d]);

    net.update(f, Model::set("hello", "ignore me")).unwrap();
    net.link(f, d);
    net.pump();
    assert_eq!(net[d].state().get("hello"), Some("{world:true}"));
    let rejected: Vec<_> = events(&mut net[d])
        .into_iter()
        .filter_map(|ev| match ev {
            Event::Rejected { source, reason, .. } => Some((source, reason)),
            _ => None,
        })
        .collect();
    assert_eq!(rejected, [(net[f].id(), Rejection::NotAllowed)]);
    assert_eq!(net[d].clock().get(net[f].id()), repred::Timestamp::ZERO);

    // f signing in e's name.
    let f_id = net[f].id();
    let mut forged = net[f]
        .history(&Clock::new())
        .into_iter()
        .find(|env| env.source == f_id)
        .expect("f's own update")
        .clone();
    forged.source = e_id;
    forged.ts = repred::Timestamp::new(NOW + 5, 0);
    let outcome = net[d].apply(NOW, forged);
    assert_eq!(outcome, Outcome::Rejected(Rejection::Unverified(VerifyError::KeyMismatch(e_id))));
}

#[test]
fn d59_forged_source_with_a_verifier() {
    let mut me: Replica<Model> = signed(1, strict());
    let mine = me.update(NOW, Model::set("k", "real")).unwrap().unwrap();
    let clock_before = me.clock().clone();
    let last_before = me.last_timestamp();
    let mallory = Identity::from_secret([66; 32]);
    // Claims our id, newer than anything we issued, signed with the wrong key.
    let change = Model::stamped("k", "forged", repred::Stamp { ts: mine.ts, source: me.id() });
    let bytes = postcard::to_allocvec(&change).unwrap();
    let ts = repred::Timestamp::new(NOW + 10, 0);
    let mut forged = Envelope::new(me.id(), ts, change.clone());
    forged.signature = Some(Box::new(mallory.sign(ts, &bytes)));
    assert!(matches!(me.apply(NOW, forged), Outcome::Rejected(Rejection::Unverified(_))));
    // Unsigned, in another's name.
    let unsigned = Envelope::new(id("someone"), ts, change);
    assert_eq!(
        me.apply(NOW, unsigned),
        Outcome::Rejected(Rejection::Unverified(VerifyError::Unsigned))
    );
    assert_eq!(me.clock(), &clock_before, "the clock was not bumped");
    assert_eq!(me.last_timestamp(), last_before, "our own timestamps are unaffected");
    assert_eq!(me.state().get("k"), Some("real"));
}

#[test]
fn a_relayed_update_verifies_against_its_origin() {
    let mut net = Network::new();
    let a = net.add(signed::<Names>(1, strict()));
    let b = net.add(signed::<Names>(2, strict()));
    let c = net.add(signed::<Names>(3, strict()));
    // b already has "x" from elsewhere: its reduce applies only "y" of a's
    // update, but it must relay a's update whole for c to verify it.
    net.update(b, Names::add(["x"])).unwrap();
    net.link(a, b);
    net.link(b, c);
    net.pump();
    net.update(a, Names::add(["x", "y"])).unwrap();
    net.pump();
    assert_eq!(net[c].state(), net[a].state());
    assert_eq!(net[c].stats().rejected, 0);
    assert_eq!(net[c].clock().get(net[a].id()), net[a].clock().get(net[a].id()));
}

#[test]
fn tampering_in_transit_is_caught_and_the_rest_of_the_frame_applies() {
    let mut origin: Replica<Names> = signed(1, Config::default());
    origin.update(NOW, Names::add(["good"])).unwrap();
    let good = origin.history(&Clock::new())[0].clone();
    let mut tampered = good.clone();
    tampered.change = Names::add(["evil"]);
    tampered.ts = repred::Timestamp::new(NOW + 1, 0);

    // A relay that does not check (no verifier) passes both on in one frame.
    let mut relay: Replica<Names> = replica("relay");
    assert_eq!(relay.apply(NOW, good), Outcome::Applied);
    assert!(
        matches!(relay.apply(NOW, tampered.clone()), Outcome::Rejected(_)),
        "a present signature is always checked"
    );
    // Force the tampered one into the relay's history by accepting it
    // unsigned, then re-attaching the stale signature.
    let mut net = Network::new();
    let r = net.add(relay);
    let checker = net.add(signed::<Names>(9, strict()));
    let mut unsigned = tampered.clone();
    unsigned.signature = None;
    assert_eq!(net[r].apply(NOW, unsigned), Outcome::Applied);
    net.link(r, checker);
    net.pump();
    assert!(net[checker].state().0.contains("good"));
    assert!(!net[checker].state().0.contains("evil"));
    assert_eq!(net[checker].stats().rejected, 1);
}
