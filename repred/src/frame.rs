//! The wire: length-prefixed frames in postcard.
//!
//! Every frame is `[length: u32 LE][kind: u8][body]`, where `length` counts the
//! kind byte and the body. Bodies are postcard:
//!
//! | kind | frame    | body                                             |
//! |------|----------|--------------------------------------------------|
//! | 1    | Hello    | protocol version (varint), then [`Hello`]        |
//! | 2    | Updates  | one or more [`Envelope`](crate::Envelope)s, back to back |
//! | 3    | SnapshotBegin | how many sources the sender's clock has and its digest, an optional signature, then (since version 4) about how many entries the state holds if the sender knows ([`Reduce::entries_hint`](crate::Reduce::entries_hint)) and its collection floor as the snapshot begins |
//! | 14   | SnapshotClock | `(source, ts)` entries of that clock, in source order |
//! | 12   | SnapshotPart | its index, a part of the state ([`Reduce::snapshot_part`](crate::Reduce::snapshot_part)), an optional signature |
//! | 13   | SnapshotEnd | how many parts, an optional signature |
//! | 4    | Sync     | empty: the history before it is complete         |
//! | 5    | Close    | a [`CloseReason`]                                |
//! | 6    | Advance  | `(source, ts)` pairs: new to the sender, no-ops  |
//! | 7    | Clock    | the sender's whole [`Clock`]                     |
//! | 8    | Have     | `(source, ts)` pairs: the sender has these (lazy relay) |
//! | 9    | Want     | `(source, ts)` pairs: push this source from `ts` on |
//! | 10   | Unwant   | sources: stop pushing these                      |
//! | 11   | Proofs   | [`Proof`]s: signed updates that changed nothing  |
//!
//! A snapshot travels in parts, each far below the frame limit: its clock
//! (read before the first part) in chunks, then the state in parts made one
//! after the other and merged on arrival one by one; the receiver takes the
//! clock only with the end. Signed, each frame's signature binds it to the snapshot
//! it belongs to (the begin frame's digest) and to its place in it.
//!
//! An Advance names updates the sender took in that changed nothing, because
//! everything it had already sent covered them; the receiver's clock moves
//! past them so that clocks converge along with states. Proofs do the same
//! for signed updates, with the origin's signature over the change's digest,
//! so that a strict receiver moves its clock on the origin's word only.
//!
//! A Hello carries the sender's clock whole when it is small, and otherwise
//! only its digest (16 bytes): replicas that are already equal learn it from
//! the digests and exchange nothing more than Hello and Sync, whatever the
//! number of sources. When the digests differ, each side that sent a digest
//! follows up with a Clock frame, one round trip later.

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use sha2::{Digest, Sha256};

use crate::{Clock, Proof, Signature, SnapshotRefusal, SourceId, Stamp};

/// The protocol version this crate speaks; a Hello with another is refused.
///
/// 3: a SnapshotBegin may end with the state's size hint, which version 2
/// refuses as bytes left over (and version 2 of before issue 16 sent
/// snapshots in one frame: the streamed ones and the Ranges frame came
/// without a bump).
///
/// 4: a SnapshotBegin ends with the size hint (if any) and the sender's
/// collection floor as it begins, which may have risen since its Hello.
///
/// 5: a Hello ends with whether the sender asks to be brought up by
/// snapshot (a replica that rejoined lacking own writes it had).
///
/// 6: that ending says instead after which of its own writes it lacks
/// some, so that only a peer holding a newer one answers.
///
/// 7: a snapshot may be refused as stalled (`SnapshotRefusal::Stalled` in
/// a Close), which version 6 does not decode.
///
/// 8: or as too slow (`SnapshotRefusal::TooSlow`), which version 7 does
/// not decode.
///
/// 9: a peer may be cut off for a snapshot whose clock names more sources
/// than the receiver takes (`PeerMisbehaved::SnapshotTooManySources` in a
/// Close), or for taking none of one sent to it
/// (`PeerMisbehaved::SnapshotUnread`), which version 8 does not decode.
///
/// 10: a Hello may be signed by its sender ([`Hello::signature`]), and a
/// peer cut off for a signature that does not hold
/// (`PeerMisbehaved::HelloSignature`); a strict replica refuses a snapshot
/// from a sender that did not prove it is the trusted signer it claims
/// (`SnapshotRefusal::UnprovenSender`).
///
/// 11: a Hello's signature covers its stream's channel binding
/// ([`StreamOpts::binding`](crate::StreamOpts::binding)), which version 10
/// does not sign: the two would cut each other off.
pub const PROTOCOL_VERSION: u16 = 11;

