//! crdt's document: rows of last-writer-wins fields, set views over them,
//! and ordered sequences, for applications that map state onto a UI list.
//!
//! A [`Doc`] is a lattice like any other: replicate it with a
//! [`Replica`](crate::Replica). Its change says which rows changed and how;
//! [`Doc::events`] turns a change into row events, and a [`SetView`] turns
//! them into "entered" and "left" events for the rows whose field has a given
//! value (the JavaScript `todo` / `done` lists).
//!
//! ```
//! use repred::doc::{Doc, DocEvent, SetView};
//! use repred::{Delivery, Network, Replica, SourceId};
//!
//! let mut net = Network::new();
//! let a = net.add(Replica::new(SourceId::new("a")?, Doc::<String>::default()));
//! let b = net.add(Replica::new(SourceId::new("b")?, Doc::<String>::default()));
//! net.link(a, b);
//! net.update(a, Doc::add("t1", [("text", "milk".to_string()), ("state", "todo".to_string())]))?;
//! net.pump();
//! let mut todo = SetView::new("state", "todo".to_string());
//! todo.refresh(net[b].state());
//! assert!(todo.contains("t1"));
//!
//! let mut sub = net[b].subscribe();
//! net.update(a, Doc::set("t1", "state", "done".to_string()))?;
//! net.pump();
//! for delivery in net[b].changes(&mut sub) {
//!     if let Delivery::Change(c) = delivery {
//!         let events = todo.apply(net[b].state(), c.change);
//!         assert!(events.contains(&DocEvent::Left { row: "t1".into() }));
//!     }
//! }
//! assert!(todo.is_empty());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::{BTreeMap, BTreeSet};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::lattice::{LwwMap, LwwRegister, Stamped, Writes};
use crate::{Reduce, Stamp};

/// A row's id.
pub type RowId = String;

/// Keys the JavaScript original ignores, so that a row can never be turned
/// into something else by a field name; kept out here too.
const RESERVED_FIELDS: [&str; 3] = ["__proto__", "constructor", "prototype"];

/// One row: whether it exists (a remove is a write of `false`), and its
/// fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row<V> {
    present: LwwRegister<bool>,
    fields: LwwMap<String, V>,
}

impl<V> Default for Row<V> {
    fn default() -> Self {
        Row { present: LwwRegister::default(), fields: LwwMap::default() }
    }
}

impl<V> Row<V> {
    /// Whether the row exists (added and not removed since).
    pub fn is_present(&self) -> bool {
        self.present.get() == Some(&true)
    }

    /// A field's value.
    pub fn get(&self, field: &str) -> Option<&V> {
        self.fields.get(field)
    }

    /// The fields and their values, in no particular order.
    pub fn fields(&self) -> impl Iterator<Item = (&String, &V)> {
        self.fields.iter()
    }
}

/// A change to one row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowUpdate<V> {
    /// Added (`true`) or removed (`false`), if that changed.
    pub present: Option<LwwRegister<bool>>,
    /// Field writes.
    pub fields: Writes<String, V>,
}

impl<V> Default for RowUpdate<V> {
    fn default() -> Self {
        RowUpdate { present: None, fields: Vec::new() }
    }
}

impl<V> Reduce for Row<V>
where
    V: Clone + Serialize + DeserializeOwned,
{
    type Update = RowUpdate<V>;

    fn reduce(&mut self, update: RowUpdate<V>) -> Option<RowUpdate<V>> {
        let present = update.present.and_then(|p| self.present.reduce(p));
        let fields = self.fields.reduce(update.fields).unwrap_or_default();
        (present.is_some() || !fields.is_empty()).then_some(RowUpdate { present, fields })
    }

    fn snapshot(&self) -> RowUpdate<V> {
        RowUpdate { present: Some(self.present.snapshot()), fields: self.fields.snapshot() }
    }

    fn stamp(update: &mut RowUpdate<V>, stamp: Stamp) {
        if let Some(p) = &mut update.present {
            LwwRegister::stamp(p, stamp);
        }
        LwwMap::<String, V>::stamp(&mut update.fields, stamp);
    }

    fn unstamp(change: &mut RowUpdate<V>, stamp: Stamp) {
        if let Some(p) = &mut change.present {
            LwwRegister::unstamp(p, stamp);
        }
        LwwMap::<String, V>::unstamp(&mut change.fields, stamp);
    }
}

