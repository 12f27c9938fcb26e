//! Signed updates, clock advances and snapshots, and self-certifying source
//! ids.
//!
//! With an [`Identity`], a replica's source id is derived from its public
//! key (the first 16 bytes of its SHA-256), and every update it makes carries
//! an ed25519 signature over `(source, ts, SHA-256 of the encoded change)`
//! together with that key. A receiver checks that the key hashes to the
//! claimed id and that the signature holds, so nobody can write in another's
//! name, and a relayed update is verified against its origin's key, not the
//! relay's. No key needs sharing in advance.
//!
//! Because the signature covers the change's digest rather than the change,
//! an update that changed nothing can travel as its [`Proof`] alone (stamp,
//! digest, signature): a verifying peer moves its clock on the origin's word,
//! not the relay's. Snapshots are signed by the replica that takes them
//! ([`Identity::sign_snapshot`]); whom to believe is the receiver's choice
//! ([`Config::trust_snapshots_from`](crate::Config::trust_snapshots_from)).

use ed25519_dalek::{Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{SourceId, Timestamp};

/// Domain separation: a repred update signature can never be mistaken for
/// a signature of anything else made with the same key (a snapshot's, say).
const CONTEXT: &[u8] = b"repred update v2";
/// The same for snapshots.
const SNAPSHOT_CONTEXT: &[u8] = b"repred snapshot v1";
/// The same for a Hello's claims.
const HELLO_CONTEXT: &[u8] = b"repred hello v2";

/// A signing key pair; its public half names the source.
///
/// ```
/// use repred::Identity;
///
/// let me = Identity::from_secret([7; 32]);
/// assert_eq!(me.id(), Identity::from_secret([7; 32]).id(), "the id follows from the key");
/// assert_ne!(me.id(), Identity::from_secret([8; 32]).id());
/// ```
#[derive(Clone)]
pub struct Identity {
    key: SigningKey,
    id: SourceId,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("Identity").field("id", &self.id).finish_non_exhaustive()
    }
}

impl Identity {
    /// An identity from 32 secret bytes (keep them secret, e.g. on disk
    /// with owner-only permissions).
    pub fn from_secret(secret: [u8; 32]) -> Self {
        let key = SigningKey::from_bytes(&secret);
        let id = source_id_of(&key.verifying_key().to_bytes());
        Self { key, id }
    }

    /// A fresh identity from the operating system's randomness.
    pub fn generate() -> Self {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).expect("the operating system has no source of randomness");
        Self::from_secret(secret)
    }

    /// The 32 secret bytes, to store.
    pub fn secret(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// The source id this identity writes under.
    pub fn id(&self) -> SourceId {
        self.id
    }

    /// The public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// Signs an update's `(source, ts, encoded change)`.
    pub fn sign(&self, ts: Timestamp, change: &[u8]) -> Signature {
        self.sign_digest(ts, &change_digest(change))
    }

    /// Signs an update given the [`change_digest`] of its encoded change.
    pub fn sign_digest(&self, ts: Timestamp, digest: &ChangeDigest) -> Signature {
        self.sign_message(&message(self.id, ts, digest))
    }

    /// Signs a snapshot given the SHA-256 of its encoded body (clock and
    /// state): this replica vouches that the state holds exactly the
    /// updates the clock names.
    pub fn sign_snapshot(&self, body_digest: &[u8; 32]) -> Signature {
        self.sign_message(&snapshot_message(body_digest))
    }

    /// Signs what a Hello claims of its sender (see [`HelloClaims`]).
    pub fn sign_hello(&self, claims: &HelloClaims) -> Signature {
        self.sign_message(&hello_message(claims))
    }

    fn sign_message(&self, message: &[u8]) -> Signature {
        let sig = self.key.sign(message).to_bytes();
        let mut halves = ([0u8; 32], [0u8; 32]);
        halves.0.copy_from_slice(&sig[..32]);
        halves.1.copy_from_slice(&sig[32..]);
        Signature { key: self.public_key(), sig: halves }
    }
}

