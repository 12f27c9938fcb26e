//! Per Updates frame: each source's clock entries, looked up once.
//!
//! Taking in a peer's update reads and moves two per-source entries: the
//! replica's clock (is it new?) and the stream's record of what the peer
//! has. Both are `BTreeMap`s, so a frame of 2,000 updates from 100 sources
//! made 4,000 searches of a few dozen comparisons each. The table holds the
//! entries of the sources a frame names, found once each (a hash and a
//! probe or two per update after that), and writes back what moved when
//! the frame is done. Nothing outside the frame's loop reads either map
//! while it runs, except the bookkeeping of unknown sources, which writes
//! the table back first ([`SourceTable::write_back`], which touches only
//! the sources that moved since the last one).

use crate::{Clock, SourceId, Timestamp};

/// Most probes for a source before it is handled without the table: a
/// peer that chose ids colliding in the table costs what it did before the
/// table (two map lookups and two writes per update), never more.
const MAX_PROBES: usize = 8;

/// Most sources a frame's table holds; the others are handled without it.
const MAX_SOURCES: usize = 8_192;

const EMPTY: u32 = u32::MAX;

/// One source's entries while a frame is handled.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SourceSlot {
    pub(crate) source: SourceId,
    /// The replica's clock entry for the source, as the frame moves it.
    pub(crate) seen: Timestamp,
    /// What the stream knows its peer has of the source, as the frame
    /// moves it.
    pub(crate) known: Timestamp,
    /// Not the reserved id.
    pub(crate) valid: bool,
    /// Not refused by the replica's allow-list.
    pub(crate) allowed: bool,
    /// The entries as loaded or last written back.
    seen_was: Timestamp,
    known_was: Timestamp,
    /// On the table's list of slots to write back.
    listed: bool,
}

impl SourceSlot {
    pub(crate) fn new(
        source: SourceId,
        seen: Timestamp,
        known: Timestamp,
        valid: bool,
        allowed: bool,
    ) -> Self {
        Self {
            source,
            seen,
            known,
            valid,
            allowed,
            seen_was: seen,
            known_was: known,
            listed: false,
        }
    }

    /// Moves what changed into the maps.
    pub(crate) fn write_back(&mut self, clock: &mut Clock, known: &mut Clock) {
        if self.seen > self.seen_was {
            clock.observe(self.source, self.seen);
            self.seen_was = self.seen;
        }
        if self.known > self.known_was {
            known.observe(self.source, self.known);
            self.known_was = self.known;
        }
    }
}

/// The sources of the frame being handled: open addressing over a dense
/// list of slots, rebuilt per frame.
#[derive(Debug, Default)]
pub(crate) struct SourceTable {
    slots: Vec<SourceSlot>,
    /// Positions into `slots`, or `EMPTY`; a power of two long.
    index: Vec<u32>,
    /// The slots that may have moved since the last write-back.
    moved: Vec<u32>,
}

impl SourceTable {
    /// Empties the table for a frame of `updates` updates.
    pub(crate) fn begin(&mut self, updates: usize) {
        self.slots.clear();
        self.moved.clear();
        // At most half full, whatever the number of distinct sources.
        let len = (updates.min(MAX_SOURCES) * 2).next_power_of_two().max(16);
        self.index.clear();
        self.index.resize(len, EMPTY);
    }

    /// Where the slot of `source` is, loaded by `load` the first time;
    /// `None` when the table cannot hold it (too many sources, or too many
    /// collisions), and then never for the rest of the frame: such a
    /// source is handled on the maps directly.
    pub(crate) fn find(
        &mut self,
        source: SourceId,
        load: impl FnOnce() -> SourceSlot,
    ) -> Option<usize> {
        let mask = self.index.len().checked_sub(1)?;
        let mut at = hash(&source) & mask;
        for _ in 0..MAX_PROBES {
            let i = *self.index.get(at)?;
            if i == EMPTY {
                if self.slots.len() >= MAX_SOURCES {
                    return None;
                }
                self.index[at] = self.slots.len() as u32;
                self.slots.push(load());
                return Some(self.slots.len() - 1);
            }
            if self.slots.get(i as usize)?.source == source {
                return Some(i as usize);
            }
            at = (at + 1) & mask;
        }
        None
    }

