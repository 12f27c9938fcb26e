//! Who has seen what: the vector-clock digest.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use serde::{Deserialize, Serialize};

use crate::{SourceId, Timestamp};

/// The newest timestamp seen from each source: a replica's digest.
///
/// Two replicas exchange clocks when they meet; each then sends the updates
/// the other's clock lacks. A source that is missing counts as
/// [`Timestamp::ZERO`] ("send everything").
///
/// ```
/// use repred::{Clock, SourceId, Timestamp};
///
/// let a = SourceId::new("A")?;
/// let mut clock = Clock::new();
/// assert!(clock.observe(a, Timestamp::new(5, 0)));
/// assert!(!clock.observe(a, Timestamp::new(4, 0)), "clocks never go back");
/// assert_eq!(clock.get(a), Timestamp::new(5, 0));
/// assert_eq!(clock.get(SourceId::new("B")?), Timestamp::ZERO);
/// # Ok::<(), repred::InvalidSourceId>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Clock(BTreeMap<SourceId, Timestamp>);

impl Clock {
    /// An empty clock: nothing seen.
    pub fn new() -> Self {
        Self::default()
    }

    /// The newest timestamp seen from `source`, or [`Timestamp::ZERO`].
    pub fn get(&self, source: SourceId) -> Timestamp {
        self.0.get(&source).copied().unwrap_or(Timestamp::ZERO)
    }

    /// Raises `source` to `ts` if that is newer; returns whether it was.
    pub fn observe(&mut self, source: SourceId, ts: Timestamp) -> bool {
        if ts == Timestamp::ZERO {
            return false;
        }
        let entry = self.0.entry(source).or_insert(Timestamp::ZERO);
        if ts > *entry {
            *entry = ts;
            true
        } else {
            false
        }
    }

    /// Raises `source` to `ts` if that is newer; returns what it was
    /// (`None`: `ts` was not newer), so that the raise can be undone
    /// ([`set_back`](Clock::set_back)).
    pub(crate) fn raise(&mut self, source: SourceId, ts: Timestamp) -> Option<Timestamp> {
        if ts == Timestamp::ZERO {
            return None;
        }
        let entry = self.0.entry(source).or_insert(Timestamp::ZERO);
        let was = *entry;
        (ts > was).then(|| std::mem::replace(entry, ts))
    }

    /// Puts `source` back to `ts` ([`Timestamp::ZERO`]: unseen): only to
    /// undo raises for updates that were not applied after all (a user's
    /// `reduce` panicked), since clocks otherwise never go back.
    pub(crate) fn set_back(&mut self, source: SourceId, ts: Timestamp) {
        if ts == Timestamp::ZERO {
            self.0.remove(&source);
        } else {
            self.0.insert(source, ts);
        }
    }

