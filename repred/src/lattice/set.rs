use std::collections::{BTreeMap, BTreeSet};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{Reduce, Stamp};

/// A set that only grows: the union is the merge.
///
/// ```
/// use repred::{GSet, Reduce};
///
/// let mut names: GSet<String> = GSet::default();
/// assert_eq!(names.reduce(GSet::from(["ann".to_string(), "bo".to_string()])).map(|c| c.len()), Some(2));
/// assert_eq!(names.reduce(GSet::from(["ann".to_string()])), None);
/// assert!(names.contains(&"bo".to_string()));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GSet<T: Ord>(BTreeSet<T>);

impl<T: Ord> Default for GSet<T> {
    fn default() -> Self {
        GSet(BTreeSet::new())
    }
}

impl<T: Ord, const N: usize> From<[T; N]> for GSet<T> {
    fn from(items: [T; N]) -> Self {
        GSet(items.into_iter().collect())
    }
}

impl<T: Ord> FromIterator<T> for GSet<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        GSet(iter.into_iter().collect())
    }
}

impl<T: Ord> GSet<T> {
    /// An update adding one element.
    pub fn add(item: T) -> Self {
        GSet(BTreeSet::from([item]))
    }

    /// An update adding every element of `items`.
    pub fn add_all(items: impl IntoIterator<Item = T>) -> Self {
        GSet(items.into_iter().collect())
    }

    /// Whether `item` is in the set.
    pub fn contains(&self, item: &T) -> bool {
        self.0.contains(item)
    }

    /// The elements, in order.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.0.iter()
    }

    /// How many elements.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<T: Ord + Clone + Serialize + DeserializeOwned> Reduce for GSet<T> {
    type Update = GSet<T>;

    fn reduce(&mut self, update: GSet<T>) -> Option<GSet<T>> {
        let added: BTreeSet<T> =
            update.0.into_iter().filter(|x| self.0.insert(x.clone())).collect();
        (!added.is_empty()).then_some(GSet(added))
    }

    fn snapshot(&self) -> GSet<T> {
        self.clone()
    }

    fn entries_hint(&self) -> Option<u64> {
        Some(self.0.len() as u64)
    }

    fn snapshot_part(&self, cursor: Option<&[u8]>, max: usize) -> (GSet<T>, Option<Vec<u8>>) {
        let (part, next) = super::set_part(&self.0, cursor, max);
        (GSet(part.into_iter().cloned().collect()), next)
    }
}

/// An update of an [`OrSet`]: tagged adds and removed tags.
///
/// Its `Debug` shows an add's tag only when it is set (an unset one is the
/// carrying update's stamp): `OrSetUpdate { adds: ["milk"], removes: [] }`.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct OrSetUpdate<T> {
    /// Elements added, each with the stamp of its add as a unique tag
    /// (`None`: the carrying update's stamp).
    pub adds: Vec<(T, Option<Stamp>)>,
    /// Adds that were observed and removed: the element and its add's tag
    /// (one update may add several elements under one stamp).
    pub removes: Vec<(T, Stamp)>,
}

impl<T: std::fmt::Debug> std::fmt::Debug for OrSetUpdate<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        struct Add<'a, T>(&'a T, Option<Stamp>);
        impl<T: std::fmt::Debug> std::fmt::Debug for Add<'_, T> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                super::lww::fmt_stamped(self.0, self.1, f)
            }
        }
        let adds: Vec<Add<'_, T>> = self.adds.iter().map(|(t, s)| Add(t, *s)).collect();
        f.debug_struct("OrSetUpdate").field("adds", &adds).field("removes", &self.removes).finish()
    }
}

impl<T> Default for OrSetUpdate<T> {
    fn default() -> Self {
        OrSetUpdate { adds: Vec::new(), removes: Vec::new() }
    }
}

