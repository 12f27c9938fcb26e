//! Who a node is and which cluster admits it: certificates in the data
//! directory.
//!
//! A cluster is a certificate authority. Its certificate and private key live
//! together in one file, [`CA_FILE`] (`cluster-ca.pem`), so that publishing it
//! is a single atomic step: the first node to start writes it to a temporary
//! file and hard-links it into place, which fails if another node got there
//! first, and then everyone reads the one that won. Each node has its own key
//! pair and a certificate signed by the cluster's key, kept per port in
//! `node-<port>.pem`. Both ends of every connection present their node
//! certificate and verify the other's against the cluster certificate
//! (mutual TLS 1.3), so a node of another cluster fails the handshake before a
//! single byte of replicated data is sent.
//!
//! To admit a node on another machine, copy `cluster-ca.pem` into its data
//! directory: with the cluster's key it issues its own node certificate.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use repred::SourceId;
use rustls::RootCertStore;
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;

/// The file holding the cluster's certificate and private key.
pub const CA_FILE: &str = "cluster-ca.pem";

/// The name every node certificate is issued for and every client checks.
///
/// Nodes are found by address, not by name, so one shared name is enough:
/// what admits a peer is the cluster's signature, not the name.
pub const SERVER_NAME: &str = "repred.cluster";

/// The ALPN protocol spoken on every connection.
pub const ALPN: &[u8] = b"repred/1";

/// The common name of every cluster certificate; an issuer is matched by it.
const CA_NAME: &str = "repred cluster CA";

/// Why an identity could not be loaded or made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialsError {
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
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
    /// A certificate or key could not be generated.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// The TLS configuration was refused.
    #[error("TLS configuration failed: {0}")]
    Tls(#[from] rustls::Error),
    /// The certificate verifier could not be built.
    #[error("certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// The TLS configuration does not suit QUIC.
    #[error("TLS configuration unusable for QUIC: {0}")]
    Quic(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CredentialsError + '_ {
    move |source| CredentialsError::Io { path: path.to_path_buf(), source }
}

/// A node's credentials: the cluster certificate it trusts and its own
/// certificate and key.
pub struct Credentials {
    id: SourceId,
    ca_cert: CertificateDer<'static>,
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of logs.
        f.debug_struct("Credentials").field("id", &self.id).finish_non_exhaustive()
    }
}

