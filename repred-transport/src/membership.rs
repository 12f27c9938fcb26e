//! Membership datagrams on the wire, and whom a node takes them from.
//!
//! A node's membership is SWIM, run by its node core
//! ([`repred_node::NodeCore`], through `foca`): probes, acknowledgements,
//! indirect probes and the membership changes riding on them travel as UDP
//! datagrams on the node's own port, beside its QUIC connections (the first
//! byte tells them apart: see [`DATAGRAM_MARKER`]). Membership is a claim
//! like any other, so a node takes a datagram only from an admitted,
//! unrevoked node speaking in its own name: each is signed with the
//! sender's TLS key, the one its cluster certificate certifies.
//!
//! # Wire format
//!
//! ```text
//! bytes  field
//! 1      0x21, DATAGRAM_MARKER (every QUIC packet sets 0x40 in its first byte)
//! 16     the sender's node id
//! 1      flags: FLAG_CERTIFICATE (1) a certificate follows the signature;
//!        FLAG_HAVE_YOURS (2) the sender holds the receiver's certificate
//! 1      L, the signature's length
//! L      the signature: ECDSA P-256 with SHA-256, ASN.1 DER, by the sender's
//!        TLS key, over every other byte of the datagram (the 18 bytes
//!        before the length byte, then every byte after the signature)
//! 2      if FLAG_CERTIFICATE: C, the certificate's length, little-endian
//! C      if FLAG_CERTIFICATE: the sender's node certificate, DER
//! rest   the membership protocol's bytes: the node core's datagram after
//!        its 17-byte header (marker and sender id, which are the above);
//!        none in a datagram that only carries the certificate
//! ```
//!
//! A datagram is at most [`MAX_DATAGRAM`] bytes. The signature field (its
//! length byte and its bytes) is all the signature does not cover: a
//! changed length moves where the signature ends and the covered bytes
//! begin, and so needs a signature over other bytes.
//!
//! # What a receiver checks
//!
//! The sender must not be on the receiver's deny list. An attached
//! certificate must stand for the sender id
//! ([`crate::identity::certificate_id`]), carry a valid
//! signature of this datagram, and pass the very checks of the TLS
//! handshake (issued by the cluster, valid now, not denied); the receiver
//! then keeps it (at most [`MAX_CERTIFICATES`], checked again every ten
//! minutes, so an expired one does not live on). Without one, the sender's
//! kept certificate must verify the signature. Anything else (an unknown
//! sender without a certificate, a bad signature, a certificate of another
//! node or another cluster, a revoked sender, an oversized or malformed
//! datagram) is dropped and counted in
//! [`NodeStats::datagrams_refused`](crate::NodeStats::datagrams_refused).
//! The node core then checks that the membership header names the same
//! sender, so that nobody speaks in another's name.
//!
//! A sender attaches its certificate (some 460 bytes) to each datagram to a
//! peer until that peer says, by [`FLAG_HAVE_YOURS`], that it holds it
//! (and again once the peer comes back up, perhaps as a new life that lost
//! it); a datagram to a bootstrap address, whose node is not known yet,
//! always carries it. A datagram that would outgrow [`MAX_DATAGRAM`] with
//! the certificate goes without, right after one that carries the
//! certificate and no membership bytes at all: such a datagram is checked
//! like any other and only teaches the receiver the certificate.
//!
//! A captured datagram can be replayed while its sender's identity (this
//! life of it) lasts; SWIM judges news by incarnation, so a replay repeats
//! what the sender said and cannot say anything new in its name.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use repred::SourceId;
use repred_node::{DATAGRAM_HEADER, DATAGRAM_MARKER};
use ring::rand::SystemRandom;
use ring::signature::EcdsaKeyPair;
use rustls::pki_types::CertificateDer;

use crate::identity::{Credentials, CredentialsError, PeerVerifier, certificate_id};

/// The longest membership datagram a node sends or takes, in bytes: within
/// the smallest path MTU QUIC assumes (1,200 bytes of payload leave room
/// for the signature; a datagram carrying a certificate may need up to
/// this).
pub const MAX_DATAGRAM: usize = 1_400;

/// Flag: the sender's certificate follows the signature.
pub const FLAG_CERTIFICATE: u8 = 0b01;

/// Flag: the sender holds the receiver's certificate, so the receiver need
/// not attach it any more.
pub const FLAG_HAVE_YOURS: u8 = 0b10;

