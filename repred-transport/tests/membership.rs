//! Membership over real sockets: SWIM datagrams on the nodes' own ports,
//! authenticated; a cluster of 24 that loses and regains nodes.

mod common;

use std::collections::BTreeSet;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Counters, eventually, fast, spawn};
use repred::SourceId;
use repred_transport::membership::DatagramSigner;
use repred_transport::repred_node::{MemberState, NodeConfig, NodeCore};
use repred_transport::{Credentials, Error, Handle, Node};

/// The membership datagram a fresh node core named `id`, listening at
/// `addr`, sends first to a seed at `to`: a join request.
fn join_request(id: SourceId, addr: SocketAddr, to: SocketAddr) -> Vec<u8> {
    let mut core = NodeCore::new(id, addr, 1, NodeConfig::default(), 7, 1_000);
    core.bootstrap(1_000, [to]);
    let datagram = core.poll_transmit().expect("a join request");
    assert_eq!(datagram.to, to);
    datagram.bytes
}

fn known(node: &Node) -> BTreeSet<SourceId> {
    node.membership().into_iter().map(|m| m.id).collect()
}

/// A node takes membership only from admitted, unrevoked nodes speaking in
/// their own name. Datagrams sent from a raw socket with a forged
/// signature, another cluster's certificate, another node's id, or a
/// membership header naming someone else change nothing and are counted;
/// the same join request signed properly is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_membership_datagrams_change_nothing_and_are_counted() {
    let (dir, elsewhere) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = spawn(dir.path(), &[]).await;
    let b = spawn(dir.path(), &[a.addr()]).await;
    eventually("a and b know each other", Duration::from_secs(15), || {
        (a.members().borrow().len() == 2 && b.members().borrow().len() == 2, known(&a))
    })
    .await;
    // X: admitted (port 1 of this cluster, never bound by a node), sending
    // from a raw socket. Y: another cluster's node.
    let raw = UdpSocket::bind("127.0.0.1:0").unwrap();
    let raw_addr = raw.local_addr().unwrap();
    let x = Credentials::load_or_create(dir.path(), 1).unwrap();
    let y = Credentials::load_or_create(elsewhere.path(), 1).unwrap();
    let (as_x, as_y) = (DatagramSigner::new(&x).unwrap(), DatagramSigner::new(&y).unwrap());
    let x_joins = join_request(x.id(), raw_addr, a.addr());

    let mut bad_signature = as_x.seal(&x_joins, true, false).unwrap();
    let last = bad_signature.len() - 1;
    bad_signature[last] ^= 0xff; // a signed byte: the signature no longer fits
    let mut header_names_b = join_request(b.id(), raw_addr, a.addr());
    header_names_b[1..17].copy_from_slice(x.id().as_bytes());
    let forgeries: [(&str, Vec<u8>); 5] = [
        ("a forged signature", bad_signature),
        (
            "another cluster's node",
            as_y.seal(&join_request(y.id(), raw_addr, a.addr()), true, false).unwrap(),
        ),
        // b's id, signed by x with x's certificate attached.
        (
            "in b's name, x's certificate",
            as_x.seal(&join_request(b.id(), raw_addr, a.addr()), true, false).unwrap(),
        ),
        // b's id, signed by x, no certificate: a checks b's own.
        (
            "in b's name, no certificate",
            as_x.seal(&join_request(b.id(), raw_addr, a.addr()), false, false).unwrap(),
        ),
        // Signed by x as itself, but the membership header says it is b.
        ("x's envelope, b's header", as_x.seal(&header_names_b, true, false).unwrap()),
    ];
    let members_before = a.membership();
    let stats_before = a.stats();
    for (what, bytes) in &forgeries {
        raw.send_to(bytes, a.addr()).unwrap_or_else(|e| panic!("{what}: {e}"));
    }
    let stats = eventually("a refused every forgery", Duration::from_secs(10), || {
        let s = a.stats();
        (s.datagrams_refused >= stats_before.datagrams_refused + forgeries.len() as u64, s)
    })
    .await;
    eprintln!("refused {} datagrams", stats.datagrams_refused - stats_before.datagrams_refused);
    // Nothing changed: no new member, b where it listens, nothing for the
    // raw socket (a answers nobody it did not take).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = a.membership();
    assert_eq!(
        after.iter().map(|m| (m.id, m.addr)).collect::<Vec<_>>(),
        members_before.iter().map(|m| (m.id, m.addr)).collect::<Vec<_>>()
    );
    assert!(after.iter().all(|m| m.state == MemberState::Alive), "{after:?}");
    assert_eq!(a.members().borrow().get(&b.id()), Some(&b.addr()));
    raw.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 2_048];
    assert!(raw.recv_from(&mut buf).is_err(), "a answered a forgery");

    // The same join request, signed by x as itself: a takes it, answers,
    // and x is a member.
    raw.send_to(&as_x.seal(&x_joins, true, false).unwrap(), a.addr()).unwrap();
    eventually("a takes x's genuine request", Duration::from_secs(10), || {
        (known(&a).contains(&x.id()), a.membership())
    })
    .await;
    raw.set_nonblocking(false).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let (n, from) = raw.recv_from(&mut buf).expect("a answers x");
    assert_eq!(from, a.addr());
    assert!(n > 17 && buf[0] == 0x21 && buf[1..17] == *a.id().as_bytes(), "a signed answer");
    a.shutdown().await;
    b.shutdown().await;
}

