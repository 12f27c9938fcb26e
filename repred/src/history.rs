//! What a replica remembers to send: a bounded log of applied changes.

use std::collections::VecDeque;

use crate::{Clock, Envelope, Proof, SourceId, Stamp, Timestamp};

mod records;

use records::Records;

/// One entry of a replica's log, in the order the replica took it in: what
/// a durable store writes, and what [`Replica::restore`](crate::Replica::restore)
/// reads back.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Entry<U> {
    /// A local update that changed the state: relayed to peers and
    /// subscribers (what it changed is the update itself). Peers' updates
    /// recorded before [`Entry::Relayed`] existed are here too.
    Change(Envelope<U>),
    /// An update that was new but changed nothing here: relayed verbatim
    /// (see [`Entry::Relayed`]); subscribers see nothing.
    Unchanged(Envelope<U>),
    /// An unsigned update that was new but changed nothing, as earlier
    /// versions recorded it: only the clock moved, and peers were
    /// told of the advance without the update. A store may still hold
    /// some; new ones are recorded as [`Entry::Unchanged`].
    Advance(Stamp),
    /// What merging a peer's snapshot changed. It has no single origin
    /// stamp, so peers get it through a snapshot, never as history; only
    /// subscribers see it.
    Merge {
        /// The peer that sent the snapshot.
        from: SourceId,
        /// The sender's clock: the updates the snapshot holds.
        clock: Clock,
        /// What changed.
        change: U,
    },
    /// A signed update that was new but changed nothing, as its proof, as
    /// earlier versions recorded it: peers verified the origin's
    /// signature and moved their clocks without the change. A store may
    /// still hold some; new ones are recorded as [`Entry::Unchanged`].
    /// Boxed (it is stored as the proof itself): its signature would
    /// otherwise set the size of every record, 152 bytes where a small
    /// update's takes 48.
    Proven(Box<Proof>),
    /// A peer's snapshot, whose parts were recorded as [`Entry::Merge`]s
    /// (with empty clocks) as they came, is complete: the replica holds
    /// what this clock names, though it has no history for it.
    Covered {
        /// The peer that sent the snapshot.
        from: SourceId,
        /// The sender's clock from before its first part.
        clock: Clock,
    },
    /// The replica forgot its deletes older than `floor`
    /// ([`Replica::collect`](crate::Replica::collect)): a restore collects
    /// again here, and the floor holds from here on.
    Collected {
        /// The collection floor.
        floor: Timestamp,
    },
    /// A peer's update that changed the state. Peers get it as its origin
    /// wrote it, even where only part of it was new here: a peer that
    /// takes it from this replica may lack that part (a lazy relay pulls
    /// each source from its own peer), and the stamp it takes says it
    /// holds the whole update. Subscribers get `change`, what it changed
    /// here.
    Relayed {
        /// The update as it came.
        envelope: Envelope<U>,
        /// What it changed here (stamps equal to the envelope's left
        /// implicit).
        change: U,
    },
    // Last: stores hold entries by variant index.
    /// The [`Entry::Merge`] that follows is a part of a peer's snapshot
    /// from collection floor `floor`, merged while the clock claimed none
    /// of the peers' writes. A restore that finds such parts with
    /// no [`Entry::Covered`] after them whose clock claims something (the
    /// snapshot was cut) knows what floor they hold: a snapshot from a
    /// higher one may not be merged on top of them. For a part without
    /// this record, from a log before it, it takes the floor of the
    /// replay then, which is no higher.
    Receiving {
        /// The peer that sends the snapshot.
        from: SourceId,
        /// The floor its sender had collected at.
        floor: Timestamp,
    },
}

impl<U> Entry<U> {
    /// The origin stamp, for entries that travel as history.
    pub fn stamp(&self) -> Option<Stamp> {
        match self {
            Entry::Change(e) | Entry::Unchanged(e) | Entry::Relayed { envelope: e, .. } => {
                Some(e.stamp())
            }
            Entry::Advance(stamp) => Some(*stamp),
            Entry::Proven(proof) => Some(proof.stamp),
            Entry::Merge { .. }
            | Entry::Covered { .. }
            | Entry::Collected { .. }
            | Entry::Receiving { .. } => None,
        }
    }
}

