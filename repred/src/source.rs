//! Who made an update.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The origin of an update: one writer, 16 bytes.
///
/// Every update carries the id of the replica that made it, and every replica
/// keeps, per id, the newest timestamp it has seen (its [`Clock`](crate::Clock)).
/// Exactly one replica may write under an id at a time; two writers sharing an
/// id could issue the same timestamp for different changes.
///
/// Ids are random by default. Short readable ids ("A", "node-1") are handy in
/// tests and examples; the all-zero id is reserved as "nobody".
///
/// ```
/// use repred::SourceId;
///
/// let a = SourceId::new("A")?;
/// assert_eq!(a.to_string(), "A");
/// assert!(SourceId::new("").is_err());
/// assert_ne!(SourceId::random(), SourceId::random());
/// # Ok::<(), repred::InvalidSourceId>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SourceId([u8; 16]);

/// The order of the bytes, compared as one big-endian number: the same
/// order as the derived one (lexicographic), in two comparisons of 64 bits
/// instead of a byte loop. Clocks, parents and every per-source map are
/// ordered by it, so each lookup compares ids a dozen times.
impl Ord for SourceId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        u128::from_be_bytes(self.0).cmp(&u128::from_be_bytes(other.0))
    }
}

impl PartialOrd for SourceId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Why a byte string cannot be a [`SourceId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidSourceId {
    /// The id was empty or all zero bytes, which is reserved for "nobody".
    #[error("a source id must not be empty or all zero bytes (that id is reserved)")]
    Reserved,
    /// The id was longer than 16 bytes.
    #[error("a source id is at most 16 bytes, got {0}")]
    TooLong(usize),
    /// The name ended in a zero byte, which would collide with a shorter name.
    #[error("a source id name must not end in a zero byte")]
    TrailingZero,
}

impl SourceId {
    /// The length of an id in bytes.
    pub const LEN: usize = 16;

    /// An id from a short name (1 to 16 bytes, padded with zeros).
    pub fn new(name: impl AsRef<[u8]>) -> Result<Self, InvalidSourceId> {
        let name = name.as_ref();
        if name.len() > Self::LEN {
            return Err(InvalidSourceId::TooLong(name.len()));
        }
        if name.last() == Some(&0) && name.iter().any(|&b| b != 0) {
            return Err(InvalidSourceId::TrailingZero);
        }
        let mut bytes = [0u8; 16];
        bytes[..name.len()].copy_from_slice(name);
        Self::from_bytes(bytes)
    }

    /// An id from its 16 raw bytes; all zeros is reserved.
    pub fn from_bytes(bytes: [u8; 16]) -> Result<Self, InvalidSourceId> {
        if bytes == [0; 16] {
            return Err(InvalidSourceId::Reserved);
        }
        Ok(Self(bytes))
    }

    /// A fresh random id from the operating system's generator.
    ///
    /// This is the one place the core asks the OS for anything; use
    /// [`SourceId::from_bytes`] to supply your own randomness.
    pub fn random() -> Self {
        let mut bytes = [0u8; 16];
        // getrandom only fails on platforms without an entropy source, where
        // nothing else in a networked program would work either.
        getrandom::fill(&mut bytes).expect("the operating system has no source of randomness");
        if bytes == [0; 16] {
            bytes[15] = 1;
        }
        Self(bytes)
    }

    /// An id from hash output: never the reserved id.
    pub(crate) fn from_hash(mut bytes: [u8; 16]) -> Self {
        if bytes == [0; 16] {
            bytes[15] = 1;
        }
        Self(bytes)
    }

    /// Any 16 bytes, the reserved zero included: only for bounds of ranges
    /// of ids, never as an id.
    pub(crate) fn from_hash_raw(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Whether this is a well-formed id (not the reserved all-zero one).
    ///
    /// Ids decoded from the wire are checked with this before use.
    pub fn is_valid(&self) -> bool {
        self.0 != [0; 16]
    }

    fn readable_name(&self) -> Option<&str> {
        let end = self.0.iter().rposition(|&b| b != 0)? + 1;
        let name = std::str::from_utf8(&self.0[..end]).ok()?;
        let printable = name.chars().all(|c| c.is_ascii_graphic() || c == ' ');
        (printable && !self.0[..end].contains(&0)).then_some(name)
    }
}

impl fmt::Display for SourceId {
    /// A readable name as itself, anything else as 8 hex digits of its start.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.readable_name() {
            Some(name) => f.write_str(name),
            None => self.0[..4].iter().try_for_each(|b| write!(f, "{b:02x}")),
        }
    }
}

impl fmt::Debug for SourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.readable_name() {
            Some(name) => write!(f, "SourceId({name:?})"),
            None => {
                f.write_str("SourceId(")?;
                self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))?;
                f.write_str(")")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_reserved_ids_are_refused() {
        assert_eq!(SourceId::new("node-1").unwrap().to_string(), "node-1");
        assert_eq!(SourceId::new(""), Err(InvalidSourceId::Reserved));
        assert_eq!(SourceId::new([0u8; 3]), Err(InvalidSourceId::Reserved));
        assert_eq!(SourceId::new("a\0"), Err(InvalidSourceId::TrailingZero));
        assert_eq!(SourceId::new("seventeen bytes!!"), Err(InvalidSourceId::TooLong(17)));
        assert!(SourceId::from_bytes([0; 16]).is_err());
    }

    #[test]
    fn random_ids_differ_and_print_as_hex() {
        let a = SourceId::random();
        assert!(a.is_valid());
        assert_ne!(a, SourceId::random());
        assert_eq!(format!("{a:?}").len(), "SourceId()".len() + 32);
    }

    #[test]
    fn order_follows_the_bytes() {
        let a = SourceId::new("A").unwrap();
        let b = SourceId::new("B").unwrap();
        assert!(a < b);
        // As the bytes compare, wherever they differ first.
        let mut ids: Vec<SourceId> = (0..200u32)
            .map(|i| {
                let mut bytes = [0u8; 16];
                bytes[(i % 16) as usize] = (i * 37 % 256) as u8 | 1;
                bytes[15 - (i % 7) as usize] ^= (i % 251) as u8;
                SourceId::from_hash(bytes)
            })
            .chain([SourceId::new("AB").unwrap(), SourceId::new("A").unwrap(), SourceId::random()])
            .collect();
        ids.sort();
        assert!(ids.windows(2).all(|w| w[0].0 <= w[1].0));
        for x in &ids {
            for y in &ids {
                assert_eq!(x.cmp(y), x.0.cmp(&y.0));
            }
        }
    }

    #[test]
    fn encodes_as_sixteen_bytes() {
        let id = SourceId::new("A").unwrap();
        assert_eq!(postcard::to_allocvec(&id).unwrap().len(), 16);
    }
}