/// Spawns a node on `addr` (a port a dropped node held: its socket may
/// take a moment to be released).
async fn respawn(dir: &Path, addr: SocketAddr, seeds: &[SocketAddr]) -> Node {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match fast(dir).listen(addr).bootstrap(seeds.iter().copied()).spawn().await {
            Ok(node) => return node,
            Err(Error::Bind { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("restart on {addr}: {e}"),
        }
    }
}

/// Spawns a node on a port free a moment ago, not on port 0: a node on
/// port 0 keeps its certificate in memory only, and a node started again
/// on its port must find it to keep its id. Another port if that one was
/// taken meanwhile.
async fn spawn_on_a_port(dir: &Path, seeds: &[SocketAddr]) -> Node {
    for _ in 0..20 {
        let addr =
            UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).expect("a free port");
        match fast(dir).listen(addr).bootstrap(seeds.iter().copied()).spawn().await {
            Ok(node) => return node,
            Err(Error::Bind { .. }) => continue,
            Err(e) => panic!("start on {addr}: {e}"),
        }
    }
    panic!("no free port in 20 tries");
}

fn live(nodes: &[Option<Node>]) -> Vec<&Node> {
    nodes.iter().flatten().collect()
}

fn ids(nodes: &[Option<Node>]) -> BTreeSet<SourceId> {
    live(nodes).iter().map(|n| n.id()).collect()
}

/// What each running node sees as live.
fn member_sets(nodes: &[Option<Node>]) -> Vec<BTreeSet<SourceId>> {
    live(nodes).iter().map(|n| n.members().borrow().keys().copied().collect()).collect()
}

