//! Who a node is and which cluster admits it: certificates in the data
//! directory.
//!
//! A cluster is a certificate authority. Each node has its own key pair and a
//! certificate signed by the cluster's key, kept per port in `node-<port>.pem`
//! ([`node_file_name`]); its node id is derived from its public key
//! ([`certificate_id`]). Both ends of every connection present their node
//! certificate and verify the other's against the cluster certificate
//! (mutual TLS 1.3), so a node of another cluster fails the handshake before a
//! single byte of replicated data is sent.
//!
//! A data directory is in one of two shapes, and [`Credentials::load_or_create`]
//! reads either:
//!
//! - **Authority**: [`CA_FILE`] (`cluster-ca.pem`) holds the cluster's
//!   certificate *and private key*. Such a node issues its own certificate
//!   when it has none. This is the zero-configuration shape: the first node
//!   started on an empty directory creates the cluster there, written to a
//!   temporary file and hard-linked into place (which fails if another node
//!   got there first, and then everyone reads the one that won), and every
//!   node sharing the directory joins it. It also writes [`CLUSTER_FILE`].
//! - **Member**: [`CLUSTER_FILE`] (`cluster.pem`) holds only the cluster's
//!   certificate (public), next to a `node-<port>.pem` issued by an operator
//!   where the key lives (`repred-admin issue`, or [`ClusterCa::issue`]).
//!   Such a node never sees the cluster key, so a stolen member can be
//!   revoked and cannot mint new members; without its certificate it does
//!   not start ([`CredentialsError::NotAdmitted`]).
//!
//! A node certificate that is there but unreadable, truncated, or holding a
//! key that is not its certificate's is an error, never a reason to issue a
//! new one: the node would come back under another id. One that parses but is
//! not valid for this cluster (signed by another cluster, or expired) is
//! re-signed for the *same key* (so the id stays) when the cluster key is in
//! the directory, and is an error otherwise.
//!
//! Revocation is by node id: every node refuses, at the handshake and in
//! both directions, a peer whose certificate stands for an id on its deny
//! list: the ids in [`REVOKED_FILE`] (`<data_dir>/revoked`, see
//! [`parse_revoked`]) read at start, plus [`Credentials::deny`]. A node whose
//! own id is listed there does not start.

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use repred::SourceId;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// The file holding the cluster's certificate and private key. Whoever holds
/// it can admit nodes: it is written owner-only (mode 0600).
pub const CA_FILE: &str = "cluster-ca.pem";

/// The file holding only the cluster's certificate: public, what a member
/// node trusts. Written next to [`CA_FILE`] whenever that one is read.
pub const CLUSTER_FILE: &str = "cluster.pem";

/// The node's deny list in its data directory: one node id per line (see
/// [`parse_revoked`]).
pub const REVOKED_FILE: &str = "revoked";

/// The name every node certificate is issued for and every client checks.
///
/// Nodes are found by address, not by name, so one shared name is enough:
/// what admits a peer is the cluster's signature, not the name.
pub const SERVER_NAME: &str = "repred.cluster";

/// The ALPN protocol spoken on every connection.
pub const ALPN: &[u8] = b"repred/1";

/// The common name of every cluster certificate; an issuer is matched by it.
const CA_NAME: &str = "repred cluster CA";

/// The longest validity [`ClusterCa::issue`] grants; longer asks are
/// shortened to it (and the date arithmetic cannot overflow).
const MAX_VALIDITY: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// How far back a limited certificate's validity starts, so that a peer
/// whose clock is a little behind the issuer's accepts it at once.
const CLOCK_SKEW: Duration = Duration::from_secs(60 * 60);

/// The file a node listening on `port` keeps its certificate and key in,
/// inside its data directory: `node-<port>.pem`.
pub fn node_file_name(port: u16) -> String {
    format!("node-{port}.pem")
}

