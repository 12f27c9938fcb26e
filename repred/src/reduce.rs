//! The user's side of the contract.

use serde::{Serialize, de::DeserializeOwned};

use crate::Stamp;

/// A state that merges updates: the one thing a user writes.
///
/// `reduce` must be a *join*: applying the same updates in any order, any
/// number of times, gives the same state (commutative, associative and
/// idempotent). It returns exactly the part of `update` that changed the
/// state, or `None` when nothing changed; only that part is recorded and
/// forwarded, so a no-op never travels.
///
/// `snapshot` is the whole state as one update: reducing it into an empty
/// state rebuilds this one. A peer too far behind for history receives it.
///
/// ```
/// use std::collections::BTreeSet;
/// use repred::Reduce;
///
/// /// A grow-only set of names.
/// #[derive(Default)]
/// struct Names(BTreeSet<String>);
///
/// impl Reduce for Names {
///     type Update = BTreeSet<String>;
///
///     fn reduce(&mut self, update: Self::Update) -> Option<Self::Update> {
///         let added: BTreeSet<String> =
///             update.into_iter().filter(|n| self.0.insert(n.clone())).collect();
///         (!added.is_empty()).then_some(added)
///     }
///
///     fn snapshot(&self) -> Self::Update {
///         self.0.clone()
///     }
/// }
///
/// let mut names = Names::default();
/// let change = names.reduce(["ann".to_string(), "bo".to_string()].into());
/// assert_eq!(change.map(|c| c.len()), Some(2));
/// assert_eq!(names.reduce(["ann".to_string()].into()), None, "nothing new");
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a lattice: it does not implement `repred::Reduce`",
    label = "not a lattice",
    note = "use a stock lattice (`repred::Max<T>`, `repred::LwwRegister<T>`, `repred::GSet<T>`, ...), derive `Replicated` for it, or implement `Reduce`"
)]
pub trait Reduce {
    /// What travels between replicas: a change, or a whole state.
    type Update: Clone + Serialize + DeserializeOwned;

    /// Merges `update` into the state; returns the part that changed it.
    fn reduce(&mut self, update: Self::Update) -> Option<Self::Update>;

    /// The whole state as one update.
    fn snapshot(&self) -> Self::Update;

    /// The state in parts, for sending (and storing) a large one in pieces
    /// of bounded size: the part after `cursor` (`None`: the first), of at
    /// most about `max` entries, and the cursor where the next part starts
    /// (`None`: this was the last). Joining every part rebuilds the state,
    /// as [`snapshot`](Reduce::snapshot) does, so neither end ever holds
    /// the whole encoded state.
    ///
    /// Parts are read while the state goes on changing between calls: an
    /// entry changed after the first part may be missed or sent new, which
    /// is harmless, since the receiver takes the sender's clock from before
    /// the first part and gets what changed since as history. The cursor
    /// is opaque bytes that only this type reads (a key, an index).
    ///
    /// The default is the whole snapshot as one part: user types compile
    /// unchanged, and large states implement this to stream.
    ///
    /// ```
    /// use repred::{GSet, Reduce};
    ///
    /// let mut set = GSet::default();
    /// set.reduce((0..10u32).collect());
    /// let mut rebuilt = GSet::default();
    /// let mut cursor = None;
    /// let mut parts = 0;
    /// loop {
    ///     let (part, next) = set.snapshot_part(cursor.as_deref(), 4);
    ///     rebuilt.reduce(part);
    ///     parts += 1;
    ///     match next {
    ///         Some(next) => cursor = Some(next),
    ///         None => break,
    ///     }
    /// }
    /// assert_eq!(rebuilt, set);
    /// assert_eq!(parts, 3);
    /// ```
    fn snapshot_part(&self, cursor: Option<&[u8]>, max: usize) -> (Self::Update, Option<Vec<u8>>) {
        let _ = (cursor, max);
        (self.snapshot(), None)
    }

