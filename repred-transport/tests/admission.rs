//! Who gets in, and what happens to those who misbehave once in.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{Counters, eventually, fast, spawn};
use repred::{Replica, SourceId, StreamOpts, Timestamp};
use repred_transport::identity::{CA_FILE, CLUSTER_FILE, SERVER_NAME, format_node_id};
use repred_transport::quinn::{self, ConnectionError};
use repred_transport::{CloseCode, Credentials, CredentialsError, Error};

/// A bare quinn client holding `credentials`, for speaking to a node
/// without a node.
fn raw_client(credentials: &Credentials) -> quinn::Endpoint {
    let transport = Arc::new(quinn::TransportConfig::default());
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(credentials.client_config(transport).unwrap());
    endpoint
}

fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = ((body.len() + 1) as u32).to_le_bytes().to_vec();
    out.push(kind);
    out.extend_from_slice(body);
    out
}

/// The frames a real replica named `id` writes first, having made
/// `updates`: Hello, then (when there are any) Updates, then Sync. Made by
/// the core itself, so these tests do not depend on the frames' layout.
fn core_frames(id: SourceId, updates: &[BTreeMap<String, u64>]) -> Vec<Vec<u8>> {
    let mut replica = Replica::new(id, Counters::default());
    for u in updates {
        replica.update(1_000, u.clone()).unwrap();
    }
    let stream = replica.open(StreamOpts::default().await_clock(false)).unwrap();
    let mut out = Vec::new();
    while replica.poll_transmit(stream, &mut out).unwrap() > 0 {}
    let mut frames = Vec::new();
    let mut rest = &out[..];
    while rest.len() >= 4 {
        let len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
        frames.push(rest[..4 + len].to_vec());
        rest = &rest[4 + len..];
    }
    frames
}

fn hello_frame(id: SourceId) -> Vec<u8> {
    core_frames(id, &[]).remove(0)
}

/// A valid Updates frame with junk appended inside it.
fn updates_then_junk(id: SourceId, update: BTreeMap<String, u64>) -> Vec<u8> {
    let frames = core_frames(id, &[update]);
    let updates = frames.iter().find(|f| f[4] == 2).expect("an Updates frame");
    frame(2, &[&updates[5..], &[0xff, 0xff, 0xff][..]].concat())
}

fn preamble(name: &str) -> Vec<u8> {
    let mut out = vec![name.len() as u8];
    out.extend_from_slice(name.as_bytes());
    out
}

/// How the node ended a stream it refused: the code it stopped our
/// sending with, the reason of the Close frame it sent, and whether the
/// connection is still up afterwards.
#[derive(Debug)]
struct StreamRefused {
    code: Option<CloseCode>,
    reason: String,
    connection_up: bool,
}

/// Connects with valid credentials, sends `bytes` on a stream of the
/// "counters" object, and returns how the node ended that stream.
async fn send_garbage(client: &quinn::Endpoint, node: SocketAddr, bytes: &[u8]) -> StreamRefused {
    let conn = client.connect(node, SERVER_NAME).unwrap().await.expect("valid credentials connect");
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&preamble("counters")).await.unwrap();
    // The node may stop us before everything is written; that is the point.
    let _ = send.write_all(bytes).await;
    let stopped = tokio::time::timeout(Duration::from_secs(5), send.stopped())
        .await
        .expect("stopped in time");
    let code = match stopped {
        Ok(Some(code)) => CloseCode::from_code(code.into_inner()),
        other => panic!("expected the stream to be stopped, got {other:?}"),
    };
    // The node's last frame is a Close with the reason in words.
    let sent = tokio::time::timeout(Duration::from_secs(5), recv.read_to_end(1 << 20))
        .await
        .expect("finished in time")
        .unwrap_or_default();
    let mut reason = String::new();
    let mut rest = &sent[..];
    while rest.len() >= 5 {
        let len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
        if rest[4] == 5 {
            let why: repred::CloseReason = postcard::from_bytes(&rest[5..4 + len]).unwrap();
            reason = why.to_string();
        }
        rest = &rest[4 + len..];
    }
    let connection_up = conn.close_reason().is_none();
    conn.close(0u8.into(), b"done");
    StreamRefused { code, reason, connection_up }
}

