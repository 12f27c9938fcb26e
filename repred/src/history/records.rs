//! The history's records: a ring that takes the rest of its limit at once.

use std::collections::VecDeque;

/// Below this many records a log grows as a vector does (a log of a few
/// records stays small).
const GROW_BY_DOUBLING: usize = 1_024;

/// The most room a log takes in one step: a limit set far beyond what a
/// log will hold (a log meant to keep everything) grows by doubling, as a
/// vector does, rather than asking for all of it at once.
const MAX_RESERVE_BYTES: usize = 1 << 30;

/// A queue of records bounded by the history's limit, that grows without
/// copying what it holds over and over, and drops its oldest record where
/// it lies.
///
/// A `VecDeque` that doubles copies every record it holds each time: a
/// fresh node's history of 65,536 records of ~300 bytes copied them
/// through seven doublings on its way to its limit, and each eviction
/// moved the whole record out only to read its stamp and drop it. Here,
/// once a log holds an eighth of its limit (it is filling: a fresh node
/// catching up, a busy writer), it takes the rest of its limit in one
/// step; its pages are only touched as records come. One allocation, not
/// chunks: an allocator reuses one block of the same size for the next
/// replica's log, where chunks freed one by one go back to the system.
///
/// What counts as filling is growth since the log was last shrunk, not
/// its length: a collection that leaves 20,000 of 100,000 records and
/// gives the rest back would otherwise have the next push take all of it
/// again, the memory freed for one record's time.
#[derive(Debug)]
pub(crate) struct Records<E> {
    queue: VecDeque<E>,
    limit: usize,
    /// How many records the log held when it was last shrunk (0: never).
    shrunk_at: usize,
}

impl<E> Records<E> {
    pub(crate) fn new(limit: usize) -> Self {
        Self { queue: VecDeque::new(), limit, shrunk_at: 0 }
    }

    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    #[inline]
    pub(crate) fn push_back(&mut self, record: E) {
        let len = self.queue.len();
        if len == self.queue.capacity()
            && len.saturating_sub(self.shrunk_at) >= GROW_BY_DOUBLING.max(self.limit / 8)
        {
            // Past the limit (records kept for a snapshot being sent, see
            // `History::keep_for_snapshots`): another limit's worth at once,
            // as room taken one record at a time would move the ring's
            // wrapped part, half the log, on every push.
            let rest = if len >= self.limit { self.limit } else { self.limit - len };
            if rest.saturating_mul(std::mem::size_of::<E>()) <= MAX_RESERVE_BYTES {
                self.queue.reserve_exact(rest);
            }
        }
        self.queue.push_back(record);
    }

    /// Drops the oldest record where it lies (a drain drops in place; a
    /// record moved out costs a copy of all of it), after `look` has seen
    /// it; returns what `look` returned.
    #[inline]
    pub(crate) fn drop_front<R>(&mut self, look: impl FnOnce(&E) -> R) -> Option<R> {
        let seen = look(self.queue.front()?);
        self.queue.drain(..1);
        Some(seen)
    }

    #[allow(dead_code)] // the log's collection (`History::drop_stable`) uses it
    pub(crate) fn front(&self) -> Option<&E> {
        self.queue.front()
    }