/// A document of rows: row id -> fields, each field last-writer-wins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Doc<V> {
    rows: BTreeMap<RowId, Row<V>>,
}

impl<V> Default for Doc<V> {
    fn default() -> Self {
        Doc { rows: BTreeMap::new() }
    }
}

/// A change to a document: row id -> that row's change.
pub type DocUpdate<V> = BTreeMap<RowId, RowUpdate<V>>;

/// What happened to a row.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum DocEvent {
    /// The row was added (or added back).
    Added {
        /// Which row.
        row: RowId,
    },
    /// The row was removed.
    Removed {
        /// Which row.
        row: RowId,
    },
    /// Fields of the row changed.
    Changed {
        /// Which row.
        row: RowId,
        /// The fields written.
        fields: Vec<String>,
    },
    /// The row entered a [`SetView`].
    Entered {
        /// Which row.
        row: RowId,
    },
    /// The row left a [`SetView`].
    Left {
        /// Which row.
        row: RowId,
    },
}

fn clean_fields<V>(fields: impl IntoIterator<Item = (impl Into<String>, V)>) -> Writes<String, V> {
    fields
        .into_iter()
        .map(|(k, v)| (k.into(), v))
        .filter(|(k, _)| !RESERVED_FIELDS.contains(&k.as_str()))
        .map(|(k, v)| (k, Stamped::now(Some(v))))
        .collect()
}

impl<V> Doc<V> {
    /// An update adding row `id` with `fields` (reserved names such as
    /// `__proto__` are dropped, as in the original).
    pub fn add(
        id: impl Into<RowId>,
        fields: impl IntoIterator<Item = (impl Into<String>, V)>,
    ) -> DocUpdate<V> {
        let row = RowUpdate { present: Some(LwwRegister::set(true)), fields: clean_fields(fields) };
        BTreeMap::from([(id.into(), row)])
    }

    /// An update adding a row under a fresh random id; returns the id too.
    pub fn add_new(
        fields: impl IntoIterator<Item = (impl Into<String>, V)>,
    ) -> (RowId, DocUpdate<V>) {
        let id = random_id();
        let update = Self::add(id.clone(), fields);
        (id, update)
    }

    /// An update writing one field of a row.
    pub fn set(id: impl Into<RowId>, field: impl Into<String>, value: V) -> DocUpdate<V> {
        let row = RowUpdate { present: None, fields: clean_fields([(field.into(), value)]) };
        BTreeMap::from([(id.into(), row)])
    }

    /// An update removing a row.
    pub fn remove(id: impl Into<RowId>) -> DocUpdate<V> {
        let row = RowUpdate { present: Some(LwwRegister::set(false)), fields: Vec::new() };
        BTreeMap::from([(id.into(), row)])
    }

    /// A row, if present.
    pub fn get(&self, id: &str) -> Option<&Row<V>> {
        self.rows.get(id).filter(|r| r.is_present())
    }

    /// The present rows, in id order.
    pub fn rows(&self) -> impl Iterator<Item = (&RowId, &Row<V>)> {
        self.rows.iter().filter(|(_, r)| r.is_present())
    }

    /// How many rows are present.
    pub fn len(&self) -> usize {
        self.rows().count()
    }

    /// Whether no row is present.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The row events a change (as a subscription delivers it) stands for.
    pub fn events(change: &DocUpdate<V>) -> Vec<DocEvent> {
        let mut events = Vec::new();
        for (row, update) in change {
            if let Some(present) = update.present.as_ref().and_then(|p| p.get()) {
                events.push(if *present {
                    DocEvent::Added { row: row.clone() }
                } else {
                    DocEvent::Removed { row: row.clone() }
                });
            }
            if !update.fields.is_empty() {
                let fields = update.fields.iter().map(|(k, _)| k.clone()).collect();
                events.push(DocEvent::Changed { row: row.clone(), fields });
            }
        }
        events
    }
}

