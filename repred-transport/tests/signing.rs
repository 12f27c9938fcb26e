//! Signed updates over real QUIC with a relay in the middle: the origin's
//! signed updates reach the far side through the relay; an update forged
//! in the origin's name at the relay never does.

mod common;

use std::time::Duration;

use common::{Counters, eventually, fast, spawn};
use repred::{Envelope, Outcome, Timestamp};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_update_never_crosses_a_relay() {
    let dir = tempfile::tempdir().unwrap();
    let b = spawn(dir.path(), &[]).await;
    let a = fast(dir.path()).signing(true).bootstrap([b.addr()]).spawn().await.unwrap();
    let c = fast(dir.path()).require_signatures(true).bootstrap([b.addr()]).spawn().await.unwrap();
    // A and C only ever meet through B.
    a.block([c.addr()]);
    c.block([a.addr()]);
    let on_a = a.replicate("counters", Counters::default()).unwrap();
    let on_b = b.replicate("counters", Counters::default()).unwrap();
    let on_c = c.replicate("counters", Counters::default()).unwrap();

    on_a.update(Counters::set("signed", 1)).await.unwrap();
    eventually("c has a's signed update, through b", Duration::from_secs(15), || {
        let got = on_c.read(|s| s.0.get("signed").copied());
        (got == Some(1), got)
    })
    .await;
    assert!(c.connected().iter().all(|addr| *addr != a.addr()), "a and c never met");

    // At the relay: an update in a's name without a's key, and b's own
    // unsigned update. b does not require signatures, so it takes both.
    // Just after a's latest, so that a's next real update is newer still (a
    // relay that does not verify can be wedged by a forged future stamp:
    // that is what require_signatures everywhere is for).
    let latest = on_a.clock().get(on_a.source());
    let forged_ts = Timestamp::new(latest.millis(), latest.counter() + 1);
    let forged = Envelope::new(on_a.source(), forged_ts, Counters::set("forged", 666));
    assert_eq!(on_b.apply(forged), Outcome::Applied);
    on_b.update(Counters::set("unsigned", 2)).await.unwrap();
    // a's next update must be newer than the forged stamp.
    tokio::time::sleep(Duration::from_millis(5)).await;
    // Then one more signed update from a, so that c has surely been sent
    // everything b had before it.
    on_a.update(Counters::set("signed-after", 3)).await.unwrap();
    eventually("c has a's later update", Duration::from_secs(15), || {
        let got = on_c.read(|s| s.0.get("signed-after").copied());
        (got == Some(3), got)
    })
    .await;
    let received = on_c.traffic().updates_received;
    assert!(received >= 4, "b relayed everything to c ({received} updates)");
    on_c.read(|s| {
        assert_eq!(s.0.get("forged"), None, "the forgery was refused");
        assert_eq!(s.0.get("unsigned"), None, "unsigned updates were refused");
    });
    assert_eq!(on_b.read(|s| s.0.get("forged").copied()), Some(666), "b itself took it");
    for n in [a, b, c] {
        n.shutdown().await;
    }
}
