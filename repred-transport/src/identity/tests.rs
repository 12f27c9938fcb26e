use rustls::pki_types::pem::PemObject;

use super::files::pem_encode;
use super::*;

/// `error` and its sources, each once, as a chain printer such as
/// anyhow's `{:#}` writes them.
fn chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut next = error.source();
    while let Some(cause) = next {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        next = cause.source();
    }
    out
}

fn cert_of(dir: &Path, port: u16) -> CertificateDer<'static> {
    let path = dir.join(node_file_name(port));
    parse_node_pem(&path, &fs::read(&path).unwrap()).unwrap().0
}

/// A member's data directory: `ca`'s public certificate and, if
/// `node` is given, that node certificate for `port`.
fn member_dir(ca: &ClusterCa, port: u16, node: Option<&NodeCertificate>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join(CLUSTER_FILE), ca.certificate_pem()).unwrap();
    if let Some(node) = node {
        node.write_new(&dir.path().join(node_file_name(port))).unwrap();
    }
    dir
}

#[test]
fn first_node_creates_the_cluster_and_later_nodes_reuse_it() {
    let dir = tempfile::tempdir().unwrap();
    let a = Credentials::load_or_create(dir.path(), 1).unwrap();
    let b = Credentials::load_or_create(dir.path(), 2).unwrap();
    assert_eq!(a.ca_certificate(), b.ca_certificate());
    assert_ne!(a.id(), b.id());
    // The same port reuses its certificate, hence its id.
    let a2 = Credentials::load_or_create(dir.path(), 1).unwrap();
    assert_eq!(a.id(), a2.id());
    // What a peer reads off the certificate is the id the node claims.
    assert_eq!(certificate_id(&a.cert), Some(a.id()));
    assert_eq!(certificate_id(&b.cert), Some(b.id()));
    assert_eq!(certificate_id(&CertificateDer::from(vec![0x30, 0x00])), None);
    assert!(verify_node_cert(&a.cert, &b.ca_cert).is_ok());
    // The public certificate is published next to the key, for members.
    let public = fs::read(dir.path().join(CLUSTER_FILE)).unwrap();
    assert_eq!(parse_cert(Path::new(CLUSTER_FILE), &public).unwrap(), a.ca_cert);
    assert!(PrivatePkcs8KeyDer::from_pem_slice(&public).is_err(), "no key in cluster.pem");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode =
            |name: &str| fs::metadata(dir.path().join(name)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(CA_FILE), 0o600);
        assert_eq!(mode(&node_file_name(1)), 0o600);
        // cluster.pem is public: 0644, less only under a strict umask.
        assert_eq!(mode(CLUSTER_FILE) & 0o600, 0o600);
    }
}

#[test]
fn a_directory_made_before_cluster_pem_existed_gets_one() {
    let dir = tempfile::tempdir().unwrap();
    let a = Credentials::load_or_create(dir.path(), 1).unwrap();
    fs::remove_file(dir.path().join(CLUSTER_FILE)).unwrap();
    let again = Credentials::load_or_create(dir.path(), 1).unwrap();
    assert_eq!(again.id(), a.id());
    let public = fs::read(dir.path().join(CLUSTER_FILE)).unwrap();
    assert_eq!(parse_cert(Path::new(CLUSTER_FILE), &public).unwrap(), a.ca_cert);
    // A cluster.pem of another cluster next to the key is a mistake to
    // report, not to guess about.
    fs::write(dir.path().join(CLUSTER_FILE), ClusterCa::generate().unwrap().certificate_pem())
        .unwrap();
    let err = Credentials::load_or_create(dir.path(), 1).unwrap_err();
    assert!(matches!(err, CredentialsError::Corrupt { .. }), "{err}");
}

#[test]
fn nodes_started_at_once_make_one_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let handles: Vec<_> = (0..6)
        .map(|port| {
            let dir = dir.path().to_path_buf();
            std::thread::spawn(move || Credentials::load_or_create(&dir, port).unwrap())
        })
        .collect();
    let ids: Vec<Credentials> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(ids.iter().all(|i| i.ca_cert == ids[0].ca_cert), "two clusters were made");
    let leftovers = fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".tmp"))
        .count();
    assert_eq!(leftovers, 0);
}

