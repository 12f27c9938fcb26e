//! What a Hello claims of its sender (its life, its collection floor) is
//! believed by a strict replica only when signed: its life when signed by
//! the key of the id it names, its floor when signed by a signer it trusts
//! with snapshots. Before, any peer could have a strict replica forget
//! deletes, refuse old writes, find itself stale (and drop its own writes
//! below the floor when it rejoined), or refuse another replica as
//! reincarnated, by saying so. Each attack is played by a raw peer that
//! writes its Hello by hand.

mod common;

use common::{NOW, drain, events, id};
use repred::{
    ChannelBinding, Clock, ClockSummary, CloseReason, Config, EndReason, Event, Hello, Identity,
    PROTOCOL_VERSION, PeerMisbehaved, Replica, SessionError, SnapshotRefusal, SourceId, StreamOpts,
    Timestamp, VerifyError,
};
use repred_suite::Model;

/// A Hello frame as the wire carries it: length, kind (1), version, Hello.
fn hello_frame(hello: &Hello) -> Vec<u8> {
    let mut body = vec![1u8];
    body.extend(postcard::to_allocvec(&PROTOCOL_VERSION).unwrap());
    body.extend(postcard::to_allocvec(hello).unwrap());
    let mut out = (body.len() as u32).to_le_bytes().to_vec();
    out.extend(body);
    out
}

/// An unsigned Hello claiming `id`, `clock` and `floor`, in life 42.
fn hello(id: SourceId, clock: &Clock, floor: Timestamp) -> Hello {
    Hello {
        id,
        clock: ClockSummary::of(clock),
        meta: Vec::new(),
        sends: true,
        receives: true,
        life: 42,
        floor,
        missing_own: None,
        signature: None,
    }
}

fn signed_by(mut hello: Hello, signer: &Identity) -> Hello {
    hello.signature = Some(signer.sign_hello(&hello.claims(None)));
    hello
}

fn trusted() -> Identity {
    Identity::from_secret([2; 32])
}

fn mallory() -> Identity {
    Identity::from_secret([3; 32])
}

/// A strict replica that trusts `trusted()` with snapshots, with a write
/// of its own at `NOW`.
fn victim() -> Replica<Model> {
    let config = Config::default().require_signatures(true).trust_snapshots_from([trusted().id()]);
    let mut v = Replica::with_identity(Identity::from_secret([5; 32]), Model::default(), config);
    v.update(NOW, Model::set("mine", "1")).unwrap();
    events(&mut v);
    v
}

/// A floor above the victim's own write, with a clock that lacks it: on a
/// peer's word, the victim is stale (a collection forgot deletes it never
/// saw). On a trusted signer's, it is found so; on anyone else's, nothing
/// happens: its floor stays, and a rejoin keeps its own write.
#[test]
fn a_floor_finds_a_strict_replica_stale_only_on_a_trusted_signers_word() {
    let floor = Timestamp::new(NOW + 10, 0);
    let t = trusted().id();
    let claims = [
        ("unsigned, in a trusted signer's name", hello(t, &Clock::new(), floor), false),
        (
            "signed by an untrusted key",
            signed_by(hello(t, &Clock::new(), floor), &mallory()),
            false,
        ),
        (
            "signed by its own untrusted key",
            signed_by(hello(mallory().id(), &Clock::new(), floor), &mallory()),
            false,
        ),
        (
            "signed by the trusted signer",
            signed_by(hello(t, &Clock::new(), floor), &trusted()),
            true,
        ),
    ];
    for (what, claim, believed) in claims {
        let mut v = victim();
        let s = v.open(StreamOpts::default()).unwrap();
        v.handle(s, NOW + 20, &hello_frame(&claim)).unwrap();
        let seen = events(&mut v);
        let stale = seen.iter().any(|e| matches!(e, Event::Stale { floor: f, .. } if *f == floor));
        assert_eq!(stale, believed, "{what}: {seen:?}");
        assert_eq!(v.stale_floor(), believed.then_some(floor), "{what}");
        if !believed {
            assert!(v.open_streams().any(|o| o == s), "{what}: the stream goes on");
        }
        // What the verdict would cost: a rejoin drops the replica's own
        // writes below the floor.
        let dropped = v.rejoin(Model::default());
        assert_eq!(!dropped.is_empty(), believed, "{what}: {dropped:?}");
    }
}