/// The SHA-256 of an update's encoded change: what an update signature
/// covers, so that its [`Proof`] can travel without the change.
pub type ChangeDigest = [u8; 32];

/// The [`ChangeDigest`] of an encoded change.
pub fn change_digest(change: &[u8]) -> ChangeDigest {
    Sha256::digest(change).into()
}

/// A signed update reduced to what proves it happened: its stamp, the
/// digest of its change and the origin's signature.
///
/// A replica records a signed update that changed nothing as its proof, and
/// passes the proof on instead of the update: a verifying peer moves its
/// clock past the update without needing the change (it changed nothing
/// that the sender had not already sent), and nobody can move a verifying
/// peer's clock in another's name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Proof {
    /// The update's origin and timestamp.
    pub stamp: crate::Stamp,
    /// The [`change_digest`] of its change.
    pub digest: ChangeDigest,
    /// The origin's signature over `(source, ts, digest)`.
    pub signature: Signature,
}

impl Proof {
    /// Checks the origin's signature.
    pub fn verify(&self) -> Result<(), VerifyError> {
        self.signature.verify_digest(self.stamp.source, self.stamp.ts, &self.digest)
    }
}

/// The source id that belongs to a public key.
pub fn source_id_of(public_key: &[u8; 32]) -> SourceId {
    let hash = Sha256::digest(public_key);
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&hash[..16]);
    SourceId::from_hash(bytes)
}

fn message(source: SourceId, ts: Timestamp, digest: &ChangeDigest) -> Vec<u8> {
    let mut m = Vec::with_capacity(CONTEXT.len() + 24 + digest.len());
    m.extend_from_slice(CONTEXT);
    m.extend_from_slice(source.as_bytes());
    m.extend_from_slice(&ts.to_raw().to_le_bytes());
    m.extend_from_slice(digest);
    m
}

fn snapshot_message(body_digest: &[u8; 32]) -> Vec<u8> {
    [SNAPSHOT_CONTEXT, body_digest.as_slice()].concat()
}

/// What a signed [`Hello`](crate::Hello) vouches for: who sends it, in
/// which life, at which collection floor, with which clock (by digest),
/// which of its own writes it lacks, and on which stream. A strict replica
/// believes a peer's life only when its Hello is signed by the key of the
/// id it claims, and its floor only when signed by a signer it trusts with
/// snapshots: anyone could claim either.
///
/// The `binding` ties the claims to one end of one stream: both ends pass
/// the same [`ChannelBinding`] value in
/// [`StreamOpts::binding`](crate::StreamOpts::binding), each from its own
/// side; the sender signs its side and the receiver verifies with the
/// sender's, so a Hello replayed on another stream, or sent back to its
/// signer, does not verify and cuts its replayer off. Without one (streams
/// in memory, files), a signed Hello can be replayed by another peer, which
/// then passes for its signer on that stream (see the README's *What a
/// Hello claims* for what that allows).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HelloClaims {
    /// The sender's source id.
    pub id: SourceId,
    /// Its life ([`Hello::life`](crate::Hello::life)).
    pub life: u64,
    /// Its collection floor ([`Hello::floor`](crate::Hello::floor)).
    pub floor: Timestamp,
    /// The [`Clock::digest`](crate::Clock::digest) of the clock the Hello
    /// summarises.
    pub clock: [u8; 16],
    /// [`Hello::missing_own`](crate::Hello::missing_own).
    pub missing_own: Option<Timestamp>,
    /// The stream's [`StreamOpts::binding`](crate::StreamOpts::binding) as
    /// the sender sees it: not sent, since each end knows it.
    pub binding: Option<ChannelBinding>,
}