fn close_code(err: &ConnectionError) -> (Option<CloseCode>, String) {
    match err {
        ConnectionError::ApplicationClosed(close) => (
            CloseCode::from_code(close.error_code.into_inner()),
            String::from_utf8_lossy(&close.reason).into_owned(),
        ),
        other => panic!("expected an application close, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_an_admitted_peer_closes_its_session_with_a_typed_reason() {
    let dir = tempfile::tempdir().unwrap();
    let a = spawn(dir.path(), &[]).await;
    let b = spawn(dir.path(), &[a.addr()]).await;
    let on_a = a.replicate("counters", Counters::default()).unwrap();
    let on_b = b.replicate("counters", Counters::default()).unwrap();
    on_a.update(Counters::set("before", 1)).await.unwrap();
    eventually("b has a's write", Duration::from_secs(10), || {
        (on_b.read(|s| s.0.contains_key("before")), on_b.read(Counters::clone))
    })
    .await;

    // One id per raw replica: since replicas have lives (protocol 2), a
    // second replica under an id the node has met is refused as a
    // reincarnation, whatever else it sends.
    let intruder = SourceId::new("intruder").unwrap();
    let writer = SourceId::new("intruder-2").unwrap();
    let cases: [(&str, Vec<u8>, CloseCode); 4] = [
        ("corrupt", [hello_frame(intruder), frame(1, &[0xff; 9])].concat(), CloseCode::Malformed),
        ("oversized", u32::MAX.to_le_bytes().to_vec(), CloseCode::FrameTooLarge),
        ("out of order", frame(4, &[]), CloseCode::BeforeHello),
        (
            "a good update followed by junk in one frame",
            [hello_frame(writer), updates_then_junk(writer, Counters::set("evil", 99))].concat(),
            CloseCode::Malformed,
        ),
    ];
    for (case, (what, bytes, want)) in cases.into_iter().enumerate() {
        // Ports 1 to 4 are never bound by a test node: their certificates
        // are the raw clients', issued by the same cluster; one node each,
        // as the node core keeps one connection per pair of nodes.
        let client = raw_client(&Credentials::load_or_create(dir.path(), 1 + case as u16).unwrap());
        let refused = send_garbage(&client, a.addr(), &bytes).await;
        client.close(0u8.into(), b"done");
        assert_eq!(refused.code, Some(want), "{what}: {refused:?}");
        assert!(!refused.reason.is_empty(), "{what}: the reason is said in words too");
        assert!(refused.connection_up, "{what}: only the stream ends, not the connection");
        eprintln!("{what}: stopped with {want:?} ({:#x}): {}", want.code(), refused.reason);
    }
    assert_eq!(a.stats().violations, 4);
    assert!(on_a.read(|s| !s.0.contains_key("evil")), "nothing of a refused frame is applied");
    assert_eq!(on_a.clock().get(writer), Timestamp::ZERO);

    // Everyone else is still served.
    on_b.update(Counters::set("after", 2)).await.unwrap();
    eventually("a and b still converge", Duration::from_secs(10), || {
        let (sa, sb) = (on_a.read(Counters::clone), on_b.read(Counters::clone));
        (sa == sb && sa.0.contains_key("after"), (sa, sb))
    })
    .await;
    a.shutdown().await;
    b.shutdown().await;
}

fn ca_cert_pem(dir: &Path) -> Vec<u8> {
    // Only the certificate: an outsider who saw it does not have the key.
    let pem = std::fs::read_to_string(dir.join(CA_FILE)).unwrap();
    let end = pem.find("-----END CERTIFICATE-----").unwrap() + "-----END CERTIFICATE-----".len();
    pem.as_bytes()[..end].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_clusters_node_is_refused_and_learns_nothing() {
    let (ours, theirs) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = spawn(ours.path(), &[]).await;
    let on_a = a.replicate("counters", Counters::default()).unwrap();
    on_a.update(Counters::set("secret", 42)).await.unwrap();

    // A whole node of another cluster, told to bootstrap from ours.
    let x = spawn(theirs.path(), &[a.addr()]).await;
    let on_x = x.replicate("counters", Counters::default()).unwrap();
    // Long enough for several dial rounds with backoff.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(x.members().borrow().len(), 1, "the outsider saw no member");
    assert_eq!(a.members().borrow().len(), 1, "the outsider never became a member");
    assert!(x.connected().is_empty() && a.connected().is_empty());
    assert_eq!(on_x.read(Counters::clone), Counters::default(), "the outsider learned nothing");
    assert_eq!(x.membership().len(), 1, "x knows itself alone");
    // Its membership datagrams reached a, which refused every one: signed
    // by a key another cluster certified.
    let refused = a.stats().datagrams_refused;
    assert!(refused >= 1, "a refused x's datagrams: {:?}", a.stats());
    assert_eq!(a.stats().datagrams_received, 0);

    // An outsider that trusts our certificate (it is no secret) but holds
    // its own cluster's credentials: the handshake fails on our side, no
    // stream is ever read.
    let foreign_node_pem = std::fs::read(theirs.path().join("node-1.pem")).ok();
    let foreign_node_pem = match foreign_node_pem {
        Some(pem) => pem,
        None => {
            Credentials::load_or_create(theirs.path(), 1).unwrap();
            std::fs::read(theirs.path().join("node-1.pem")).unwrap()
        }
    };
    let impostor = Credentials::from_pem(&ca_cert_pem(ours.path()), &foreign_node_pem).unwrap();
    let client = raw_client(&impostor);
    let outcome = tokio::time::timeout(Duration::from_secs(5), async {
        let conn = client.connect(a.addr(), SERVER_NAME).unwrap().await?;
        // TLS 1.3 lets a client finish before the server checks its
        // certificate; the server's refusal arrives right after.
        let (mut send, mut recv) = conn.open_bi().await?;
        let _ = send
            .write_all(&[preamble("counters"), hello_frame(SourceId::new("x").unwrap())].concat())
            .await;
        let mut buf = [0u8; 1];
        recv.read_exact(&mut buf).await.map_err(|_| ConnectionError::LocallyClosed)?;
        Ok::<_, ConnectionError>(buf)
    })
    .await
    .expect("refused in time");
    assert!(outcome.is_err(), "the impostor read a byte: {outcome:?}");
    assert_eq!(a.stats().connections, 0);
    x.shutdown().await;
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_each_session_with_a_reason_and_the_connection_with_a_code() {
    let dir = tempfile::tempdir().unwrap();
    let a = spawn(dir.path(), &[]).await;
    let _on_a = a.replicate("counters", Counters::default()).unwrap();
    let client = raw_client(&Credentials::load_or_create(dir.path(), 1).unwrap());
    let conn = client.connect(a.addr(), SERVER_NAME).unwrap().await.unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&[preamble("counters"), hello_frame(SourceId::new("c").unwrap())].concat())
        .await
        .unwrap();

    // The session is up once the node's Hello arrives.
    let mut first = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(5), recv.read_exact(&mut first))
        .await
        .expect("a Hello in time")
        .unwrap();
    assert_eq!(first[4], 1, "the node's first frame is its Hello");
    let mut hello_body = vec![0u8; u32::from_le_bytes(first[..4].try_into().unwrap()) as usize - 1];
    recv.read_exact(&mut hello_body).await.unwrap();

    let shutdown = tokio::spawn(a.shutdown());
    // The rest of the node's side of the session, ending in a Close.
    let bytes = tokio::time::timeout(Duration::from_secs(5), recv.read_to_end(1 << 20))
        .await
        .expect("the session ends in time")
        .expect("the node finishes its side");
    let mut frames = Vec::new();
    let mut rest = &bytes[..];
    while rest.len() >= 5 {
        let len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
        frames.push((rest[4], rest[5..4 + len].to_vec()));
        rest = &rest[4 + len..];
    }
    let (kind, body) = frames.last().expect("frames");
    assert_eq!(*kind, 5, "the last frame is a Close");
    let reason: repred::CloseReason = postcard::from_bytes(body).unwrap();
    assert_eq!(reason, repred::CloseReason::Closed);
    // As a polite peer does, finish our side; the node then closes.
    send.finish().unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await.unwrap();
    assert_eq!(close_code(&closed).0, Some(CloseCode::Shutdown));
    tokio::time::timeout(Duration::from_secs(5), shutdown).await.unwrap().unwrap();
}

/// The node cores' own messages travel on one unidirectional stream each
/// way: an admitted peer whose message does not decode, or is longer than
/// any a node sends, loses the connection with [`CloseCode::BadMessage`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_node_message_closes_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let a = spawn(dir.path(), &[]).await;
    let cases: [(&str, Vec<u8>); 2] = [
        ("does not decode", [&3u32.to_le_bytes()[..], &[0xff; 3]].concat()),
        ("too long", (2u32 << 20).to_le_bytes().to_vec()),
    ];
    for (case, (what, bytes)) in cases.into_iter().enumerate() {
        let client = raw_client(&Credentials::load_or_create(dir.path(), 1 + case as u16).unwrap());
        let conn = client.connect(a.addr(), SERVER_NAME).unwrap().await.unwrap();
        // The dialer opens the view comparison (the node, dialed here,
        // does not greet): this client's control stream carries the bad
        // message as its first.
        let mut send = conn.open_uni().await.unwrap();
        let _ = send.write_all(&bytes).await;
        let closed = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await.unwrap();
        let (code, reason) = close_code(&closed);
        assert_eq!(code, Some(CloseCode::BadMessage), "{what}: {reason}");
        client.close(0u8.into(), b"done");
    }
    assert_eq!(a.stats().violations, 2);
    a.shutdown().await;
}

/// Runs `repred-admin` and returns its stdout; it must succeed.
fn admin(args: &[&std::ffi::OsStr]) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_repred-admin"))
        .args(args)
        .output()
        .expect("repred-admin runs");
    assert!(output.status.success(), "repred-admin {args:?}: {output:?}");
    String::from_utf8(output.stdout).unwrap()
}