/// Bytes before a frame's body: the length prefix and the kind.
pub const FRAME_HEADER_LEN: usize = 5;

/// The kinds of frame, as their first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    Hello = 1,
    Updates = 2,
    SnapshotBegin = 3,
    Sync = 4,
    Close = 5,
    Advance = 6,
    Clock = 7,
    Have = 8,
    Want = 9,
    Unwant = 10,
    Proofs = 11,
    SnapshotPart = 12,
    SnapshotEnd = 13,
    SnapshotClock = 14,
    Ranges = 15,
}

impl Kind {
    fn from_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            1 => Kind::Hello,
            2 => Kind::Updates,
            3 => Kind::SnapshotBegin,
            4 => Kind::Sync,
            5 => Kind::Close,
            6 => Kind::Advance,
            7 => Kind::Clock,
            8 => Kind::Have,
            9 => Kind::Want,
            10 => Kind::Unwant,
            11 => Kind::Proofs,
            12 => Kind::SnapshotPart,
            13 => Kind::SnapshotEnd,
            14 => Kind::SnapshotClock,
            15 => Kind::Ranges,
            _ => return None,
        })
    }
}

/// What each side says first: who it is, what it has, how it takes part.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The sender's source id.
    pub id: SourceId,
    /// The sender's clock, or its digest when large.
    pub clock: ClockSummary,
    /// Application bytes, handed to the peer in its `Header` event.
    pub meta: Vec<u8>,
    /// Whether the sender will send updates on this stream.
    pub sends: bool,
    /// Whether the sender accepts updates on this stream.
    pub receives: bool,
    /// The sender's life: a random number drawn when a replica starts
    /// without a log and kept by its store across restarts. The same id in
    /// a new life is a replica that lost its log (see
    /// [`Replica::new`](crate::Replica::new)).
    pub life: u64,
    /// The sender's collection floor ([`Replica::floor`](crate::Replica::floor)).
    pub floor: crate::Timestamp,
    /// `Some(after)`: the sender lacks some of its own writes newer than
    /// `after`, which its clock claims: it [rejoined](crate::Replica::rejoin)
    /// without them (dropped below the floor, or gone from its log), so no
    /// peer sends them by history, and it asks for a snapshot. A peer whose
    /// clock holds a write of the sender's newer than `after` sends one,
    /// even if history would do. `after` is the newest of its own writes
    /// the clocks of the snapshots it took since claimed; it asks until
    /// one claims the newest it lacks
    /// ([`Replica::rejoin_missing`](crate::Replica::rejoin_missing)).
    pub missing_own: Option<crate::Timestamp>,
    /// A signature over the Hello's [claims](Hello::claims), by the key
    /// its sender signs snapshots with, if it has one
    /// ([`Replica::with_identity`](crate::Replica::with_identity),
    /// [`sign_snapshots_with`](crate::Replica::sign_snapshots_with)). A
    /// strict replica believes a peer's `life` only when this is made by
    /// the key of its `id`, and its `floor` only when made by a signer in
    /// [`Config::trust_snapshots_from`](crate::Config::trust_snapshots_from).
    /// One that does not hold cuts the peer off, whatever the replica.
    pub signature: Option<crate::Signature>,
}