/// With the cluster key here, a certificate of another cluster is
/// re-signed for the same key: the node keeps its id.
#[test]
fn a_node_certificate_of_another_cluster_is_re_signed_where_the_key_is() {
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let foreign = Credentials::load_or_create(one.path(), 7).unwrap();
    Credentials::load_or_create(two.path(), 7).unwrap();
    fs::copy(one.path().join("node-7.pem"), two.path().join("node-7.pem")).unwrap();
    let again = Credentials::load_or_create(two.path(), 7).unwrap();
    assert!(verify_node_cert(&again.cert, &again.ca_cert).is_ok());
    assert_eq!(again.id(), foreign.id(), "same key, same id");
    assert_eq!(cert_of(two.path(), 7), again.cert, "the re-signed certificate is kept");
}

/// Without the cluster key, the same is an error that says what to do,
/// and the file is left as it was.
#[test]
fn a_member_refuses_a_certificate_of_another_cluster() {
    let (ours, theirs) = (ClusterCa::generate().unwrap(), ClusterCa::generate().unwrap());
    let dir = member_dir(&ours, 7, Some(&theirs.issue(None).unwrap()));
    let before = fs::read(dir.path().join("node-7.pem")).unwrap();
    let err = Credentials::load_or_create(dir.path(), 7).unwrap_err();
    assert!(matches!(err, CredentialsError::NotIssuedByCluster { .. }), "{err}");
    assert!(err.to_string().contains("repred-admin issue"), "{err}");
    assert_eq!(fs::read(dir.path().join("node-7.pem")).unwrap(), before);
    assert!(!dir.path().join(CA_FILE).exists());
}

#[test]
fn a_member_runs_on_an_issued_certificate_without_the_key() {
    let ca = ClusterCa::generate().unwrap();
    let issued = ca.issue(Some(Duration::from_secs(3600))).unwrap();
    let dir = member_dir(&ca, 5, Some(&issued));
    let member = Credentials::load_or_create(dir.path(), 5).unwrap();
    assert_eq!(member.id(), issued.id());
    assert_eq!(certificate_id(issued.certificate()), Some(issued.id()));
    assert_eq!(member.ca_certificate(), ca.certificate());
    let mut files: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, [CLUSTER_FILE, "node-5.pem"], "nothing written, no key anywhere");
    // Joining needs nothing more either.
    assert_eq!(Credentials::join(dir.path(), 5).unwrap().id(), issued.id());
}