    /// Keeps only the sources `keep` says.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(SourceId) -> bool) {
        self.0.retain(|&source, _| keep(source));
    }

    /// Raises `source` to `ts` if that is newer and `then` succeeds, in one
    /// lookup; returns whether it was raised. When `then` fails, nothing
    /// changes.
    pub(crate) fn observe_if<E>(
        &mut self,
        source: SourceId,
        ts: Timestamp,
        then: impl FnOnce() -> Result<(), E>,
    ) -> Result<bool, E> {
        if ts == Timestamp::ZERO {
            return Ok(false);
        }
        match self.0.entry(source) {
            Entry::Occupied(mut seen) => {
                if ts <= *seen.get() {
                    return Ok(false);
                }
                then()?;
                *seen.get_mut() = ts;
            }
            Entry::Vacant(slot) => {
                then()?;
                slot.insert(ts);
            }
        }
        Ok(true)
    }

    /// Whether `(source, ts)` is already covered: seen, or older than seen.
    pub fn has(&self, source: SourceId, ts: Timestamp) -> bool {
        ts <= self.get(source)
    }

    /// Raises every source to the newer of the two clocks (the join).
    pub fn merge(&mut self, other: &Clock) {
        for (&source, &ts) in &other.0 {
            self.observe(source, ts);
        }
    }

    /// Whether this clock has seen everything `other` has.
    pub fn covers(&self, other: &Clock) -> bool {
        other.0.iter().all(|(&source, &ts)| self.has(source, ts))
    }

    /// The sources and their timestamps, in source order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (SourceId, Timestamp)> + '_ {
        self.0.iter().map(|(&s, &t)| (s, t))
    }

    /// The entries whose source lies within the bounds, in source order.
    pub(crate) fn range(
        &self,
        lower: std::ops::Bound<SourceId>,
        upper: std::ops::Bound<SourceId>,
    ) -> impl Iterator<Item = (SourceId, Timestamp)> + '_ {
        self.0.range((lower, upper)).map(|(&s, &t)| (s, t))
    }

    /// How many sources have been seen.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether nothing has been seen.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A 16-byte fingerprint of the whole clock (SHA-256 of its encoding):
    /// equal clocks have equal digests, so two replicas can tell that they
    /// are in sync without sending the clocks themselves.
    pub fn digest(&self) -> [u8; 16] {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        for (source, ts) in self.iter() {
            hasher.update(source.as_bytes());
            hasher.update(ts.to_raw().to_le_bytes());
        }
        let mut out = [0u8; 16];
        out.copy_from_slice(&hasher.finalize()[..16]);
        out
    }

    /// The newest timestamp of any source.
    pub fn max(&self) -> Timestamp {
        self.0.values().copied().max().unwrap_or(Timestamp::ZERO)
    }

    /// The causally stable point of a group of replicas, from their
    /// clocks: every update older than it is held by all of them, and none
    /// of them will write one older than it (each writes above what it has
    /// seen). [`Replica::collect`](crate::Replica::collect) at it is safe
    /// when `clocks` are those of every replica that could still send an
    /// update: a clock read earlier only makes the point earlier.
    ///
    /// A source some replicas lack, or hold to different points, holds it
    /// back to the least of them; one they all hold to the same point (a
    /// writer long gone, say) does not. No clocks, or an empty one: zero.
    ///
    /// ```
    /// use repred::{Clock, SourceId, Timestamp};
    ///
    /// let (a, b) = (SourceId::new("a")?, SourceId::new("b")?);
    /// let t = |ms| Timestamp::new(ms, 0);
    /// let one: Clock = [(a, t(10)), (b, t(50))].into_iter().collect();
    /// let two: Clock = [(a, t(30)), (b, t(50))].into_iter().collect();
    /// // `two` has a's writes up to 30, `one` only up to 10.
    /// assert_eq!(Clock::stable_point([&one, &two]), t(10).next(0));
    /// # Ok::<(), repred::InvalidSourceId>(())
    /// ```
    pub fn stable_point<'a>(clocks: impl IntoIterator<Item = &'a Clock>) -> Timestamp {
        let clocks: Vec<&Clock> = clocks.into_iter().collect();
        let Some(first) = clocks.first() else { return Timestamp::ZERO };
        // Per source: least and greatest point, and how many hold it.
        let mut spread: BTreeMap<SourceId, (Timestamp, Timestamp, usize)> =
            first.iter().map(|(s, ts)| (s, (ts, ts, 1))).collect();
        let mut bound = Timestamp::MAX;
        for clock in &clocks {
            bound = bound.min(clock.max());
        }
        for clock in &clocks[1..] {
            for (source, ts) in clock.iter() {
                let (lo, hi, n) = spread.entry(source).or_insert((ts, ts, 0));
                *lo = (*lo).min(ts);
                *hi = (*hi).max(ts);
                *n += 1;
            }
        }
        for (lo, hi, n) in spread.into_values() {
            if n < clocks.len() {
                return Timestamp::ZERO;
            }
            if lo < hi {
                bound = bound.min(lo);
            }
        }
        if bound == Timestamp::ZERO { bound } else { bound.next(0) }
    }
}

impl FromIterator<(SourceId, Timestamp)> for Clock {
    fn from_iter<I: IntoIterator<Item = (SourceId, Timestamp)>>(iter: I) -> Self {
        let mut clock = Clock::new();
        for (source, ts) in iter {
            clock.observe(source, ts);
        }
        clock
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str) -> SourceId {
        SourceId::new(name).unwrap()
    }

    #[test]
    fn covers_is_pointwise() {
        let t = Timestamp::new;
        let big: Clock = [(id("A"), t(5, 0)), (id("B"), t(3, 0))].into_iter().collect();
        let small: Clock = [(id("A"), t(4, 0))].into_iter().collect();
        assert!(big.covers(&small));
        assert!(!small.covers(&big));
        assert!(big.covers(&Clock::new()));
        let mut joined = small.clone();
        joined.merge(&big);
        assert_eq!(joined, big);
    }

    #[test]
    fn zero_is_never_recorded() {
        let mut c = Clock::new();
        assert!(!c.observe(id("A"), Timestamp::ZERO));
        assert!(c.is_empty());
    }
}