    pub(crate) fn get(&self, index: usize) -> Option<&E> {
        self.queue.get(index)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &E> {
        self.queue.iter()
    }

    pub(crate) fn clear(&mut self) {
        self.queue.clear();
    }

    /// Records the room allocated holds.
    #[allow(dead_code)] // the log's collection (`History::drop_stable`) uses it
    pub(crate) fn capacity(&self) -> usize {
        self.queue.capacity()
    }

    /// Gives back the room not in use; it is taken again by doubling until
    /// the log has grown by as much as a fresh one fills before taking the
    /// rest of its limit (see [`Records`]).
    pub(crate) fn shrink_to_fit(&mut self) {
        self.queue.shrink_to_fit();
        self.shrunk_at = self.queue.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pushed past its limit (the history keeps records for a snapshot),
    /// the log takes room a limit at a time: taken a record at a time, it
    /// grew on every push, each growth moving half the log.
    #[test]
    fn past_its_limit_it_grows_a_limit_at_a_time() {
        let limit = 10_000;
        let mut records: Records<u64> = Records::new(limit);
        for i in 0..limit as u64 {
            records.push_back(i);
        }
        let mut growths = 0;
        for i in 0..limit as u64 {
            let before = records.capacity();
            records.push_back(i);
            growths += usize::from(records.capacity() != before);
        }
        assert!(growths <= 1, "{growths} growths");
    }

    /// The same operations on a `VecDeque`, as the reference.
    #[test]
    fn behaves_as_a_queue() {
        let mut records: Records<u64> = Records::new(10_000);
        let mut reference = VecDeque::new();
        let mut next = 0u64;
        for (push, drop) in [(3, 1), (3_000, 5), (1, 2_000), (0, 100_000), (9_000, 2)] {
            for _ in 0..push {
                records.push_back(next);
                reference.push_back(next);
                next += 1;
            }
            for _ in 0..drop {
                let expected = reference.pop_front();
                assert_eq!(records.drop_front(|&r| r), expected);
            }
            assert_eq!(records.len(), reference.len());
            assert_eq!(records.is_empty(), reference.is_empty());
            assert_eq!(records.front(), reference.front());
            for i in 0..reference.len() + 2 {
                assert_eq!(records.get(i), reference.get(i), "index {i}");
            }
            assert!(records.iter().eq(reference.iter()));
        }
        records.clear();
        assert_eq!((records.len(), records.front(), records.iter().count()), (0, None, 0));
    }

    #[test]
    fn a_filling_log_takes_its_limit_at_once() {
        let limit = 100_000;
        let mut records: Records<[u8; 64]> = Records::new(limit);
        let mut growths = Vec::new();
        for _ in 0..limit {
            let before = records.capacity();
            records.push_back([0; 64]);
            if records.capacity() != before {
                growths.push(records.capacity());
            }
        }
        // Doubling up to an eighth of the limit, then the limit at once.
        assert_eq!(growths.last(), Some(&limit), "{growths:?}");
        assert!(growths.iter().rev().nth(1).is_some_and(|&c| c < limit / 4), "{growths:?}");
        let capacity = records.capacity();
        // Full: each push drops the oldest, and nothing is allocated.
        for _ in 0..limit {
            records.drop_front(|_| ());
            records.push_back([1; 64]);
        }
        assert_eq!((records.len(), records.capacity()), (limit, capacity));
        // A limit far beyond what is held is not asked for at once.
        let mut unbounded: Records<[u8; 64]> = Records::new(usize::MAX / 2);
        for _ in 0..limit {
            unbounded.push_back([0; 64]);
        }
        assert!(unbounded.capacity() < 4 * limit, "{}", unbounded.capacity());
        // A small log stays small.
        let mut small: Records<u64> = Records::new(limit);
        for i in 0..10 {
            small.push_back(i);
        }
        assert!(small.capacity() < 100);
    }

    /// The room a collection gave back stays given back: the next records
    /// grow the log by doubling, and only a log filling up again (by an
    /// eighth of its limit since) takes the rest of its limit at once.
    #[test]
    fn a_shrunk_log_does_not_take_its_limit_back_at_the_next_push() {
        let limit = 100_000;
        let mut records: Records<[u8; 64]> = Records::new(limit);
        for _ in 0..limit {
            records.push_back([0; 64]);
        }
        assert_eq!(records.capacity(), limit);
        while records.len() > 20_000 {
            records.drop_front(|_| ());
        }
        records.shrink_to_fit();
        assert_eq!(records.capacity(), 20_000);
        records.push_back([1; 64]);
        assert!(records.capacity() <= 40_000, "the freed room came back: {}", records.capacity());
        // Growth since the shrink, not size, is what counts as filling.
        while records.len() < 20_000 + limit / 8 {
            records.push_back([1; 64]);
        }
        assert!(records.capacity() <= 40_000, "{}", records.capacity());
        while records.len() < 40_001 {
            records.push_back([1; 64]);
        }
        assert_eq!(records.capacity(), limit, "filling again: the rest at once");
    }
}
