//! Claims over QUIC (issue 14): a strict node (`require_signatures`) takes
//! no unsigned snapshot and no unsigned clock advance from an admitted peer,
//! and one object's mistake ends that object's stream alone.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::{Counters, eventually, fast};
use repred::{
    Clock, CloseReason, EndReason, PeerMisbehaved, Reduce, Replica, SnapshotRefusal, SourceId,
    Stamp, StreamOpts, Timestamp,
};
use repred_transport::identity::SERVER_NAME;
use repred_transport::{Credentials, Node, quinn};
use serde::{Deserialize, Serialize};

fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = ((body.len() + 1) as u32).to_le_bytes().to_vec();
    out.push(kind);
    out.extend_from_slice(body);
    out
}

/// The Hello a real replica named `name` writes.
fn hello(name: &str) -> Vec<u8> {
    let mut replica = Replica::new(SourceId::new(name).unwrap(), Counters::default());
    let stream = replica.open(StreamOpts::default()).unwrap();
    let mut out = Vec::new();
    replica.poll_transmit(stream, &mut out).unwrap();
    let len = u32::from_le_bytes(out[..4].try_into().unwrap()) as usize;
    out.truncate(4 + len);
    out
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// A raw quinn client with the cluster's credentials, connected to `node`
/// as an admitted peer.
async fn connect_as_peer(
    dir: &std::path::Path,
    node: &Node,
) -> (quinn::Endpoint, quinn::Connection) {
    let credentials = Credentials::load_or_create(dir, 1).unwrap();
    let transport = Arc::new(quinn::TransportConfig::default());
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    client.set_default_client_config(credentials.client_config(transport).unwrap());
    let conn = client.connect(node.addr(), SERVER_NAME).unwrap().await.unwrap();
    (client, conn)
}

/// A "counters" stream to `node` from a raw peer "mallory" that said
/// Hello and began a snapshot (unsigned, a clock of one source to come),
/// and sent nothing more.
async fn begin_a_snapshot(
    dir: &std::path::Path,
    node: &Node,
) -> (quinn::Endpoint, quinn::Connection, quinn::SendStream, quinn::RecvStream) {
    let unsigned = postcard::to_allocvec(&None::<repred::Signature>).unwrap();
    let size = postcard::to_allocvec(&(1u64, [0u8; 32])).unwrap();
    let begin = frame(3, &[size, unsigned].concat());
    let (client, conn) = connect_as_peer(dir, node).await;
    let (mut send, recv) = conn.open_bi().await.unwrap();
    let opening = [b"\x08counters".as_slice(), &hello("mallory"), &begin].concat();
    send.write_all(&opening).await.unwrap();
    (client, conn, send, recv)
}

/// Sends `bytes` on a "counters" stream to `node` as an admitted peer (a
/// raw quinn client with the cluster's credentials), and waits until the
/// node has read them.
async fn send_as_peer(dir: &std::path::Path, node: &Node, bytes: Vec<u8>) {
    let (client, conn) = connect_as_peer(dir, node).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&[b"\x08counters".as_slice(), &bytes].concat()).await.unwrap();
    send.finish().unwrap();
    // The node answers with its Hello at least; reading to the end waits
    // until it has handled ours (and closed the stream if it refused).
    let _ = tokio::time::timeout(Duration::from_secs(10), recv.read_to_end(1 << 20)).await;
    conn.close(0u8.into(), b"done");
    client.wait_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strict_node_refuses_unsigned_snapshots_and_advances_over_quic() {
    let dir = tempfile::tempdir().unwrap();
    let w = fast(dir.path()).signing(true).spawn().await.unwrap();
    let n = fast(dir.path())
        .signing(true)
        .require_signatures(true)
        .bootstrap([w.addr()])
        .spawn()
        .await
        .unwrap();
    let on_w = w.replicate("counters", Counters::default()).unwrap();
    let on_n = n.replicate("counters", Counters::default()).unwrap();
    on_w.update(Counters::set("k", 10)).await.unwrap();
    eventually("n has w's write", Duration::from_secs(20), || {
        (on_n.read(|c| c.0.get("k") == Some(&10)), on_n.read(Counters::clone))
    })
    .await;
    let source = on_w.source();
    let before = on_n.clock().get(source);

    // An unsigned snapshot: k = 1,000,000 and a new key, claiming w's clock.
    let forged = Timestamp::new(now_ms() + 1_000, 0);
    let clock: Clock = [(source, forged)].into_iter().collect();
    let state: BTreeMap<String, u64> = [("k".into(), 1_000_000), ("new".into(), 1)].into();
    let unsigned = postcard::to_allocvec(&None::<repred::Signature>).unwrap();
    // SnapshotBegin: the clock's size and digest (a strict node refuses an
    // unsigned begin before the digest matters), then the signature.
    let size = postcard::to_allocvec(&(clock.len() as u64, [0u8; 32])).unwrap();
    let begin = [size, unsigned.clone()].concat();
    let entries: Vec<(SourceId, Timestamp)> = clock.iter().collect();
    let clock_chunk = postcard::to_allocvec(&entries).unwrap();
    let part = [postcard::to_allocvec(&(0u64, &state)).unwrap(), unsigned.clone()].concat();
    let end = [postcard::to_allocvec(&1u64).unwrap(), unsigned].concat();
    let snapshot =
        [frame(3, &begin), frame(14, &clock_chunk), frame(12, &part), frame(13, &end)].concat();
    send_as_peer(dir.path(), &n, [hello("mallory"), snapshot].concat()).await;
    eventually("the snapshot was refused", Duration::from_secs(10), || {
        (on_n.stats().snapshots_refused == 1, on_n.stats())
    })
    .await;
    let refused = CloseReason::SnapshotRefused(SnapshotRefusal::Unsigned);
    assert!(on_n.refusals().iter().any(|r| r.reason == EndReason::Local(refused.clone())));

    // An unsigned advance of w's source, 59 s ahead.
    let claim = vec![Stamp { ts: Timestamp::new(now_ms() + 59_000, 0), source }];
    let advance = frame(6, &postcard::to_allocvec(&claim).unwrap());
    send_as_peer(dir.path(), &n, [hello("mallory2"), advance].concat()).await;
    eventually("the advance was refused", Duration::from_secs(10), || {
        (on_n.stats().rejected >= 1, on_n.stats())
    })
    .await;
    assert_eq!(on_n.read(|c| c.0.get("k").copied()), Some(10));
    assert_eq!(on_n.read(|c| c.0.get("new").copied()), None);
    assert_eq!(on_n.clock().get(source), before, "no claim moved the clock");
    assert_eq!(on_n.stats().snapshots, 0);

    // w's genuine updates still arrive.
    on_w.update(Counters::set("k", 11)).await.unwrap();
    eventually("n has w's next write", Duration::from_secs(20), || {
        (on_n.read(|c| c.0.get("k") == Some(&11)), on_n.read(Counters::clone))
    })
    .await;
    n.shutdown().await;
    w.shutdown().await;
}

/// A replicated type whose updates are four flags: the bytes of a
/// `Counters` update (a map of strings) do not decode as one.
#[derive(Default)]
struct Flags([bool; 4]);

#[derive(Clone, Serialize, Deserialize)]
struct FlagsUpdate(bool, bool, bool, bool);

impl Reduce for Flags {
    type Update = FlagsUpdate;
    fn reduce(&mut self, u: FlagsUpdate) -> Option<FlagsUpdate> {
        let new = [u.0, u.1, u.2, u.3];
        let changed = new.iter().zip(self.0).any(|(n, o)| *n && !o);
        for (slot, n) in self.0.iter_mut().zip(new) {
            *slot |= n;
        }
        changed.then_some(u)
    }
    fn snapshot(&self) -> FlagsUpdate {
        FlagsUpdate(self.0[0], self.0[1], self.0[2], self.0[3])
    }
}

/// Point 10: two nodes replicate one name with different types. The
/// stream of that object ends alone, with a typed reason both nodes see;
/// the connection, membership and the other objects go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_type_mismatch_ends_that_objects_stream_alone() {
    let dir = tempfile::tempdir().unwrap();
    let a = fast(dir.path()).spawn().await.unwrap();
    let b = fast(dir.path()).bootstrap([a.addr()]).spawn().await.unwrap();
    let on_a = a.replicate("counters", Counters::default()).unwrap();
    let on_b = b.replicate("counters", Flags::default()).unwrap();
    let notes_a = a.replicate("notes", Counters::default()).unwrap();
    let notes_b = b.replicate("notes", Counters::default()).unwrap();
    on_a.update(Counters::set("k", 1)).await.unwrap();
    eventually("b refused a's stream", Duration::from_secs(20), || {
        (!on_b.refusals().is_empty(), on_b.refusals())
    })
    .await;
    let local = on_b.refusals()[0].reason.clone();
    assert!(
        matches!(
            local,
            EndReason::Local(CloseReason::Misbehaved(PeerMisbehaved::Malformed { .. }))
        ),
        "{local:?}"
    );
    eventually("a heard why", Duration::from_secs(20), || {
        let heard = on_a.refusals().iter().any(|r| {
            matches!(
                r.reason,
                EndReason::Remote(CloseReason::Misbehaved(PeerMisbehaved::Malformed { .. }))
            )
        });
        (heard, on_a.refusals())
    })
    .await;
    // The connection and the other object go on.
    notes_a.update(Counters::set("after", 2)).await.unwrap();
    eventually("notes still replicate", Duration::from_secs(20), || {
        (notes_b.read(|c| c.0.get("after") == Some(&2)), notes_b.read(Counters::clone))
    })
    .await;
    let members = a.members().borrow().clone();
    assert!(members.contains_key(&b.id()), "membership goes on: {members:?}");
    assert!(a.connected().contains(&b.addr()) || b.connected().contains(&a.addr()));
    a.shutdown().await;
    b.shutdown().await;
}