fn os(s: &(impl AsRef<std::ffi::OsStr> + ?Sized)) -> &std::ffi::OsStr {
    s.as_ref()
}

/// A UDP port free a moment ago: a member's certificate file is named by
/// the port, so the port must be known before the node starts.
fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The operator's path: a cluster made with `repred-admin ca`, a node
/// certificate issued with `repred-admin issue`; the member's data directory
/// holds only `cluster.pem` and that certificate, never the cluster key, and
/// the member joins and replicates both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_with_only_the_cluster_certificate_joins_and_replicates() {
    let (ca_dir, member_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    admin(&[os("ca"), os("--dir"), ca_dir.path().as_os_str()]);
    let port = free_port();
    let node_file = member_dir.path().join(format!("node-{port}.pem"));
    let ca_file = ca_dir.path().join(CA_FILE);
    let id = admin(&[
        os("issue"),
        os("--ca"),
        ca_file.as_os_str(),
        os("--out"),
        node_file.as_os_str(),
        os("--days"),
        os("1"),
    ]);
    std::fs::copy(ca_dir.path().join(CLUSTER_FILE), member_dir.path().join(CLUSTER_FILE)).unwrap();

    // The authority node runs where the key is; the member elsewhere.
    let a = spawn(ca_dir.path(), &[]).await;
    let m = fast(member_dir.path())
        .listen(SocketAddr::from(([127, 0, 0, 1], port)))
        .create_cluster(false)
        .bootstrap([a.addr()])
        .spawn()
        .await
        .expect("the member starts on its issued certificate");
    assert_eq!(format_node_id(m.id()), id.trim(), "the member is the node issued");
    let on_a = a.replicate("counters", Counters::default()).unwrap();
    let on_m = m.replicate("counters", Counters::default()).unwrap();
    on_m.update(Counters::set("from member", 1)).await.unwrap();
    on_a.update(Counters::set("from authority", 2)).await.unwrap();
    eventually("both hold both writes", Duration::from_secs(10), || {
        let (sa, sm) = (on_a.read(Counters::clone), on_m.read(Counters::clone));
        (sa == sm && sa.0.len() == 2, (sa, sm))
    })
    .await;
    assert_eq!(a.members().borrow().len(), 2);
    assert_eq!(
        files_in(member_dir.path()),
        [CLUSTER_FILE.to_string(), format!("node-{port}.pem")],
        "no key was ever in the member's directory, nothing was added"
    );
    m.shutdown().await;
    a.shutdown().await;
}