impl<V> Reduce for Doc<V>
where
    V: Clone + Serialize + DeserializeOwned,
{
    type Update = DocUpdate<V>;

    fn reduce(&mut self, update: DocUpdate<V>) -> Option<DocUpdate<V>> {
        let mut changed = BTreeMap::new();
        for (id, part) in update {
            let row = self.rows.entry(id.clone()).or_default();
            if let Some(change) = row.reduce(part) {
                changed.insert(id, change);
            }
        }
        (!changed.is_empty()).then_some(changed)
    }

    fn snapshot(&self) -> DocUpdate<V> {
        self.rows.iter().map(|(id, row)| (id.clone(), row.snapshot())).collect()
    }

    fn stamp(update: &mut DocUpdate<V>, stamp: Stamp) {
        for row in update.values_mut() {
            Row::stamp(row, stamp);
        }
    }

    fn unstamp(change: &mut DocUpdate<V>, stamp: Stamp) {
        for row in change.values_mut() {
            Row::unstamp(row, stamp);
        }
    }
}

/// The present rows of a [`Doc`] whose `field` equals `value`: crdt's `Set`.
///
/// It remembers its members, so that after a change it can say which rows
/// entered and which left.
#[derive(Clone, Debug)]
pub struct SetView<V> {
    field: String,
    value: V,
    members: BTreeSet<RowId>,
}

impl<V: PartialEq> SetView<V> {
    /// A view of the rows whose `field` is `value`; empty until refreshed.
    pub fn new(field: impl Into<String>, value: V) -> Self {
        SetView { field: field.into(), value, members: BTreeSet::new() }
    }

    fn belongs(&self, row: Option<&Row<V>>) -> bool {
        row.is_some_and(|r| r.is_present() && r.get(&self.field) == Some(&self.value))
    }

    /// Recomputes the members from the whole document.
    pub fn refresh(&mut self, doc: &Doc<V>) -> Vec<DocEvent> {
        let rows: Vec<RowId> = doc.rows.keys().chain(self.members.iter()).cloned().collect();
        self.recheck(doc, rows)
    }

    /// Re-checks the rows a change touched (after it was applied to `doc`);
    /// returns who entered and who left.
    pub fn apply(&mut self, doc: &Doc<V>, change: &DocUpdate<V>) -> Vec<DocEvent> {
        self.recheck(doc, change.keys().cloned().collect())
    }

    fn recheck(&mut self, doc: &Doc<V>, rows: Vec<RowId>) -> Vec<DocEvent> {
        let mut events = Vec::new();
        for row in rows {
            let now = self.belongs(doc.rows.get(&row));
            if now && self.members.insert(row.clone()) {
                events.push(DocEvent::Entered { row });
            } else if !now && self.members.remove(&row) {
                events.push(DocEvent::Left { row });
            }
        }
        events
    }

    /// Whether a row is in the view.
    pub fn contains(&self, row: &str) -> bool {
        self.members.contains(row)
    }

    /// The members, in id order.
    pub fn iter(&self) -> impl Iterator<Item = &RowId> {
        self.members.iter()
    }