impl Hello {
    /// What [`signature`](Hello::signature) covers, on a stream with this
    /// [`binding`](crate::StreamOpts::binding) as the Hello's sender sees
    /// it (a receiver passes the [other end](crate::ChannelBinding::other_end)
    /// of its own).
    pub fn claims(&self, binding: Option<crate::ChannelBinding>) -> crate::HelloClaims {
        crate::HelloClaims {
            id: self.id,
            life: self.life,
            floor: self.floor,
            clock: self.clock.hash(),
            missing_own: self.missing_own,
            binding,
        }
    }
}

/// A clock as a Hello carries it: whole when small, else a fingerprint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClockSummary {
    /// The whole clock.
    Full(Clock),
    /// Its [`Clock::digest`] and number of sources.
    Digest {
        /// How many sources the clock has.
        sources: u64,
        /// [`Clock::digest`].
        hash: [u8; 16],
    },
}

impl ClockSummary {
    /// Clocks with at most this many sources travel whole in a Hello.
    pub const INLINE_SOURCES: usize = 32;

    /// The summary of `clock` that a Hello carries.
    pub fn of(clock: &Clock) -> Self {
        if clock.len() <= Self::INLINE_SOURCES {
            ClockSummary::Full(clock.clone())
        } else {
            ClockSummary::Digest { sources: clock.len() as u64, hash: clock.digest() }
        }
    }

    /// The digest of the clock summarised.
    pub fn hash(&self) -> [u8; 16] {
        match self {
            ClockSummary::Full(clock) => clock.digest(),
            ClockSummary::Digest { hash, .. } => *hash,
        }
    }
}

/// Why a stream was closed, as sent in a Close frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum CloseReason {
    /// A stream without tail finished its sync.
    #[error("sync done and the stream does not tail")]
    Done,
    /// The application closed the stream.
    #[error("closed by the application")]
    Closed,
    /// The replica was disposed of.
    #[error("the replica was disposed of")]
    Disposed,
    /// The receiver of the frame misbehaved, in the closer's view.
    #[error("protocol violation: {0}")]
    Misbehaved(#[from] PeerMisbehaved),
    /// The closer refused the receiver's snapshot
    /// ([`Event::SnapshotRefused`](crate::Event::SnapshotRefused)).
    #[error("snapshot refused: {0}")]
    SnapshotRefused(SnapshotRefusal),
    /// One side's collection floor is above the other's, and the other
    /// holds state: it may keep what the first has forgotten it deleted,
    /// so they must not sync ([`Event::Stale`](crate::Event::Stale)).
    /// A closer that took another peer's snapshot since its Hello is not
    /// stale for this alone (no `Event::Stale`): the peer chose its
    /// snapshot against a clock the closer has left behind, and a new
    /// stream, whose Hello tells the clock now, may bring it up by history.
    #[error("one side is stale: the other collected deletes up to {floor}")]
    Stale {
        /// The higher of the two floors.
        floor: crate::Timestamp,
    },
}