/// A value both ends of one stream know and nobody can make another
/// stream share, and which end of it this is, which a signed Hello covers
/// so that it cannot be replayed elsewhere ([`HelloClaims`]). Over QUIC
/// the value is a TLS exporter value (RFC 8446 §7.5): derived from the
/// connection's secrets, and the stream's object name, it differs for
/// every connection even when one peer made both. The side keeps a Hello
/// from being sent back to its own signer on the same stream.
///
/// ```
/// use repred::{ChannelBinding, Identity, HelloClaims, Timestamp};
///
/// let signer = Identity::from_secret([7; 32]);
/// let on = |binding| HelloClaims {
///     id: signer.id(),
///     life: 1,
///     floor: Timestamp::ZERO,
///     clock: [0; 16],
///     missing_own: None,
///     binding,
/// };
/// // The opener signs its Hello; the acceptor checks it as the opener's.
/// let mine = ChannelBinding::opener([1; 32]);
/// let signed = signer.sign_hello(&on(Some(mine)));
/// let at_the_acceptor = ChannelBinding::acceptor([1; 32]);
/// assert_eq!(signed.verify_hello(&on(Some(at_the_acceptor.other_end()))), Ok(signer.id()));
/// assert!(signed.verify_hello(&on(Some(mine.other_end()))).is_err(), "sent back to the opener");
/// let elsewhere = ChannelBinding::acceptor([2; 32]).other_end();
/// assert!(signed.verify_hello(&on(Some(elsewhere))).is_err(), "another stream");
/// assert!(signed.verify_hello(&on(None)).is_err(), "an unbound stream");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChannelBinding {
    /// What both ends derive.
    pub value: [u8; 32],
    /// Whether this end opened the stream; the other end says the opposite.
    pub opened: bool,
}

impl ChannelBinding {
    /// The binding at the end that opened the stream.
    pub const fn opener(value: [u8; 32]) -> Self {
        Self { value, opened: true }
    }

    /// The binding at the end that accepted the stream.
    pub const fn acceptor(value: [u8; 32]) -> Self {
        Self { value, opened: false }
    }

    /// The same binding as the other end sees it.
    pub const fn other_end(self) -> Self {
        Self { value: self.value, opened: !self.opened }
    }
}

fn hello_message(claims: &HelloClaims) -> Vec<u8> {
    let mut m = HELLO_CONTEXT.to_vec();
    m.extend_from_slice(&claims.life.to_le_bytes());
    m.extend_from_slice(&claims.floor.to_raw().to_le_bytes());
    m.extend_from_slice(&claims.clock);
    match claims.missing_own {
        Some(after) => {
            m.push(1);
            m.extend_from_slice(&after.to_raw().to_le_bytes());
        }
        None => m.push(0),
    }
    match claims.binding {
        Some(ChannelBinding { value, opened }) => {
            m.push(1);
            m.extend_from_slice(&value);
            m.push(u8::from(opened));
        }
        None => m.push(0),
    }
    // Last, so its length needs no prefix.
    m.extend_from_slice(claims.id.as_bytes());
    m
}

/// An origin's signature over an update, with the key it was made with.
///
/// The key travels with every signed update, so a receiver that never met
/// the origin can still check it (96 bytes an update).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Signature {
    /// The origin's ed25519 public key; must hash to the update's source.
    pub key: [u8; 32],
    /// The ed25519 signature, in two halves (serde has no 64-byte arrays).
    pub sig: ([u8; 32], [u8; 32]),
}

/// Why a signed update does not verify.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum VerifyError {
    /// The replica requires signatures and the update has none.
    #[error("the update is not signed")]
    Unsigned,
    /// The key does not hash to the claimed source id: someone is writing
    /// in another's name.
    #[error("the signing key does not belong to source {0}")]
    KeyMismatch(SourceId),
    /// The key is not a valid ed25519 point.
    #[error("the signing key is malformed")]
    BadKey,
    /// The signature does not match the update.
    #[error("the signature does not match the update")]
    BadSignature,
}

