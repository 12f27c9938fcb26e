//! Certificates and keys on disk: PEM parsing and encoding, files
//! written whole (created, published or replaced) with their modes, and
//! the node's signing key.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use rcgen::KeyPair;
use repred::SourceId;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};

use super::{CredentialsError, certificate_id, id_from_public_key, io_err};

pub(super) fn exists(path: &Path) -> Result<bool, CredentialsError> {
    path.try_exists().map_err(io_err(path))
}

pub(super) fn key_pair(
    path: &Path,
    key: &PrivatePkcs8KeyDer<'_>,
) -> Result<KeyPair, CredentialsError> {
    KeyPair::try_from(key).map_err(|e| CredentialsError::Corrupt {
        path: path.to_path_buf(),
        detail: format!("unusable private key: {e}"),
    })
}

pub(super) fn key_id(
    path: &Path,
    key: &PrivatePkcs8KeyDer<'_>,
) -> Result<SourceId, CredentialsError> {
    Ok(id_from_public_key(&key_pair(path, key)?.public_key_der()))
}

pub(super) fn parse_cert(
    path: &Path,
    bytes: &[u8],
) -> Result<CertificateDer<'static>, CredentialsError> {
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

pub(super) fn parse_cert_and_key(
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
pub(super) fn parse_node_pem(
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

/// PEM armour around `der` (RFC 7468): base64 in lines of 64.
pub(super) fn pem_encode(label: &str, der: &[u8]) -> String {
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
pub(super) const PRIVATE: u32 = 0o600;

/// File mode of the cluster certificate: anyone may read it.
pub(super) const PUBLIC: u32 = 0o644;

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
pub(super) fn publish_new(
    path: &Path,
    contents: &[u8],
    mode: u32,
) -> Result<bool, CredentialsError> {
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
pub(super) fn replace_file(path: &Path, contents: &[u8]) -> Result<(), CredentialsError> {
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
