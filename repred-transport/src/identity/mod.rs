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

mod ca;
mod files;
mod revoked;
mod tls;

pub use ca::{ClusterCa, NodeCertificate};
pub use revoked::{parse_revoked, revoke};

pub(crate) use tls::PeerVerifier;

use std::collections::BTreeSet;
use std::fs::{self};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use repred::SourceId;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair};
use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;

use ca::load_or_create_ca;
pub(crate) use files::signing_key;
use files::{
    PRIVATE, exists, key_id, key_pair, parse_cert, parse_node_pem, publish_new, replace_file,
};
use revoked::read_revoked;
use tls::{DenyClients, DenyServers, untrusted, verify_node_cert};

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

/// What both ends of an object's `stream` on `conn` share and no other
/// stream does, and which end this is: a TLS exporter value (RFC 8446
/// §7.5) of the connection, with the QUIC stream's id (never reused on a
/// connection) and the object's name as context; the end that initiated
/// the stream is its opener. Each end's signed Hello covers it
/// ([`repred::StreamOpts::binding`]), so a Hello recorded on one stream
/// and replayed on another does not verify, even when one peer holds both
/// (two connections, or two streams of one object on one connection with
/// the roles swapped), nor does one sent back to its signer. `None` only
/// if the handshake has no secrets to export from, which a connection that
/// carries streams always has; the stream is then not served at all,
/// rather than unbound.
pub(crate) fn channel_binding(
    conn: &quinn::Connection,
    stream: quinn::StreamId,
    object: &str,
) -> Option<repred::ChannelBinding> {
    let id = quinn::VarInt::from(stream).into_inner();
    let context = [id.to_le_bytes().as_slice(), object.as_bytes()].concat();
    let mut value = [0u8; 32];
    match conn.export_keying_material(&mut value, b"EXPORTER-repred-hello", &context) {
        Ok(()) => Some(repred::ChannelBinding { value, opened: stream.initiator() == conn.side() }),
        Err(e) => {
            tracing::warn!(error = ?e, "no channel binding: the stream is not served");
            None
        }
    }
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

#[cfg(test)]
mod tests;