/// 24 nodes over QUIC on 127.0.0.1, each keeping about log2(N) + 1
/// connections: they converge on membership and on a replicated object;
/// four are dropped without a word and every survivor marks them down; two
/// come back on their ports (same certificates, so the same ids, in a new
/// life) and everyone sees them up; the object converges again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_four_nodes_lose_four_and_regain_two() {
    const N: usize = 24;
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: Vec<Option<Node>> = Vec::new();
    let first = spawn_on_a_port(dir.path(), &[]).await;
    let seeds = [first.addr()];
    nodes.push(Some(first));
    for _ in 1..N {
        nodes.push(Some(spawn_on_a_port(dir.path(), &seeds).await));
    }
    let all = ids(&nodes);
    assert_eq!(all.len(), N);
    eventually("every node sees all 24", Duration::from_secs(30), || {
        let seen = member_sets(&nodes);
        (seen.iter().all(|s| *s == all), seen.iter().map(BTreeSet::len).collect::<Vec<_>>())
    })
    .await;
    let joined = started.elapsed();

    let mut handles: Vec<_> = nodes
        .iter()
        .flatten()
        .map(|n| Some(n.replicate("counters", Counters::default()).unwrap()))
        .collect();
    handles[3].as_ref().unwrap().update(Counters::set("three", 3)).await.unwrap();
    handles[22].as_ref().unwrap().update(Counters::set("twenty-two", 22)).await.unwrap();
    let want = Counters([("three".to_string(), 3), ("twenty-two".to_string(), 22)].into());
    let states = |handles: &[Option<Handle<Counters>>]| -> Vec<Counters> {
        handles.iter().flatten().map(|h| h.read(Counters::clone)).collect()
    };
    eventually("every node has both writes", Duration::from_secs(20), || {
        let s = states(&handles);
        (s.iter().all(|s| *s == want), s.iter().map(|s| s.0.len()).collect::<Vec<_>>())
    })
    .await;
    // Connections: each node dials only while it has fewer than the active
    // view (log2(24) + 1 = 6 here), so there are at most 6 per node in
    // all, and every node has some.
    let view = NodeConfig::default().active_view(N);
    let degrees: Vec<usize> = live(&nodes).iter().map(|n| n.connected().len()).collect();
    eprintln!("active view {view}; peers connected per node: {degrees:?}");
    assert!(degrees.iter().all(|&d| d >= 1), "{degrees:?}");
    assert!(degrees.iter().sum::<usize>() <= 2 * view * N, "{degrees:?}");
    assert!(degrees.iter().all(|&d| d <= 4 * view), "{degrees:?}");

    // Four vanish, as in a crash.
    let lost: Vec<(SourceId, SocketAddr)> = nodes[N - 4..]
        .iter_mut()
        .map(|slot| {
            let node = slot.take().unwrap();
            (node.id(), node.addr())
        })
        .collect();
    for h in &mut handles[N - 4..] {
        *h = None;
    }
    let dropped_at = Instant::now();
    let survivors = ids(&nodes);
    eventually("every survivor marks the four down", Duration::from_secs(30), || {
        let seen = member_sets(&nodes);
        let down = live(&nodes).iter().all(|n| {
            let m = n.membership();
            lost.iter().all(|(id, _)| m.iter().any(|i| i.id == *id && i.state == MemberState::Down))
        });
        (
            down && seen.iter().all(|s| *s == survivors),
            seen.iter().map(BTreeSet::len).collect::<Vec<_>>(),
        )
    })
    .await;
    let detected = dropped_at.elapsed();

    // Two come back on their ports: same certificates, same ids.
    let back_at = Instant::now();
    for (i, (id, addr)) in lost.iter().take(2).enumerate() {
        let node = respawn(dir.path(), *addr, &seeds).await;
        assert_eq!(node.id(), *id, "the same certificate, the same id");
        handles[N - 4 + i] = Some(node.replicate("counters", Counters::default()).unwrap());
        nodes[N - 4 + i] = Some(node);
    }
    let everyone = ids(&nodes);
    assert_eq!(everyone.len(), N - 2);
    eventually("everyone sees the two again", Duration::from_secs(30), || {
        let seen = member_sets(&nodes);
        (seen.iter().all(|s| *s == everyone), seen.iter().map(BTreeSet::len).collect::<Vec<_>>())
    })
    .await;
    let rejoined = back_at.elapsed();
    // The two that stayed away are still down for the survivors, who saw
    // them go (the restarted nodes joined after they went, and the member
    // list they were given names live members only).
    for (id, _) in &lost[2..] {
        let still_down = live(&nodes[..N - 4])
            .iter()
            .all(|n| n.membership().iter().any(|m| m.id == *id && m.state == MemberState::Down));
        assert!(still_down, "{id:?} is still down for every survivor");
    }

    // And the object converges again, the returned nodes included.
    handles[N - 4].as_ref().unwrap().update(Counters::set("back", 1)).await.unwrap();
    handles[0].as_ref().unwrap().update(Counters::set("three", 4)).await.unwrap();
    let want = Counters(
        [("three".to_string(), 4), ("twenty-two".to_string(), 22), ("back".to_string(), 1)].into(),
    );
    eventually("everyone converges again", Duration::from_secs(20), || {
        let s = states(&handles);
        (s.iter().all(|s| *s == want), s.iter().map(|s| s.0.len()).collect::<Vec<_>>())
    })
    .await;
    let stats: Vec<_> = live(&nodes).iter().map(|n| n.stats()).collect();
    let refused: u64 = stats.iter().map(|s| s.datagrams_refused).sum();
    let sent: u64 = stats.iter().map(|s| s.datagrams_sent).sum();
    eprintln!(
        "joined in {joined:?}, four marked down everywhere {detected:?} after the drop, two \
         seen again everywhere {rejoined:?} after their restart; {sent} membership datagrams \
         sent, {refused} refused; {:?} in all",
        started.elapsed()
    );
}

