//! The TLS side of admission: the verifiers that check a peer's
//! certificate against the cluster and refuse revoked ids, and the check
//! of a node certificate against the cluster's at load.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use repred::SourceId;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::{CredentialsError, SERVER_NAME, certificate_id, provider};

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
    pub(super) inner: Arc<DenyClients>,
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
pub(super) struct DenyClients {
    pub(super) inner: Arc<dyn ClientCertVerifier>,
    pub(super) denied: Arc<BTreeSet<SourceId>>,
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
pub(super) struct DenyServers {
    pub(super) inner: Arc<WebPkiServerVerifier>,
    pub(super) denied: Arc<BTreeSet<SourceId>>,
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

/// Whether `cert` chains to `ca` for the cluster's server name, now.
pub(super) fn verify_node_cert(
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
pub(super) fn untrusted(path: &Path, e: rustls::Error) -> CredentialsError {
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
