//! A replica's header: what the store knows of it as a whole, in its
//! current layout and every older one still read.

use repred::{Clock, SourceId, Timestamp};
use serde::{Deserialize, Serialize};

#[cfg(doc)]
use crate::PARTS;
#[cfg(doc)]
use repred::{Reduce, Replica};

/// What is stored of a replica besides its log.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Meta {
    pub(crate) id: SourceId,
    /// Newest timestamp issued or accepted: the hybrid clock's high-water
    /// mark, so that a restart never reissues one.
    pub(crate) last: Timestamp,
    /// Disk sequence of the first entry after the base.
    pub(crate) base_seq: u64,
    /// The next disk sequence.
    pub(crate) next_seq: u64,
    /// The base's clock; the base state itself is in `parts` (or, written
    /// by an earlier version, in `base`).
    pub(crate) base_clock: Clock,
    /// `T::snapshot()` of the base, postcard, in one blob: only in headers
    /// of earlier versions (empty in new ones, whose base is in `parts`).
    /// Rewritten as parts at the next save.
    pub(crate) base: Vec<u8>,
    /// The replica's life ([`Replica::life`]): the log goes on, so the life
    /// does, and peers that met it before a crash welcome it back.
    pub(crate) life: u64,
    /// The replica's collection floor ([`Replica::floor`]) when the base
    /// was taken: the base is collected to it. (Later collections are
    /// entries of the log.)
    pub(crate) floor: Timestamp,
    /// Where the base state is: its parts in [`PARTS`].
    pub(crate) parts: Parts,
    /// [`Replica::rejoined_below`]: a replica saved after a rejoin, before
    /// a peer brought it up, is not stale when it comes back.
    pub(crate) rejoined_below: Timestamp,
    /// [`Replica::rejoin_brought_back`], saved with it.
    pub(crate) rejoin_brought_back: Timestamp,
    /// [`Replica::rejoin_missing`]: a replica saved after a rejoin, before
    /// a snapshot brought back its own writes it lacks, still asks for one
    /// when it comes back.
    pub(crate) rejoin_missing: Timestamp,
    /// [`Replica::cut_parts_floor`] when the base was taken: the base holds
    /// parts of a snapshot no clock vouches for, from this floor.
    pub(crate) cut_parts_floor: Option<Timestamp>,
    /// [`Replica::stale_parts_floor`] at the last save: a verdict for those
    /// parts that nothing would find again after a restart.
    pub(crate) stale_parts_floor: Option<Timestamp>,
    /// [`Replica::rejoin_held`] at the last save: which peers a replica
    /// still missing its own writes asks for a snapshot when it comes back.
    pub(crate) rejoin_held: Timestamp,
}

/// A header as written before [`Replica::rejoin_held`] was saved (read
/// only).
#[derive(Deserialize)]
struct MetaV8 {
    id: SourceId,
    last: Timestamp,
    base_seq: u64,
    next_seq: u64,
    base_clock: Clock,
    base: Vec<u8>,
    life: u64,
    floor: Timestamp,
    parts: Parts,
    rejoined_below: Timestamp,
    rejoin_brought_back: Timestamp,
    rejoin_missing: Timestamp,
    cut_parts_floor: Option<Timestamp>,
    stale_parts_floor: Option<Timestamp>,
}

impl From<MetaV8> for Meta {
    fn from(v8: MetaV8) -> Self {
        let MetaV8 {
            id,
            last,
            base_seq,
            next_seq,
            base_clock,
            base,
            life,
            floor,
            parts,
            rejoined_below,
            rejoin_brought_back,
            rejoin_missing,
            cut_parts_floor,
            stale_parts_floor,
        } = v8;
        Meta {
            id,
            last,
            base_seq,
            next_seq,
            base_clock,
            base,
            life,
            floor,
            parts,
            rejoined_below,
            rejoin_brought_back,
            rejoin_missing,
            cut_parts_floor,
            stale_parts_floor,
            rejoin_held: Timestamp::ZERO,
        }
    }
}