/// A peer that begins a snapshot and goes quiet: the node refuses it as
/// stalled once `snapshot_stall_timeout` passes without a byte of it
/// (while one comes in, the object's new streams wait and its collection
/// waits), closes that stream with the reason, frees the object's name on
/// that connection (the peer may send it again), and a writer that comes
/// after is heard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_whose_sender_goes_quiet_is_refused_as_stalled_over_quic() {
    let dir = tempfile::tempdir().unwrap();
    let stall = Duration::from_millis(1_500);
    let n = fast(dir.path()).snapshot_stall_timeout(stall).spawn().await.unwrap();
    let on_n = n.replicate("counters", Counters::default()).unwrap();

    // A begin frame, and nothing after it: the stream stays open.
    let (client, conn, mut send, mut recv) = begin_a_snapshot(dir.path(), &n).await;

    // The node writes its Hello, then the Close, and finishes the stream:
    // reading ends, long before the connection would idle out.
    let read = tokio::time::timeout(Duration::from_secs(60), recv.read_to_end(1 << 20)).await;
    assert!(read.is_ok(), "the node never closed the quiet stream");
    let stalled = |r: &repred_transport::Refusal| {
        matches!(
            r.reason,
            EndReason::Local(CloseReason::SnapshotRefused(SnapshotRefusal::Stalled { millis }))
                if millis >= stall.as_millis() as u64
        )
    };
    let refusals = on_n.refusals();
    assert!(refusals.iter().any(stalled), "{refusals:?}");
    assert_eq!(on_n.stats().snapshots_refused, 1);
    assert!(!on_n.receiving_snapshot());
    // A sender that was slow, not lying, reads the Close and ends its side
    // too; then the name is free: a second stream of the object on the
    // same connection is served (a duplicate would close the connection).
    send.finish().unwrap();
    let (mut send2, mut recv2) = conn.open_bi().await.unwrap();
    send2.write_all(&[b"\x08counters".as_slice(), &hello("mallory")].concat()).await.unwrap();
    let mut head = [0u8; 5];
    let served = tokio::time::timeout(Duration::from_secs(30), recv2.read_exact(&mut head)).await;
    assert!(matches!(served, Ok(Ok(()))), "no second stream: {served:?}");
    assert_eq!(head[4], 1, "the node's Hello");
    drop(send2);
    conn.close(0u8.into(), b"done");
    client.wait_idle().await;

    let w = fast(dir.path()).bootstrap([n.addr()]).spawn().await.unwrap();
    let on_w = w.replicate("counters", Counters::default()).unwrap();
    on_w.update(Counters::set("k", 1)).await.unwrap();
    eventually("n has w's write", Duration::from_secs(20), || {
        (on_n.read(|c| c.0.get("k") == Some(&1)), on_n.read(Counters::clone))
    })
    .await;
    w.shutdown().await;
    n.shutdown().await;
}

