//! The cluster's certificate authority and the node certificates it
//! issues.

use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use repred::SourceId;
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};

use super::files::{
    PRIVATE, PUBLIC, exists, key_pair, parse_cert, parse_cert_and_key, parse_node_pem, pem_encode,
    publish_new, replace_file,
};
use super::{
    CA_FILE, CA_NAME, CLOCK_SKEW, CLUSTER_FILE, CredentialsError, MAX_VALIDITY, SERVER_NAME,
    certificate_id, format_node_id, id_from_public_key, io_err,
};

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
    pub(super) cert: CertificateDer<'static>,
    pub(super) key: KeyPair,
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

    pub(super) fn from_pem(path: &Path, bytes: &[u8]) -> Result<Self, CredentialsError> {
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

    pub(super) fn sign(
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
    pub(super) cert: CertificateDer<'static>,
    pub(super) key: PrivatePkcs8KeyDer<'static>,
    pub(super) pem: String,
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
pub(super) fn load_or_create_ca(dir: &Path) -> Result<ClusterCa, CredentialsError> {
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