/// The victim's own clock echoed back with a higher floor: on a trusted
/// signer's word the victim takes the floor (it holds all the peer held),
/// and from then refuses new writes below it; on anyone else's its floor
/// stays where it was.
#[test]
fn an_echoed_clock_raises_a_strict_floor_only_on_a_trusted_signers_word() {
    let floor = Timestamp::new(NOW + 10, 0);
    for believed in [false, true] {
        let mut v = victim();
        let s = v.open(StreamOpts::default()).unwrap();
        let claim = hello(trusted().id(), v.clock(), floor);
        let claim = if believed { signed_by(claim, &trusted()) } else { claim };
        v.handle(s, NOW + 20, &hello_frame(&claim)).unwrap();
        let expected = if believed { floor } else { Timestamp::ZERO };
        assert_eq!(v.floor(), expected, "believed: {believed}");
        assert_eq!(v.stale_floor(), None);
    }
}

/// A signature that does not hold for what the Hello claims (here a floor
/// raised after signing) cuts the peer off, whether or not the replica is
/// strict.
#[test]
fn a_hello_whose_signature_does_not_hold_is_refused() {
    let t = trusted().id();
    let mut forged = signed_by(hello(t, &Clock::new(), Timestamp::new(NOW, 0)), &trusted());
    forged.floor = Timestamp::new(NOW + 10, 0);
    for strict in [false, true] {
        let mut v = if strict { victim() } else { Replica::new(id("v"), Model::default()) };
        let s = v.open(StreamOpts::default()).unwrap();
        let reason = PeerMisbehaved::HelloSignature { id: t, reason: VerifyError::BadSignature };
        assert_eq!(
            v.handle(s, NOW + 20, &hello_frame(&forged)),
            Err(SessionError::Peer(reason.clone()))
        );
        let seen = events(&mut v);
        let end = EndReason::Local(CloseReason::Misbehaved(reason));
        assert!(seen.contains(&Event::End { stream: s, reason: end }), "strict {strict}: {seen:?}");
    }
}

/// A peer that says hello in another replica's name and a new life has a
/// strict replica refuse nothing for it, and record nothing: the replica
/// itself, saying hello after, is welcome. Its own signed Hello in another
/// life is still refused, as an amnesiac restart.
#[test]
fn a_life_is_believed_only_from_a_hello_its_ids_key_signed() {
    let x = Identity::from_secret([9; 32]);
    let mut v = victim();
    for squat in [hello(x.id(), &Clock::new(), Timestamp::ZERO), {
        signed_by(hello(x.id(), &Clock::new(), Timestamp::ZERO), &mallory())
    }] {
        let s = v.open(StreamOpts::default()).unwrap();
        v.handle(s, NOW, &hello_frame(&squat)).unwrap();
        v.close(s);
    }
    let mut real = Replica::with_identity(x.clone(), Model::default(), Config::default());
    assert_ne!(real.life(), 42);
    let p = real.open(StreamOpts::default()).unwrap();
    let s = v.open(StreamOpts::default()).unwrap();
    v.handle(s, NOW, &drain(&mut real, p)).expect("welcome: nobody proved another life");
    let mut other_life = hello(x.id(), &Clock::new(), Timestamp::ZERO);
    other_life.life = real.life() + 1;
    let s = v.open(StreamOpts::default()).unwrap();
    assert_eq!(
        v.handle(s, NOW, &hello_frame(&signed_by(other_life, &x))),
        Err(SessionError::Peer(PeerMisbehaved::Reincarnated { id: x.id() }))
    );
}

/// The trusted signer, with four writes and a history of one: a peer
/// that lacks them gets a snapshot.
fn trusted_writer() -> Replica<Model> {
    let config = Config::default().history_limit(1);
    let mut t = Replica::with_identity(trusted(), Model::default(), config);
    for i in 0..4 {
        t.update(NOW, Model::set(&format!("k{i}"), "v")).unwrap();
    }
    t
}

/// A trusted signer's snapshot passed on by a peer that did not sign its
/// Hello as that signer (here its stream's frames, behind an unsigned
/// Hello in its name): the snapshot's signature holds, but the floor it
/// came with is the sender's word, so a strict replica refuses it.
#[test]
fn a_trusted_snapshot_from_a_sender_that_did_not_prove_it_is_its_signer_is_refused() {
    for proven in [false, true] {
        let mut t = trusted_writer();
        let mut v = victim();
        let p = t.open(StreamOpts::default()).unwrap();
        let s = v.open(StreamOpts::default()).unwrap();
        let signed = drain(&mut t, p);
        let said = if proven {
            signed
        } else {
            let mut claim = hello(t.id(), t.clock(), t.floor());
            claim.life = t.life();
            hello_frame(&claim)
        };
        v.handle(s, NOW, &said).unwrap();
        t.handle(p, NOW, &drain(&mut v, s)).unwrap();
        v.handle(s, NOW, &drain(&mut t, p)).unwrap();
        let seen = events(&mut v);
        let refusal = SnapshotRefusal::UnprovenSender { signer: t.id() };
        let refused = seen
            .iter()
            .any(|e| matches!(e, Event::SnapshotRefused { reason, .. } if *reason == refusal));
        assert_eq!(refused, !proven, "{seen:?}");
        assert_eq!(v.state().get("k0"), proven.then_some("v"));
    }
}

