use std::fmt;
use std::hash::Hash;

use indexmap::IndexMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{Reduce, Stamp};

/// A value with the stamp of the write that made it.
///
/// `stamp: None` means "the stamp of the update that carries me": what a
/// local write looks like, and how a write travels when its stamp is its
/// update's (the replica fills it in before the merge).
///
/// Its `Debug` shows the value, and the stamp only when it is set
/// (`Some("blue") @ 1700000000000.0 by a`): an unset stamp is the carrying
/// update's, which is printed beside it if at all.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Stamped<T> {
    /// Who wrote it and when; `None` until the carrying update's stamp.
    pub stamp: Option<Stamp>,
    /// The value.
    pub value: T,
}

impl<T: fmt::Debug> fmt::Debug for Stamped<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt_stamped(&self.value, self.stamp, f)
    }
}

/// `value`, then ` @ <ts> by <source>` when `stamp` is set.
pub(crate) fn fmt_stamped(
    value: &dyn fmt::Debug,
    stamp: Option<Stamp>,
    f: &mut fmt::Formatter<'_>,
) -> fmt::Result {
    value.fmt(f)?;
    match stamp {
        Some(s) => write!(f, " @ {} by {}", s.ts, s.source),
        None => Ok(()),
    }
}

impl<T> Stamped<T> {
    /// A write made now: stamped by the update that carries it.
    pub fn now(value: T) -> Self {
        Stamped { stamp: None, value }
    }

    fn fill(&mut self, stamp: Stamp) {
        self.stamp.get_or_insert(stamp);
    }

    fn clear(&mut self, stamp: Stamp) {
        if self.stamp == Some(stamp) {
            self.stamp = None;
        }
    }
}

/// One value; the newest write wins (by timestamp, then source id, so every
/// replica picks the same winner).
///
/// The state is its own update: write `LwwRegister::set(v)` (or
/// `LwwRegister::from(v)`). Its `Debug` shows the value alone,
/// `LwwRegister(Some("bo"))`; [`written_at`](LwwRegister::written_at) gives
/// the winning write's stamp.
///
/// ```
/// use repred::{LwwRegister, Network, Replica, SourceId};
///
/// let mut net = Network::new();
/// let a = net.add(Replica::new(SourceId::new("a")?, LwwRegister::default()));
/// let b = net.add(Replica::new(SourceId::new("b")?, LwwRegister::default()));
/// net.link(a, b);
/// net.update(a, LwwRegister::set("first".to_string()))?;
/// net.advance(1);
/// net.update(b, LwwRegister::set("second".to_string()))?;
/// net.pump();
/// assert_eq!(net[a].state().get().map(String::as_str), Some("second"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LwwRegister<T> {
    write: Option<Stamped<T>>,
}

impl<T> Default for LwwRegister<T> {
    fn default() -> Self {
        LwwRegister { write: None }
    }
}

impl<T: fmt::Debug> fmt::Debug for LwwRegister<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("LwwRegister").field(&self.get()).finish()
    }
}

/// A write of the value: `LwwRegister::from(v)` is `LwwRegister::set(v)`,
/// and a derived change takes a bare value (`ProfileChange::name(n)`).
impl<T> From<T> for LwwRegister<T> {
    fn from(value: T) -> Self {
        LwwRegister::set(value)
    }
}

impl<T> LwwRegister<T> {
    /// A write of `value`.
    pub fn set(value: T) -> Self {
        LwwRegister { write: Some(Stamped::now(value)) }
    }

    /// The current value, if ever written.
    pub fn get(&self) -> Option<&T> {
        self.write.as_ref().map(|w| &w.value)
    }

    /// The stamp of the winning write.
    pub fn written_at(&self) -> Option<Stamp> {
        self.write.as_ref().and_then(|w| w.stamp)
    }
}

impl<T: Clone + Serialize + DeserializeOwned> Reduce for LwwRegister<T> {
    type Update = LwwRegister<T>;

    fn reduce(&mut self, update: Self::Update) -> Option<Self::Update> {
        let write = update.write?;
        // An unstamped write cannot be ordered; the replica always stamps.
        let stamp = write.stamp?;
        let newer = self.write.as_ref().is_none_or(|old| old.stamp.is_none_or(|s| stamp > s));
        newer.then(|| {
            self.write = Some(write.clone());
            LwwRegister { write: Some(write) }
        })
    }