#[test]
fn a_member_without_its_certificate_is_not_admitted() {
    let ca = ClusterCa::generate().unwrap();
    // Another port's certificate does not count.
    let dir = member_dir(&ca, 5, Some(&ca.issue(None).unwrap()));
    let err = Credentials::load_or_create(dir.path(), 6).unwrap_err();
    assert!(matches!(err, CredentialsError::NotAdmitted { port: 6, .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains("repred-admin issue") && message.contains("node-6.pem"), "{message}");
    assert!(!dir.path().join("node-6.pem").exists());
}

#[test]
fn join_does_not_create_a_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("typo");
    let err = Credentials::join(&empty, 1).unwrap_err();
    assert!(matches!(err, CredentialsError::NoCluster { port: 1, .. }), "{err}");
    assert!(!empty.exists());
    // With the key it is the authority's directory: join issues.
    Credentials::load_or_create(dir.path(), 1).unwrap();
    Credentials::join(dir.path(), 2).unwrap();
}

#[test]
fn an_empty_data_dir_is_an_error() {
    for err in [
        Credentials::load_or_create(Path::new(""), 1).unwrap_err(),
        Credentials::join(Path::new(""), 1).unwrap_err(),
        ClusterCa::create(Path::new("")).unwrap_err(),
        revoke(Path::new(""), SourceId::new("x").unwrap()).unwrap_err(),
    ] {
        assert!(matches!(err, CredentialsError::EmptyDataDir), "{err}");
    }
    assert!(!Path::new(CA_FILE).exists() && !Path::new(CLUSTER_FILE).exists());
}

/// A truncated or mismatched node file is never replaced by a new
/// identity, even where the cluster key could issue one.
#[test]
fn a_malformed_node_file_is_a_typed_error_not_a_new_identity() {
    let dir = tempfile::tempdir().unwrap();
    Credentials::load_or_create(dir.path(), 1).unwrap();
    Credentials::load_or_create(dir.path(), 2).unwrap();
    let path = dir.path().join("node-1.pem");
    let whole = fs::read(&path).unwrap();
    let text = String::from_utf8(whole.clone()).unwrap();
    let key_at = text.find("-----BEGIN PRIVATE KEY-----").unwrap();
    let other = fs::read_to_string(dir.path().join("node-2.pem")).unwrap();
    let other_key = &other[other.find("-----BEGIN PRIVATE KEY-----").unwrap()..];
    let cases: [(&str, Vec<u8>); 5] = [
        ("empty", Vec::new()),
        ("cut in the certificate", whole[..key_at / 2].to_vec()),
        ("cut before the key", whole[..key_at].to_vec()),
        ("cut in the key", whole[..key_at + (whole.len() - key_at) / 2].to_vec()),
        ("another node's key", format!("{}{other_key}", &text[..key_at]).into_bytes()),
    ];
    for (what, bytes) in cases {
        fs::write(&path, &bytes).unwrap();
        let err = Credentials::load_or_create(dir.path(), 1).unwrap_err();
        assert!(matches!(err, CredentialsError::Corrupt { .. }), "{what}: {err}");
        assert!(err.to_string().contains("node-1.pem"), "{what}: {err}");
        assert_eq!(fs::read(&path).unwrap(), bytes, "{what}: the file was replaced");
    }
}

#[test]
fn an_unreadable_node_file_is_a_typed_error_that_says_its_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    Credentials::load_or_create(dir.path(), 1).unwrap();
    // A directory where the file should be: unreadable even for root.
    fs::create_dir(dir.path().join("node-3.pem")).unwrap();
    let err = Credentials::load_or_create(dir.path(), 3).unwrap_err();
    let CredentialsError::Io { source, .. } = &err else { panic!("{err}") };
    let os = source.to_string();
    let printed = chain(&err);
    assert_eq!(printed.matches(&os).count(), 1, "{printed}");
    assert!(printed.contains("node-3.pem"), "{printed}");
    // Through the transport's error too.
    let printed = chain(&crate::Error::from(err));
    assert_eq!(printed.matches(&os).count(), 1, "{printed}");
}

#[test]
fn every_error_with_a_cause_says_it_once() {
    // A real OS error: the second bind of one UDP address.
    let first = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = first.local_addr().unwrap();
    let source = std::net::UdpSocket::bind(addr).unwrap_err();
    let os = source.to_string();
    let bind = crate::Error::Bind { addr, source };
    let printed = chain(&bind);
    assert_eq!(printed.matches(&os).count(), 1, "{printed}");
    assert!(printed.contains(&addr.to_string()), "{printed}");

    let errors: [(CredentialsError, &str); 3] = [
        (rustls::Error::General("tls-cause".into()).into(), "tls-cause"),
        (
            rcgen::Error::CouldNotParseKeyPair.into(),
            &rcgen::Error::CouldNotParseKeyPair.to_string(),
        ),
        (
            CredentialsError::Io { path: "p".into(), source: io::Error::other("io-cause") },
            "io-cause",
        ),
    ];
    for (err, cause) in errors {
        let printed = chain(&err);
        assert_eq!(printed.matches(cause).count(), 1, "{printed}");
        let printed = chain(&crate::Error::from(err));
        assert_eq!(printed.matches(cause).count(), 1, "{printed}");
    }
}

