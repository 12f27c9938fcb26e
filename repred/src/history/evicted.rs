//! The newest stamp per source among the records a run of pushes evicted,
//! until the horizon takes them.
//!
//! A full log evicts a record for each one it takes, and the horizon (a
//! `BTreeMap` by source) rose by a search per evicted record: about a tenth
//! of taking in a fresh node's history, 1M updates through a log of
//! 65,536. A frame's records are pushed as one run
//! ([`History::run`](super::History::run)); its evictions are noted here,
//! a hash and a probe or two each, and the horizon takes each source's
//! newest once, when the run ends. A run's first few evictions go to the
//! horizon directly, and the table goes back when the run ends: a frame
//! of one live update costs nothing more, and an idle replica holds no
//! table.

use crate::source_table::hash;
use crate::{Clock, SourceId, Timestamp};

/// Slots of the table: a frame of history seldom evicts records of more
/// than a few hundred sources; the others go to the horizon directly.
const SLOTS: usize = 1_024;

/// Most probes for a source before it goes to the horizon directly.
const MAX_PROBES: usize = 8;

/// Evictions of a run that go to the horizon directly before the table
/// is taken: a run of a few records (live updates, one a frame) costs no
/// table.
const DIRECT_FIRST: usize = 32;

/// Each source's newest evicted stamp, by open addressing.
#[derive(Debug, Default)]
pub(crate) struct Evicted {
    /// `SLOTS` long once used; `Timestamp::ZERO` marks an empty slot (no
    /// record has that stamp: its clock entry would claim nothing).
    slots: Vec<(SourceId, Timestamp)>,
    /// The slots in use, to take and empty them.
    used: Vec<u16>,
    /// Evictions of this run so far that went to the horizon directly.
    direct: usize,
}

impl Evicted {
    /// Notes that a record of `source` at `ts` was evicted; `false` when
    /// the table cannot hold the source (full around it), for the caller
    /// to raise the horizon itself.
    pub(crate) fn note(&mut self, source: SourceId, ts: Timestamp) -> bool {
        if self.direct < DIRECT_FIRST {
            self.direct += 1;
            return false;
        }
        if self.slots.is_empty() {
            self.slots.resize(SLOTS, (source, Timestamp::ZERO));
        }
        let mut at = hash(&source) & (SLOTS - 1);
        for _ in 0..MAX_PROBES {
            let Some(slot) = self.slots.get_mut(at) else { return false };
            if slot.1 == Timestamp::ZERO {
                *slot = (source, ts);
                self.used.push(at as u16);
                return true;
            }
            if slot.0 == source {
                slot.1 = slot.1.max(ts);
                return true;
            }
            at = (at + 1) & (SLOTS - 1);
        }
        false
    }

    /// Raises `horizon` to every stamp noted and gives the table back
    /// (24 KiB: kept, it would be that much more per replica, and a node
    /// may hold hundreds of thousands); returns whether the horizon rose.
    pub(crate) fn take_into(&mut self, horizon: &mut Clock) -> bool {
        let mut rose = false;
        for at in self.used.drain(..) {
            if let Some(slot) = self.slots.get(usize::from(at)) {
                rose |= horizon.observe(slot.0, slot.1);
            }
        }
        self.slots = Vec::new();
        self.used = Vec::new();
        self.direct = 0;
        rose
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> SourceId {
        SourceId::from_bytes(u128::from(n + 1).to_be_bytes()).unwrap()
    }

    /// Whatever the number of sources (past what the table holds, the
    /// caller raises the horizon itself), the horizon ends as raised one
    /// stamp at a time, and the table is empty for the next run.
    #[test]
    fn the_horizon_ends_as_raised_one_stamp_at_a_time() {
        for sources in [1, 100, 5_000] {
            let mut evicted = Evicted::default();
            let (mut batched, mut direct) = (Clock::new(), Clock::new());
            batched.observe(id(0), Timestamp::new(1_000, 0));
            direct.observe(id(0), Timestamp::new(1_000, 0));
            for round in 0..3 {
                for i in 0..3 * sources {
                    let source = id((i * 7 % sources) as u64);
                    let ts = Timestamp::new(10 + round * 10 + (i % 5) as u64, 0);
                    if !evicted.note(source, ts) {
                        batched.observe(source, ts);
                    }
                    direct.observe(source, ts);
                }
                evicted.take_into(&mut batched);
                assert_eq!(batched, direct, "{sources} sources, round {round}");
                assert_eq!(evicted.used.capacity() + evicted.slots.capacity(), 0, "given back");
            }
            assert!(!evicted.take_into(&mut batched), "nothing noted since");
        }
    }
}