    fn snapshot(&self) -> Self::Update {
        self.clone()
    }

    fn stamp(update: &mut Self::Update, stamp: Stamp) {
        if let Some(w) = &mut update.write {
            w.fill(stamp);
        }
    }

    fn unstamp(change: &mut Self::Update, stamp: Stamp) {
        if let Some(w) = &mut change.write {
            w.clear(stamp);
        }
    }
}

/// The writes of an [`LwwMap`] update: key -> value, `None` deleting it.
pub type Writes<K, V> = Vec<(K, Stamped<Option<V>>)>;

/// scuttlebutt's model: key -> value, the newest write per key wins (by
/// timestamp, then source id). A delete is a write of `None`, so deletes
/// replicate like writes (and are kept as tombstones).
///
/// ```
/// use repred::{LwwMap, Network, Replica, SourceId};
///
/// let mut net = Network::new();
/// let a = net.add(Replica::new(SourceId::new("a")?, LwwMap::default()));
/// let b = net.add(Replica::new(SourceId::new("b")?, LwwMap::default()));
/// net.link(a, b);
/// net.update(a, LwwMap::set("colour".to_string(), "red".to_string()))?;
/// net.update(a, LwwMap::set("size".to_string(), "L".to_string()))?;
/// net.pump();
/// net.update(b, LwwMap::delete("size".to_string()))?;
/// net.pump();
/// assert_eq!(net[a].state().get("colour").map(String::as_str), Some("red"));
/// assert_eq!(net[a].state().get("size"), None);
/// assert_eq!(net[a].state().len(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct LwwMap<K, V> {
    /// Insertion-ordered, so a snapshot can be sent in parts by position
    /// while lookups stay hashed.
    entries: IndexMap<K, (Stamp, Option<V>)>,
    live: usize,
}

impl<K, V> Default for LwwMap<K, V> {
    fn default() -> Self {
        LwwMap { entries: IndexMap::new(), live: 0 }
    }
}

impl<K: Hash + Eq, V: PartialEq> PartialEq for LwwMap<K, V> {
    fn eq(&self, other: &Self) -> bool {
        self.entries == other.entries
    }
}

impl<K: Hash + Eq, V: Eq> Eq for LwwMap<K, V> {}

super::serde_as_snapshot!([K: Hash + Eq, V] LwwMap<K, V>);

impl<K: Hash + Eq, V> LwwMap<K, V> {
    /// An update writing `value` at `key`.
    pub fn set(key: K, value: V) -> Writes<K, V> {
        vec![(key, Stamped::now(Some(value)))]
    }

    /// An update deleting `key`.
    pub fn delete(key: K) -> Writes<K, V> {
        vec![(key, Stamped::now(None))]
    }

    /// An update writing many keys at once (one stamp for all).
    pub fn set_all(pairs: impl IntoIterator<Item = (K, V)>) -> Writes<K, V> {
        pairs.into_iter().map(|(k, v)| (k, Stamped::now(Some(v)))).collect()
    }

    /// An update deleting many keys at once (one stamp for all).
    pub fn delete_all(keys: impl IntoIterator<Item = K>) -> Writes<K, V> {
        keys.into_iter().map(|k| (k, Stamped::now(None))).collect()
    }

    /// The value at `key`, unless unset or deleted.
    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.get(key).and_then(|(_, v)| v.as_ref())
    }

    /// The stamp of the write that won at `key` (a delete too).
    pub fn stamp_of<Q>(&self, key: &Q) -> Option<Stamp>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.get(key).map(|(s, _)| *s)
    }

    /// The live keys and values, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.entries.iter().filter_map(|(k, (_, v))| Some((k, v.as_ref()?)))
    }

    /// How many keys have a value.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether no key has a value.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Whether no key has a value or a delete either.
    pub(crate) fn is_empty_of_entries(&self) -> bool {
        self.entries.is_empty()
    }
}