/// Most certificates of peers a node keeps.
pub const MAX_CERTIFICATES: usize = 100_000;

/// How long a kept certificate counts as checked: after that it is judged
/// again (it may have expired).
const RECHECK: Duration = Duration::from_secs(10 * 60);

/// Marker, sender id, flags: the bytes before the signature's length.
const SIGNED_HEADER: usize = DATAGRAM_HEADER + 1;

/// Why a datagram could not be sealed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// It does not start with [`DATAGRAM_MARKER`] and a sender id.
    #[error("not a membership datagram")]
    NotMembership,
    /// The key failed to sign (ring does not say why).
    #[error("signing failed")]
    Signing,
}

/// Signs a node's membership datagrams with its TLS key.
pub struct DatagramSigner {
    key: EcdsaKeyPair,
    rng: SystemRandom,
    certificate: CertificateDer<'static>,
}

impl std::fmt::Debug for DatagramSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of logs.
        f.debug_struct("DatagramSigner").finish_non_exhaustive()
    }
}

impl DatagramSigner {
    /// The signer of the node these credentials belong to.
    ///
    /// # Errors
    /// [`CredentialsError::UnsupportedKey`] when the node's key is not an
    /// ECDSA P-256 key.
    pub fn new(credentials: &Credentials) -> Result<Self, CredentialsError> {
        Ok(Self {
            key: credentials.datagram_key()?,
            rng: SystemRandom::new(),
            certificate: credentials.certificate().clone(),
        })
    }

    /// The wire form of `datagram`, as the node core handed it out
    /// ([`repred_node::Datagram::bytes`]: the marker, a sender id, then the
    /// membership bytes), with this node's certificate attached if
    /// `attach_certificate`, and [`FLAG_HAVE_YOURS`] if `have_yours`.
    ///
    /// The sender id is taken from `datagram` as it is: receivers refuse it
    /// unless it is this node's.
    pub fn seal(
        &self,
        datagram: &[u8],
        attach_certificate: bool,
        have_yours: bool,
    ) -> Result<Vec<u8>, SealError> {
        if datagram.len() < DATAGRAM_HEADER || datagram[0] != DATAGRAM_MARKER {
            return Err(SealError::NotMembership);
        }
        let mut flags = 0;
        if have_yours {
            flags |= FLAG_HAVE_YOURS;
        }
        let mut rest = Vec::new();
        if attach_certificate {
            // A certificate longer than 64 KiB could never fit a datagram.
            let len = u16::try_from(self.certificate.len()).map_err(|_| SealError::Signing)?;
            flags |= FLAG_CERTIFICATE;
            rest.extend_from_slice(&len.to_le_bytes());
            rest.extend_from_slice(&self.certificate);
        }
        rest.extend_from_slice(&datagram[DATAGRAM_HEADER..]);
        let mut message = Vec::with_capacity(SIGNED_HEADER + rest.len());
        message.extend_from_slice(&datagram[..DATAGRAM_HEADER]);
        message.push(flags);
        message.extend_from_slice(&rest);
        let signature = self.key.sign(&self.rng, &message).map_err(|_| SealError::Signing)?;
        let signature = signature.as_ref();
        let sig_len = u8::try_from(signature.len()).map_err(|_| SealError::Signing)?;
        let mut wire = Vec::with_capacity(message.len() + 1 + signature.len());
        wire.extend_from_slice(&message[..SIGNED_HEADER]);
        wire.push(sig_len);
        wire.extend_from_slice(signature);
        wire.extend_from_slice(&rest);
        Ok(wire)
    }
}

/// Why a datagram was dropped.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refused {
    #[error("longer than {MAX_DATAGRAM} bytes")]
    Oversized,
    #[error("malformed: {0}")]
    Malformed(&'static str),
    #[error("the sender is revoked")]
    Revoked,
    #[error("an unknown sender and no certificate")]
    UnknownSender,
    #[error("the certificate stands for another node")]
    WrongId,
    #[error("the certificate was refused: {0}")]
    Certificate(String),
    #[error("the signature does not verify")]
    BadSignature,
}

/// A datagram's parts, borrowed from it.
struct Parts<'a> {
    sender: SourceId,
    flags: u8,
    signature: &'a [u8],
    certificate: Option<&'a [u8]>,
    payload: &'a [u8],
    /// Everything after the signature.
    rest: &'a [u8],
}