/// What a peer did wrong: each closes the stream with this as the reason.
///
/// Nothing from the offending frame is applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum PeerMisbehaved {
    /// A frame's length prefix exceeded the receiver's limit.
    #[error("frame of {len} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge {
        /// The announced length.
        len: u64,
        /// The receiver's limit ([`Config::max_frame`](crate::Config::max_frame)).
        limit: u64,
    },
    /// A frame with a length of zero.
    #[error("empty frame")]
    EmptyFrame,
    /// A frame kind this version does not know.
    #[error("unknown frame kind {0}")]
    UnknownFrame(u8),
    /// A frame body that does not decode.
    #[error("malformed {kind} frame: {detail}")]
    Malformed {
        /// The frame's kind.
        kind: String,
        /// What the decoder said.
        detail: String,
    },
    /// A protocol version this crate does not speak.
    #[error("unsupported protocol version {0} (this side speaks {PROTOCOL_VERSION})")]
    UnknownVersion(u16),
    /// Anything but Hello came first.
    #[error("{0} frame before Hello")]
    BeforeHello(String),
    /// A second Hello.
    #[error("second Hello on one stream")]
    DuplicateHello,
    /// A second Sync.
    #[error("second Sync on one stream")]
    DuplicateSync,
    /// A Hello whose id is the reserved all-zero id.
    #[error("Hello with the reserved source id")]
    InvalidSource,
    /// Claims (announcements, clock advances, refused updates) naming more
    /// sources the receiver does not know than its limit
    /// ([`Config::max_unknown_sources`](crate::Config::max_unknown_sources)).
    #[error("claims about more than {limit} unknown sources")]
    TooManySources {
        /// The receiver's limit.
        limit: u64,
    },
    /// A Hello under an id the receiver knows from another life of it: a
    /// replica that lost its log came back under its old id, which would
    /// split the cluster's view of that id for good.
    #[error(
        "source {id} came back in a new life (it lost its log): a replica without its history must write under a new id"
    )]
    Reincarnated {
        /// The id.
        id: SourceId,
    },
    /// A snapshot whose clock is further in the future than the skew limit.
    #[error("snapshot clock is {ahead_millis} ms ahead of the receiver (limit {limit_millis} ms)")]
    ClockSkew {
        /// How far ahead of the receiver's wall clock.
        ahead_millis: u64,
        /// The receiver's limit.
        limit_millis: u64,
    },
    /// A snapshot whose clock names more sources than the receiver takes
    /// ([`Config::max_snapshot_sources`](crate::Config::max_snapshot_sources)):
    /// its clock is held until all of it is in and its digest checked, so
    /// an announcement without a bound would let a peer send entries for
    /// ever.
    #[error(
        "a snapshot whose clock names {sources} sources, more than this replica's limit of {limit}"
    )]
    SnapshotTooManySources {
        /// How many the snapshot announced.
        sources: u64,
        /// The receiver's limit.
        limit: u64,
    },
    /// The Hello's signature does not hold for what it claims, or on this
    /// stream: a Hello replayed from another stream names its signer's
    /// id, not the replayer's.
    #[error("the signature of the Hello of {id} does not hold: {reason}")]
    HelloSignature {
        /// The id the Hello claims.
        id: SourceId,
        /// Why it does not hold.
        reason: crate::VerifyError,
    },
    /// The receiver of a snapshot took none of it for
    /// [`Config::snapshot_stall_millis`](crate::Config::snapshot_stall_millis)
    /// (its flow control shut): a snapshot going out holds back the
    /// sender's collection, which must not wait for ever.
    #[error("the peer took none of the snapshot sent to it for {millis} ms")]
    SnapshotUnread {
        /// How long the sender waited.
        millis: u64,
    },
}

/// A decoded frame, borrowing its body from the input.
#[derive(Debug)]
pub(crate) enum Frame<U> {
    Hello(Hello),
    /// Its envelopes are in the buffer [`decode`] was given.
    Updates,
    SnapshotBegin {
        /// How many sources the snapshot's clock has.
        sources: u64,
        /// The digest of its clock's entries ([`clock_digest_update`]).
        clock: [u8; 32],
        /// What the begin frame's signature covers: the snapshot's id.
        digest: [u8; 32],
        proof: Option<Signature>,
        /// About how many entries the state holds, if the sender said:
        /// not signed, so only ever a hint (the receiver caps it).
        entries: Option<u64>,
        /// The sender's collection floor as the snapshot begins, if it
        /// said (version 4): the floor its state is collected at, which
        /// may have risen since its Hello. Not signed: checked for skew,
        /// and only ever raises what the receiver takes the sender's
        /// floor to be.
        floor: Option<crate::Timestamp>,
    },
    SnapshotClock(Vec<(SourceId, crate::Timestamp)>),
    Ranges(Vec<crate::reconcile::Range>),
    SnapshotPart {
        index: u64,
        state: U,
        /// How many bytes `state` took on the wire.
        bytes: usize,
        /// SHA-256 of the encoded part (a signature covers it with the
        /// snapshot's id and the index).
        digest: [u8; 32],
        proof: Option<Signature>,
    },
    SnapshotEnd {
        parts: u64,
        proof: Option<Signature>,
    },
    Sync,
    Close(CloseReason),
    Advance(Vec<Stamp>),
    Clock(Clock),
    Have(Vec<Stamp>),
    Want(Vec<Stamp>),
    Unwant(Vec<SourceId>),
    Proofs(Vec<Proof>),
}