/// A snapshot's begin says the floor it was collected at unsigned: a
/// strict replica takes none above the floor its trusted peer's Hello was
/// signed with, and declines the snapshot without a verdict (the peer's
/// next Hello says its floor now). Before, a peer passing on a trusted
/// signer's Hello could write any floor into the begin and have the
/// replica found stale.
#[test]
fn a_strict_replica_takes_no_unsigned_floor_from_a_snapshots_begin() {
    let mut t = trusted_writer();
    let mut v = victim();
    let p = t.open(StreamOpts::default()).unwrap();
    let s = v.open(StreamOpts::default()).unwrap();
    v.handle(s, NOW, &drain(&mut t, p)).unwrap();
    t.handle(p, NOW, &drain(&mut v, s)).unwrap();
    // Raised after its Hello went: the begin says so, the Hello did not.
    let floor = Timestamp::new(NOW - 1, 0);
    t.collect(floor);
    v.handle(s, NOW, &drain(&mut t, p)).unwrap();
    let seen = events(&mut v);
    assert!(!seen.iter().any(|e| matches!(e, Event::Stale { .. })), "{seen:?}");
    assert_eq!(v.stale_floor(), None);
    assert_eq!(v.floor(), Timestamp::ZERO);
    let end = EndReason::Local(CloseReason::Stale { floor });
    assert!(seen.contains(&Event::End { stream: s, reason: end }), "declined: {seen:?}");
    assert_eq!(v.state().get("k0"), None);
}

/// A trusted signer's Hello and snapshot, recorded by the peer it sent
/// them to and played to a strict replica on another stream: the Hello's
/// signature covers its stream's binding, so the replay does not verify
/// and cuts the replayer off before the snapshot. Before, the replayer
/// passed for the signer (its floor believed, its snapshot taken). On the
/// stream it was made for, the same recording is taken.
#[test]
fn a_signed_hello_replayed_on_another_stream_cuts_its_replayer_off() {
    let recorded_on = [1; 32];
    let mut t = trusted_writer();
    let mut m = Replica::with_identity(mallory(), Model::default(), Config::default());
    let p = t.open(StreamOpts::default().binding(ChannelBinding::opener(recorded_on))).unwrap();
    let q = m.open(StreamOpts::default().binding(ChannelBinding::acceptor(recorded_on))).unwrap();
    let mut recorded = drain(&mut t, p);
    m.handle(q, NOW, &recorded).unwrap();
    t.handle(p, NOW, &drain(&mut m, q)).unwrap();
    recorded.extend(drain(&mut t, p));
    for (played_on, taken) in [
        (Some(ChannelBinding::acceptor(recorded_on)), true),
        (Some(ChannelBinding::acceptor([2; 32])), false),
        (Some(ChannelBinding::opener(recorded_on)), false),
        (None, false),
    ] {
        let mut v = victim();
        let s = v.open(StreamOpts { binding: played_on, ..StreamOpts::default() }).unwrap();
        let played = v.handle(s, NOW, &recorded);
        if taken {
            played.expect("its own stream's recording");
            assert_eq!(v.state().get("k0"), Some("v"));
        } else {
            let reason =
                PeerMisbehaved::HelloSignature { id: t.id(), reason: VerifyError::BadSignature };
            assert_eq!(played, Err(SessionError::Peer(reason)), "on {played_on:?}");
            assert_eq!(v.state().get("k0"), None);
        }
    }
}

/// A signed Hello sent back to its signer on its own stream: each end
/// signs its own side of the binding, so it does not verify there. Before,
/// it did, and the signer took its peer for itself (honouring its own
/// snapshot request, say, with a whole state).
#[test]
fn a_signed_hello_sent_back_to_its_signer_does_not_verify() {
    let binding = ChannelBinding::opener([1; 32]);
    let mut t = trusted_writer();
    let p = t.open(StreamOpts::default().binding(binding)).unwrap();
    let own = drain(&mut t, p);
    let reason = PeerMisbehaved::HelloSignature { id: t.id(), reason: VerifyError::BadSignature };
    assert_eq!(t.handle(p, NOW, &own), Err(SessionError::Peer(reason)));
}