/// A peer that asks for a snapshot and takes none of it (it reads
/// nothing, so its flow control shuts): the node ends that stream once
/// `snapshot_stall_timeout` passes without a frame of it written, with the
/// reason in its stream ends, since a snapshot going out holds back the
/// object's collection. Before, the stream's task waited in its write for
/// as long as the peer liked, and the collection with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_takes_none_of_its_snapshot_is_ended_over_quic() {
    use repred_transport::StreamExt;
    type Map = repred::LwwMap<String, String>;
    let dir = tempfile::tempdir().unwrap();
    let stall = Duration::from_millis(1_500);
    let n = fast(dir.path()).snapshot_stall_timeout(stall).spawn().await.unwrap();
    let on_n = n.replicate("map", Map::default()).unwrap();
    let mut ends = n.stream_ends();
    // More writes than the history keeps (65,536): a fresh peer is brought
    // up by snapshot, in parts (a stock map's), of ~15 MB, far more than
    // its flow control lets through unread.
    for i in 0..70_000u64 {
        on_n.update(Map::set(format!("key-{i:06}"), "x".repeat(200))).await.unwrap();
    }
    let (client, conn) = connect_as_peer(dir.path(), &n).await;
    let (mut send, recv) = conn.open_bi().await.unwrap();
    send.write_all(&[b"\x03map".as_slice(), &hello("mallory")].concat()).await.unwrap();
    let unread = |e: &repred_transport::StreamEnded| {
        matches!(
            e.reason,
            EndReason::Local(CloseReason::Misbehaved(PeerMisbehaved::SnapshotUnread { millis }))
                if millis >= stall.as_millis() as u64
        )
    };
    let ended = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(end) = ends.next().await {
            if let Ok(end) = end
                && unread(&end)
            {
                return end;
            }
        }
        panic!("the node's stream ends stopped");
    })
    .await
    .expect("the stream the peer took nothing of was never ended");
    assert_eq!(ended.object, "map");
    assert!(on_n.traffic().bytes_sent < 4_000_000, "{:?}", on_n.traffic());
    drop(recv);
    conn.close(0u8.into(), b"done");
    client.wait_idle().await;
    n.shutdown().await;
}