fn malformed(kind: &str, err: postcard::Error) -> PeerMisbehaved {
    PeerMisbehaved::Malformed { kind: kind.to_string(), detail: err.to_string() }
}

fn decode_all<T: DeserializeOwned>(kind: &str, body: &[u8]) -> Result<T, PeerMisbehaved> {
    let (value, rest) = postcard::take_from_bytes(body).map_err(|e| malformed(kind, e))?;
    if !rest.is_empty() {
        return Err(PeerMisbehaved::Malformed {
            kind: kind.to_string(),
            detail: format!("{} bytes left over", rest.len()),
        });
    }
    Ok(value)
}

/// Decodes one frame (without its length prefix). Nothing is applied here, so
/// an error leaves everything as it was.
///
/// An Updates frame's envelopes go into `inbox` (emptied first, and left
/// empty on an error): one buffer kept from frame to frame, where a vector
/// per frame grew by doubling through each frame's thousands of envelopes.
pub(crate) fn decode<U: DeserializeOwned>(
    frame: &[u8],
    inbox: &mut Vec<crate::Envelope<U>>,
) -> Result<Frame<U>, PeerMisbehaved> {
    let (&kind, body) = frame.split_first().ok_or(PeerMisbehaved::EmptyFrame)?;
    let kind = Kind::from_byte(kind).ok_or(PeerMisbehaved::UnknownFrame(kind))?;
    Ok(match kind {
        Kind::Hello => {
            let (version, rest) =
                postcard::take_from_bytes::<u16>(body).map_err(|e| malformed("Hello", e))?;
            if version != PROTOCOL_VERSION {
                return Err(PeerMisbehaved::UnknownVersion(version));
            }
            let hello: Hello = decode_all("Hello", rest)?;
            if !hello.id.is_valid() {
                return Err(PeerMisbehaved::InvalidSource);
            }
            Frame::Hello(hello)
        }
        Kind::Updates => {
            inbox.clear();
            let mut rest = body;
            while !rest.is_empty() {
                match take_envelope(rest) {
                    Ok((envelope, tail)) => {
                        inbox.push(envelope);
                        rest = tail;
                    }
                    Err(e) => {
                        inbox.clear();
                        return Err(malformed("Updates", e));
                    }
                }
            }
            if inbox.is_empty() {
                return Err(PeerMisbehaved::Malformed {
                    kind: "Updates".into(),
                    detail: "no updates".into(),
                });
            }
            Frame::Updates
        }
        Kind::SnapshotBegin => {
            let ((sources, clock), rest) =
                postcard::take_from_bytes(body).map_err(|e| malformed("SnapshotBegin", e))?;
            let digest = snapshot_id(&body[..body.len() - rest.len()]);
            let (proof, rest) =
                postcard::take_from_bytes(rest).map_err(|e| malformed("SnapshotBegin", e))?;
            // The size hint and the floor came with versions 3 and 4;
            // hand-built begins without them still decode.
            let (entries, floor) = if rest.is_empty() {
                (None, None)
            } else {
                let (entries, floor) = decode_all("SnapshotBegin", rest)?;
                (entries, Some(floor))
            };
            Frame::SnapshotBegin { sources, clock, digest, proof, entries, floor }
        }
        Kind::SnapshotClock => Frame::SnapshotClock(decode_all("SnapshotClock", body)?),
        Kind::Ranges => Frame::Ranges(decode_all("Ranges", body)?),
        Kind::SnapshotPart => {
            let (index, rest) =
                postcard::take_from_bytes(body).map_err(|e| malformed("SnapshotPart", e))?;
            let (state, tail) =
                postcard::take_from_bytes(rest).map_err(|e| malformed("SnapshotPart", e))?;
            let proof: Option<Signature> = decode_all("SnapshotPart", tail)?;
            // Only a signature needs the digest: an unsigned part (the
            // common case, a gigabyte of them at times) is not hashed.
            let bytes = rest.len() - tail.len();
            let digest = match proof {
                Some(_) => Sha256::digest(&rest[..bytes]).into(),
                None => [0; 32],
            };
            Frame::SnapshotPart { index, state, bytes, digest, proof }
        }
        Kind::SnapshotEnd => {
            let (parts, rest) =
                postcard::take_from_bytes(body).map_err(|e| malformed("SnapshotEnd", e))?;
            Frame::SnapshotEnd { parts, proof: decode_all("SnapshotEnd", rest)? }
        }
        Kind::Sync => {
            if !body.is_empty() {
                return Err(PeerMisbehaved::Malformed {
                    kind: "Sync".into(),
                    detail: "Sync has no body".into(),
                });
            }
            Frame::Sync
        }
        Kind::Close => Frame::Close(decode_all("Close", body)?),
        Kind::Advance => Frame::Advance(decode_all("Advance", body)?),
        Kind::Clock => Frame::Clock(decode_all("Clock", body)?),
        Kind::Have => Frame::Have(decode_all("Have", body)?),
        Kind::Want => Frame::Want(decode_all("Want", body)?),
        Kind::Unwant => Frame::Unwant(decode_all("Unwant", body)?),
        Kind::Proofs => Frame::Proofs(decode_all("Proofs", body)?),
    })
}

