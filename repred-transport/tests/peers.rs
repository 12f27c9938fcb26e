//! An object replicated with chosen peers only (`Node::replicate_with`):
//! streamed with those and nobody else, whichever end dials, until the set
//! changes (`Node::set_peers`). What placement's non-replicas use to go
//! through one replica.

mod common;

use std::time::Duration;

use common::{Counters, eventually, fast};
use repred::{CloseReason, EndReason};
use repred_transport::{Node, Peers, StreamExt};

async fn node(dir: &std::path::Path, bootstrap: &[std::net::SocketAddr]) -> Node {
    fast(dir).fanout(2).bootstrap(bootstrap.iter().copied()).spawn().await.expect("starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_streams_with_its_chosen_peers_only_and_follows_a_change() {
    let dir = tempfile::tempdir().unwrap();
    let b = node(dir.path(), &[]).await;
    let a = node(dir.path(), &[b.addr()]).await;
    let c = node(dir.path(), &[b.addr()]).await;
    eventually("a full mesh", Duration::from_secs(20), || {
        let counts = [a.connected().len(), b.connected().len(), c.connected().len()];
        (counts.iter().all(|&n| n == 2), counts)
    })
    .await;
    let on_b = b.replicate("doc", Counters::default()).unwrap();
    let on_c = c.replicate("doc", Counters::default()).unwrap();
    let on_a = a.replicate_with("doc", Counters::default(), Peers::only([b.id()])).unwrap();
    assert_eq!(on_a.peers(), Peers::only([b.id()]));
    let _ = &on_b;

    // c's write reaches a through b; a's reaches c the same way.
    on_c.update(Counters::set("from-c", 1)).await.unwrap();
    on_a.update(Counters::set("from-a", 1)).await.unwrap();
    eventually("a has c's write", Duration::from_secs(20), || {
        (on_a.read(|s| s.0.contains_key("from-c")), on_a.read(Counters::clone))
    })
    .await;
    eventually("c has a's write", Duration::from_secs(20), || {
        (on_c.read(|s| s.0.contains_key("from-a")), on_c.read(Counters::clone))
    })
    .await;
    // a streams the object with b alone (connections may be rotating:
    // at most one stream).
    let traffic = on_a.traffic();
    assert!(traffic.open <= 1, "a streams with b only: {traffic:?}");

    // Cut a from b: c's next write does not reach a, connected to c as it
    // is, since a streams the object with b alone...
    a.block([b.addr()]);
    eventually("a and c still connected", Duration::from_secs(20), || {
        (a.connected() == vec![c.addr()], a.connected())
    })
    .await;
    on_c.update(Counters::set("while-cut", 2)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(!on_a.read(|s| s.0.contains_key("while-cut")), "a took c's stream");
    // ...until a chooses c: a stream with c opens on the connection up.
    assert!(a.set_peers("doc", Peers::only([c.id()])));
    assert!(!a.set_peers("nothing", Peers::All), "not replicated");
    eventually("a has c's write, straight from c", Duration::from_secs(20), || {
        (on_a.read(|s| s.0.contains_key("while-cut")), on_a.read(Counters::clone))
    })
    .await;
    a.unblock_all();
    b.shutdown().await;
    a.shutdown().await;
    c.shutdown().await;
}

/// Waits (at most 20 s) for `ends` to report a stream of `object` with
/// `peer` that ended for `reason`; other ends are passed over.
async fn ended(
    ends: &mut repred_transport::StreamEnds,
    object: &str,
    peer: repred::SourceId,
    reason: EndReason,
) {
    let wait = async {
        while let Some(end) = ends.next().await {
            let end = end.expect("the reader keeps up");
            if end.object == object && end.peer == Some(peer) && end.reason == reason {
                return;
            }
        }
        panic!("the node stopped");
    };
    tokio::time::timeout(Duration::from_secs(20), wait)
        .await
        .unwrap_or_else(|_| panic!("no stream of {object} with {peer} ended for {reason:?}"));
}

/// Two nodes connected to each other. No rotation: the one connection
/// stays, so that what ends in these tests is a stream, not a connection
/// traded away.
async fn connected_pair(dir: &std::path::Path) -> (Node, Node) {
    let start = |bootstrap: Vec<std::net::SocketAddr>| {
        fast(dir).rotate_every(Duration::from_secs(3_600)).bootstrap(bootstrap).spawn()
    };
    let a = start(vec![]).await.expect("starts");
    let b = start(vec![a.addr()]).await.expect("starts");
    eventually("connected", Duration::from_secs(20), || {
        (a.connected() == vec![b.addr()] && b.connected() == vec![a.addr()], a.connected())
    })
    .await;
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_of_peers_that_drops_a_peer_closes_its_stream_and_a_later_one_opens_it_again() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = connected_pair(dir.path()).await;
    let on_a = a.replicate_with("doc", Counters::default(), Peers::only([b.id()])).unwrap();
    let on_b = b.replicate("doc", Counters::default()).unwrap();
    on_b.update(Counters::set("before", 1)).await.unwrap();
    eventually("a has b's write", Duration::from_secs(20), || {
        (on_a.read(|s| s.0.contains_key("before")), on_a.traffic())
    })
    .await;

    // Each side in turn drops the other (one of them dialed the connection,
    // the other accepted it: both ways are covered), then takes it back.
    for (round, (cutter, other)) in [(&a, &b), (&b, &a)].into_iter().enumerate() {
        let (on_cutter, on_other) = if round == 0 { (&on_a, &on_b) } else { (&on_b, &on_a) };
        // Listening before the cut, so that no end is missed.
        let mut cutter_ends = cutter.stream_ends();
        let mut other_ends = other.stream_ends();
        assert!(cutter.set_peers("doc", Peers::only([])));
        ended(&mut cutter_ends, "doc", other.id(), EndReason::Local(CloseReason::Closed)).await;
        ended(&mut other_ends, "doc", cutter.id(), EndReason::Remote(CloseReason::Closed)).await;
        // The other side may have opened a new stream already, if it
        // dialed: it waits at the cutter's end, unsynced, until the cutter
        // admits it again.
        eventually("no stream of doc at the cutter", Duration::from_secs(20), || {
            (on_cutter.traffic().open == 0, on_cutter.traffic())
        })
        .await;
        assert_eq!(cutter.connected(), vec![other.addr()], "the connection goes on");
        assert_eq!(cutter.stats().violations + other.stats().violations, 0, "a clean close");

        // A write made while cut reaches the cutter once it takes the peer
        // back: a stream of the object opens again on the same connection.
        let key = format!("while-cut-{round}");
        on_other.update(Counters::set(&key, 2)).await.unwrap();
        assert!(cutter.set_peers("doc", Peers::All));
        eventually("the write made while cut arrives", Duration::from_secs(20), || {
            (on_cutter.read(|s| s.0.contains_key(&key)), on_cutter.traffic())
        })
        .await;
        assert_eq!(cutter.connected(), vec![other.addr()], "over the same connection");
    }
    a.shutdown().await;
    b.shutdown().await;
}

/// A value whose update does not encode (a bug in a user's type).
const POISON: u64 = 666;

/// The largest number written; an update of [`POISON`] fails to encode.
#[derive(Clone, Debug, Default)]
struct Fragile(u64);

#[derive(Clone, Debug, serde::Deserialize)]
struct Number(u64);

impl serde::Serialize for Number {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 == POISON {
            return Err(serde::ser::Error::custom("poisoned"));
        }
        s.serialize_newtype_struct("Number", &self.0)
    }
}

impl repred::Reduce for Fragile {
    type Update = Number;

    fn reduce(&mut self, update: Number) -> Option<Number> {
        (update.0 > self.0).then(|| {
            self.0 = update.0;
            update
        })
    }

    fn snapshot(&self) -> Number {
        Number(self.0)
    }
}

/// A stream that ends because this side's own update does not encode ends
/// without a Close, so that neither end opens it again (a Close would say
/// it may come again, as after a cut, and it would fail the same way, over
/// and over): the connection goes on, with no violation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_that_does_not_encode_ends_the_stream_once() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = connected_pair(dir.path()).await;
    let on_a = a.replicate("x", Fragile::default()).unwrap();
    let on_b = b.replicate("x", Fragile::default()).unwrap();
    on_a.update(Number(1)).await.unwrap();
    eventually("b has a's write", Duration::from_secs(20), || {
        (on_b.read(|s| s.0 == 1), on_b.traffic())
    })
    .await;

    let mut a_ends = a.stream_ends();
    let mut b_ends = b.stream_ends();
    on_a.update(Number(POISON)).await.unwrap();
    ended(&mut a_ends, "x", b.id(), EndReason::Aborted).await;
    ended(&mut b_ends, "x", a.id(), EndReason::Aborted).await;
    let sessions = (on_a.traffic().sessions, on_b.traffic().sessions);
    // Were it opened again, it would be within a round trip; a second is
    // hundreds of them here.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        (on_a.traffic().sessions, on_b.traffic().sessions),
        sessions,
        "no stream of x opened again"
    );
    assert_eq!(a.connected(), vec![b.addr()], "the connection goes on");
    assert_eq!(a.stats().violations + b.stats().violations, 0);
    a.shutdown().await;
    b.shutdown().await;
}