    pub(crate) fn get_mut(&mut self, at: usize) -> Option<&mut SourceSlot> {
        self.slots.get_mut(at)
    }

    /// The slot at `at` may have moved: the next write-back looks at it.
    pub(crate) fn mark(&mut self, at: usize) {
        if let Some(slot) = self.slots.get_mut(at)
            && !slot.listed
        {
            slot.listed = true;
            self.moved.push(at as u32);
        }
    }

    /// Moves what changed into the maps: at the end of the frame, and
    /// before anything reads the maps in the middle of it.
    pub(crate) fn write_back(&mut self, clock: &mut Clock, known: &mut Clock) {
        for at in self.moved.drain(..) {
            if let Some(slot) = self.slots.get_mut(at as usize) {
                slot.write_back(clock, known);
                slot.listed = false;
            }
        }
    }

    /// The stream's entry for the slot at `at` moved outside the table
    /// (after a [`write_back`](Self::write_back)). Only a saving: a slot
    /// left behind the map looks unknown again, and the next update of its
    /// source takes the way through the maps once more.
    pub(crate) fn reload_known(&mut self, at: usize, known: Timestamp) {
        if let Some(slot) = self.slots.get_mut(at) {
            slot.known = known;
            slot.known_was = known;
        }
    }
}

/// A folded multiply of the id's two halves: ids are random bytes or short
/// names padded with zeros, and either spreads well enough; a peer that
/// picks colliding ids only falls back to the maps ([`MAX_PROBES`]).
fn hash(source: &SourceId) -> usize {
    let bytes = source.as_bytes();
    let mut lo = [0u8; 8];
    let mut hi = [0u8; 8];
    lo.copy_from_slice(&bytes[..8]);
    hi.copy_from_slice(&bytes[8..]);
    let lo = u64::from_le_bytes(lo) ^ 0x243F_6A88_85A3_08D3;
    let hi = u64::from_le_bytes(hi) ^ 0x1319_8A2E_0370_7344;
    let product = u128::from(lo) * u128::from(hi);
    (product as u64 ^ (product >> 64) as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> SourceId {
        SourceId::from_bytes(u128::from(n).to_be_bytes()).unwrap()
    }

    fn load(source: SourceId) -> SourceSlot {
        SourceSlot::new(source, Timestamp::ZERO, Timestamp::ZERO, true, true)
    }

    #[test]
    fn finds_each_source_once_and_writes_back_what_moved() {
        let mut table = SourceTable::default();
        table.begin(300);
        let mut loads = 0;
        for round in 1..=3u64 {
            for n in 1..=100 {
                let at = table
                    .find(id(n), || {
                        loads += 1;
                        load(id(n))
                    })
                    .expect("room for 100 sources");
                let slot = table.get_mut(at).unwrap();
                assert_eq!(slot.source, id(n));
                if n % 2 == 0 {
                    slot.seen = Timestamp::new(round, 0);
                    table.mark(at);
                }
            }
        }
        assert_eq!(loads, 100);
        let (mut clock, mut known) = (Clock::new(), Clock::new());
        table.write_back(&mut clock, &mut known);
        assert_eq!(clock.len(), 50, "only what moved");
        assert_eq!(clock.get(id(2)), Timestamp::new(3, 0));
        assert!(known.is_empty());
        // Written back once: the maps are not touched again.
        clock = Clock::new();
        table.write_back(&mut clock, &mut known);
        assert!(clock.is_empty());
    }

    #[test]
    fn too_many_sources_fall_back_and_stay_out() {
        let mut table = SourceTable::default();
        table.begin(MAX_SOURCES * 4);
        let mut held = 0;
        for n in 1..=(MAX_SOURCES as u64 + 100) {
            held += usize::from(table.find(id(n), || load(id(n))).is_some());
        }
        assert!(held <= MAX_SOURCES);
        // Whatever was refused is refused again, not loaded halfway.
        for n in 1..=(MAX_SOURCES as u64 + 100) {
            let first = table.find(id(n), || load(id(n)));
            assert_eq!(first, table.find(id(n), || load(id(n))));
        }
        table.begin(0);
        assert_eq!(table.find(id(1), || load(id(1))), Some(0));
    }
}