fn parse(wire: &[u8]) -> Result<Parts<'_>, Refused> {
    if wire.len() > MAX_DATAGRAM {
        return Err(Refused::Oversized);
    }
    if wire.len() < SIGNED_HEADER + 1 || wire[0] != DATAGRAM_MARKER {
        return Err(Refused::Malformed("no header"));
    }
    let mut id = [0u8; SourceId::LEN];
    id.copy_from_slice(&wire[1..DATAGRAM_HEADER]);
    let sender = SourceId::from_bytes(id).map_err(|_| Refused::Malformed("sender id"))?;
    let flags = wire[DATAGRAM_HEADER];
    let sig_end = SIGNED_HEADER + 1 + usize::from(wire[SIGNED_HEADER]);
    let signature = wire.get(SIGNED_HEADER + 1..sig_end).ok_or(Refused::Malformed("signature"))?;
    let rest = &wire[sig_end..];
    let (certificate, payload) = if flags & FLAG_CERTIFICATE != 0 {
        let len = rest.get(..2).ok_or(Refused::Malformed("certificate length"))?;
        let end = 2 + usize::from(u16::from_le_bytes([len[0], len[1]]));
        let certificate = rest.get(2..end).ok_or(Refused::Malformed("certificate"))?;
        (Some(certificate), &rest[end..])
    } else {
        (None, rest)
    };
    Ok(Parts { sender, flags, signature, certificate, payload, rest })
}

/// A peer's certificate, kept once judged.
struct Known {
    certificate: CertificateDer<'static>,
    checked: Instant,
}

/// Opens membership datagrams: checks who sent them (see the
/// [module](self)), keeps the certificates of those who did, and
/// remembers which peers hold this node's.
pub(crate) struct Opener {
    verifier: PeerVerifier,
    denied: BTreeSet<SourceId>,
    known: HashMap<SourceId, Known>,
    have_mine: HashSet<SourceId>,
}

impl Opener {
    pub(crate) fn new(verifier: PeerVerifier, denied: BTreeSet<SourceId>) -> Self {
        Self { verifier, denied, known: HashMap::new(), have_mine: HashSet::new() }
    }

    /// Whether this node holds `peer`'s certificate (and so tells it
    /// [`FLAG_HAVE_YOURS`]).
    pub(crate) fn knows(&self, peer: SourceId) -> bool {
        self.known.contains_key(&peer)
    }

    /// Whether `peer` said it holds this node's certificate.
    pub(crate) fn has_mine(&self, peer: SourceId) -> bool {
        self.have_mine.contains(&peer)
    }

    /// Forgets that `peer` holds this node's certificate (it may have
    /// restarted): this node attaches it again until told otherwise.
    pub(crate) fn forget_mine(&mut self, peer: SourceId) {
        self.have_mine.remove(&peer);
    }

    /// The node core's form of `wire` (marker, sender id, membership
    /// bytes) if its sender is admitted and signed it.
    pub(crate) fn open(&mut self, wire: &[u8], now: Instant) -> Result<Vec<u8>, Refused> {
        let parts = parse(wire)?;
        let sender = parts.sender;
        if self.denied.contains(&sender) {
            return Err(Refused::Revoked);
        }
        let mut message = Vec::with_capacity(SIGNED_HEADER + parts.rest.len());
        message.extend_from_slice(&wire[..SIGNED_HEADER]);
        message.extend_from_slice(parts.rest);
        let kept = self.known.get(&sender);
        let fresh = |k: &Known| now.saturating_duration_since(k.checked) < RECHECK;
        let learn = match (parts.certificate, kept) {
            (Some(attached), Some(k)) if attached == k.certificate.as_ref() && fresh(k) => None,
            (Some(attached), _) => Some(CertificateDer::from(attached.to_vec())),
            (None, Some(k)) if fresh(k) => None,
            (None, Some(k)) => Some(k.certificate.clone()),
            (None, None) => return Err(Refused::UnknownSender),
        };
        match learn {
            None => {
                let certificate = &self.known[&sender].certificate;
                verify_signature(certificate, &message, parts.signature)?;
            }
            Some(certificate) => {
                // The cheap checks first, then the signature (which only the
                // key's holder can make), then the chain: a replayed
                // certificate costs one signature check.
                if certificate_id(&certificate) != Some(sender) {
                    return Err(Refused::WrongId);
                }
                verify_signature(&certificate, &message, parts.signature)?;
                if let Err(e) = self.verifier.verify(&certificate) {
                    self.known.remove(&sender);
                    return Err(Refused::Certificate(e.to_string()));
                }
                if self.known.len() >= MAX_CERTIFICATES && !self.known.contains_key(&sender) {
                    // Full: one goes (it is fetched again with the next
                    // datagram its node attaches it to).
                    if let Some(old) = self.known.keys().next().copied() {
                        self.known.remove(&old);
                        self.have_mine.remove(&old);
                    }
                }
                self.known.insert(sender, Known { certificate, checked: now });
            }
        }
        if parts.flags & FLAG_HAVE_YOURS != 0 {
            if self.have_mine.len() < MAX_CERTIFICATES {
                self.have_mine.insert(sender);
            }
        } else {
            // A peer that restarted lost what it held: attach again.
            self.have_mine.remove(&sender);
        }
        let mut out = Vec::with_capacity(DATAGRAM_HEADER + parts.payload.len());
        out.extend_from_slice(&wire[..DATAGRAM_HEADER]);
        out.extend_from_slice(parts.payload);
        Ok(out)
    }
}