    /// [`snapshot_part`](Reduce::snapshot_part) serialized straight from the
    /// state, for sending: serializes into `serializer` exactly what
    /// serializing the part `snapshot_part(cursor, max)` returns would (the
    /// receiver decodes it as an [`Update`](Reduce::Update)), and returns
    /// the same next cursor.
    ///
    /// A type implements it to skip building each part as an update first
    /// (for a map, a vector of copies of its entries, encoded and then
    /// dropped): serializing a borrowed view of the entries with the same
    /// shape (the same struct, variant and field names, sequences of known
    /// length) gives the same bytes. The default builds the part and
    /// serializes it.
    ///
    /// ```
    /// use postcard::ser_flavors::{AllocVec, Flavor};
    /// use repred::{LwwMap, Reduce};
    ///
    /// let mut map = LwwMap::default();
    /// let mut write = LwwMap::set_all((0..10u32).map(|k| (k, k * 2)));
    /// <LwwMap<u32, u32> as Reduce>::stamp(&mut write, repred::Stamp {
    ///     ts: repred::Timestamp::new(1, 0),
    ///     source: repred::SourceId::new("a")?,
    /// });
    /// map.reduce(write);
    /// let (part, next) = map.snapshot_part(None, 4);
    /// let mut direct = postcard::Serializer { output: AllocVec::new() };
    /// let direct_next = map.serialize_snapshot_part(None, 4, &mut direct)?;
    /// assert_eq!(direct.output.finalize()?, postcard::to_allocvec(&part)?);
    /// assert_eq!(direct_next, next);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    fn serialize_snapshot_part<S: serde::Serializer>(
        &self,
        cursor: Option<&[u8]>,
        max: usize,
        serializer: S,
    ) -> Result<Option<Vec<u8>>, S::Error> {
        let (part, next) = self.snapshot_part(cursor, max);
        part.serialize(serializer)?;
        Ok(next)
    }

    /// About how many entries [`snapshot`](Reduce::snapshot) would hold,
    /// if the type knows: a replica sends a peer that lacks much more
    /// history than that a snapshot instead (the cheaper path: a fresh peer
    /// of a map written a million times over 100,000 keys gets 100,000
    /// entries, not a million updates). `None` (the default): history,
    /// whenever the history still has it.
    fn entries_hint(&self) -> Option<u64> {
        None
    }

    /// Makes room for a state of about `entries` entries (as
    /// [`entries_hint`](Reduce::entries_hint) counts them) before a snapshot
    /// of that size is merged into it part by part: a map reserves its table
    /// once instead of doubling it on the way (a 20M-entry map that doubles
    /// holds its old and new arrays at once). Only a hint: the receiver
    /// caps what a peer's hint may reserve, and a type may ignore it, which
    /// is the default.
    fn reserve(&mut self, entries: u64) {
        let _ = entries;
    }

    /// Forgets what only records a removal older than `stable`: the
    /// tombstones of deletes (a last-writer-wins delete, an observed
    /// remove) whose stamps' timestamps are below it. Returns how many
    /// entries it dropped.
    ///
    /// The replica calls it ([`Replica::collect`](crate::Replica::collect))
    /// only with a `stable` that every replica's clock has passed for every
    /// source, so no update older than `stable` can ever arrive again (it
    /// would be old data): a tombstone below it has nothing left to stop,
    /// and dropping it cannot resurrect anything. The default keeps
    /// everything.
    fn collect(&mut self, stable: crate::Timestamp) -> usize {
        let _ = stable;
        0
    }

    /// Fills in the stamp of the update that carries `update`, before it is
    /// reduced: called on every update, local and remote.
    ///
    /// Lattices that order concurrent writes by time (last-writer-wins
    /// registers, counters per source) keep stamps inside their updates, so
    /// that a merged snapshot still knows which write won. A part whose stamp
    /// is the carrying update's own can leave it unset on the wire; this
    /// fills it back in. It must only fill unset stamps, never overwrite one.
    /// Most reducers ignore stamps, which is the default.
    fn stamp(update: &mut Self::Update, stamp: Stamp) {
        let _ = (update, stamp);
    }

    /// The reverse of [`stamp`](Reduce::stamp), on a change about to be
    /// recorded and sent: unsets the stamps equal to the carrying update's,
    /// so they do not travel twice. The default does nothing.
    fn unstamp(change: &mut Self::Update, stamp: Stamp) {
        let _ = (change, stamp);
    }
}