    /// How many members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}

/// A place in a [`Seq`]: a fraction in base 65,536, compared digit by digit.
///
/// Between any two positions there is another, so an insertion never
/// renumbers its neighbours. Each new position ends in a random digit, so
/// concurrent inserts at the same place get different positions; the item
/// id breaks any remaining tie, and every replica sorts the same way.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Position(Vec<u16>);

impl Position {
    /// A position strictly between `lo` (or the start) and `hi` (or the end).
    pub fn between(lo: Option<&Position>, hi: Option<&Position>) -> Position {
        let lo: &[u16] = lo.map_or(&[], |p| &p.0);
        let mut digits = Vec::new();
        let mut lo_tight = true;
        let mut hi_tight = hi.is_some();
        for i in 0.. {
            let l = if lo_tight { u32::from(lo.get(i).copied().unwrap_or(0)) } else { 0 };
            let h = match hi {
                Some(hi) if hi_tight => u32::from(hi.0.get(i).copied().unwrap_or(0)),
                _ => 1 << 16,
            };
            if h > l + 1 {
                digits.push(((l + h) / 2) as u16);
                break;
            }
            digits.push(l as u16);
            if l < h {
                hi_tight = false;
            }
            if lo.get(i).is_none() {
                lo_tight = false;
            }
        }
        // A random last digit, never zero, keeps room below every position.
        let mut jitter = [0u8; 2];
        let _ = getrandom::fill(&mut jitter);
        digits.push(u16::from_le_bytes(jitter).max(1));
        Position(digits)
    }
}

/// An ordered list of items that replicas edit concurrently: crdt's `Seq`.
///
/// Order is a lattice of its own (each item's [`Position`], last writer
/// wins), separate from the values, so a move and an edit of the same item
/// both survive. Removing an item deletes its position.
///
/// ```
/// use repred::doc::Seq;
/// use repred::{Replica, SourceId};
///
/// let mut list = Replica::new(SourceId::new("me")?, Seq::default());
/// let now = 1_700_000_000_000;
/// let u = list.state().push("b", "bread".to_string());
/// list.update(now, u)?;
/// let u = list.state().unshift("a", "apples".to_string());
/// list.update(now, u)?;
/// let u = list.state().insert_after("a", "m", "milk".to_string());
/// list.update(now, u)?;
/// let items: Vec<&str> = list.state().ids().into_iter().map(String::as_str).collect();
/// assert_eq!(items, ["a", "m", "b"]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seq<V> {
    order: LwwMap<RowId, Position>,
    values: LwwMap<RowId, V>,
    /// The items sorted, derived from `order`: neighbours in O(log n).
    sorted: BTreeSet<(Position, RowId)>,
}

impl<V> Default for Seq<V> {
    fn default() -> Self {
        Seq { order: LwwMap::default(), values: LwwMap::default(), sorted: BTreeSet::new() }
    }
}

/// A change to a [`Seq`]: position writes and value writes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqUpdate<V> {
    /// Item -> new position (`None` removes it).
    pub order: Writes<RowId, Position>,
    /// Item -> new value.
    pub values: Writes<RowId, V>,
}

impl<V> Default for SeqUpdate<V> {
    fn default() -> Self {
        SeqUpdate { order: Vec::new(), values: Vec::new() }
    }
}

impl<V> Seq<V> {
    /// The items in order, with their ids.
    pub fn iter(&self) -> impl Iterator<Item = (&RowId, &V)> {
        let mut placed: Vec<(&Position, &RowId)> =
            self.order.iter().map(|(id, p)| (p, id)).collect();
        placed.sort();
        placed.into_iter().filter_map(|(_, id)| Some((id, self.values.get(id.as_str())?)))
    }

    /// The ids in order.
    pub fn ids(&self) -> Vec<&RowId> {
        self.iter().map(|(id, _)| id).collect()
    }

    /// How many items.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// An item's value.
    pub fn get(&self, id: &str) -> Option<&V> {
        self.order.get(id).and(self.values.get(id))
    }

    fn position(&self, id: &str) -> Option<&Position> {
        self.order.get(id)
    }

    fn first(&self) -> Option<&Position> {
        self.sorted.first().map(|(p, _)| p)
    }

    fn last(&self) -> Option<&Position> {
        self.sorted.last().map(|(p, _)| p)
    }

    /// The position of the item after `id` in order.
    fn next_after(&self, id: &str) -> Option<&Position> {
        let key = (self.position(id)?.clone(), id.to_string());
        self.sorted
            .range((std::ops::Bound::Excluded(key), std::ops::Bound::Unbounded))
            .next()
            .map(|(p, _)| p)
    }

    fn prev_before(&self, id: &str) -> Option<&Position> {
        let key = (self.position(id)?.clone(), id.to_string());
        self.sorted.range(..key).next_back().map(|(p, _)| p)
    }

    fn place(id: RowId, at: Position, value: Option<V>) -> SeqUpdate<V> {
        let values = value.map(|v| vec![(id.clone(), Stamped::now(Some(v)))]).unwrap_or_default();
        SeqUpdate { order: vec![(id, Stamped::now(Some(at)))], values }
    }

    /// An update appending `value` as item `id`.
    pub fn push(&self, id: impl Into<RowId>, value: V) -> SeqUpdate<V> {
        Self::place(id.into(), Position::between(self.last(), None), Some(value))
    }

