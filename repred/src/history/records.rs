//! The history's records, in chunks of a fixed number of slots.

use std::collections::VecDeque;

/// About how many bytes one chunk of records takes: small enough to stay
/// below the allocator's threshold for a mapping of its own (so a chunk is
/// reused from the heap, not faulted in afresh), large enough that a chunk
/// is allocated once per hundreds of records.
const CHUNK_BYTES: usize = 64 << 10;

/// A queue of records held in chunks: growing never moves what is already
/// held, and the oldest record is dropped where it lies.
///
/// A `VecDeque` that doubles copies every record it holds each time: a
/// fresh node's history of 65,536 records of ~300 bytes copied and faulted
/// in ~40 MB on its way to its limit, and each eviction moved the whole
/// record out only to read its stamp and drop it. Here the first chunk
/// grows as a vector would (a small log stays small), later ones are
/// allocated at their full size, and a chunk emptied at the front is kept
/// for the next one at the back, so a full log allocates nothing.
#[derive(Debug)]
pub(crate) struct Records<E> {
    /// Every chunk but the last holds `1 << shift` slots. The first `skip`
    /// slots of the first chunk are records already dropped (`None`); every
    /// slot after them holds one.
    chunks: VecDeque<Vec<Option<E>>>,
    skip: usize,
    len: usize,
    /// Slots per chunk, as a power of two, so that an index splits into a
    /// chunk and a slot with a shift and a mask.
    shift: u32,
    /// The last chunk emptied, kept for the next one needed.
    spare: Option<Vec<Option<E>>>,
}

impl<E> Records<E> {
    pub(crate) fn new() -> Self {
        let slot = std::mem::size_of::<Option<E>>().max(1);
        // A power of two between 16 and 4,096 slots, at most CHUNK_BYTES
        // where the records allow.
        let slots = (CHUNK_BYTES / slot).clamp(16, 4_096);
        let shift = usize::BITS - 1 - slots.leading_zeros();
        Self { chunks: VecDeque::new(), skip: 0, len: 0, shift, spare: None }
    }

    fn slots(&self) -> usize {
        1 << self.shift
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline]
    pub(crate) fn push_back(&mut self, record: E) {
        let slots = self.slots();
        match self.chunks.back_mut() {
            Some(back) if back.len() < slots => back.push(Some(record)),
            _ => {
                // The first chunk starts small and doubles up to its size,
                // as a vector does: a log of a few records stays small.
                let mut chunk = self.spare.take().unwrap_or_else(|| {
                    if self.chunks.is_empty() { Vec::new() } else { Vec::with_capacity(slots) }
                });
                chunk.push(Some(record));
                self.chunks.push_back(chunk);
            }
        }
        self.len += 1;
    }

    /// Drops the oldest record where it lies (it is not moved out, which
    /// for a large record costs more than the drop), after `look` has seen
    /// it; returns what `look` returned.
    #[inline]
    pub(crate) fn drop_front<R>(&mut self, look: impl FnOnce(&E) -> R) -> Option<R> {
        let front = self.chunks.front_mut()?;
        let slot = front.get_mut(self.skip)?;
        let seen = look(slot.as_ref()?);
        *slot = None;
        self.skip += 1;
        self.len -= 1;
        if self.skip == self.slots() {
            // Every slot of the first chunk is dropped: it becomes the spare.
            if let Some(mut emptied) = self.chunks.pop_front() {
                emptied.clear();
                self.spare = Some(emptied);
            }
            self.skip = 0;
        }
        Some(seen)
    }

    #[allow(dead_code)] // the log's collection (`History::drop_stable`) uses it
    pub(crate) fn front(&self) -> Option<&E> {
        self.get(0)
    }

    pub(crate) fn get(&self, index: usize) -> Option<&E> {
        if index >= self.len {
            return None;
        }
        let at = index + self.skip;
        self.chunks.get(at >> self.shift)?.get(at & (self.slots() - 1))?.as_ref()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &E> {
        let skip = self.skip;
        self.chunks
            .iter()
            .enumerate()
            .flat_map(move |(i, chunk)| chunk.get(if i == 0 { skip } else { 0 }..).unwrap_or(&[]))
            .filter_map(Option::as_ref)
    }

    pub(crate) fn clear(&mut self) {
        self.chunks.clear();
        self.skip = 0;
        self.len = 0;
    }

    /// Slots allocated, held or not.
    #[allow(dead_code)] // the log's collection (`History::drop_stable`) uses it
    pub(crate) fn capacity(&self) -> usize {
        let spare = self.spare.as_ref().map_or(0, Vec::capacity);
        self.chunks.iter().map(Vec::capacity).sum::<usize>() + spare
    }

    /// Gives back what is allocated and not in use: the spare chunk, and
    /// the room of the chunk list itself. (Chunks are freed as they empty.)
    #[allow(dead_code)] // the log's collection (`History::drop_stable`) uses it
    pub(crate) fn shrink_to_fit(&mut self) {
        self.spare = None;
        self.chunks.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same operations on a `VecDeque`, as the reference.
    #[test]
    fn behaves_as_a_queue_across_chunks() {
        let mut records: Records<u64> = Records::new();
        let slots = records.slots();
        assert!(slots >= 16 && slots.is_power_of_two());
        let mut reference = VecDeque::new();
        let mut next = 0u64;
        // Grow past several chunks, drop in runs that end inside and at the
        // end of chunks, and empty the queue completely on the way.
        for (push, drop) in
            [(3, 1), (slots as u64 * 3, 5), (1, slots as u64), (0, 100_000), (slots as u64 + 7, 2)]
        {
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
    fn a_full_log_reuses_its_chunks() {
        let mut records: Records<[u8; 64]> = Records::new();
        let slots = records.slots();
        for _ in 0..slots * 4 {
            records.push_back([0; 64]);
        }
        let capacity = records.capacity();
        // At its limit, each push drops the oldest.
        for _ in 0..slots * 10 {
            records.drop_front(|_| ());
            records.push_back([1; 64]);
        }
        assert_eq!(records.len(), slots * 4);
        assert!(records.capacity() <= capacity + slots, "{} > {capacity}", records.capacity());
        records.shrink_to_fit();
        assert!(records.capacity() <= capacity);
    }
}
