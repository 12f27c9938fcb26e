use std::collections::BTreeMap;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Reduce, Stamp};

/// key -> lattice, merged key by key; a key's change carries only that
/// key's part.
///
/// ```
/// use repred::{LatticeMap, Max, Reduce};
///
/// type Scores = LatticeMap<String, Max<u32>>;
/// let mut scores = Scores::default();
/// scores.reduce(Scores::update("ann".to_string(), Max::new(3)));
/// assert_eq!(scores.reduce(Scores::update("ann".to_string(), Max::new(2))), None);
/// assert_eq!(scores.get("ann").and_then(|m| m.get()), Some(&3));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LatticeMap<K: Ord, L>(BTreeMap<K, L>);

impl<K: Ord, L> Default for LatticeMap<K, L> {
    fn default() -> Self {
        LatticeMap(BTreeMap::new())
    }
}

super::serde_as_snapshot!([K: Ord, L] LatticeMap<K, L>);

impl<K: Ord, L: Reduce> LatticeMap<K, L> {
    /// An update of one key.
    pub fn update(key: K, update: L::Update) -> BTreeMap<K, L::Update> {
        BTreeMap::from([(key, update)])
    }

    /// The lattice at `key`.
    pub fn get<Q>(&self, key: &Q) -> Option<&L>
    where
        K: std::borrow::Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.0.get(key)
    }

    /// The keys and their lattices, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &L)> {
        self.0.iter()
    }

    /// How many keys.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<K, L> Reduce for LatticeMap<K, L>
where
    K: Ord + Clone + Serialize + DeserializeOwned,
    L: Reduce + Default,
{
    type Update = BTreeMap<K, L::Update>;

    fn reduce(&mut self, update: Self::Update) -> Option<Self::Update> {
        let mut changed = BTreeMap::new();
        for (key, part) in update {
            match self.0.get_mut(&key) {
                Some(slot) => {
                    if let Some(change) = slot.reduce(part) {
                        changed.insert(key, change);
                    }
                }
                None => {
                    // A part that changes nothing leaves no empty entry
                    // behind (states that hold the same would differ).
                    let mut slot = L::default();
                    if let Some(change) = slot.reduce(part) {
                        self.0.insert(key.clone(), slot);
                        changed.insert(key, change);
                    }
                }
            }
        }
        (!changed.is_empty()).then_some(changed)
    }

    fn snapshot(&self) -> Self::Update {
        self.0.iter().map(|(k, l)| (k.clone(), l.snapshot())).collect()
    }

    fn entries_hint(&self) -> Option<u64> {
        Some(self.0.len() as u64)
    }

    fn collect(&mut self, stable: crate::Timestamp) -> usize {
        self.0.values_mut().map(|l| l.collect(stable)).sum()
    }

    /// A part holds whole entries (each value's whole snapshot).
    fn snapshot_part(&self, cursor: Option<&[u8]>, max: usize) -> (Self::Update, Option<Vec<u8>>) {
        let (part, next) = super::map_part(&self.0, cursor, max);
        (part.into_iter().map(|(k, l)| (k.clone(), l.snapshot())).collect(), next)
    }

    fn stamp(update: &mut Self::Update, stamp: Stamp) {
        for part in update.values_mut() {
            L::stamp(part, stamp);
        }
    }

    fn unstamp(change: &mut Self::Update, stamp: Stamp) {
        for part in change.values_mut() {
            L::unstamp(part, stamp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Max;

    /// Found by the derive_change fuzzer: a part that changes nothing must
    /// leave no empty entry (else states that hold the same differ, and a
    /// peer could grow the map with parts never recorded).
    #[test]
    fn a_part_that_changes_nothing_leaves_no_entry() {
        let mut map: LatticeMap<String, Max<u32>> = LatticeMap::default();
        let noop = BTreeMap::from([("q".to_string(), Max::<u32>::default().snapshot())]);
        assert_eq!(map.reduce(noop), None);
        assert_eq!(map, LatticeMap::default());
        let one = LatticeMap::<String, Max<u32>>::update("q".to_string(), Max::new(1));
        assert!(map.reduce(one).is_some());
        assert_eq!(map.get(&"q".to_string()).and_then(|m| m.get()), Some(&1));
    }
}
