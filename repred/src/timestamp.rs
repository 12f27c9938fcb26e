//! When an update was made: a hybrid logical clock in one `u64`.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::SourceId;

/// A hybrid logical timestamp: wall-clock milliseconds in the high 48 bits and
/// a counter in the low 16.
///
/// A replica's timestamps strictly increase: within one millisecond the
/// counter advances, and when the wall clock steps back the replica keeps
/// counting from the newest timestamp it has issued or seen. Timestamps order
/// updates from one source; across sources they are only a tie-break, so
/// correctness never depends on synchronised clocks.
///
/// `Timestamp::ZERO` means "nothing yet" and is never issued.
///
/// ```
/// use repred::Timestamp;
///
/// let t = Timestamp::new(1_700_000_000_000, 3);
/// assert_eq!(t.millis(), 1_700_000_000_000);
/// assert_eq!(t.counter(), 3);
/// assert!(Timestamp::new(5, 0) > Timestamp::new(4, 65_535));
/// ```
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(u64);

impl Timestamp {
    /// No timestamp: older than every issued one.
    pub const ZERO: Timestamp = Timestamp(0);
    /// The largest representable timestamp.
    pub const MAX: Timestamp = Timestamp(u64::MAX);
    const COUNTER_BITS: u32 = 16;

    /// A timestamp from wall milliseconds and a counter.
    pub const fn new(millis: u64, counter: u16) -> Self {
        Self((millis << Self::COUNTER_BITS) | counter as u64)
    }

    /// The raw 64-bit value.
    pub const fn from_raw(raw: u64) -> Self {
        Self(raw)
    }

    /// The raw 64-bit value, as it travels.
    pub const fn to_raw(self) -> u64 {
        self.0
    }

    /// Wall-clock milliseconds (since the Unix epoch, by convention).
    pub const fn millis(self) -> u64 {
        self.0 >> Self::COUNTER_BITS
    }

    /// The counter within the millisecond.
    pub const fn counter(self) -> u16 {
        self.0 as u16
    }

    /// The next timestamp to issue after `self`, given the wall clock `now`
    /// in milliseconds: the start of `now` if that is later, else one tick on.
    ///
    /// Saturates at [`Timestamp::MAX`] (reachable only through a forged
    /// timestamp that the skew limit did not stop).
    pub fn next(self, now_millis: u64) -> Self {
        let wall = Self::new(now_millis.min(u64::MAX >> Self::COUNTER_BITS), 0);
        wall.max(Timestamp(self.0.saturating_add(1)))
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.millis(), self.counter())
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Who made an update and when: the pair that names it uniquely.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Stamp {
    /// The timestamp; ordered first so that stamps sort by time, then source.
    pub ts: Timestamp,
    /// The replica that made the update.
    pub source: SourceId,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_is_strictly_increasing_within_a_millisecond_and_backwards() {
        let mut t = Timestamp::ZERO;
        let mut last = t;
        for now in [10, 10, 10, 9, 3, 11, 11] {
            t = t.next(now);
            assert!(t > last, "{t:?} after {last:?}");
            last = t;
        }
        assert_eq!(Timestamp::new(10, 0).next(10), Timestamp::new(10, 1));
        assert_eq!(Timestamp::new(10, 5).next(3), Timestamp::new(10, 6));
        assert_eq!(Timestamp::new(10, 5).next(12), Timestamp::new(12, 0));
    }

    #[test]
    fn counter_overflow_carries_into_the_millisecond() {
        assert_eq!(Timestamp::new(7, u16::MAX).next(7), Timestamp::new(8, 0));
    }

    #[test]
    fn saturates_instead_of_wrapping() {
        assert_eq!(Timestamp::MAX.next(0), Timestamp::MAX);
        assert_eq!(Timestamp::ZERO.next(u64::MAX).millis(), u64::MAX >> 16);
    }
}