/// Without the cluster key and without a certificate of its own, a node does
/// not start, and the error says what to run; nor does a node told to join
/// start a cluster in an empty directory, nor any node on an empty path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_neither_the_key_nor_a_certificate_cannot_start() {
    let ca = tempfile::tempdir().unwrap();
    admin(&[os("ca"), os("--dir"), ca.path().as_os_str()]);
    let member = tempfile::tempdir().unwrap();
    std::fs::copy(ca.path().join(CLUSTER_FILE), member.path().join(CLUSTER_FILE)).unwrap();
    let err = fast(member.path()).spawn().await.expect_err("not admitted");
    assert!(matches!(err, Error::Credentials(CredentialsError::NotAdmitted { .. })), "{err:?}");
    assert!(err.to_string().contains("repred-admin issue"), "{err}");
    assert_eq!(files_in(member.path()), [CLUSTER_FILE], "no certificate was made up");

    let empty = tempfile::tempdir().unwrap();
    let err = fast(empty.path()).create_cluster(false).spawn().await.expect_err("no cluster");
    assert!(matches!(err, Error::Credentials(CredentialsError::NoCluster { .. })), "{err:?}");
    assert!(files_in(empty.path()).is_empty());

    let err = fast(Path::new("")).spawn().await.expect_err("no data dir");
    assert!(matches!(err, Error::Credentials(CredentialsError::EmptyDataDir)), "{err:?}");
}