/// One envelope from the front of `bytes`, as postcard decodes an
/// [`Envelope`](crate::Envelope) (its fields in order: the change, the timestamp as a varint,
/// the source as 16 bytes, the signature as an option), with the same
/// errors, but the source copied in one piece rather than read as 16
/// separate elements, and an absent signature read as its one byte: the
/// fixed part of a small update cost as much to decode as its change.
fn take_envelope<U: DeserializeOwned>(
    bytes: &[u8],
) -> postcard::Result<(crate::Envelope<U>, &[u8])> {
    let (change, rest) = postcard::take_from_bytes::<U>(bytes)?;
    let (ts, rest) = postcard::take_from_bytes::<u64>(rest)?;
    let (source, rest) =
        rest.split_first_chunk::<16>().ok_or(postcard::Error::DeserializeUnexpectedEnd)?;
    let (signature, rest) = match rest.split_first() {
        Some((0, rest)) => (None, rest),
        _ => postcard::take_from_bytes::<Option<Box<Signature>>>(rest)?,
    };
    let envelope = crate::Envelope {
        change,
        ts: crate::Timestamp::from_raw(ts),
        source: SourceId::from_hash_raw(*source),
        signature,
    };
    Ok((envelope, rest))
}

/// A snapshot's id: the digest of its begin frame's body (the clock's size
/// and digest), which the begin frame's signature covers.
pub(crate) fn snapshot_id(begin: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"repred snapshot begin");
    h.update(begin);
    h.finalize().into()
}

/// Feeds clock entries, in source order, to a clock digest: 16 bytes of
/// source and 8 of timestamp each, however they were chunked.
pub(crate) fn clock_digest_update(h: &mut Sha256, entries: &[(SourceId, crate::Timestamp)]) {
    for (source, ts) in entries {
        h.update(source.as_bytes());
        h.update(ts.to_raw().to_le_bytes());
    }
}

/// What a part's signature covers: the snapshot, the part's place in it,
/// and the digest of its encoded state.
pub(crate) fn part_digest(id: &[u8; 32], index: u64, state: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"repred snapshot part");
    h.update(id);
    h.update(index.to_le_bytes());
    h.update(state);
    h.finalize().into()
}

/// What an end frame's signature covers: the snapshot and its size.
pub(crate) fn end_digest(id: &[u8; 32], parts: u64) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"repred snapshot end");
    h.update(id);
    h.update(parts.to_le_bytes());
    h.finalize().into()
}

/// Writes frames into a caller's buffer, length prefix first.
pub(crate) struct Writer<'a> {
    out: &'a mut Vec<u8>,
    start: usize,
}