/// Why an identity could not be loaded or made.
///
/// Each variant either says its cause in its message or exposes it as
/// [`source`](std::error::Error::source), never both, so an error-chain
/// printer (anyhow's `{:#}`) says it once.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialsError {
    /// A file or directory could not be read or written; the cause is the
    /// [`source`](std::error::Error::source).
    #[error("cannot use {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// A file exists but does not hold what it should.
    #[error("{path}: {detail}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// The data directory was given as an empty path, which would put the
    /// credentials in whatever the current directory happens to be.
    #[error("the data directory is an empty path (it would be the current directory); name one")]
    EmptyDataDir,
    /// The data directory holds neither the cluster key nor the cluster
    /// certificate, and this node was told not to create a cluster
    /// ([`Credentials::join`]).
    #[error(
        "{dir} holds no cluster: copy {CLUSTER_FILE} and this node's certificate (from \
         `repred-admin issue --ca cluster-ca.pem --out {}`) into it",
        node_file_name(*port)
    )]
    NoCluster {
        /// The data directory.
        dir: PathBuf,
        /// The port the node listens on.
        port: u16,
    },
    /// The data directory holds the cluster certificate but neither this
    /// node's certificate nor the cluster key to issue one.
    #[error(
        "{dir} has no {} for this node and no cluster key ({CA_FILE}) to issue one: where the \
         cluster key is, run `repred-admin issue --ca cluster-ca.pem --out {}` and copy the \
         file into {dir}",
        node_file_name(*port),
        node_file_name(*port)
    )]
    NotAdmitted {
        /// The data directory.
        dir: PathBuf,
        /// The port the node listens on.
        port: u16,
    },
    /// The node's certificate was not issued by this directory's cluster,
    /// and the cluster key is not here to issue another.
    #[error(
        "{path} was not issued by the cluster in {CLUSTER_FILE} ({reason}): issue one with \
         `repred-admin issue --ca cluster-ca.pem --out {path}`"
    )]
    NotIssuedByCluster {
        /// The node's certificate file.
        path: PathBuf,
        /// What the verifier said.
        reason: String,
    },
    /// The node's certificate has expired (or is not valid yet), and the
    /// cluster key is not here to renew it.
    #[error(
        "{path} has expired or is not valid yet ({reason}): renew it (same key, same node id) \
         with `repred-admin renew --ca cluster-ca.pem {path}`"
    )]
    Expired {
        /// The node's certificate file.
        path: PathBuf,
        /// What the verifier said.
        reason: String,
    },
    /// This node's own id is on its deny list.
    #[error("this node's id {} is revoked (listed in {path})", format_node_id(*id))]
    Revoked {
        /// The node's id.
        id: SourceId,
        /// The deny list.
        path: PathBuf,
    },
    /// A file that must not be overwritten is there already.
    #[error("{path} exists already; not overwriting it")]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// A certificate or key could not be generated; the cause is the
    /// [`source`](std::error::Error::source).
    #[error("certificate generation failed")]
    Generate(#[from] rcgen::Error),
    /// The TLS configuration was refused; the cause is the
    /// [`source`](std::error::Error::source).
    #[error("TLS configuration failed")]
    Tls(#[from] rustls::Error),
    /// The certificate verifier could not be built; the cause is the
    /// [`source`](std::error::Error::source).
    #[error("the certificate verifier could not be built")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// The TLS configuration does not suit QUIC; the cause is the
    /// [`source`](std::error::Error::source).
    #[error("TLS configuration unusable for QUIC")]
    Quic(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    /// The node's private key cannot sign membership datagrams, which are
    /// signed with ECDSA P-256 and SHA-256 (the keys rcgen and
    /// `repred-admin` make are).
    #[error("the node's private key is not an ECDSA P-256 key: {detail}")]
    UnsupportedKey {
        /// What ring said of the key.
        detail: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CredentialsError + '_ {
    move |source| CredentialsError::Io { path: path.to_path_buf(), source }
}

/// A node's credentials: the cluster certificate it trusts, its own
/// certificate and key, and the node ids it refuses.
pub struct Credentials {
    id: SourceId,
    ca_cert: CertificateDer<'static>,
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
    denied: BTreeSet<SourceId>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of logs.
        f.debug_struct("Credentials")
            .field("id", &self.id)
            .field("denied", &self.denied.len())
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Loads the credentials of the node listening on `port` from `dir`
    /// (see the [module](self) for the two shapes of a data directory),
    /// creating the cluster if the directory holds none (the first node on
    /// one machine), and issuing this node's certificate if it has none and
    /// the cluster key is here. The deny list is read from
    /// `<dir>/revoked`.
    ///
    /// Port 0 (a node on any free port) reads `node-0.pem` if there is one
    /// and otherwise, where the cluster key is, issues a certificate for
    /// this run alone, written nowhere: a node id that lasts one run, and
    /// no file left behind per run.
    ///
    /// Blocking: it reads and writes files and generates keys.
    ///
    /// # Errors
    ///
    /// A node certificate (or cluster file) that cannot be read or does not
    /// parse is an error, never replaced; so is a member directory without
    /// this node's certificate ([`CredentialsError::NotAdmitted`]), a
    /// certificate of another cluster or an expired one when the cluster key
    /// is not here to re-sign it, an empty `dir`, and a deny list naming
    /// this node.
    pub fn load_or_create(dir: &Path, port: u16) -> Result<Self, CredentialsError> {
        Self::open(dir, port, true)
    }

    /// Like [`load_or_create`](Self::load_or_create), but never creates a
    /// cluster: a directory with neither [`CA_FILE`] nor [`CLUSTER_FILE`] is
    /// [`CredentialsError::NoCluster`]. For a node that must join an existing
    /// cluster, so that a mistyped data directory does not start a cluster
    /// of one.
    pub fn join(dir: &Path, port: u16) -> Result<Self, CredentialsError> {
        Self::open(dir, port, false)
    }

    fn open(dir: &Path, port: u16, may_create: bool) -> Result<Self, CredentialsError> {
        if dir.as_os_str().is_empty() {
            return Err(CredentialsError::EmptyDataDir);
        }
        let ca_path = dir.join(CA_FILE);
        let cluster_path = dir.join(CLUSTER_FILE);
        // Which shape: the key decides; without it, the certificate alone;
        // with neither, a new cluster if allowed.
        let authority = exists(&ca_path)? || (may_create && !exists(&cluster_path)?);
        let (ca_cert, ca) = if authority {
            fs::create_dir_all(dir).map_err(io_err(dir))?;
            let ca = load_or_create_ca(dir)?;
            (ca.cert.clone(), Some(ca))
        } else {
            let bytes = match fs::read(&cluster_path) {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(CredentialsError::NoCluster { dir: dir.to_path_buf(), port });
                }
                Err(e) => return Err(io_err(&cluster_path)(e)),
            };
            (parse_cert(&cluster_path, &bytes)?, None)
        };

        let node_path = dir.join(node_file_name(port));
        let (cert, key) = match fs::read(&node_path) {
            Ok(bytes) => {
                let (cert, key) = parse_node_pem(&node_path, &bytes)?;
                match (verify_node_cert(&cert, &ca_cert), &ca) {
                    (Ok(()), _) => (cert, key),
                    // Another cluster's, or expired: with the cluster key
                    // here, re-sign this node's own key, so it keeps its id.
                    (Err(_), Some(ca)) => {
                        let key_pair = key_pair(&node_path, &key)?;
                        let issued = ca.sign(key_pair, None)?;
                        replace_file(&node_path, issued.pem.as_bytes())?;
                        (issued.cert, key)
                    }
                    (Err(e), None) => return Err(untrusted(&node_path, e)),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => match &ca {
                // Port 0 is any free port, another one each run: a file
                // named after it would never be found again, so the
                // certificate is made for this run and kept in memory.
                Some(ca) if port == 0 => {
                    let issued = ca.issue(None)?;
                    (issued.cert, issued.key)
                }
                Some(ca) => {
                    let issued = ca.issue(None)?;
                    // Written aside, then linked into place: a reader never
                    // sees half, and a node started twice on one port at
                    // once does not overwrite the other's.
                    if !publish_new(&node_path, issued.pem.as_bytes(), PRIVATE)? {
                        return Self::open(dir, port, may_create);
                    }
                    (issued.cert, issued.key)
                }
                None => return Err(CredentialsError::NotAdmitted { dir: dir.to_path_buf(), port }),
            },
            Err(e) => return Err(io_err(&node_path)(e)),
        };
        let id = key_id(&node_path, &key)?;
        let revoked_path = dir.join(REVOKED_FILE);
        let denied = read_revoked(&revoked_path)?;
        if denied.contains(&id) {
            return Err(CredentialsError::Revoked { id, path: revoked_path });
        }
        Ok(Self { id, ca_cert, cert, key, denied })
    }

    /// Credentials from PEM held in memory: the cluster certificate to trust
    /// (its key is not needed) and a node's certificate and key, which must
    /// belong together ([`CredentialsError::Corrupt`] otherwise). For tools
    /// and tests. Nothing is denied.
    pub fn from_pem(ca_cert_pem: &[u8], node_pem: &[u8]) -> Result<Self, CredentialsError> {
        let ca_cert = parse_cert(Path::new(CLUSTER_FILE), ca_cert_pem)?;
        let path = Path::new("node");
        let (cert, key) = parse_node_pem(path, node_pem)?;
        Ok(Self { id: key_id(path, &key)?, ca_cert, cert, key, denied: BTreeSet::new() })
    }

    /// Adds `ids` to the node ids refused at the handshake, in both
    /// directions: as a server this node refuses their client certificate,
    /// as a client their server certificate.
    pub fn deny(mut self, ids: impl IntoIterator<Item = SourceId>) -> Self {
        self.denied.extend(ids);
        self
    }

    /// The node ids refused at the handshake.
    pub fn denied(&self) -> &BTreeSet<SourceId> {
        &self.denied
    }

    /// The node's source id: derived from its public key, so it is stable
    /// across restarts and tied to the certificate.
    pub fn id(&self) -> SourceId {
        self.id
    }

    /// The cluster certificate, DER.
    pub fn ca_certificate(&self) -> &CertificateDer<'static> {
        &self.ca_cert
    }

    /// This node's certificate, DER: what it presents at every handshake
    /// and attaches to its first membership datagrams to each peer.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The node's TLS key as the signer of its membership datagrams
    /// (ECDSA P-256, SHA-256, ASN.1 signatures).
    pub(crate) fn datagram_key(&self) -> Result<EcdsaKeyPair, CredentialsError> {
        EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            self.key.secret_pkcs8_der(),
            &SystemRandom::new(),
        )
        .map_err(|e| CredentialsError::UnsupportedKey { detail: e.to_string() })
    }

    /// Judges peers' certificates away from a handshake (those attached to
    /// membership datagrams) exactly as the handshake does.
    pub(crate) fn peer_verifier(&self) -> Result<PeerVerifier, CredentialsError> {
        Ok(PeerVerifier { inner: self.client_verifier()? })
    }

    /// The cluster's client-certificate verifier, refusing denied ids.
    fn client_verifier(&self) -> Result<Arc<DenyClients>, CredentialsError> {
        Ok(Arc::new(DenyClients {
            inner: WebPkiClientVerifier::builder_with_provider(self.roots()?, provider())
                .build()?,
            denied: Arc::new(self.denied.clone()),
        }))
    }

    fn roots(&self) -> Result<Arc<RootCertStore>, CredentialsError> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_cert.clone())?;
        Ok(Arc::new(roots))
    }

    /// A QUIC server configuration that presents this node's certificate
    /// and requires a client certificate signed by the cluster and not
    /// denied.
    pub fn server_config(
        &self,
        transport: Arc<quinn::TransportConfig>,
    ) -> Result<quinn::ServerConfig, CredentialsError> {
        let verifier = self.client_verifier()?;
        let mut tls = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![self.cert.clone()],
                PrivateKeyDer::Pkcs8(self.key.clone_key()),
            )?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let mut config =
            quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls)?));
        config.transport_config(transport);
        Ok(config)
    }

    /// A QUIC client configuration that trusts only the cluster, refuses a
    /// denied server, and presents this node's certificate.
    pub fn client_config(
        &self,
        transport: Arc<quinn::TransportConfig>,
    ) -> Result<quinn::ClientConfig, CredentialsError> {
        let provider = provider();
        let verifier = Arc::new(DenyServers {
            inner: WebPkiServerVerifier::builder_with_provider(self.roots()?, provider.clone())
                .build()?,
            denied: Arc::new(self.denied.clone()),
        });
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            // Not dangerous: the WebPKI verifier still decides, this only
            // refuses more.
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(
                vec![self.cert.clone()],
                PrivateKeyDer::Pkcs8(self.key.clone_key()),
            )?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let mut config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
        config.transport_config(transport);
        Ok(config)
    }
}