/// The log of applied changes, bounded by a number of records.
///
/// Records are numbered by a sequence that only grows; sessions and
/// subscriptions keep a cursor into it instead of queues of their own, so
/// memory is bounded by the log alone however slow a peer is. Per source, the
/// log is in timestamp order, because a replica only accepts newer updates.
///
/// When the log is full the oldest record is dropped and the *horizon* (the
/// newest dropped timestamp per source) rises. A peer whose clock does not
/// cover the horizon may lack something that is gone, so it is sent a
/// snapshot instead of history.
#[derive(Debug)]
pub(crate) struct History<U> {
    records: Records<Entry<U>>,
    first_seq: u64,
    horizon: Clock,
    horizon_generation: u64,
    limit: usize,
    /// The recorded [`Entry::Merge`]s still held, as (sequence, bytes
    /// received), oldest first, and their total: a large snapshot's
    /// changes would otherwise be a second copy of the state.
    merges: VecDeque<(u64, usize)>,
    merge_bytes: usize,
    merge_limit: usize,
    /// The first record a snapshot being sent needs kept: its stream sends
    /// no history until the snapshot ends, then the history from there
    /// (`u64::MAX`: no snapshot being sent).
    snapshot_from: u64,
}

impl<U> History<U> {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            records: Records::new(limit.max(1)),
            first_seq: 0,
            horizon: Clock::new(),
            horizon_generation: 0,
            limit: limit.max(1),
            merges: VecDeque::new(),
            merge_bytes: 0,
            merge_limit: usize::MAX,
            snapshot_from: u64::MAX,
        }
    }

    /// Keeps the records from `from` on (the earliest where a snapshot
    /// being sent began, if any) past the limit, up to twice the limit:
    /// evicted, its stream would find them gone when the snapshot ends and
    /// send another, and under steady writes another, never done.
    pub(crate) fn keep_for_snapshots(&mut self, from: Option<u64>) {
        self.snapshot_from = from.unwrap_or(u64::MAX);
    }

    /// The most records kept (but for a snapshot's stream).
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// Whether the oldest record is one a snapshot being sent needs kept,
    /// and the log has room for it under twice its limit.
    fn kept_for_snapshot(&self) -> bool {
        self.first_seq >= self.snapshot_from && self.records.len() < self.limit.saturating_mul(2)
    }

    /// Caps the bytes of snapshot changes kept (see [`push_merge`](Self::push_merge)).
    pub(crate) fn with_merge_limit(mut self, bytes: usize) -> Self {
        self.merge_limit = bytes;
        self
    }

    /// Records what a snapshot part changed, `bytes` as it was received;
    /// past the merge limit the oldest records go, as past the record
    /// limit, so that whoever reads the history for them (a store, a
    /// subscriber) finds it lagged and takes the state instead.
    pub(crate) fn push_merge(&mut self, record: Entry<U>, bytes: usize) {
        self.push(record);
        self.merges.push_back((self.end_seq() - 1, bytes));
        self.merge_bytes = self.merge_bytes.saturating_add(bytes);
        while self.merge_bytes > self.merge_limit && !self.records.is_empty() {
            self.evict_oldest();
        }
    }

    pub(crate) fn push(&mut self, record: Entry<U>) {
        // Over the limit after a snapshot kept records: back under it,
        // and the room taken past it goes back once nothing needs it.
        if self.records.len() >= self.limit && !self.kept_for_snapshot() {
            while self.records.len() >= self.limit && !self.kept_for_snapshot() {
                self.evict_oldest();
            }
            if self.snapshot_from == u64::MAX
                && self.records.capacity() > self.limit.saturating_mul(3) / 2
            {
                self.records.shrink_to_fit();
            }
        }
        self.records.push_back(record);
    }

    fn evict_oldest(&mut self) {
        // Dropped where it lies: only its stamp is needed.
        if let Some(stamp) = self.records.drop_front(Entry::stamp) {
            if self.merges.front().is_some_and(|&(seq, _)| seq == self.first_seq)
                && let Some((_, bytes)) = self.merges.pop_front()
            {
                self.merge_bytes -= bytes;
            }
            self.first_seq += 1;
            if let Some(stamp) = stamp
                && self.horizon.observe(stamp.source, stamp.ts)
            {
                self.horizon_generation += 1;
            }
        }
    }

    /// Empties the log, leaving a gap of one sequence number: a store
    /// that saved up to here cannot append to what came before, so it
    /// saves a whole snapshot next ([`Replica::rejoin`](crate::Replica::rejoin)).
    pub(crate) fn restart(&mut self) {
        let next = self.end_seq() + 1;
        self.start_at(next);
        self.horizon = Clock::new();
        self.horizon_generation += 1;
    }

    /// Starts the log at `seq` (after a restore), empty.
    pub(crate) fn start_at(&mut self, seq: u64) {
        self.records.clear();
        self.merges.clear();
        self.merge_bytes = 0;
        self.first_seq = seq;
    }

    /// Everything up to `clock` may be missing from this log from now on.
    pub(crate) fn raise_horizon(&mut self, clock: &Clock) {
        if !self.horizon.covers(clock) {
            self.horizon.merge(clock);
            self.horizon_generation += 1;
        }
    }

    /// Drops the oldest records that are older than `stable`, before
    /// sequence `keep_from` at most, as if the log had overflowed (the
    /// horizon rises with them, readers behind find themselves lagged);
    /// returns how many went.
    ///
    /// For a collection ([`Replica::collect`](crate::Replica::collect)):
    /// every replica that can still write holds the updates older than a
    /// stable point, so none needs them from this log. Only the oldest
    /// run goes, since the log is in arrival order: it stops at the first
    /// record at or above `stable`. Records without an origin stamp
    /// (snapshot merges, their cover, earlier collections) never travel
    /// as history, so they go with the run.
    pub(crate) fn drop_stable(&mut self, stable: Timestamp, keep_from: u64) -> usize {
        let before = self.records.len();
        while self.first_seq < keep_from
            && let Some(front) = self.records.front()
            && front.stamp().is_none_or(|s| s.ts < stable)
        {
            self.evict_oldest();
        }
        // A log emptied by a collection gives its memory back, as a map
        // that lost most of its entries does; it grows again as it fills.
        if self.records.len() < self.records.capacity() / 4 {
            self.records.shrink_to_fit();
            self.merges.shrink_to_fit();
        }
        before - self.records.len()
    }

    pub(crate) fn horizon(&self) -> &Clock {
        &self.horizon
    }

    /// Bumped whenever the horizon rises, so cursors notice cheaply.
    pub(crate) fn horizon_generation(&self) -> u64 {
        self.horizon_generation
    }

    pub(crate) fn first_seq(&self) -> u64 {
        self.first_seq
    }

    pub(crate) fn end_seq(&self) -> u64 {
        self.first_seq + self.records.len() as u64
    }

    pub(crate) fn get(&self, seq: u64) -> Option<&Entry<U>> {
        let index = seq.checked_sub(self.first_seq)?;
        self.records.get(usize::try_from(index).ok()?)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Entry<U>> {
        self.records.iter()
    }

    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }

    /// The relayable records newer than `clock`, ordered by (timestamp, source).
    pub(crate) fn since(&self, clock: &Clock) -> Vec<&Envelope<U>> {
        let mut out: Vec<&Envelope<U>> = self
            .records
            .iter()
            .filter_map(|r| match r {
                Entry::Change(e) | Entry::Unchanged(e) | Entry::Relayed { envelope: e, .. }
                    if !clock.has(e.source, e.ts) =>
                {
                    Some(e)
                }
                _ => None,
            })
            .collect();
        out.sort_unstable_by_key(|e| (e.ts, e.source));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SourceId, Timestamp};

    fn record(source: &str, ts: u64) -> Entry<u8> {
        Entry::Change(Envelope::new(SourceId::new(source).unwrap(), Timestamp::new(ts, 0), 0))
    }

    fn merge(bytes: u8) -> Entry<u8> {
        Entry::Merge { from: SourceId::new("P").unwrap(), clock: Clock::new(), change: bytes }
    }

    #[test]
    fn snapshot_changes_past_their_byte_limit_evict_the_oldest_records() {
        let mut h = History::new(100).with_merge_limit(250);
        h.push(record("A", 1));
        h.push_merge(merge(1), 100);
        h.push_merge(merge(2), 100);
        assert_eq!((h.first_seq(), h.len()), (0, 3));
        // Over 250: the oldest go, up to and including the first merge.
        h.push_merge(merge(3), 100);
        assert_eq!((h.first_seq(), h.len()), (2, 2));
        h.push(record("A", 2));
        h.push_merge(merge(4), 100);
        assert_eq!((h.first_seq(), h.len()), (3, 3));
        // One part larger than the limit leaves nothing of the snapshot.
        h.push_merge(merge(5), 1_000);
        assert!(h.len() == 0 && h.end_seq() == 7, "{} from {}", h.len(), h.first_seq());
        h.push_merge(merge(6), 10);
        assert_eq!((h.first_seq(), h.len()), (7, 1));
    }

    #[test]
    fn a_collection_drops_the_oldest_run_below_the_floor() {
        let mut h = History::new(100);
        for ts in 1..=10 {
            h.push(record(if ts % 2 == 0 { "A" } else { "B" }, ts));
        }
        h.push(merge(1));
        h.push(record("A", 20));
        h.push(record("B", 3));
        let stable = Timestamp::new(15, 0);
        // Not past what a reader still needs.
        assert_eq!(h.drop_stable(stable, 4), 4);
        assert_eq!(h.first_seq(), 4);
        // The run goes, with the merge in it; it stops at the first record
        // at or above the floor, though an older one comes after it.
        assert_eq!(h.drop_stable(stable, u64::MAX), 7);
        assert_eq!((h.first_seq(), h.len()), (11, 2));
        assert_eq!(h.get(11).and_then(Entry::stamp).map(|s| s.ts), Some(Timestamp::new(20, 0)));
        let (a, b) = (SourceId::new("A").unwrap(), SourceId::new("B").unwrap());
        assert_eq!(h.horizon().get(a), Timestamp::new(10, 0));
        assert_eq!(h.horizon().get(b), Timestamp::new(9, 0));
        assert_eq!(h.drop_stable(stable, u64::MAX), 0);
    }

    /// The memory a collection gives back is not taken again by the next
    /// record (a log past an eighth of its limit takes the rest at once).
    #[test]
    fn a_collection_frees_memory_the_next_record_does_not_take_back() {
        let limit = 40_000;
        let mut h = History::new(limit);
        for ts in 1..=limit as u64 {
            h.push(record("A", ts));
        }
        assert_eq!(h.records.capacity(), limit);
        // 8,000 records at and above the stable point stay: past an
        // eighth of the limit, so the next push once took all of it back.
        let stable = Timestamp::new(32_001, 0);
        assert_eq!(h.drop_stable(stable, u64::MAX), 32_000);
        let freed = h.records.capacity();
        assert!(freed < limit / 4, "{freed}");
        h.push(record("A", limit as u64 + 1));
        assert!(h.records.capacity() <= 2 * freed, "{} of {limit}", h.records.capacity());
    }

    #[test]
    fn eviction_raises_the_horizon_per_source() {
        let mut h = History::new(2);
        h.push(record("A", 1));
        h.push(record("B", 2));
        assert!(h.horizon().is_empty());
        h.push(record("A", 3));
        assert_eq!(h.len(), 2);
        assert_eq!(h.first_seq(), 1);
        assert_eq!(h.end_seq(), 3);
        let a = SourceId::new("A").unwrap();
        assert_eq!(h.horizon().get(a), Timestamp::new(1, 0));
        assert_eq!(h.horizon_generation(), 1);
        assert!(h.get(0).is_none());
        assert_eq!(h.get(2).unwrap().stamp().unwrap().ts, Timestamp::new(3, 0));
    }
}