impl<'a> Writer<'a> {
    pub(crate) fn begin(out: &'a mut Vec<u8>, kind: Kind) -> Self {
        let start = out.len();
        out.extend_from_slice(&[0, 0, 0, 0, kind as u8]);
        Self { out, start }
    }

    /// Appends `value`. A user type whose `Serialize` fails (or that
    /// serializes a sequence of unknown length) is reported, not panicked on,
    /// and leaves the buffer as it was before this value.
    pub(crate) fn put<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), postcard::Error> {
        let mark = self.out.len();
        postcard::serialize_with_flavor(value, Append(self.out)).inspect_err(|_| {
            self.out.truncate(mark);
        })
    }

    /// Appends what `write` serializes (a value made as it is encoded,
    /// such as a snapshot part read from the state), as [`put`](Self::put)
    /// would a value; returns what `write` returns.
    pub(crate) fn put_with<R>(
        &mut self,
        write: impl FnOnce(&mut postcard::Serializer<Append<'_>>) -> Result<R, postcard::Error>,
    ) -> Result<R, postcard::Error> {
        let mark = self.out.len();
        let mut serializer = postcard::Serializer { output: Append(self.out) };
        write(&mut serializer).inspect_err(|_| {
            self.out.truncate(mark);
        })
    }

    /// Appends bytes already encoded.
    pub(crate) fn put_raw(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    /// The body so far.
    pub(crate) fn body(&self) -> &[u8] {
        &self.out[self.start + FRAME_HEADER_LEN..]
    }

    /// Bytes in the body so far.
    pub(crate) fn body_len(&self) -> usize {
        self.out.len() - self.start - FRAME_HEADER_LEN
    }

    /// Fills in the length; returns the frame's total size.
    pub(crate) fn finish(self) -> usize {
        let len = self.out.len() - self.start - 4;
        let prefix = u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes();
        self.out[self.start..self.start + 4].copy_from_slice(&prefix);
        len + 4
    }

    /// Drops the frame begun here.
    pub(crate) fn abandon(self) {
        self.out.truncate(self.start);
    }
}

/// A postcard flavor that appends to a borrowed buffer, so that encoding
/// reuses the caller's allocation and a failure cannot lose earlier frames.
pub(crate) struct Append<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for Append<'_> {
    type Output = ();

    #[inline]
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    #[inline]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Writes a whole Hello frame.
pub(crate) fn write_hello(out: &mut Vec<u8>, hello: &Hello) -> Result<usize, postcard::Error> {
    let mut w = Writer::begin(out, Kind::Hello);
    match w.put(&PROTOCOL_VERSION).and_then(|()| w.put(hello)) {
        Ok(()) => Ok(w.finish()),
        Err(e) => {
            w.abandon();
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_kinds_and_versions_are_typed_errors() {
        assert_eq!(
            decode::<u8>(&[99], &mut Vec::new()).unwrap_err(),
            PeerMisbehaved::UnknownFrame(99)
        );
        assert_eq!(decode::<u8>(&[], &mut Vec::new()).unwrap_err(), PeerMisbehaved::EmptyFrame);
        let mut out = Vec::new();
        let mut w = Writer::begin(&mut out, Kind::Hello);
        let unknown = PROTOCOL_VERSION + 1;
        w.put(&unknown).unwrap();
        w.finish();
        assert_eq!(
            decode::<u8>(&out[4..], &mut Vec::new()).unwrap_err(),
            PeerMisbehaved::UnknownVersion(unknown)
        );
    }

    #[test]
    fn hello_round_trips_and_its_signature_covers_its_claims() {
        let identity = crate::Identity::from_secret([7; 32]);
        let mut hello = Hello {
            id: identity.id(),
            clock: ClockSummary::Full(Clock::new()),
            meta: b"m".to_vec(),
            sends: true,
            receives: false,
            life: 7,
            floor: crate::Timestamp::new(5, 0),
            missing_own: Some(crate::Timestamp::new(4, 1)),
            signature: None,
        };
        let on = Some(crate::ChannelBinding::opener([3; 32]));
        hello.signature = Some(identity.sign_hello(&hello.claims(on)));
        let mut out = Vec::new();
        let n = write_hello(&mut out, &hello).unwrap();
        assert_eq!(n, out.len());
        assert_eq!(u32::from_le_bytes(out[..4].try_into().unwrap()) as usize, n - 4);
        let decoded = match decode::<u8>(&out[4..], &mut Vec::new()).unwrap() {
            Frame::Hello(h) => h,
            other => panic!("decoded {other:?}"),
        };
        assert_eq!(decoded, hello);
        let signature = decoded.signature.as_ref().unwrap();
        assert_eq!(signature.verify_hello(&decoded.claims(on)), Ok(identity.id()));
        let mut claims = hello.claims(on);
        claims.floor = crate::Timestamp::new(6, 0);
        assert!(signature.verify_hello(&claims).is_err(), "another floor");
        let mut claims = hello.claims(on);
        claims.clock = Clock::from_iter([(SourceId::new("B").unwrap(), claims.floor)]).digest();
        assert!(signature.verify_hello(&claims).is_err(), "another clock");
        let mut claims = hello.claims(on);
        claims.id = SourceId::new("B").unwrap();
        assert!(signature.verify_hello(&claims).is_err(), "another id");
        let mut claims = hello.claims(on);
        claims.life = 8;
        assert!(signature.verify_hello(&claims).is_err(), "another life");
        let mut claims = hello.claims(on);
        claims.missing_own = None;
        assert!(signature.verify_hello(&claims).is_err(), "another ask");
        let claims = hello.claims(Some(crate::ChannelBinding::opener([4; 32])));
        assert!(signature.verify_hello(&claims).is_err(), "another stream");
        let claims = hello.claims(Some(crate::ChannelBinding::acceptor([3; 32])));
        assert!(signature.verify_hello(&claims).is_err(), "the other end");
        assert!(signature.verify_hello(&hello.claims(None)).is_err(), "no stream");
    }

    #[test]
    fn envelopes_decode_as_postcard_decodes_them() {
        use crate::Envelope;
        let source = SourceId::new("A").unwrap();
        let signed = crate::Identity::from_secret([3; 32]);
        let mut envelopes = vec![
            Envelope::new(source, crate::Timestamp::new(1_700_000_000_000, 3), vec![1u8, 2, 3]),
            Envelope::new(SourceId::from_hash_raw([0; 16]), crate::Timestamp::ZERO, vec![]),
            Envelope::new(signed.id(), crate::Timestamp::new(5, 0), vec![9]),
        ];
        envelopes[2].signature = Some(Box::new(signed.sign(crate::Timestamp::new(5, 0), b"x")));
        for envelope in &envelopes {
            let bytes = postcard::to_allocvec(envelope).unwrap();
            let mut padded = bytes.clone();
            padded.push(7);
            let (ours, rest) = take_envelope::<Vec<u8>>(&padded).unwrap();
            assert_eq!((&ours, rest), (envelope, &[7u8][..]));
            // Cut anywhere, or with a bad option tag, both fail alike.
            for cut in 0..bytes.len() {
                let theirs = postcard::take_from_bytes::<Envelope<Vec<u8>>>(&bytes[..cut]);
                assert_eq!(take_envelope::<Vec<u8>>(&bytes[..cut]).err(), theirs.err(), "{cut}");
            }
            let mut bad = bytes.clone();
            let tag = bytes.len() - if envelope.signature.is_some() { 97 } else { 1 };
            bad[tag] = 2;
            let theirs = postcard::take_from_bytes::<Envelope<Vec<u8>>>(&bad);
            assert_eq!(take_envelope::<Vec<u8>>(&bad).err(), theirs.err());
        }
    }

    #[test]
    fn trailing_bytes_are_malformed() {
        let mut out = Vec::new();
        let mut w = Writer::begin(&mut out, Kind::Close);
        w.put(&CloseReason::Done).unwrap();
        w.put(&1u8).unwrap();
        w.finish();
        assert!(matches!(
            decode::<u8>(&out[4..], &mut Vec::new()),
            Err(PeerMisbehaved::Malformed { .. })
        ));
    }
}