impl<K, V> LwwMap<K, V> {
    /// The positions of the snapshot part after `cursor`, of at most `max`
    /// entries, and the cursor after it (`None`: the last part).
    fn part_range(
        &self,
        cursor: Option<&[u8]>,
        max: usize,
    ) -> (std::ops::Range<usize>, Option<Vec<u8>>) {
        let start: usize =
            cursor.and_then(|c| postcard::from_bytes::<u64>(c).ok()).unwrap_or(0) as usize;
        let start = start.min(self.entries.len());
        let end = start.saturating_add(max.max(1)).min(self.entries.len());
        let next = (end < self.entries.len()).then(|| postcard::to_allocvec(&(end as u64)).ok());
        (start..end, next.flatten())
    }
}

/// A [`Stamped`] of borrowed value, serialized as one (the same name and
/// fields), so a part encodes from the map without a clone.
#[derive(Serialize)]
#[serde(rename = "Stamped")]
struct StampedRef<'a, T> {
    stamp: Option<Stamp>,
    value: &'a T,
}

impl<K, V> Reduce for LwwMap<K, V>
where
    K: Hash + Eq + Clone + Serialize + DeserializeOwned,
    V: Clone + Serialize + DeserializeOwned,
{
    type Update = Writes<K, V>;

    fn reduce(&mut self, mut update: Self::Update) -> Option<Self::Update> {
        // The change is the update less what lost: filtered in place, so a
        // write that wins costs no allocation.
        update.retain(|(key, write)| {
            let Some(stamp) = write.stamp else { return false };
            match self.entries.get_mut(key) {
                Some((old, value)) if stamp > *old => {
                    self.live = self.live + usize::from(write.value.is_some())
                        - usize::from(value.is_some());
                    *old = stamp;
                    value.clone_from(&write.value);
                    true
                }
                Some(_) => false,
                None => {
                    self.live += usize::from(write.value.is_some());
                    self.entries.insert(key.clone(), (stamp, write.value.clone()));
                    true
                }
            }
        });
        (!update.is_empty()).then_some(update)
    }

    fn snapshot(&self) -> Self::Update {
        self.entries
            .iter()
            .map(|(k, (s, v))| (k.clone(), Stamped { stamp: Some(*s), value: v.clone() }))
            .collect()
    }

    fn entries_hint(&self) -> Option<u64> {
        Some(self.entries.len() as u64)
    }

    /// Grows the table once to hold `entries` (deletes included).
    fn reserve(&mut self, entries: u64) {
        let entries = usize::try_from(entries).unwrap_or(usize::MAX);
        self.entries.reserve(entries.saturating_sub(self.entries.len()));
    }

    /// Drops deletes older than `stable` (order kept, so positions of the
    /// rest only move down; the replica collects only when no snapshot is
    /// being sent).
    fn collect(&mut self, stable: crate::Timestamp) -> usize {
        let before = self.entries.len();
        self.entries.retain(|_, (stamp, value)| value.is_some() || stamp.ts >= stable);
        // A map that lost most of its entries gives the memory back.
        if self.entries.len() < self.entries.capacity() / 4 {
            self.entries.shrink_to_fit();
        }
        before - self.entries.len()
    }

    /// Parts by position in insertion order.
    fn snapshot_part(&self, cursor: Option<&[u8]>, max: usize) -> (Self::Update, Option<Vec<u8>>) {
        let (range, next) = self.part_range(cursor, max);
        let part = self.entries.as_slice()[range]
            .iter()
            .map(|(k, (s, v))| (k.clone(), Stamped { stamp: Some(*s), value: v.clone() }))
            .collect();
        (part, next)
    }

    /// The same part as [`snapshot_part`](Reduce::snapshot_part), encoded
    /// from the entries where they are: no clone of each key and value.
    fn serialize_snapshot_part<S: serde::Serializer>(
        &self,
        cursor: Option<&[u8]>,
        max: usize,
        serializer: S,
    ) -> Result<Option<Vec<u8>>, S::Error> {
        let (range, next) = self.part_range(cursor, max);
        let entries = &self.entries.as_slice()[range];
        serializer.collect_seq(
            entries.iter().map(|(k, (s, v))| (k, StampedRef { stamp: Some(*s), value: v })),
        )?;
        Ok(next)
    }

    fn stamp(update: &mut Self::Update, stamp: Stamp) {
        for (_, w) in update {
            w.fill(stamp);
        }
    }

    fn unstamp(change: &mut Self::Update, stamp: Stamp) {
        for (_, w) in change {
            w.clear(stamp);
        }
    }
}