/// The TLS alert a connection ended with, if it ended in the handshake.
fn tls_alert(err: &ConnectionError) -> Option<u64> {
    let code = match err {
        ConnectionError::ConnectionClosed(close) => close.error_code,
        ConnectionError::TransportError(e) => e.code,
        _ => return None,
    };
    u64::from(code).checked_sub(0x100).filter(|alert| *alert < 0x100)
}

/// TLS's `certificate_revoked` alert.
const CERTIFICATE_REVOKED: u64 = 44;

/// How a handshake from `client` to `addr` ends: `Ok` once the node has
/// answered a Hello on "counters" (admitted), or closed the connection as a
/// duplicate (admitted too: the raw client holds the credentials of a node
/// the other is connected to already, and the node core keeps one
/// connection per pair); the connection's error otherwise.
async fn handshake(client: &quinn::Endpoint, addr: SocketAddr) -> Result<(), ConnectionError> {
    let outcome = tokio::time::timeout(Duration::from_secs(5), async {
        let conn = client.connect(addr, SERVER_NAME).unwrap().await?;
        // TLS 1.3 lets a client finish before the server has judged its
        // certificate; a refusal arrives right after, and no Hello does.
        let (mut send, mut recv) = conn.open_bi().await?;
        let hello = [preamble("counters"), hello_frame(SourceId::random())].concat();
        let _ = send.write_all(&hello).await;
        let mut first = [0u8; 5];
        match recv.read_exact(&mut first).await {
            Ok(()) => {
                conn.close(0u8.into(), b"done");
                Ok(())
            }
            Err(_) => Err(conn.closed().await),
        }
    })
    .await
    .expect("the handshake ends in time");
    match outcome {
        Err(ConnectionError::ApplicationClosed(close))
            if CloseCode::from_code(close.error_code.into_inner())
                == Some(CloseCode::Duplicate) =>
        {
            Ok(())
        }
        other => other,
    }
}