/// The refusal of a denied peer: TLS says `certificate_revoked`.
fn refuse_denied(
    denied: &BTreeSet<SourceId>,
    cert: &CertificateDer<'_>,
) -> Result<(), rustls::Error> {
    match certificate_id(cert) {
        Some(id) if denied.contains(&id) => {
            Err(rustls::Error::InvalidCertificate(CertificateError::Revoked))
        }
        _ => Ok(()),
    }
}

/// Judges a peer's certificate as the handshake would judge it as a client
/// certificate: issued by the cluster, valid now, and not denied.
pub(crate) struct PeerVerifier {
    inner: Arc<DenyClients>,
}

impl PeerVerifier {
    /// The node id `cert` stands for, if this cluster admits it now.
    pub(crate) fn verify(&self, cert: &CertificateDer<'_>) -> Result<SourceId, rustls::Error> {
        self.inner.verify_client_cert(cert, &[], UnixTime::now())?;
        certificate_id(cert).ok_or(rustls::Error::InvalidCertificate(CertificateError::BadEncoding))
    }
}

/// The cluster's client-certificate verifier, refusing denied node ids too.
#[derive(Debug)]
struct DenyClients {
    inner: Arc<dyn ClientCertVerifier>,
    denied: Arc<BTreeSet<SourceId>>,
}