impl Signature {
    /// Checks this signature over an update of `source` at `ts` whose change
    /// encodes (postcard) to `change`.
    pub fn verify(
        &self,
        source: SourceId,
        ts: Timestamp,
        change: &[u8],
    ) -> Result<(), VerifyError> {
        self.verify_digest(source, ts, &change_digest(change))
    }

    /// Checks this signature over an update of `source` at `ts` whose
    /// change has the given [`change_digest`].
    pub fn verify_digest(
        &self,
        source: SourceId,
        ts: Timestamp,
        digest: &ChangeDigest,
    ) -> Result<(), VerifyError> {
        if self.signer() != source {
            return Err(VerifyError::KeyMismatch(source));
        }
        self.check(&message(source, ts, digest))
    }

    /// Checks this signature over a snapshot whose encoded body (clock,
    /// then state) has SHA-256 `body_digest`; returns who signed it.
    pub fn verify_snapshot(&self, body_digest: &[u8; 32]) -> Result<SourceId, VerifyError> {
        self.check(&snapshot_message(body_digest))?;
        Ok(self.signer())
    }

    /// Checks this signature over a Hello's `claims`; returns who made it.
    pub fn verify_hello(&self, claims: &HelloClaims) -> Result<SourceId, VerifyError> {
        self.check(&hello_message(claims))?;
        Ok(self.signer())
    }

    /// The source id of the key that made this signature.
    pub fn signer(&self) -> SourceId {
        source_id_of(&self.key)
    }

    fn check(&self, message: &[u8]) -> Result<(), VerifyError> {
        let key = VerifyingKey::from_bytes(&self.key).map_err(|_| VerifyError::BadKey)?;
        let mut bytes = [0u8; 64];
        bytes[..32].copy_from_slice(&self.sig.0);
        bytes[32..].copy_from_slice(&self.sig.1);
        let sig = ed25519_dalek::Signature::from_bytes(&bytes);
        key.verify(message, &sig).map_err(|_| VerifyError::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_for_its_update_and_source() {
        let me = Identity::from_secret([1; 32]);
        let ts = Timestamp::new(5, 0);
        let sig = me.sign(ts, b"change");
        assert_eq!(sig.verify(me.id(), ts, b"change"), Ok(()));
        assert_eq!(sig.verify(me.id(), ts, b"chang3"), Err(VerifyError::BadSignature));
        assert_eq!(
            sig.verify(me.id(), Timestamp::new(6, 0), b"change"),
            Err(VerifyError::BadSignature)
        );
        let other = Identity::from_secret([2; 32]).id();
        assert_eq!(sig.verify(other, ts, b"change"), Err(VerifyError::KeyMismatch(other)));
    }

    #[test]
    fn a_proof_verifies_without_the_change_and_a_snapshot_names_its_signer() {
        let me = Identity::from_secret([3; 32]);
        let ts = Timestamp::new(9, 1);
        let digest = change_digest(b"change");
        let proof = Proof {
            stamp: crate::Stamp { ts, source: me.id() },
            digest,
            signature: me.sign(ts, b"change"),
        };
        assert_eq!(proof.verify(), Ok(()));
        let mut wrong = proof.clone();
        wrong.digest = change_digest(b"other");
        assert_eq!(wrong.verify(), Err(VerifyError::BadSignature));
        let body = [7u8; 32];
        let sig = me.sign_snapshot(&body);
        assert_eq!(sig.verify_snapshot(&body), Ok(me.id()));
        assert_eq!(sig.verify_snapshot(&[8u8; 32]), Err(VerifyError::BadSignature));
        // An update signature is not a snapshot signature, and back.
        assert!(proof.signature.verify_snapshot(&digest).is_err());
        assert!(sig.verify_digest(me.id(), ts, &body).is_err());
    }

    #[test]
    fn debug_hides_the_secret() {
        let me = Identity::from_secret([9; 32]);
        assert!(!format!("{me:?}").contains("9, 9"));
    }
}