#[test]
fn an_expired_certificate_needs_renewing_where_the_key_is_not() {
    let ca = ClusterCa::generate().unwrap();
    let issued = ca.issue(Some(Duration::ZERO)).unwrap();
    assert!(issued.not_after().is_some());
    let dir = member_dir(&ca, 4, Some(&issued));
    // Certificate times are in whole seconds: let this one pass.
    std::thread::sleep(Duration::from_millis(1_100));
    let err = Credentials::load_or_create(dir.path(), 4).unwrap_err();
    assert!(matches!(err, CredentialsError::Expired { .. }), "{err}");
    assert!(err.to_string().contains("repred-admin renew"), "{err}");
    // Renewing keeps the key, hence the id.
    let path = dir.path().join("node-4.pem");
    let renewed = ca.renew(&fs::read(&path).unwrap(), None).unwrap();
    assert_eq!(renewed.id(), issued.id());
    assert!(matches!(renewed.write_new(&path), Err(CredentialsError::Exists { .. })));
    renewed.replace(&path).unwrap();
    assert_eq!(Credentials::load_or_create(dir.path(), 4).unwrap().id(), issued.id());
}

#[test]
fn the_cluster_is_created_once_and_loads_back() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::create(dir.path()).unwrap();
    assert!(matches!(ClusterCa::create(dir.path()), Err(CredentialsError::Exists { .. })));
    let loaded = ClusterCa::load(&dir.path().join(CA_FILE)).unwrap();
    assert_eq!(loaded.certificate(), ca.certificate());
    // The hand-written PEM reads back as the same certificate.
    let public = fs::read(dir.path().join(CLUSTER_FILE)).unwrap();
    assert_eq!(&CertificateDer::from_pem_slice(&public).unwrap(), ca.certificate());
    // A node of the directory is issued by that cluster.
    let node = Credentials::load_or_create(dir.path(), 9).unwrap();
    assert_eq!(node.ca_certificate(), ca.certificate());
    // A key that is not the certificate's.
    let other = ClusterCa::generate().unwrap();
    let mixed = format!("{}{}", ca.certificate_pem(), other.key.serialize_pem());
    let err = ClusterCa::from_pem(Path::new(CA_FILE), mixed.as_bytes()).unwrap_err();
    assert!(matches!(err, CredentialsError::Corrupt { .. }), "{err}");
}

#[test]
fn pem_encoding_round_trips_every_padding() {
    for len in 0..10usize {
        let der: Vec<u8> = (0..len as u8).map(|b| b.wrapping_mul(37)).collect();
        let pem = pem_encode("CERTIFICATE", &der);
        assert_eq!(CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().as_ref(), &der[..]);
    }
}

#[test]
fn node_ids_read_back_in_either_form() {
    let id = id_from_public_key(b"some key");
    let hex = format_node_id(id);
    assert_eq!(hex.len(), 32);
    assert_eq!(parse_node_id(&hex), Some(id));
    assert_eq!(parse_node_id(&hex.to_uppercase()), Some(id));
    assert_eq!(parse_node_id(&format!("  SourceId({hex}) ")), Some(id));
    for bad in ["", "xyz", &hex[1..], &format!("{hex}0"), "00000000000000000000000000000000"] {
        assert_eq!(parse_node_id(bad), None, "{bad:?}");
    }
    // Multi-byte text of the right length is refused, not sliced.
    assert_eq!(parse_node_id(&"é".repeat(16)), None);
}

#[test]
fn the_deny_list_parses_comments_and_refuses_typos() {
    let (a, b) = (id_from_public_key(b"a"), id_from_public_key(b"b"));
    let text = format!(
        "# revoked nodes\n\n{}  # laptop, stolen\n   SourceId({})\n",
        format_node_id(a),
        format_node_id(b)
    );
    let path = Path::new(REVOKED_FILE);
    assert_eq!(parse_revoked(path, &text).unwrap(), BTreeSet::from([a, b]));
    let err = parse_revoked(path, &format!("{text}deadbeef\n")).unwrap_err();
    assert!(err.to_string().contains("line 5"), "{err}");
}