impl ClientCertVerifier for DenyClients {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // The cluster's verdict first: an outsider is an unknown issuer,
        // whatever its id.
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        refuse_denied(&self.denied, end_entity)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }
}

/// The cluster's server-certificate verifier, refusing denied node ids too.
#[derive(Debug)]
struct DenyServers {
    inner: Arc<WebPkiServerVerifier>,
    denied: Arc<BTreeSet<SourceId>>,
}

impl ServerCertVerifier for DenyServers {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        refuse_denied(&self.denied, end_entity)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }

    fn root_hint_subjects(&self) -> Option<&[rustls::DistinguishedName]> {
        self.inner.root_hint_subjects()
    }
}

/// ring, explicitly: the process-wide default provider may be unset or be
/// another one, and the workspace builds without aws-lc.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The node id a certificate stands for: the same derivation as
/// [`Credentials::id`], from the certificate's public key. `None` when the
/// certificate does not parse (a verified peer's always does).
pub fn certificate_id(cert: &CertificateDer<'_>) -> Option<SourceId> {
    let parsed = webpki::EndEntityCert::try_from(cert).ok()?;
    Some(id_from_public_key(parsed.subject_public_key_info().as_ref()))
}

/// The node id of the peer at the other end of a connection, from the
/// certificate it presented (and the handshake verified).
pub(crate) fn peer_id(conn: &quinn::Connection) -> Option<SourceId> {
    let chain = conn.peer_identity()?.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    certificate_id(chain.first()?)
}