fn verify_signature(
    certificate: &CertificateDer<'_>,
    message: &[u8],
    signature: &[u8],
) -> Result<(), Refused> {
    let cert = webpki::EndEntityCert::try_from(certificate)
        .map_err(|_| Refused::Certificate("does not parse".into()))?;
    cert.verify_signature(webpki::ring::ECDSA_P256_SHA256, message, signature)
        .map_err(|_| Refused::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::ClusterCa;

    fn credentials(ca: &ClusterCa) -> Credentials {
        let node = ca.issue(None).unwrap();
        Credentials::from_pem(ca.certificate_pem().as_bytes(), node.pem().as_bytes()).unwrap()
    }

    fn opener(of: &Credentials) -> Opener {
        Opener::new(of.peer_verifier().unwrap(), of.denied().clone())
    }

    /// What a node core hands out: marker, sender, membership bytes.
    fn core_datagram(sender: SourceId, body: &[u8]) -> Vec<u8> {
        [&[DATAGRAM_MARKER][..], sender.as_bytes(), body].concat()
    }

    #[test]
    fn a_sealed_datagram_opens_to_what_the_core_sent() {
        let ca = ClusterCa::generate().unwrap();
        let (a, b) = (credentials(&ca), credentials(&ca));
        let signer = DatagramSigner::new(&a).unwrap();
        let mut at_b = opener(&b);
        let sent = core_datagram(a.id(), b"probe");
        let now = Instant::now();

        // Without the certificate, b cannot know who signed.
        let bare = signer.seal(&sent, false, false).unwrap();
        assert_eq!(at_b.open(&bare, now), Err(Refused::UnknownSender));
        let with = signer.seal(&sent, true, false).unwrap();
        assert!(with.len() > bare.len() + 300, "the certificate rides along");
        assert!(with.len() <= MAX_DATAGRAM);
        assert_eq!(at_b.open(&with, now).unwrap(), sent);
        assert!(at_b.knows(a.id()) && !at_b.has_mine(a.id()));
        // Now it does, and hears that a holds its certificate.
        let bare = signer.seal(&sent, false, true).unwrap();
        assert_eq!(at_b.open(&bare, now).unwrap(), sent);
        assert!(at_b.has_mine(a.id()));
        // A datagram without the flag says a lost it (a restart).
        assert_eq!(at_b.open(&signer.seal(&sent, false, false).unwrap(), now).unwrap(), sent);
        assert!(!at_b.has_mine(a.id()));
        assert_eq!(signer.seal(b"\x40 quic", true, false), Err(SealError::NotMembership));
        // A certificate alone, for a peer that does not know a yet.
        let mut at_c = opener(&credentials(&ca));
        let header = &sent[..DATAGRAM_HEADER];
        assert_eq!(at_c.open(&signer.seal(header, true, false).unwrap(), now).unwrap(), header);
        assert_eq!(at_c.open(&bare, now).unwrap(), sent, "then the bare one is taken");
    }

    #[test]
    fn forgeries_are_refused() {
        let ca = ClusterCa::generate().unwrap();
        let (a, b, c) = (credentials(&ca), credentials(&ca), credentials(&ca));
        let other = credentials(&ClusterCa::generate().unwrap());
        let mut at_b = opener(&b);
        let now = Instant::now();
        let a_signer = DatagramSigner::new(&a).unwrap();
        let good = a_signer.seal(&core_datagram(a.id(), b"hello"), true, false).unwrap();

        // Any changed byte, signed or signature.
        for at in [0, 5, 17, 20, 40, good.len() - 1] {
            let mut bad = good.clone();
            bad[at] ^= 0x01;
            assert!(at_b.open(&bad, now).is_err(), "byte {at} changed");
        }
        assert!(!at_b.knows(a.id()), "nothing was learned from a forgery");
        // A signature that is not a's, over the right bytes.
        let mut forged = good.clone();
        let sig_len = usize::from(forged[SIGNED_HEADER]);
        forged[SIGNED_HEADER + 1..SIGNED_HEADER + 1 + sig_len].fill(0x30);
        assert!(matches!(at_b.open(&forged, now), Err(Refused::BadSignature)));
        // In a's name, signed by c with c's certificate.
        let c_signer = DatagramSigner::new(&c).unwrap();
        let lie = c_signer.seal(&core_datagram(a.id(), b"hello"), true, false).unwrap();
        assert_eq!(at_b.open(&lie, now), Err(Refused::WrongId));
        // Another cluster's node, in its own name.
        let o_signer = DatagramSigner::new(&other).unwrap();
        let outsider = o_signer.seal(&core_datagram(other.id(), b"hi"), true, false).unwrap();
        assert!(matches!(at_b.open(&outsider, now), Err(Refused::Certificate(_))));
        // Once a is known, c still cannot speak in a's name without a
        // certificate either.
        assert_eq!(at_b.open(&good, now).unwrap(), core_datagram(a.id(), b"hello"));
        let lie = c_signer.seal(&core_datagram(a.id(), b"hello"), false, false).unwrap();
        assert_eq!(at_b.open(&lie, now), Err(Refused::BadSignature));
        // Oversized, truncated.
        let big = a_signer.seal(&core_datagram(a.id(), &[7; MAX_DATAGRAM]), false, false).unwrap();
        assert_eq!(at_b.open(&big, now), Err(Refused::Oversized));
        for len in [0, 1, 18, 19, 30] {
            assert!(matches!(at_b.open(&good[..len], now), Err(Refused::Malformed(_))), "{len}");
        }
        // A revoked node, even one whose certificate was kept.
        let mut strict = Opener::new(b.peer_verifier().unwrap(), [a.id()].into());
        assert_eq!(strict.open(&good, now), Err(Refused::Revoked));
        let b_denies = Credentials::from_pem(
            ca.certificate_pem().as_bytes(),
            ca.issue(None).unwrap().pem().as_bytes(),
        )
        .unwrap()
        .deny([a.id()]);
        let mut by_verifier = Opener::new(b_denies.peer_verifier().unwrap(), BTreeSet::new());
        assert!(matches!(by_verifier.open(&good, now), Err(Refused::Certificate(_))));
    }

    #[test]
    fn kept_certificates_are_judged_again_after_a_while() {
        let ca = ClusterCa::generate().unwrap();
        let (a, b) = (credentials(&ca), credentials(&ca));
        let signer = DatagramSigner::new(&a).unwrap();
        let mut at_b = opener(&b);
        let now = Instant::now();
        let sent = core_datagram(a.id(), b"x");
        at_b.open(&signer.seal(&sent, true, false).unwrap(), now).unwrap();
        // Later, b's cluster stops admitting a (as an expiry would): the
        // kept certificate is judged again and dropped.
        at_b.verifier = b_with_denied(&ca, a.id()).peer_verifier().unwrap();
        let bare = signer.seal(&sent, false, false).unwrap();
        assert_eq!(at_b.open(&bare, now).unwrap(), sent, "within the recheck period");
        let later = now + RECHECK + Duration::from_secs(1);
        assert!(matches!(at_b.open(&bare, later), Err(Refused::Certificate(_))));
        assert!(!at_b.knows(a.id()));
    }

    fn b_with_denied(ca: &ClusterCa, id: SourceId) -> Credentials {
        credentials(ca).deny([id])
    }
}