#[test]
fn revoking_appends_once_and_nodes_load_the_list() {
    let dir = tempfile::tempdir().unwrap();
    let a = Credentials::load_or_create(dir.path(), 1).unwrap();
    let (x, y) = (id_from_public_key(b"x"), id_from_public_key(b"y"));
    assert!(revoke(dir.path(), x).unwrap());
    assert!(!revoke(dir.path(), x).unwrap(), "listed already");
    // A hand-edited file without a final newline still gets a line of
    // its own.
    let path = dir.path().join(REVOKED_FILE);
    let mut text = fs::read_to_string(&path).unwrap();
    text.push_str("# no newline");
    fs::write(&path, &text).unwrap();
    assert!(revoke(dir.path(), y).unwrap());
    let loaded = Credentials::load_or_create(dir.path(), 1).unwrap();
    assert_eq!(loaded.denied(), &BTreeSet::from([x, y]));
    assert_eq!(loaded.deny([a.id()]).denied().len(), 3);
    // A list that does not parse stops both the node and more appends.
    fs::write(&path, "not an id\n").unwrap();
    assert!(matches!(
        Credentials::load_or_create(dir.path(), 1),
        Err(CredentialsError::Corrupt { .. })
    ));
    assert!(matches!(revoke(dir.path(), x), Err(CredentialsError::Corrupt { .. })));
    assert!(revoke(&dir.path().join("missing"), x).is_err());
    // A node whose own id is listed does not start.
    fs::write(&path, format!("{}\n", format_node_id(a.id()))).unwrap();
    let err = Credentials::load_or_create(dir.path(), 1).unwrap_err();
    assert!(matches!(err, CredentialsError::Revoked { .. }), "{err}");
}

#[test]
fn a_corrupt_cluster_file_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join(CA_FILE), b"not pem").unwrap();
    let err = Credentials::load_or_create(dir.path(), 1).unwrap_err();
    assert!(matches!(err, CredentialsError::Corrupt { .. }), "{err}");
    let member = tempfile::tempdir().unwrap();
    fs::write(
        member.path().join(CLUSTER_FILE),
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let err = Credentials::load_or_create(member.path(), 1).unwrap_err();
    assert!(matches!(err, CredentialsError::Corrupt { .. }), "{err}");
}

/// Over a real QUIC connection: both ends of a stream derive the same
/// binding value from opposite sides, and every other stream, of the same
/// object on the same connection too (whichever end opened it), another
/// value. So a Hello can be replayed neither on a later stream of the
/// object nor back to its signer with the roles swapped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_stream_has_its_own_binding_and_its_ends_opposite_sides() {
    let dir = tempfile::tempdir().unwrap();
    let credentials = Credentials::load_or_create(dir.path(), 1).unwrap();
    let transport = Arc::new(quinn::TransportConfig::default());
    let server_config = credentials.server_config(transport.clone()).unwrap();
    let server = quinn::Endpoint::server(server_config, "127.0.0.1:0".parse().unwrap()).unwrap();
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    client.set_default_client_config(credentials.client_config(transport).unwrap());
    let addr = server.local_addr().unwrap();
    let wait = std::time::Duration::from_secs(20);
    let (dialed, accepted) = tokio::time::timeout(wait, async {
        let incoming = async { server.accept().await.unwrap().await.unwrap() };
        let dialing = async { client.connect(addr, SERVER_NAME).unwrap().await.unwrap() };
        tokio::join!(dialing, incoming)
    })
    .await
    .expect("connected");
    let mut seen = Vec::new();
    // The dialer opens the first stream, the listener the second.
    for (opener, acceptor) in [(&dialed, &accepted), (&accepted, &dialed)] {
        let (mut send, _recv) = opener.open_bi().await.unwrap();
        // A stream is announced to the peer by its first bytes.
        send.write_all(b"x").await.unwrap();
        let (taken, _) = tokio::time::timeout(wait, acceptor.accept_bi())
            .await
            .expect("the stream arrives")
            .unwrap();
        let here = channel_binding(opener, send.id(), "counters").unwrap();
        let there = channel_binding(acceptor, taken.id(), "counters").unwrap();
        assert!(here.opened && !there.opened, "opposite sides");
        assert_eq!(here.value, there.value, "one value at both ends");
        let other_object = channel_binding(opener, send.id(), "flags").unwrap();
        assert_ne!(other_object.value, here.value);
        seen.push(here.value);
    }
    assert_ne!(seen[0], seen[1], "a later stream of the object, its roles swapped");
    dialed.close(0u8.into(), b"done");
    client.wait_idle().await;
}