/// A measurement, not a check: `cargo test -p repred-transport --test
/// membership idle -- --ignored --nocapture`. N nodes (8, or `IDLE_N`) with
/// the library's defaults (`NodeConfig::default`: a probe every 500 ms, 2 s
/// to refute a suspicion, so a QUIC keep-alive every second from each end,
/// a connection traded every 30 s, or every `IDLE_ROTATE` seconds; a probe
/// period of `IDLE_PROBE_MS` if set), one replicated object with
/// a key per node; after convergence and 2N + 10 s of quiet (`IDLE_QUIET`
/// + 10), UDP payload bytes each node sends per second over 30 s,
/// membership datagrams and QUIC apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement"]
async fn idle_bytes_per_node() {
    let n: usize = std::env::var("IDLE_N").ok().and_then(|v| v.parse().ok()).unwrap_or(8);
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: Vec<Node> = Vec::new();
    let mut handles = Vec::new();
    for i in 0..n {
        let seeds: Vec<SocketAddr> = nodes.first().map(Node::addr).into_iter().collect();
        let mut builder = Node::builder().data_dir(dir.path()).bootstrap(seeds);
        if let Some(secs) = std::env::var("IDLE_ROTATE").ok().and_then(|v| v.parse().ok()) {
            builder = builder.rotate_every(Duration::from_secs(secs));
        }
        if let Some(ms) = std::env::var("IDLE_PROBE_MS").ok().and_then(|v| v.parse().ok()) {
            builder = builder.heartbeat(Duration::from_millis(ms));
        }
        let node = builder.spawn().await.unwrap();
        let h = node.replicate("counters", Counters::default()).unwrap();
        h.update(Counters::set(&format!("k{i}"), 1)).await.unwrap();
        nodes.push(node);
        handles.push(h);
    }
    eventually("converged", Duration::from_secs(60), || {
        let members = nodes.iter().all(|x| x.members().borrow().len() == n);
        let keys = handles.iter().all(|h| h.read(|s| s.0.len()) == n);
        (members && keys, ())
    })
    .await;
    // Until every node has probed every other at least once (SWIM probes
    // members round-robin): a first contact carries the certificates both
    // ways, some 900 bytes once per pair.
    let quiet = std::env::var("IDLE_QUIET").ok().and_then(|v| v.parse().ok()).unwrap_or(2 * n);
    tokio::time::sleep(Duration::from_secs(quiet as u64 + 10)).await;
    let sum = |f: fn(&repred_transport::NodeStats) -> u64| -> u64 {
        nodes.iter().map(|x| f(&x.stats())).sum()
    };
    let (udp0, swim0, dg0) =
        (sum(|s| s.udp_tx_bytes), sum(|s| s.membership_tx_bytes), sum(|s| s.datagrams_sent));
    let window = Duration::from_secs(30);
    let mut suspects = 0;
    for _ in 0..30 {
        tokio::time::sleep(window / 30).await;
        suspects += nodes
            .iter()
            .flat_map(|x| x.membership())
            .filter(|m| m.state != MemberState::Alive)
            .count();
    }
    let (udp1, swim1, dg1) =
        (sum(|s| s.udp_tx_bytes), sum(|s| s.membership_tx_bytes), sum(|s| s.datagrams_sent));
    let per = |b: u64| b as f64 / n as f64 / window.as_secs_f64();
    let connections: Vec<usize> = nodes.iter().map(|x| x.connected().len()).collect();
    eprintln!(
        "N = {n}: {:.0} B/s per node in all; membership {:.0} B/s ({:.1} datagrams/s, {:.0} B \
         each); QUIC {:.0} B/s over {connections:?} peers each; {suspects} suspect or down \
         entries seen in 30 samples",
        per(udp1 - udp0),
        per(swim1 - swim0),
        per(dg1 - dg0),
        (swim1 - swim0) as f64 / (dg1 - dg0).max(1) as f64,
        per((udp1 - udp0) - (swim1 - swim0)),
    );
}