/// An observed-remove set: a remove takes out the adds it has seen, so an
/// element added again (or concurrently elsewhere) stays. Removed tags are
/// kept as tombstones, so a late copy of a removed add cannot resurrect it.
///
/// ```
/// use repred::{OrSet, Network, Replica, SourceId};
///
/// let mut net = Network::new();
/// let a = net.add(Replica::new(SourceId::new("a")?, OrSet::default()));
/// let b = net.add(Replica::new(SourceId::new("b")?, OrSet::default()));
/// net.link(a, b);
/// net.update(a, OrSet::add("milk".to_string()))?;
/// net.pump();
/// let remove = net[b].state().remove(&"milk".to_string());
/// net.update(b, remove)?;
/// net.pump();
/// assert!(!net[a].state().contains(&"milk".to_string()));
/// net.update(a, OrSet::add("milk".to_string()))?; // re-adding works
/// net.pump();
/// assert!(net[b].state().contains(&"milk".to_string()));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct OrSet<T: Ord> {
    /// element -> tags of its live adds.
    live: BTreeMap<T, Tags>,
    /// Adds that were removed.
    tombstones: BTreeSet<(Stamp, T)>,
    /// Tombstones of adds older than this were collected
    /// ([`Reduce::collect`]): such an add that is not live here was
    /// removed (every replica had it by then), so it stays out.
    floor: crate::Timestamp,
}

/// The tags of one element's live adds. Almost always one (a second comes
/// only from a concurrent or repeated add), so one is kept inline: a set
/// of its own per element cost a B-tree node of eleven stamps (288 bytes
/// with the allocator's header) for the one it held.
///
/// Never empty, and `Many` holds two or more, so that equal tags compare
/// equal.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Tags {
    One(Stamp),
    Many(BTreeSet<Stamp>),
}

impl Tags {
    /// Adds `tag`; whether it was new.
    fn insert(&mut self, tag: Stamp) -> bool {
        match self {
            Tags::One(one) if *one == tag => false,
            Tags::One(one) => {
                *self = Tags::Many(BTreeSet::from([*one, tag]));
                true
            }
            Tags::Many(set) => set.insert(tag),
        }
    }

    /// Removes `tag`: `None` if it was not there, else whether any tag is
    /// left.
    fn remove(&mut self, tag: &Stamp) -> Option<bool> {
        match self {
            Tags::One(one) => (one == tag).then_some(false),
            Tags::Many(set) => {
                if !set.remove(tag) {
                    return None;
                }
                if set.len() == 1
                    && let Some(&last) = set.first()
                {
                    *self = Tags::One(last);
                }
                Some(true)
            }
        }
    }

    fn iter(&self) -> impl Iterator<Item = &Stamp> {
        let (one, many) = match self {
            Tags::One(one) => (Some(one), None),
            Tags::Many(set) => (None, Some(set.iter())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }
}

impl<T: Ord> Default for OrSet<T> {
    fn default() -> Self {
        OrSet { live: BTreeMap::new(), tombstones: BTreeSet::new(), floor: crate::Timestamp::ZERO }
    }
}

/// Equal elements and tombstones: the collection floor is the replica's
/// business, not the state's.
impl<T: Ord> PartialEq for OrSet<T> {
    fn eq(&self, other: &Self) -> bool {
        self.live == other.live && self.tombstones == other.tombstones
    }
}

impl<T: Ord> Eq for OrSet<T> {}

super::serde_as_snapshot!([T: Ord] OrSet<T>);

impl<T: Ord + Clone> OrSet<T> {
    /// An update adding `item`.
    pub fn add(item: T) -> OrSetUpdate<T> {
        OrSetUpdate { adds: vec![(item, None)], removes: Vec::new() }
    }

    /// An update adding every element of `items` (one stamp, the update's,
    /// tags them all).
    pub fn add_all(items: impl IntoIterator<Item = T>) -> OrSetUpdate<T> {
        OrSetUpdate { adds: items.into_iter().map(|i| (i, None)).collect(), removes: Vec::new() }
    }

    /// An update removing `item` as this replica sees it (empty if absent).
    pub fn remove(&self, item: &T) -> OrSetUpdate<T> {
        let removes = self
            .live
            .get(item)
            .map(|tags| tags.iter().map(|t| (item.clone(), *t)).collect())
            .unwrap_or_default();
        OrSetUpdate { adds: Vec::new(), removes }
    }

    /// Whether `item` is in the set.
    pub fn contains(&self, item: &T) -> bool {
        self.live.contains_key(item)
    }

    /// The elements, in order.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.live.keys()
    }

    /// How many elements.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }
}

impl<T: Ord + Clone + Serialize + DeserializeOwned> Reduce for OrSet<T> {
    type Update = OrSetUpdate<T>;