/// A node that lists X refuses it both ways (X as client: the node's
/// server verifier; X as server: the node's client verifier), from the
/// data directory's `revoked` file (written by `repred-admin revoke`) or
/// from `Builder::deny`, while the node that does not list it goes on with
/// everyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_node_is_refused_both_ways_while_the_others_go_on() {
    let dir = tempfile::tempdir().unwrap();
    // On fixed ports: a node on port 0 keeps its certificate in memory, and
    // the raw clients below load each node's from its file.
    let on_port = || SocketAddr::from(([127, 0, 0, 1], free_port()));
    let x = fast(dir.path()).listen(on_port()).spawn().await.unwrap();
    let x_id = format_node_id(x.id());
    // A has a data directory of its own, with the deny list in it.
    let a_dir = tempfile::tempdir().unwrap();
    std::fs::copy(dir.path().join(CA_FILE), a_dir.path().join(CA_FILE)).unwrap();
    admin(&[os("revoke"), os("--dir"), a_dir.path().as_os_str(), os(&x_id)]);
    let a = fast(a_dir.path()).listen(on_port()).bootstrap([x.addr()]).spawn().await.unwrap();
    let d = fast(dir.path())
        .listen(on_port())
        .deny([x.id()])
        .bootstrap([x.addr(), a.addr()])
        .spawn()
        .await
        .unwrap();
    let b = spawn(dir.path(), &[x.addr(), a.addr()]).await;
    let handles: Vec<_> = [&a, &b, &d, &x]
        .iter()
        .map(|n| n.replicate("counters", Counters::default()).unwrap())
        .collect();
    for (i, h) in handles.iter().enumerate() {
        h.update(Counters::set(&format!("k{i}"), 1)).await.unwrap();
    }

    // No direct link between X and a node that lists it, ever: checked at
    // every poll below.
    let mut links = std::collections::BTreeSet::new();
    let watch = |links: &mut std::collections::BTreeSet<String>| {
        for (name, node) in [("a", &a), ("d", &d)] {
            if node.connected().contains(&x.addr()) {
                links.insert(format!("{name} connected to x"));
            }
        }
    };
    eventually("everyone has every write; b links to everyone", Duration::from_secs(15), || {
        watch(&mut links);
        let states: Vec<_> = handles.iter().map(|h| h.read(Counters::clone)).collect();
        let b_links = b.connected().len();
        (states.iter().all(|s| s.0.len() == 4) && b_links == 3, (b_links, states))
    })
    .await;
    // Long enough for A and D to learn X's address by gossip and dial it
    // (and X to dial them) several times over.
    eventually("a and d know x", Duration::from_secs(10), || {
        watch(&mut links);
        let known = [&a, &d].iter().all(|n| n.members().borrow().contains_key(&x.id()));
        (known, ())
    })
    .await;
    let settle = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < settle {
        watch(&mut links);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(links.is_empty(), "{links:?}");

    // Each direction on its own, with the nodes' own credentials.
    let port = |n: &repred_transport::Node| n.addr().port();
    let x_creds = Credentials::load_or_create(dir.path(), port(&x)).unwrap();
    assert_eq!(x_creds.id(), x.id());
    let as_x = raw_client(&x_creds);
    for (name, node) in [("a", &a), ("d", &d)] {
        let refused = handshake(&as_x, node.addr()).await.expect_err(name);
        assert_eq!(tls_alert(&refused), Some(CERTIFICATE_REVOKED), "{name}: {refused:?}");
    }
    handshake(&as_x, b.addr()).await.expect("b does not list x");
    let a_creds = Credentials::load_or_create(a_dir.path(), port(&a)).unwrap();
    assert!(a_creds.denied().contains(&x.id()), "read from {}", a_dir.path().display());
    let as_a = raw_client(&a_creds);
    let refused = handshake(&as_a, x.addr()).await.expect_err("a refuses x as a server");
    assert_eq!(tls_alert(&refused), Some(CERTIFICATE_REVOKED), "{refused:?}");
    handshake(&as_a, b.addr()).await.expect("a still reaches b");
    let as_d =
        raw_client(&Credentials::load_or_create(dir.path(), port(&d)).unwrap().deny([x.id()]));
    let refused = handshake(&as_d, x.addr()).await.expect_err("d refuses x as a server");
    assert_eq!(tls_alert(&refused), Some(CERTIFICATE_REVOKED), "{refused:?}");

    // And the cluster goes on.
    handles[0].update(Counters::set("after", 1)).await.unwrap();
    eventually("a's later write reaches everyone", Duration::from_secs(10), || {
        let all = handles.iter().all(|h| h.read(|s| s.0.contains_key("after")));
        (all, ())
    })
    .await;
    for client in [as_x, as_a, as_d] {
        client.close(0u8.into(), b"done");
    }
    for node in [a, b, d, x] {
        node.shutdown().await;
    }
}