impl MetaV8 {
    /// The header of a version before, newest first as in `Meta::decode`.
    fn decode(bytes: &[u8]) -> Result<Self, postcard::Error> {
        postcard::from_bytes(bytes)
            .or_else(|e| MetaV7::decode(bytes).map(MetaV8::from).map_err(|_| e))
    }
}

/// A header as written before a stale verdict for cut snapshot parts was
/// saved (read only).
#[derive(Deserialize)]
struct MetaV7 {
    id: SourceId,
    last: Timestamp,
    base_seq: u64,
    next_seq: u64,
    base_clock: Clock,
    base: Vec<u8>,
    life: u64,
    floor: Timestamp,
    parts: Parts,
    rejoined_below: Timestamp,
    rejoin_brought_back: Timestamp,
    rejoin_missing: Timestamp,
    cut_parts_floor: Option<Timestamp>,
}

impl From<MetaV7> for MetaV8 {
    fn from(v7: MetaV7) -> Self {
        let MetaV7 {
            id,
            last,
            base_seq,
            next_seq,
            base_clock,
            base,
            life,
            floor,
            parts,
            rejoined_below,
            rejoin_brought_back,
            rejoin_missing,
            cut_parts_floor,
        } = v7;
        MetaV8 {
            id,
            last,
            base_seq,
            next_seq,
            base_clock,
            base,
            life,
            floor,
            parts,
            rejoined_below,
            rejoin_brought_back,
            rejoin_missing,
            cut_parts_floor,
            stale_parts_floor: None,
        }
    }
}

impl MetaV7 {
    /// The header of a version before, newest first as in `Meta::decode`.
    fn decode(bytes: &[u8]) -> Result<Self, postcard::Error> {
        postcard::from_bytes(bytes)
            .or_else(|e| MetaV6::decode(bytes).map(MetaV7::from).map_err(|_| e))
    }
}

/// A header as written before the floor of a base's cut snapshot parts
/// was saved (read only).
#[derive(Deserialize)]
struct MetaV6 {
    id: SourceId,
    last: Timestamp,
    base_seq: u64,
    next_seq: u64,
    base_clock: Clock,
    base: Vec<u8>,
    life: u64,
    floor: Timestamp,
    parts: Parts,
    rejoined_below: Timestamp,
    rejoin_brought_back: Timestamp,
    rejoin_missing: Timestamp,
}

impl From<MetaV6> for MetaV7 {
    fn from(v6: MetaV6) -> Self {
        let MetaV6 {
            id,
            last,
            base_seq,
            next_seq,
            base_clock,
            base,
            life,
            floor,
            parts,
            rejoined_below,
            rejoin_brought_back,
            rejoin_missing,
        } = v6;
        MetaV7 {
            id,
            last,
            base_seq,
            next_seq,
            base_clock,
            base,
            life,
            floor,
            parts,
            rejoined_below,
            rejoin_brought_back,
            rejoin_missing,
            cut_parts_floor: None,
        }
    }
}

/// A header as written before a rejoin's missing writes were saved (read
/// only).
#[derive(Deserialize)]
struct MetaV5 {
    id: SourceId,
    last: Timestamp,
    base_seq: u64,
    next_seq: u64,
    base_clock: Clock,
    base: Vec<u8>,
    life: u64,
    floor: Timestamp,
    parts: Parts,
    rejoined_below: Timestamp,
    rejoin_brought_back: Timestamp,
}

/// The stored parts of a base state.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Parts {
    /// Which generation of parts (0: none, the base is `T::default()` or
    /// an older header's blob).
    pub(crate) generation: u64,
    /// How many parts, indexed from 0.
    pub(crate) count: u64,
    /// [`Reduce::entries_hint`] of the state they were cut from: a load
    /// reserves that much once.
    pub(crate) entries: Option<u64>,
}

/// A header as written before rejoins were saved (read only).
#[derive(Deserialize)]
struct MetaV4 {
    id: SourceId,
    last: Timestamp,
    base_seq: u64,
    next_seq: u64,
    base_clock: Clock,
    base: Vec<u8>,
    life: u64,
    floor: Timestamp,
    parts: Parts,
}