/// A peer that begins a snapshot and trickles it in, a byte every 300 ms:
/// each byte restarts the stall wait, but the node refuses it as too slow
/// once it is behind the minimum rate past the stall limit, and closes
/// the stream with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_trickled_in_is_refused_as_too_slow_over_quic() {
    let dir = tempfile::tempdir().unwrap();
    let stall = Duration::from_millis(3_000);
    let n = fast(dir.path())
        .snapshot_stall_timeout(stall)
        .snapshot_min_rate(1_000)
        .spawn()
        .await
        .unwrap();
    let on_n = n.replicate("counters", Counters::default()).unwrap();
    let (client, conn, mut send, mut recv) = begin_a_snapshot(dir.path(), &n).await;
    // A clock chunk's frame, announced 1 MB long, a byte at a time, for at
    // most a minute: the node closes the stream long before.
    let trickle = tokio::spawn(async move {
        let mut bytes = (1u32 << 20).to_le_bytes().to_vec();
        bytes.push(14);
        bytes.resize(200, 0);
        for byte in bytes {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if send.write_all(&[byte]).await.is_err() {
                break;
            }
        }
        send
    });
    let read = tokio::time::timeout(Duration::from_secs(60), recv.read_to_end(1 << 20)).await;
    assert!(read.is_ok(), "the node never closed the trickling stream");
    let too_slow = |r: &repred_transport::Refusal| {
        matches!(
            r.reason,
            EndReason::Local(CloseReason::SnapshotRefused(SnapshotRefusal::TooSlow { millis, .. }))
                if millis >= stall.as_millis() as u64
        )
    };
    let refusals = on_n.refusals();
    assert!(refusals.iter().any(too_slow), "{refusals:?}");
    assert_eq!(on_n.stats().snapshots_refused, 1);
    assert!(!on_n.receiving_snapshot());
    trickle.abort();
    conn.close(0u8.into(), b"done");
    client.wait_idle().await;
    n.shutdown().await;
}