    fn reduce(&mut self, update: OrSetUpdate<T>) -> Option<OrSetUpdate<T>> {
        let mut changed = OrSetUpdate::default();
        for (item, tag) in update.removes {
            if tag.ts < self.floor {
                // Collected territory: no tombstone needed, the add is
                // refused by its age (see `floor`).
                if let Some(tags) = self.live.get_mut(&item)
                    && let Some(left) = tags.remove(&tag)
                {
                    if !left {
                        self.live.remove(&item);
                    }
                    changed.removes.push((item, tag));
                }
                continue;
            }
            if self.tombstones.insert((tag, item.clone())) {
                // Where the add was seen, it goes; where not yet, the
                // tombstone stops it when it comes.
                if let Some(tags) = self.live.get_mut(&item)
                    && tags.remove(&tag) == Some(false)
                {
                    self.live.remove(&item);
                }
                changed.removes.push((item, tag));
            }
        }
        for (item, tag) in update.adds {
            let Some(tag) = tag else { continue };
            if tag.ts < self.floor || self.tombstones.contains(&(tag, item.clone())) {
                continue;
            }
            let added = match self.live.get_mut(&item) {
                Some(tags) => tags.insert(tag),
                None => {
                    self.live.insert(item.clone(), Tags::One(tag));
                    true
                }
            };
            if added {
                changed.adds.push((item, Some(tag)));
            }
        }
        (!changed.adds.is_empty() || !changed.removes.is_empty()).then_some(changed)
    }

    fn snapshot(&self) -> OrSetUpdate<T> {
        let adds = self
            .live
            .iter()
            .flat_map(|(item, tags)| tags.iter().map(move |t| (item.clone(), Some(*t))))
            .collect();
        OrSetUpdate {
            adds,
            removes: self.tombstones.iter().map(|(t, x)| (x.clone(), *t)).collect(),
        }
    }

    fn entries_hint(&self) -> Option<u64> {
        Some((self.live.len() + self.tombstones.len()) as u64)
    }

    /// Drops tombstones of adds older than `stable`. Not only late copies
    /// of such adds (old data, refused before they get here) but also
    /// snapshots of peers that have not seen the remove yet could bring
    /// one back, so the set remembers the floor and keeps out any add
    /// older than it that it does not hold: by then every replica had the
    /// add, so one that is not here was removed.
    fn collect(&mut self, stable: crate::Timestamp) -> usize {
        self.floor = self.floor.max(stable);
        let before = self.tombstones.len();
        self.tombstones.retain(|(tag, _)| tag.ts >= stable);
        before - self.tombstones.len()
    }

    /// Live elements first (with all their tags), then tombstones.
    fn snapshot_part(
        &self,
        cursor: Option<&[u8]>,
        max: usize,
    ) -> (OrSetUpdate<T>, Option<Vec<u8>>) {
        let at = super::Phase::read(cursor);
        let mut part = OrSetUpdate::default();
        if at.phase == 0 {
            let (live, next) = super::map_part(&self.live, at.inner.as_deref(), max);
            part.adds = live
                .into_iter()
                .flat_map(|(item, tags)| tags.iter().map(move |t| (item.clone(), Some(*t))))
                .collect();
            return (part, super::Phase::next(0, next, 2));
        }
        let (tombs, next) = super::set_part(&self.tombstones, at.inner.as_deref(), max);
        part.removes = tombs.into_iter().map(|(t, x)| (x.clone(), *t)).collect();
        (part, super::Phase::next(1, next, 2))
    }

    fn stamp(update: &mut OrSetUpdate<T>, stamp: Stamp) {
        for (_, tag) in &mut update.adds {
            tag.get_or_insert(stamp);
        }
    }

    fn unstamp(change: &mut OrSetUpdate<T>, stamp: Stamp) {
        for (_, tag) in &mut change.adds {
            if *tag == Some(stamp) {
                *tag = None;
            }
        }
    }
}