fn id_from_public_key(spki_der: &[u8]) -> SourceId {
    let digest = ring::digest::digest(&ring::digest::SHA256, spki_der);
    let mut bytes = [0u8; SourceId::LEN];
    bytes.copy_from_slice(&digest.as_ref()[..SourceId::LEN]);
    // A digest of all zeros is not going to happen; random is the fallback
    // that keeps this total.
    SourceId::from_bytes(bytes).unwrap_or_else(|_| SourceId::random())
}

/// A node id as the deny list, `repred-admin` and logs write it: its 16
/// bytes as 32 lowercase hex digits. (`SourceId`'s `Debug` prints the same
/// digits inside `SourceId(...)`, unless the bytes happen to read as text.)
pub fn format_node_id(id: SourceId) -> String {
    id.as_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads a node id written by [`format_node_id`]: 32 hex digits (either
/// case), optionally inside `SourceId(...)` as `Debug` prints it. `None`
/// for anything else, or the reserved all-zero id.
pub fn parse_node_id(text: &str) -> Option<SourceId> {
    let text = text.trim();
    let hex = text.strip_prefix("SourceId(").and_then(|t| t.strip_suffix(')')).unwrap_or(text);
    if hex.len() != 2 * SourceId::LEN || !hex.is_ascii() {
        return None;
    }
    let mut bytes = [0u8; SourceId::LEN];
    for (byte, pair) in bytes.iter_mut().zip(hex.as_bytes().chunks(2)) {
        let pair = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(pair, 16).ok()?;
    }
    SourceId::from_bytes(bytes).ok()
}

/// Parses a deny list: one node id per line ([`parse_node_id`]); `#` starts
/// a comment that runs to the end of the line; blank lines are ignored.
/// `path` only names the file in errors. A line that is not an id is an
/// error rather than skipped: a typo must not quietly let a revoked node
/// back in.
pub fn parse_revoked(path: &Path, text: &str) -> Result<BTreeSet<SourceId>, CredentialsError> {
    let mut ids = BTreeSet::new();
    for (n, line) in text.lines().enumerate() {
        let entry = line.split('#').next().unwrap_or_default().trim();
        if entry.is_empty() {
            continue;
        }
        let id = parse_node_id(entry).ok_or_else(|| CredentialsError::Corrupt {
            path: path.to_path_buf(),
            detail: format!("line {}: `{entry}` is not a node id (32 hex digits)", n + 1),
        })?;
        ids.insert(id);
    }
    Ok(ids)
}

/// The deny list at `path`; none there is an empty list.
fn read_revoked(path: &Path) -> Result<BTreeSet<SourceId>, CredentialsError> {
    match fs::read(path) {
        Ok(bytes) => {
            let text = std::str::from_utf8(&bytes).map_err(|e| CredentialsError::Corrupt {
                path: path.to_path_buf(),
                detail: format!("not UTF-8 text: {e}"),
            })?;
            parse_revoked(path, text)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(BTreeSet::new()),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Adds `id` to the deny list of the data directory `dir`
/// (`<dir>/revoked`), creating the file if needed. Returns whether it was
/// added (`false`: it was listed already). The directory must exist, so a
/// mistyped one is an error rather than a list nobody reads. Nodes read the
/// list when they start.
pub fn revoke(dir: &Path, id: SourceId) -> Result<bool, CredentialsError> {
    if dir.as_os_str().is_empty() {
        return Err(CredentialsError::EmptyDataDir);
    }
    if !fs::metadata(dir).map_err(io_err(dir))?.is_dir() {
        return Err(CredentialsError::Corrupt {
            path: dir.to_path_buf(),
            detail: "not a directory".into(),
        });
    }
    let path = dir.join(REVOKED_FILE);
    // Read (and so check) what is there first: appending to a list that
    // does not parse would leave every node refusing to start.
    if read_revoked(&path)?.contains(&id) {
        return Ok(false);
    }
    let ends_in_newline = match fs::read(&path) {
        Ok(bytes) => bytes.last().is_none_or(|&b| b == b'\n'),
        Err(e) if e.kind() == io::ErrorKind::NotFound => true,
        Err(e) => return Err(io_err(&path)(e)),
    };
    let line = format!("{}{}\n", if ends_in_newline { "" } else { "\n" }, format_node_id(id));
    let mut file =
        OpenOptions::new().append(true).create(true).open(&path).map_err(io_err(&path))?;
    // One write of one short line with O_APPEND: concurrent appends do not
    // interleave within it.
    file.write_all(line.as_bytes()).map_err(io_err(&path))?;
    file.sync_all().map_err(io_err(&path))?;
    Ok(true)
}

/// The CA's parameters, the same every time: rcgen signs with an issuer's
/// name, key-id method and key, so these plus the stored key rebuild an
/// issuer equal to the one in the file.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, CA_NAME);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

/// A cluster's certificate authority: its certificate and private key, as
/// held in [`CA_FILE`]. What an operator uses (through `repred-admin`) to
/// admit nodes that never see the key.
pub struct ClusterCa {
    cert: CertificateDer<'static>,
    key: KeyPair,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of logs.
        f.debug_struct("ClusterCa").finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// A new cluster, in memory.
    pub fn generate() -> Result<Self, CredentialsError> {
        let key = KeyPair::generate()?;
        let cert = ca_params().self_signed(&key)?;
        Ok(Self { cert: cert.der().clone(), key })
    }

    /// Creates a new cluster in `dir` (made if missing): [`CA_FILE`], owner
    /// only, and [`CLUSTER_FILE`], public. Refuses to replace a cluster that
    /// is there ([`CredentialsError::Exists`]).
    pub fn create(dir: &Path) -> Result<Self, CredentialsError> {
        if dir.as_os_str().is_empty() {
            return Err(CredentialsError::EmptyDataDir);
        }
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let ca_path = dir.join(CA_FILE);
        let ca = Self::generate()?;
        if !publish_new(&ca_path, ca.to_pem().as_bytes(), PRIVATE)? {
            return Err(CredentialsError::Exists { path: ca_path });
        }
        ca.publish_certificate(dir)?;
        Ok(ca)
    }

    /// Loads a cluster from a [`CA_FILE`] (certificate and private key, PEM).
    pub fn load(path: &Path) -> Result<Self, CredentialsError> {
        let bytes = fs::read(path).map_err(io_err(path))?;
        Self::from_pem(path, &bytes)
    }

    fn from_pem(path: &Path, bytes: &[u8]) -> Result<Self, CredentialsError> {
        let (cert, key) = parse_cert_and_key(path, bytes)?;
        let key = key_pair(path, &key)?;
        if certificate_id(&cert) != Some(id_from_public_key(&key.public_key_der())) {
            return Err(CredentialsError::Corrupt {
                path: path.to_path_buf(),
                detail: "the private key is not the certificate's".into(),
            });
        }
        Ok(Self { cert, key })
    }

    /// The cluster certificate, DER.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The cluster certificate alone, PEM: the contents of [`CLUSTER_FILE`].
    pub fn certificate_pem(&self) -> String {
        pem_encode("CERTIFICATE", &self.cert)
    }

    /// Certificate and private key, PEM: the contents of [`CA_FILE`].
    pub fn to_pem(&self) -> String {
        format!("{}{}", self.certificate_pem(), self.key.serialize_pem())
    }

    /// Writes [`CLUSTER_FILE`] into `dir` unless it is there; if it is, it
    /// must be this cluster's.
    fn publish_certificate(&self, dir: &Path) -> Result<(), CredentialsError> {
        let path = dir.join(CLUSTER_FILE);
        if publish_new(&path, self.certificate_pem().as_bytes(), PUBLIC)? {
            return Ok(());
        }
        let bytes = fs::read(&path).map_err(io_err(&path))?;
        if parse_cert(&path, &bytes)? != self.cert {
            return Err(CredentialsError::Corrupt {
                path,
                detail: format!("holds another cluster's certificate than {CA_FILE}"),
            });
        }
        Ok(())
    }

    /// Issues a new node: a fresh key pair and a certificate for it signed
    /// by this cluster, valid for `valid_for` from now (at most 100 years),
    /// or without a practical end if `None`.
    pub fn issue(&self, valid_for: Option<Duration>) -> Result<NodeCertificate, CredentialsError> {
        self.sign(KeyPair::generate()?, valid_for)
    }

    /// Renews a node certificate: a new certificate for the key in
    /// `node_pem` (as [`issue`](Self::issue) wrote it), so the node keeps
    /// its id. The old certificate need not be this cluster's or valid.
    pub fn renew(
        &self,
        node_pem: &[u8],
        valid_for: Option<Duration>,
    ) -> Result<NodeCertificate, CredentialsError> {
        let path = Path::new("node certificate");
        let (_, key) = parse_node_pem(path, node_pem)?;
        self.sign(key_pair(path, &key)?, valid_for)
    }

    fn sign(
        &self,
        key: KeyPair,
        valid_for: Option<Duration>,
    ) -> Result<NodeCertificate, CredentialsError> {
        let issuer = ca_params().self_signed(&self.key)?;
        let id = id_from_public_key(&key.public_key_der());
        let mut params = CertificateParams::new(vec![SERVER_NAME.to_string()])?;
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, format!("repred node {}", format_node_id(id)));
        params.distinguished_name = name;
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // Every node is both a server (accepting) and a client (dialing).
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let mut not_after = None;
        if let Some(valid_for) = valid_for {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
            let epoch = rcgen::date_time_ymd(1970, 1, 1);
            params.not_before = epoch + now.saturating_sub(CLOCK_SKEW);
            params.not_after = epoch + now + valid_for.min(MAX_VALIDITY);
            not_after = Some(UNIX_EPOCH + now + valid_for.min(MAX_VALIDITY));
        }
        let cert = params.signed_by(&key, &issuer, &self.key)?;
        let pem = format!("{}{}", cert.pem(), key.serialize_pem());
        let key = PrivatePkcs8KeyDer::from(key.serialize_der());
        Ok(NodeCertificate { id, cert: cert.der().clone(), key, pem, not_after })
    }
}

/// A node's certificate and key as [`ClusterCa`] issued them.
pub struct NodeCertificate {
    id: SourceId,
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
    pem: String,
    not_after: Option<SystemTime>,
}

impl std::fmt::Debug for NodeCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of logs.
        f.debug_struct("NodeCertificate")
            .field("id", &self.id)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl NodeCertificate {
    /// The node id the certificate stands for.
    pub fn id(&self) -> SourceId {
        self.id
    }

    /// When it stops being valid, if it was issued for a limited time.
    pub fn not_after(&self) -> Option<SystemTime> {
        self.not_after
    }

    /// The certificate, DER.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// Certificate and private key, PEM: the contents of a `node-<port>.pem`.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// Writes it to `path`, owner only, refusing to replace a file there
    /// ([`CredentialsError::Exists`]): that would be another node's
    /// identity.
    pub fn write_new(&self, path: &Path) -> Result<(), CredentialsError> {
        if publish_new(path, self.pem.as_bytes(), PRIVATE)? {
            Ok(())
        } else {
            Err(CredentialsError::Exists { path: path.to_path_buf() })
        }
    }

    /// Writes it to `path`, owner only, replacing what is there atomically
    /// (a reader sees the old file or the new one): for a renewal.
    pub fn replace(&self, path: &Path) -> Result<(), CredentialsError> {
        replace_file(path, self.pem.as_bytes())
    }
}

/// Loads the cluster from `dir`, creating it if there is none; writes
/// [`CLUSTER_FILE`] if it is missing (a directory made before it existed).
fn load_or_create_ca(dir: &Path) -> Result<ClusterCa, CredentialsError> {
    let path = dir.join(CA_FILE);
    if !exists(&path)? {
        let ca = ClusterCa::generate()?;
        // Losing the race is fine: the winner's file is read below.
        publish_new(&path, ca.to_pem().as_bytes(), PRIVATE)?;
    }
    let ca = ClusterCa::load(&path)?;
    ca.publish_certificate(dir)?;
    Ok(ca)
}

fn exists(path: &Path) -> Result<bool, CredentialsError> {
    path.try_exists().map_err(io_err(path))
}

fn key_pair(path: &Path, key: &PrivatePkcs8KeyDer<'_>) -> Result<KeyPair, CredentialsError> {
    KeyPair::try_from(key).map_err(|e| CredentialsError::Corrupt {
        path: path.to_path_buf(),
        detail: format!("unusable private key: {e}"),
    })
}

fn key_id(path: &Path, key: &PrivatePkcs8KeyDer<'_>) -> Result<SourceId, CredentialsError> {
    Ok(id_from_public_key(&key_pair(path, key)?.public_key_der()))
}

fn parse_cert(path: &Path, bytes: &[u8]) -> Result<CertificateDer<'static>, CredentialsError> {
    let cert = CertificateDer::from_pem_slice(bytes).map_err(|_| CredentialsError::Corrupt {
        path: path.to_path_buf(),
        detail: "no certificate found (expected a CERTIFICATE in PEM)".into(),
    })?;
    // PEM that decodes to something that is not a certificate (a
    // truncated one) is as corrupt as no PEM at all.
    webpki::EndEntityCert::try_from(&cert).map_err(|e| CredentialsError::Corrupt {
        path: path.to_path_buf(),
        detail: format!("the certificate does not parse: {e}"),
    })?;
    Ok(cert)
}

fn parse_cert_and_key(
    path: &Path,
    bytes: &[u8],
) -> Result<(CertificateDer<'static>, PrivatePkcs8KeyDer<'static>), CredentialsError> {
    let cert = parse_cert(path, bytes)?;
    let key = PrivatePkcs8KeyDer::from_pem_slice(bytes).map_err(|_| CredentialsError::Corrupt {
        path: path.to_path_buf(),
        detail: "no private key found (expected a CERTIFICATE and a PRIVATE KEY in PEM)".into(),
    })?;
    Ok((cert, key))
}

/// A node's certificate and key, checked to belong together: a file whose
/// key is not its certificate's would make a node that fails every
/// handshake.
fn parse_node_pem(
    path: &Path,
    bytes: &[u8],
) -> Result<(CertificateDer<'static>, PrivatePkcs8KeyDer<'static>), CredentialsError> {
    let (cert, key) = parse_cert_and_key(path, bytes)?;
    if certificate_id(&cert) != Some(key_id(path, &key)?) {
        return Err(CredentialsError::Corrupt {
            path: path.to_path_buf(),
            detail: "the private key is not the certificate's".into(),
        });
    }
    Ok((cert, key))
}

/// Whether `cert` chains to `ca` for the cluster's server name, now.
fn verify_node_cert(
    cert: &CertificateDer<'static>,
    ca: &CertificateDer<'static>,
) -> Result<(), rustls::Error> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone())?;
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    let name =
        ServerName::try_from(SERVER_NAME).map_err(|e| rustls::Error::General(e.to_string()))?;
    verifier.verify_server_cert(cert, &[], &name, &[], UnixTime::now()).map(|_| ())
}

/// The error for a node certificate this directory's cluster does not
/// accept, by why.
fn untrusted(path: &Path, e: rustls::Error) -> CredentialsError {
    let (path, reason) = (path.to_path_buf(), e.to_string());
    match e {
        rustls::Error::InvalidCertificate(
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. },
        ) => CredentialsError::Expired { path, reason },
        _ => CredentialsError::NotIssuedByCluster { path, reason },
    }
}