/// A stall limit of zero would refuse every snapshot: the builder says so.
#[tokio::test]
async fn a_zero_snapshot_stall_timeout_is_refused_by_the_builder() {
    let dir = tempfile::tempdir().unwrap();
    let built = fast(dir.path()).snapshot_stall_timeout(Duration::ZERO).spawn().await;
    let Err(repred_transport::Error::Config(message)) = built else {
        panic!("a node with no stall limit was built");
    };
    assert!(message.contains("snapshot_stall_timeout"), "{message}");
}

/// Reads one frame (length, then the frame) off `recv`.
async fn read_frame(recv: &mut quinn::RecvStream) -> Vec<u8> {
    let mut len = [0u8; 4];
    recv.read_exact(&mut len).await.unwrap();
    let mut frame = vec![0u8; u32::from_le_bytes(len) as usize];
    recv.read_exact(&mut frame).await.unwrap();
    [len.as_slice(), &frame].concat()
}

/// A trusted node's signed Hello, recorded by a peer it streams to and
/// replayed to a strict node on another connection: the signature covers
/// the first connection's TLS exporter value, so the strict node cuts the
/// replayer off (`HelloSignature`) instead of taking it for the signer
/// (believing its floor, taking its snapshots). Between the two nodes
/// themselves, the same signer's Hellos hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_replayed_on_another_connection_cuts_its_replayer_off_over_quic() {
    let dir = tempfile::tempdir().unwrap();
    let w = fast(dir.path()).signing(true).spawn().await.unwrap();
    let n = fast(dir.path())
        .signing(true)
        .require_signatures(true)
        .trust_snapshots_from(w.signing_id())
        .bootstrap([w.addr()])
        .spawn()
        .await
        .unwrap();
    let on_w = w.replicate("counters", Counters::default()).unwrap();
    let on_n = n.replicate("counters", Counters::default()).unwrap();

    let (client, conn) = connect_as_peer(dir.path(), &w).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&[b"\x08counters".as_slice(), &hello("mallory")].concat()).await.unwrap();
    let recorded = tokio::time::timeout(Duration::from_secs(10), read_frame(&mut recv))
        .await
        .expect("w says hello");
    conn.close(0u8.into(), b"done");
    client.wait_idle().await;

    send_as_peer(dir.path(), &n, recorded).await;
    let replayed = PeerMisbehaved::HelloSignature {
        id: on_w.source(),
        reason: repred::VerifyError::BadSignature,
    };
    let refused = EndReason::Local(CloseReason::Misbehaved(replayed));
    eventually("the replay was refused", Duration::from_secs(10), || {
        (on_n.refusals().iter().any(|r| r.reason == refused), on_n.refusals())
    })
    .await;

    // w's own Hellos hold at n: w's writes arrive.
    on_w.update(Counters::set("k", 1)).await.unwrap();
    eventually("n has w's write", Duration::from_secs(20), || {
        (on_n.read(|c| c.0.get("k") == Some(&1)), on_n.read(Counters::clone))
    })
    .await;
    n.shutdown().await;
    w.shutdown().await;
}