/// A header as written before snapshots were stored in parts (read only).
#[derive(Deserialize)]
struct MetaV3 {
    id: SourceId,
    last: Timestamp,
    base_seq: u64,
    next_seq: u64,
    base_clock: Clock,
    base: Vec<u8>,
    life: u64,
    floor: Timestamp,
}

/// A header as written before collection floors (read only).
#[derive(Deserialize)]
struct MetaV2 {
    id: SourceId,
    last: Timestamp,
    base_seq: u64,
    next_seq: u64,
    base_clock: Clock,
    base: Vec<u8>,
    life: u64,
}

/// A header as written before replicas had lives (read only).
#[derive(Deserialize)]
struct MetaV1 {
    id: SourceId,
    last: Timestamp,
    base_seq: u64,
    next_seq: u64,
    base_clock: Clock,
    base: Vec<u8>,
}

impl Meta {
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, postcard::Error> {
        // Newest first: postcard ignores trailing bytes, so an older layout
        // would read a newer header's prefix, while a newer one runs out of
        // bytes on an older header.
        postcard::from_bytes(bytes)
            .or_else(|e| MetaV8::decode(bytes).map(Meta::from).map_err(|_| e))
    }
}

impl MetaV6 {
    /// The header of a version before, newest first as above.
    fn decode(bytes: &[u8]) -> Result<Self, postcard::Error> {
        postcard::from_bytes(bytes).or_else(|e| {
            if let Ok(v5) = postcard::from_bytes::<MetaV5>(bytes) {
                return Ok(MetaV6 {
                    id: v5.id,
                    last: v5.last,
                    base_seq: v5.base_seq,
                    next_seq: v5.next_seq,
                    base_clock: v5.base_clock,
                    base: v5.base,
                    life: v5.life,
                    floor: v5.floor,
                    parts: v5.parts,
                    rejoined_below: v5.rejoined_below,
                    rejoin_brought_back: v5.rejoin_brought_back,
                    rejoin_missing: Timestamp::ZERO,
                });
            }
            if let Ok(v4) = postcard::from_bytes::<MetaV4>(bytes) {
                return Ok(MetaV6 {
                    id: v4.id,
                    last: v4.last,
                    base_seq: v4.base_seq,
                    next_seq: v4.next_seq,
                    base_clock: v4.base_clock,
                    base: v4.base,
                    life: v4.life,
                    floor: v4.floor,
                    parts: v4.parts,
                    rejoined_below: Timestamp::ZERO,
                    rejoin_brought_back: Timestamp::ZERO,
                    rejoin_missing: Timestamp::ZERO,
                });
            }
            if let Ok(v3) = postcard::from_bytes::<MetaV3>(bytes) {
                return Ok(MetaV6 {
                    id: v3.id,
                    last: v3.last,
                    base_seq: v3.base_seq,
                    next_seq: v3.next_seq,
                    base_clock: v3.base_clock,
                    base: v3.base,
                    life: v3.life,
                    floor: v3.floor,
                    parts: Parts::default(),
                    rejoined_below: Timestamp::ZERO,
                    rejoin_brought_back: Timestamp::ZERO,
                    rejoin_missing: Timestamp::ZERO,
                });
            }
            if let Ok(v2) = postcard::from_bytes::<MetaV2>(bytes) {
                return Ok(MetaV6 {
                    id: v2.id,
                    last: v2.last,
                    base_seq: v2.base_seq,
                    next_seq: v2.next_seq,
                    base_clock: v2.base_clock,
                    base: v2.base,
                    life: v2.life,
                    floor: Timestamp::ZERO,
                    parts: Parts::default(),
                    rejoined_below: Timestamp::ZERO,
                    rejoin_brought_back: Timestamp::ZERO,
                    rejoin_missing: Timestamp::ZERO,
                });
            }
            let Ok(v1) = postcard::from_bytes::<MetaV1>(bytes) else { return Err(e) };
            // Its life was never written down: any fixed one will do, as
            // no peer of this version met it.
            let life = u64::from_le_bytes(v1.id.as_bytes()[..8].try_into().unwrap_or([1; 8]));
            Ok(MetaV6 {
                id: v1.id,
                last: v1.last,
                base_seq: v1.base_seq,
                next_seq: v1.next_seq,
                base_clock: v1.base_clock,
                base: v1.base,
                life: life.max(1),
                floor: Timestamp::ZERO,
                parts: Parts::default(),
                rejoined_below: Timestamp::ZERO,
                rejoin_brought_back: Timestamp::ZERO,
                rejoin_missing: Timestamp::ZERO,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Headers written before `rejoin_missing`, before `cut_parts_floor`,
    /// before `stale_parts_floor` and before `rejoin_held` were saved still
    /// load, their other fields intact:
    /// each field was the layout's last, so the older header is the
    /// newer's encoding without it.
    #[test]
    fn headers_from_before_the_last_fields_decode() {
        let id = SourceId::new("a").expect("a valid id");
        let meta = Meta {
            id,
            last: Timestamp::new(7, 1),
            base_seq: 3,
            next_seq: 9,
            base_clock: Clock::new(),
            base: Vec::new(),
            life: 5,
            floor: Timestamp::new(4, 0),
            parts: Parts { generation: 2, count: 1, entries: Some(10) },
            rejoined_below: Timestamp::new(6, 0),
            rejoin_brought_back: Timestamp::new(2, 0),
            rejoin_missing: Timestamp::new(3, 0),
            cut_parts_floor: Some(Timestamp::new(1, 0)),
            stale_parts_floor: Some(Timestamp::new(4, 0)),
            rejoin_held: Timestamp::new(2, 1),
        };
        let mut bytes = postcard::to_allocvec(&meta).expect("a header encodes");
        let newest = Meta::decode(&bytes).expect("the newest header decodes");
        assert_eq!(newest.rejoin_held, meta.rejoin_held);
        assert_eq!(newest.stale_parts_floor, meta.stale_parts_floor);

        let held = postcard::to_allocvec(&meta.rejoin_held).expect("a stamp encodes");
        assert!(bytes.ends_with(&held));
        bytes.truncate(bytes.len() - held.len());
        let v8 = Meta::decode(&bytes).expect("the header before rejoin_held decodes");
        assert_eq!(v8.rejoin_held, Timestamp::ZERO);
        assert_eq!(v8.stale_parts_floor, meta.stale_parts_floor);
        assert_eq!(newest.cut_parts_floor, meta.cut_parts_floor);
        assert_eq!(newest.rejoin_missing, meta.rejoin_missing);

        let stale = postcard::to_allocvec(&meta.stale_parts_floor).expect("a floor encodes");
        assert!(bytes.ends_with(&stale));
        bytes.truncate(bytes.len() - stale.len());
        let v7 = Meta::decode(&bytes).expect("the header before stale_parts_floor decodes");
        assert_eq!((v7.stale_parts_floor, v7.rejoin_held), (None, Timestamp::ZERO));
        assert_eq!(v7.cut_parts_floor, meta.cut_parts_floor);

        let cut = postcard::to_allocvec(&meta.cut_parts_floor).expect("a floor encodes");
        assert!(bytes.ends_with(&cut));
        bytes.truncate(bytes.len() - cut.len());
        let v6 = Meta::decode(&bytes).expect("the header before cut_parts_floor decodes");
        assert_eq!(v6.cut_parts_floor, None);
        assert_eq!(v6.rejoin_missing, meta.rejoin_missing);

        let missing = postcard::to_allocvec(&meta.rejoin_missing).expect("a stamp encodes");
        assert!(bytes.ends_with(&missing));
        bytes.truncate(bytes.len() - missing.len());
        let older = Meta::decode(&bytes).expect("the header before rejoin_missing decodes");
        assert_eq!((older.rejoin_missing, older.cut_parts_floor), (Timestamp::ZERO, None));
        for older in [&v6, &older] {
            assert_eq!((older.id, older.life, older.floor), (id, 5, meta.floor));
            assert_eq!((older.base_seq, older.next_seq), (3, 9));
            assert_eq!(older.rejoined_below, meta.rejoined_below);
            assert_eq!(older.rejoin_brought_back, meta.rejoin_brought_back);
            assert_eq!(older.parts.generation, 2);
        }
    }
}