impl Credentials {
    /// Loads the cluster from `dir`, creating it if this is the first node,
    /// and this node's certificate for `port`, issuing one if there is none
    /// (or if the one there was signed by another cluster).
    ///
    /// Blocking: it reads and writes files and generates keys.
    pub fn load_or_create(dir: &Path, port: u16) -> Result<Self, CredentialsError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let (ca_cert, ca_key) = load_or_create_ca(dir)?;
        let node_path = dir.join(format!("node-{port}.pem"));
        let existing = match fs::read(&node_path) {
            Ok(bytes) => parse_cert_and_key(&node_path, &bytes)
                .ok()
                .filter(|(cert, _)| signed_by(cert, &ca_cert)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err(&node_path)(e)),
        };
        let (cert, key) = match existing {
            Some(pair) => pair,
            None => {
                let (cert, key, pem) = issue_node_cert(&ca_key)?;
                // A stale or foreign certificate is replaced whole: written
                // aside, then renamed over, so a reader never sees half.
                replace_file(&node_path, pem.as_bytes())?;
                (cert, key)
            }
        };
        let key_pair = KeyPair::try_from(&key)?;
        Ok(Self { id: id_from_public_key(&key_pair.public_key_der()), ca_cert, cert, key })
    }

    /// Credentials from PEM held in memory: the cluster certificate to trust
    /// (its key is not needed) and a node's certificate and key. For tools
    /// and tests.
    pub fn from_pem(ca_cert_pem: &[u8], node_pem: &[u8]) -> Result<Self, CredentialsError> {
        let ca_cert =
            CertificateDer::from_pem_slice(ca_cert_pem).map_err(|_| CredentialsError::Corrupt {
                path: PathBuf::from(CA_FILE),
                detail: "no certificate found".into(),
            })?;
        let (cert, key) = parse_cert_and_key(Path::new("node"), node_pem)?;
        let key_pair = KeyPair::try_from(&key)?;
        Ok(Self { id: id_from_public_key(&key_pair.public_key_der()), ca_cert, cert, key })
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

    fn roots(&self) -> Result<Arc<RootCertStore>, CredentialsError> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_cert.clone())?;
        Ok(Arc::new(roots))
    }

    /// A QUIC server configuration that presents this node's certificate
    /// and requires a client certificate signed by the cluster.
    pub fn server_config(
        &self,
        transport: Arc<quinn::TransportConfig>,
    ) -> Result<quinn::ServerConfig, CredentialsError> {
        let provider = provider();
        let verifier =
            WebPkiClientVerifier::builder_with_provider(self.roots()?, provider.clone()).build()?;
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
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

    /// A QUIC client configuration that trusts only the cluster and presents
    /// this node's certificate.
    pub fn client_config(
        &self,
        transport: Arc<quinn::TransportConfig>,
    ) -> Result<quinn::ClientConfig, CredentialsError> {
        let mut tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.roots()?)
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

fn id_from_public_key(spki_der: &[u8]) -> SourceId {
    let digest = ring::digest::digest(&ring::digest::SHA256, spki_der);
    let mut bytes = [0u8; SourceId::LEN];
    bytes.copy_from_slice(&digest.as_ref()[..SourceId::LEN]);
    // A digest of all zeros is not going to happen; random is the fallback
    // that keeps this total.
    SourceId::from_bytes(bytes).unwrap_or_else(|_| SourceId::random())
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

fn load_or_create_ca(dir: &Path) -> Result<(CertificateDer<'static>, KeyPair), CredentialsError> {
    let path = dir.join(CA_FILE);
    if !path.exists() {
        let key = KeyPair::generate()?;
        let cert = ca_params().self_signed(&key)?;
        let pem = format!("{}{}", cert.pem(), key.serialize_pem());
        // Losing the race is fine: the winner's file is read below.
        publish_new(&path, pem.as_bytes())?;
    }
    let bytes = fs::read(&path).map_err(io_err(&path))?;
    let (cert, key) = parse_cert_and_key(&path, &bytes)?;
    let key = KeyPair::try_from(&key).map_err(|e| CredentialsError::Corrupt {
        path: path.clone(),
        detail: format!("unusable private key: {e}"),
    })?;
    Ok((cert, key))
}

fn issue_node_cert(
    ca_key: &KeyPair,
) -> Result<(CertificateDer<'static>, PrivatePkcs8KeyDer<'static>, String), CredentialsError> {
    let issuer = ca_params().self_signed(ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![SERVER_NAME.to_string()])?;
    let mut name = DistinguishedName::new();
    name.push(
        DnType::CommonName,
        format!("repred node {}", id_from_public_key(&key.public_key_der())),
    );
    params.distinguished_name = name;
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // Every node is both a server (accepting) and a client (dialing).
    params.extended_key_usages =
        vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer, ca_key)?;
    let pem = format!("{}{}", cert.pem(), key.serialize_pem());
    let der = PrivatePkcs8KeyDer::from(key.serialize_der());
    Ok((cert.der().clone(), der, pem))
}

fn parse_cert_and_key(
    path: &Path,
    bytes: &[u8],
) -> Result<(CertificateDer<'static>, PrivatePkcs8KeyDer<'static>), CredentialsError> {
    let corrupt = |what: &str| CredentialsError::Corrupt {
        path: path.to_path_buf(),
        detail: format!("no {what} found (expected a CERTIFICATE and a PRIVATE KEY in PEM)"),
    };
    let cert = CertificateDer::from_pem_slice(bytes).map_err(|_| corrupt("certificate"))?;
    let key = PrivatePkcs8KeyDer::from_pem_slice(bytes).map_err(|_| corrupt("private key"))?;
    Ok((cert, key))
}

/// Whether `cert` chains to `ca` for the cluster's server name.
fn signed_by(cert: &CertificateDer<'static>, ca: &CertificateDer<'static>) -> bool {
    let mut roots = RootCertStore::empty();
    if roots.add(ca.clone()).is_err() {
        return false;
    }
    let Ok(verifier) =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
    else {
        return false;
    };
    let Ok(name) = ServerName::try_from(SERVER_NAME) else { return false };
    verifier.verify_server_cert(cert, &[], &name, &[], UnixTime::now()).is_ok()
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

/// Writes a private file (mode 0600 on Unix) completely and durably.
fn write_private(path: &Path, contents: &[u8]) -> Result<(), CredentialsError> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(io_err(path))?;
    file.write_all(contents).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))
}

/// Publishes `contents` at `path` only if nothing is there yet, atomically:
/// a complete temporary file is hard-linked into place, which fails if the
/// name exists. Returns whether this call created it.
fn publish_new(path: &Path, contents: &[u8]) -> Result<bool, CredentialsError> {
    let tmp = temp_path(path);
    write_private(&tmp, contents)?;
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(_) => {
            // A file system without hard links: create_new still refuses to
            // overwrite, only a concurrent reader could see a partial file.
            match write_private(path, contents) {
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

/// Replaces `path` with `contents` atomically (write aside, rename over).
fn replace_file(path: &Path, contents: &[u8]) -> Result<(), CredentialsError> {
    let tmp = temp_path(path);
    write_private(&tmp, contents)?;
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
        assert!(signed_by(&a.cert, &b.ca_cert));
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

    #[test]
    fn a_node_certificate_of_another_cluster_is_reissued() {
        let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        Credentials::load_or_create(one.path(), 7).unwrap();
        Credentials::load_or_create(two.path(), 7).unwrap();
        fs::copy(one.path().join("node-7.pem"), two.path().join("node-7.pem")).unwrap();
        let again = Credentials::load_or_create(two.path(), 7).unwrap();
        assert!(signed_by(&again.cert, &again.ca_cert));
    }

    #[test]
    fn a_corrupt_cluster_file_is_a_typed_error() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(CA_FILE), b"not pem").unwrap();
        let err = Credentials::load_or_create(dir.path(), 1).unwrap_err();
        assert!(matches!(err, CredentialsError::Corrupt { .. }), "{err}");
    }
}