    /// An update prepending `value` as item `id`.
    pub fn unshift(&self, id: impl Into<RowId>, value: V) -> SeqUpdate<V> {
        Self::place(id.into(), Position::between(None, self.first()), Some(value))
    }

    /// An update inserting `value` as item `id` right after `anchor` (at the
    /// end if there is no such item).
    pub fn insert_after(&self, anchor: &str, id: impl Into<RowId>, value: V) -> SeqUpdate<V> {
        let lo = self.position(anchor);
        let hi = lo.and_then(|_| self.next_after(anchor));
        let lo = lo.or_else(|| self.last());
        Self::place(id.into(), Position::between(lo, hi), Some(value))
    }

    /// An update inserting `value` as item `id` right before `anchor` (at
    /// the start if there is no such item).
    pub fn insert_before(&self, anchor: &str, id: impl Into<RowId>, value: V) -> SeqUpdate<V> {
        let hi = self.position(anchor);
        let lo = hi.and_then(|_| self.prev_before(anchor));
        let hi = hi.or_else(|| self.first());
        Self::place(id.into(), Position::between(lo, hi), Some(value))
    }

    /// An update moving item `id` right after `anchor`.
    pub fn move_after(&self, id: &str, anchor: &str) -> SeqUpdate<V> {
        let lo = self.position(anchor);
        let hi = self.next_after(anchor).filter(|p| Some(*p) != self.position(id));
        let hi = if hi.is_none() && self.next_after(anchor).is_some() {
            // The next item is the one being moved: skip past it.
            self.next_after(id)
        } else {
            hi
        };
        Self::place(id.to_string(), Position::between(lo, hi), None)
    }

    /// An update removing item `id`.
    pub fn remove(&self, id: &str) -> SeqUpdate<V> {
        SeqUpdate { order: vec![(id.to_string(), Stamped::now(None))], values: Vec::new() }
    }
}

impl<V> Reduce for Seq<V>
where
    V: Clone + Serialize + DeserializeOwned,
{
    type Update = SeqUpdate<V>;

    fn reduce(&mut self, update: SeqUpdate<V>) -> Option<SeqUpdate<V>> {
        let before: Vec<(RowId, Option<Position>)> = update
            .order
            .iter()
            .map(|(id, _)| (id.clone(), self.order.get(id.as_str()).cloned()))
            .collect();
        let order = self.order.reduce(update.order).unwrap_or_default();
        if !order.is_empty() {
            for (id, old) in before {
                if let Some(old) = old {
                    self.sorted.remove(&(old, id.clone()));
                }
                if let Some(new) = self.order.get(id.as_str()) {
                    self.sorted.insert((new.clone(), id));
                }
            }
        }
        let values = self.values.reduce(update.values).unwrap_or_default();
        (!order.is_empty() || !values.is_empty()).then_some(SeqUpdate { order, values })
    }

    fn snapshot(&self) -> SeqUpdate<V> {
        SeqUpdate { order: self.order.snapshot(), values: self.values.snapshot() }
    }

    fn stamp(update: &mut SeqUpdate<V>, stamp: Stamp) {
        LwwMap::<RowId, Position>::stamp(&mut update.order, stamp);
        LwwMap::<RowId, V>::stamp(&mut update.values, stamp);
    }

    fn unstamp(change: &mut SeqUpdate<V>, stamp: Stamp) {
        LwwMap::<RowId, Position>::unstamp(&mut change.order, stamp);
        LwwMap::<RowId, V>::unstamp(&mut change.values, stamp);
    }
}

fn random_id() -> RowId {
    let mut bytes = [0u8; 8];
    let _ = getrandom::fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_always_fit_between() {
        let mut lo: Option<Position> = None;
        let hi = Position::between(None, None);
        // Squeeze 200 items between the start and one position.
        for _ in 0..200 {
            let p = Position::between(lo.as_ref(), Some(&hi));
            assert!(lo.as_ref().is_none_or(|l| *l < p) && p < hi, "{lo:?} < {p:?} < {hi:?}");
            lo = Some(p);
        }
        let a = Position::between(None, None);
        let b = Position::between(Some(&a), None);
        let mid = Position::between(Some(&a), Some(&b));
        assert!(a < mid && mid < b);
    }
}