/// PEM armour around `der` (RFC 7468): base64 in lines of 64.
fn pem_encode(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = Vec::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let n =
            chunk.iter().enumerate().fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        for i in 0..4 {
            b64.push(if i <= chunk.len() {
                ALPHABET[(n >> (18 - 6 * i)) as usize & 63]
            } else {
                b'='
            });
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.chunks(64) {
        out.extend(line.iter().map(|&b| char::from(b)));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn temp_path(path: &Path) -> PathBuf {
    let mut nonce = [0u8; 8];
    // Uniqueness within this directory is all that matters; the pid alone
    // would do between processes, the nonce covers threads.
    let _ = getrandom::fill(&mut nonce);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(
        ".{name}.{}.{:016x}.tmp",
        std::process::id(),
        u64::from_le_bytes(nonce)
    ))
}

/// File mode of keys: owner only.
const PRIVATE: u32 = 0o600;
/// File mode of the cluster certificate: anyone may read it.
const PUBLIC: u32 = 0o644;

/// Writes a new file (with `mode` on Unix) completely and durably.
fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), CredentialsError> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(io_err(path))?;
    file.write_all(contents).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))
}

/// Publishes `contents` at `path` only if nothing is there yet, atomically:
/// a complete temporary file is hard-linked into place, which fails if the
/// name exists. Returns whether this call created it.
fn publish_new(path: &Path, contents: &[u8], mode: u32) -> Result<bool, CredentialsError> {
    let tmp = temp_path(path);
    write_new(&tmp, contents, mode)?;
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(_) => {
            // A file system without hard links: create_new still refuses to
            // overwrite, only a concurrent reader could see a partial file.
            match write_new(path, contents, mode) {
                Ok(()) => Ok(true),
                Err(CredentialsError::Io { source, .. })
                    if source.kind() == io::ErrorKind::AlreadyExists =>
                {
                    Ok(false)
                }
                Err(e) => Err(e),
            }
        }
    }
}

