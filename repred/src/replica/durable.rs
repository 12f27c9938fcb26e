//! What a durable store needs: holding records until saved, reading
//! the log, and restoring a replica from it.

use super::Replica;
use crate::history::Entry;
use crate::{Clock, Config, Reduce, SourceId, Timestamp};

impl<T: Reduce> Replica<T> {
    /// From now on, streams send peers only the log records that
    /// [`release`](Replica::release) has let go: a durable node releases
    /// what its store has committed, so that no peer ever holds an update
    /// that a crash could take from its origin. (Such an update would
    /// diverge for good: the restarted origin issues later timestamps, its
    /// clock then claims the lost one, and nobody sends it back.)
    ///
    /// Everything recorded so far counts as released. A snapshot owed to a
    /// peer waits until everything is released, since it holds the whole
    /// state.
    ///
    /// ```
    /// use repred::{LwwRegister, Network, Replica, SourceId};
    ///
    /// let mut net = Network::new();
    /// let a = net.add(Replica::new(SourceId::new("a")?, LwwRegister::default()));
    /// let b = net.add(Replica::new(SourceId::new("b")?, LwwRegister::default()));
    /// net[a].hold_until_released();
    /// net.link(a, b);
    /// net.update(a, LwwRegister::set(7))?;
    /// net.pump();
    /// assert_eq!(net[b].state().get(), None, "not saved yet, so not sent");
    /// let saved = net[a].end_seq(); // the store committed everything
    /// net[a].release(saved);
    /// net.pump();
    /// assert_eq!(net[b].state().get(), Some(&7));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn hold_until_released(&mut self) {
        let end = self.core.history.end_seq();
        self.core.released.get_or_insert(end);
    }

    /// Lets streams send the log records below sequence `end` (see
    /// [`hold_until_released`](Replica::hold_until_released)); call
    /// [`poll_transmit`](Replica::poll_transmit) again afterwards. Releases
    /// only move forward; without a hold this does nothing.
    pub fn release(&mut self, end: u64) {
        if let Some(released) = &mut self.core.released {
            *released = (*released).max(end);
        }
    }

    /// The log entries from sequence number `from` on, for a durable store.
    ///
    /// Returns `Err(first)` when entries before `first` were already dropped
    /// from the history: the store must then save a whole snapshot
    /// ([`Reduce::snapshot`] of [`state`](Replica::state), with the
    /// [`clock`](Replica::clock)) instead.
    pub fn entries_from(
        &self,
        from: u64,
    ) -> Result<impl Iterator<Item = (u64, &Entry<T::Update>)> + '_, u64> {
        let history = &self.core.history;
        if from < history.first_seq() {
            return Err(history.first_seq());
        }
        Ok((from..history.end_seq()).filter_map(move |seq| Some((seq, history.get(seq)?))))
    }

    /// Rebuilds a replica from what a durable store kept: a base state with
    /// its clock (a snapshot, or `T::default()` and an empty clock), the log
    /// entries recorded after it, the newest timestamp ever issued, and the
    /// sequence number of the first entry.
    ///
    /// Peers that lack updates from before the base are sent a snapshot, as
    /// the entries before it are gone. The next local timestamp is greater
    /// than `last` and every restored one, whatever the wall clock says.
    pub fn restore(
        id: SourceId,
        base: T,
        base_clock: Clock,
        last: Timestamp,
        first_seq: u64,
        entries: impl IntoIterator<Item = Entry<T::Update>>,
        config: Config,
    ) -> Self {
        let mut replica = Self::with_config(id, base, config);
        let core = &mut replica.core;
        core.history.start_at(first_seq);
        core.history.raise_horizon(&base_clock);
        core.last = last.max(base_clock.max());
        core.clock = base_clock;
        // Parts of a snapshot replayed with no end after them: it was cut
        // (or the save was), and they count as such (`parts_floor`), as
        // `receive_part` counted them: at the floor the log names for each
        // (`Entry::Receiving`), or, for one it does not (a log from before
        // the record) merged while the clock claimed none of the peers'
        // writes, at the floor of the replay then, which is no higher
        // (a snapshot from below the floor is refused; the base's floor
        // comes after the replay).
        let mut named = false;
        for entry in entries {
            let part_named = std::mem::take(&mut named);
            match &entry {
                Entry::Change(e) | Entry::Unchanged(e) | Entry::Relayed { envelope: e, .. } => {
                    // Recorded as they travel, without the stamps that are
                    // the envelope's own: filled back in before the merge,
                    // as on arrival, or a lattice that orders by stamps
                    // (last-writer-wins, observed-remove) drops them.
                    let mut change = e.change.clone();
                    T::stamp(&mut change, e.stamp());
                    core.state.reduce(change);
                    core.clock.observe(e.source, e.ts);
                    core.last = core.last.max(e.ts);
                }
                Entry::Advance(_) | Entry::Proven(_) => {
                    if let Some(stamp) = entry.stamp() {
                        core.clock.observe(stamp.source, stamp.ts);
                        core.last = core.last.max(stamp.ts);
                    }
                }
                Entry::Merge { clock, change, .. } => {
                    if clock.is_empty() && !part_named && core.claims_only_own() {
                        let floor = core.floor;
                        core.count_parts(floor);
                    }
                    core.state.reduce(change.clone());
                    // With a clock: a whole snapshot, as earlier versions
                    // recorded one.
                    core.replay_snapshot(clock, !clock.is_empty());
                }
                Entry::Covered { clock, .. } => core.replay_snapshot(clock, true),
                Entry::Collected { floor } => {
                    core.raise_floor(*floor);
                    core.collect_pending = false;
                    core.state.collect(*floor);
                }
                Entry::Receiving { floor, .. } => {
                    let floor = *floor;
                    core.count_parts(floor);
                    named = true;
                }
            }
            core.history.push(entry);
        }
        replica
    }
}