/// Replaces `path` with `contents` atomically (write aside, rename over),
/// owner only.
fn replace_file(path: &Path, contents: &[u8]) -> Result<(), CredentialsError> {
    let tmp = temp_path(path);
    write_new(&tmp, contents, PRIVATE)?;
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io_err(path)(e)
    })
}

/// Loads this node's signing key from `path`, or creates it (32 random
/// bytes, owner-only) the first time.
pub(crate) fn signing_key(path: &Path) -> Result<repred::Identity, CredentialsError> {
    match fs::read(path) {
        Ok(bytes) => {
            let secret: [u8; 32] =
                bytes.as_slice().try_into().map_err(|_| CredentialsError::Corrupt {
                    path: path.to_path_buf(),
                    detail: format!("a signing key is 32 bytes, found {}", bytes.len()),
                })?;
            Ok(repred::Identity::from_secret(secret))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let identity = repred::Identity::generate();
            let mut options = OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let written = options.open(path).and_then(|mut f| {
                f.write_all(&identity.secret())?;
                f.sync_all()
            });
            match written {
                Ok(()) => Ok(identity),
                // Another process made it first: use theirs.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => signing_key(path),
                Err(e) => Err(io_err(path)(e)),
            }
        }
        Err(e) => Err(io_err(path)(e)),
    }
}

#[cfg(test)]
mod tests {
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
            let mode = |name: &str| {
                fs::metadata(dir.path().join(name)).unwrap().permissions().mode() & 0o777
            };
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
        assert!(
            message.contains("repred-admin issue") && message.contains("node-6.pem"),
            "{message}"
        );
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
}
