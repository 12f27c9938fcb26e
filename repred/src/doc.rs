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
use std::ops::Bound::{Excluded, Included, Unbounded};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::lattice::{LwwMap, LwwRegister, Stamped, Writes, serde_as_snapshot};
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

serde_as_snapshot!([V] Row<V>);

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

    /// Deleted fields older than `stable` go. A removed row keeps its
    /// fields (adding it again brings them back).
    fn collect(&mut self, stable: crate::Timestamp) -> usize {
        self.fields.collect(stable)
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

serde_as_snapshot!([V] Doc<V>);

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
            match self.rows.get_mut(&id) {
                Some(row) => {
                    if let Some(change) = row.reduce(part) {
                        changed.insert(id, change);
                    }
                }
                None => {
                    // A part that changes nothing leaves no empty row.
                    let mut row = Row::default();
                    if let Some(change) = row.reduce(part) {
                        self.rows.insert(id.clone(), row);
                        changed.insert(id, change);
                    }
                }
            }
        }
        (!changed.is_empty()).then_some(changed)
    }

    fn snapshot(&self) -> DocUpdate<V> {
        self.rows.iter().map(|(id, row)| (id.clone(), row.snapshot())).collect()
    }

    fn entries_hint(&self) -> Option<u64> {
        Some(self.rows.len() as u64)
    }

    /// Rows collect their deleted fields; a row removed before `stable`
    /// with no fields left goes too (adding it again later gives the same
    /// row either way).
    fn collect(&mut self, stable: crate::Timestamp) -> usize {
        let mut dropped = 0;
        self.rows.retain(|_, row| {
            dropped += row.collect(stable);
            let gone = row.fields.is_empty_of_entries()
                && row.present.get() == Some(&false)
                && row.present.written_at().is_some_and(|s| s.ts < stable);
            dropped += usize::from(gone);
            !gone
        });
        dropped
    }

    fn snapshot_part(&self, cursor: Option<&[u8]>, max: usize) -> (DocUpdate<V>, Option<Vec<u8>>) {
        let (part, next) = crate::lattice::map_part(&self.rows, cursor, max);
        (part.into_iter().map(|(id, row)| (id.clone(), row.snapshot())).collect(), next)
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

/// One more than the largest digit.
const BASE: u32 = 1 << 16;

/// How far from its neighbour a new position's digit lands: a list built by
/// pushes uses one digit per ~16k items (less the random last digits), and
/// a few inserts between two pushed items still fit at that length.
const STEP: u32 = 4;

impl Position {
    /// A position strictly between `lo` (or the start) and `hi` (or the end).
    ///
    /// When there is no such position (`hi` is not above `lo`, or is one no
    /// replica issues, such as a position received from a faulty peer that
    /// nothing fits below), `hi` is ignored and the result is just above
    /// `lo`: the call always returns, whatever the input.
    pub fn between(lo: Option<&Position>, hi: Option<&Position>) -> Position {
        let lo: &[u16] = lo.map_or(&[], |p| &p.0);
        let hi = hi.map(|p| p.0.as_slice()).filter(|hi| Self::has_room(lo, hi));
        // With nothing before, stay close to `hi` (repeated unshifts);
        // otherwise close to `lo` (repeated pushes, typing after an item).
        // Taking the midpoint instead would halve the room at every insert
        // and let a list built by pushes grow one digit every 16 items.
        let near_hi = lo.is_empty() && hi.is_some();
        let mut digits = Vec::with_capacity(lo.len().max(hi.map_or(0, <[u16]>::len)) + 2);
        // Walk down the digits while the result still equals a prefix of
        // `hi` ("tight"); once below it, any digit above `lo`'s will do.
        let mut hi_tight = hi.is_some();
        for i in 0.. {
            let l = u32::from(lo.get(i).copied().unwrap_or(0));
            let h = match hi {
                Some(hi) if hi_tight => u32::from(hi.get(i).copied().unwrap_or(0)),
                _ => BASE,
            };
            if h > l + 1 {
                // `step` is at least 1 and below the gap, so the digit lies
                // strictly between `l` and `h`.
                let step = STEP.min((h - l) / 2);
                digits.push(if near_hi { h - step } else { l + step } as u16);
                break;
            }
            // `has_room` guarantees a digit further down where `h > l + 1`,
            // within `max(len) + 2` steps; this only keeps the loop total.
            if i > lo.len() + hi.map_or(0, <[u16]>::len) + 2 {
                digits.push(u16::MAX);
                break;
            }
            digits.push(l as u16);
            if l < h {
                hi_tight = false;
            }
        }
        // A random last digit, never zero, keeps room below every position
        // and makes two concurrent inserts at one place differ.
        let mut jitter = [0u8; 2];
        // Without entropy the digit is 1: still a valid position, and the
        // item id still orders ties.
        let _ = getrandom::fill(&mut jitter);
        digits.push(u16::from_le_bytes(jitter).max(1));
        Position(digits)
    }

    /// Whether some position lies strictly between `lo` and `hi`.
    fn has_room(lo: &[u16], hi: &[u16]) -> bool {
        if lo >= hi {
            return false;
        }
        // Below `lo ++ rest` and above `lo` there is something unless
        // `rest` is all zeros (nothing sorts below `[0, 0]` but `[0]`).
        match hi.strip_prefix(lo) {
            Some(rest) => rest.iter().any(|d| *d != 0),
            None => true,
        }
    }
}

/// An ordered list of items that replicas edit concurrently: crdt's `Seq`.
///
/// Order is a lattice of its own (each item's [`Position`], last writer
/// wins), separate from the values, so a move and an edit of the same item
/// both survive. Removing an item deletes its position; its last value is
/// kept, so a concurrent move that is newer than the remove brings the item
/// back whole rather than as a hole.
///
/// ```
/// use repred::doc::{Seq, SeqEvent};
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
///
/// // What a UI list does with a change: here, move "b" to the front.
/// let u = list.state().move_before("b", "a");
/// let mut sub = list.subscribe();
/// list.update(now, u)?;
/// for delivery in list.changes(&mut sub) {
///     if let repred::Delivery::Change(c) = delivery {
///         let events = list.state().events([c.change]);
///         assert_eq!(events, [SeqEvent::Moved { item: "b".into(), after: None }]);
///     }
/// }
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

serde_as_snapshot!([V] Seq<V>);

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

/// What a change did to a [`Seq`], in terms a UI list acts on.
///
/// [`Seq::events`] lists removals first, then placements in their final
/// order, so a list that applies them one by one (take the item out if
/// shown, put it right after `after`) ends in the replica's order.
///
/// An item placed and written in the same batch is `Inserted` even if the
/// list showed it before (a snapshot, say, or a concurrent re-insert): treat
/// it as a move plus a new value.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SeqEvent {
    /// An item was placed together with its value: new to the list (or
    /// placed and rewritten at once, e.g. from a snapshot). Show it right
    /// after `after`, or first when `None`.
    Inserted {
        /// Which item.
        item: RowId,
        /// The item now before it.
        after: Option<RowId>,
    },
    /// An item took a new place, its value unchanged: take it out and show
    /// it right after `after`, or first when `None`.
    Moved {
        /// Which item.
        item: RowId,
        /// The item now before it.
        after: Option<RowId>,
    },
    /// An item left the list.
    Removed {
        /// Which item.
        item: RowId,
    },
    /// An item's value changed where it stands.
    Changed {
        /// Which item.
        item: RowId,
    },
}

impl<V> Seq<V> {
    /// The items in order, with their ids.
    pub fn iter(&self) -> impl Iterator<Item = (&RowId, &V)> {
        self.sorted.iter().filter_map(|(_, id)| Some((id, self.values.get(id.as_str())?)))
    }

    /// The ids in order.
    pub fn ids(&self) -> Vec<&RowId> {
        self.iter().map(|(id, _)| id).collect()
    }

    /// How many items.
    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }

    /// An item's value.
    pub fn get(&self, id: &str) -> Option<&V> {
        self.order.get(id).and(self.values.get(id))
    }

    /// Whether the list holds item `id`.
    pub fn contains(&self, id: &str) -> bool {
        self.order.get(id).is_some()
    }

    /// The item right before `id`, if `id` is in the list and not first.
    pub fn before(&self, id: &str) -> Option<&RowId> {
        let key = (self.position(id)?.clone(), id.to_string());
        self.sorted.range(..key).next_back().map(|(_, id)| id)
    }

    /// The item right after `id`, if `id` is in the list and not last.
    pub fn after(&self, id: &str) -> Option<&RowId> {
        let key = (self.position(id)?.clone(), id.to_string());
        self.sorted.range((Excluded(key), Unbounded)).next().map(|(_, id)| id)
    }

    fn position(&self, id: &str) -> Option<&Position> {
        self.order.get(id)
    }

    /// The first position above `at`, skipping item `skip` (the one being
    /// moved) and positions equal to `at` (no position fits between equal
    /// ones; ties are ordered by id).
    fn above(&self, at: &Position, skip: &str) -> Option<&Position> {
        let from = (at.clone(), RowId::new());
        self.sorted
            .range((Included(from), Unbounded))
            .find(|(p, id)| p > at && id != skip)
            .map(|(p, _)| p)
    }

    /// The last position below `at`, skipping item `skip`.
    fn below(&self, at: &Position, skip: &str) -> Option<&Position> {
        let to = (at.clone(), RowId::new());
        self.sorted.range(..to).rev().find(|(_, id)| id != skip).map(|(p, _)| p)
    }

    /// The last position, skipping item `skip`.
    fn last_but(&self, skip: &str) -> Option<&Position> {
        self.sorted.iter().rev().find(|(_, id)| id != skip).map(|(p, _)| p)
    }

    /// The first position, skipping item `skip`.
    fn first_but(&self, skip: &str) -> Option<&Position> {
        self.sorted.iter().find(|(_, id)| id != skip).map(|(p, _)| p)
    }

    /// A position right after `anchor` (at the end without one), for `id`.
    fn after_anchor(&self, anchor: &str, id: &str) -> Position {
        match self.position(anchor) {
            Some(lo) => Position::between(Some(lo), self.above(lo, id)),
            None => Position::between(self.last_but(id), None),
        }
    }

    /// A position right before `anchor` (at the start without one), for `id`.
    fn before_anchor(&self, anchor: &str, id: &str) -> Position {
        match self.position(anchor) {
            Some(hi) => Position::between(self.below(hi, id), Some(hi)),
            None => Position::between(None, self.first_but(id)),
        }
    }

    fn place(id: RowId, at: Position, value: Option<V>) -> SeqUpdate<V> {
        let values = value.map(|v| vec![(id.clone(), Stamped::now(Some(v)))]).unwrap_or_default();
        SeqUpdate { order: vec![(id, Stamped::now(Some(at)))], values }
    }

    /// An update appending `value` as item `id`.
    pub fn push(&self, id: impl Into<RowId>, value: V) -> SeqUpdate<V> {
        let id = id.into();
        let at = Position::between(self.last_but(&id), None);
        Self::place(id, at, Some(value))
    }

    /// An update prepending `value` as item `id`.
    pub fn unshift(&self, id: impl Into<RowId>, value: V) -> SeqUpdate<V> {
        let id = id.into();
        let at = Position::between(None, self.first_but(&id));
        Self::place(id, at, Some(value))
    }

    /// An update inserting `value` as item `id` right after `anchor` (at the
    /// end if there is no such item).
    pub fn insert_after(&self, anchor: &str, id: impl Into<RowId>, value: V) -> SeqUpdate<V> {
        let id = id.into();
        let at = self.after_anchor(anchor, &id);
        Self::place(id, at, Some(value))
    }

    /// An update inserting `value` as item `id` right before `anchor` (at
    /// the start if there is no such item).
    pub fn insert_before(&self, anchor: &str, id: impl Into<RowId>, value: V) -> SeqUpdate<V> {
        let id = id.into();
        let at = self.before_anchor(anchor, &id);
        Self::place(id, at, Some(value))
    }

    /// An update moving item `id` right after `anchor` (to the end if there
    /// is no such item). Empty when `id` is not in the list or is `anchor`.
    pub fn move_after(&self, id: &str, anchor: &str) -> SeqUpdate<V> {
        if !self.contains(id) || id == anchor {
            return SeqUpdate::default();
        }
        Self::place(id.to_string(), self.after_anchor(anchor, id), None)
    }

    /// An update moving item `id` right before `anchor` (to the start if
    /// there is no such item). Empty when `id` is not in the list or is
    /// `anchor`.
    pub fn move_before(&self, id: &str, anchor: &str) -> SeqUpdate<V> {
        if !self.contains(id) || id == anchor {
            return SeqUpdate::default();
        }
        Self::place(id.to_string(), self.before_anchor(anchor, id), None)
    }

    /// An update writing a new value for item `id`, where it stands.
    pub fn set(&self, id: impl Into<RowId>, value: V) -> SeqUpdate<V> {
        SeqUpdate { order: Vec::new(), values: vec![(id.into(), Stamped::now(Some(value)))] }
    }

    /// An update removing item `id`.
    pub fn remove(&self, id: &str) -> SeqUpdate<V> {
        SeqUpdate { order: vec![(id.to_string(), Stamped::now(None))], values: Vec::new() }
    }

    /// The events that a batch of changes, already applied to this state,
    /// stands for: removals first, then placements in list order, then
    /// edits in place (see [`SeqEvent`]).
    ///
    /// Pass every change read since the list was last brought up to date
    /// (one, when reading after each update): a list that applies the
    /// events in order then shows this state's order. Placements are worked
    /// out from the state as it is now, which is why the whole batch goes in
    /// at once. After a subscription reports
    /// [`Lagged`](crate::Delivery::Lagged), rebuild the list from
    /// [`iter`](Seq::iter) instead.
    pub fn events<'a>(&self, changes: impl IntoIterator<Item = &'a SeqUpdate<V>>) -> Vec<SeqEvent>
    where
        V: 'a,
    {
        // Per touched item: whether its place and its value were written.
        let mut touched: BTreeMap<&'a str, (bool, bool)> = BTreeMap::new();
        for change in changes {
            for (id, _) in &change.order {
                touched.entry(id.as_str()).or_default().0 = true;
            }
            for (id, _) in &change.values {
                touched.entry(id.as_str()).or_default().1 = true;
            }
        }
        let mut events = Vec::new();
        let mut placed = Vec::new();
        let mut edited = Vec::new();
        for (id, (moved, valued)) in touched {
            match (self.position(id), moved) {
                (None, true) => events.push(SeqEvent::Removed { item: id.to_string() }),
                (None, false) => {} // an edit of an item not in the list
                (Some(p), true) => placed.push((p, id, valued)),
                (Some(_), false) => edited.push(SeqEvent::Changed { item: id.to_string() }),
            }
        }
        // In final order, each item's predecessor is either untouched (so
        // already where it belongs) or placed by an earlier event.
        placed.sort();
        for (_, id, valued) in placed {
            let after = self.before(id).cloned();
            let item = id.to_string();
            events.push(if valued {
                SeqEvent::Inserted { item, after }
            } else {
                SeqEvent::Moved { item, after }
            });
        }
        events.extend(edited);
        events
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
            // Re-index only the items whose position changed.
            for (id, old) in before {
                let new = self.order.get(id.as_str());
                if old.as_ref() == new {
                    continue;
                }
                if let Some(old) = old {
                    self.sorted.remove(&(old, id.clone()));
                }
                if let Some(new) = new {
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

    fn entries_hint(&self) -> Option<u64> {
        Some(2 * self.sorted.len() as u64)
    }

    /// Removed items' positions and values older than `stable` go.
    fn collect(&mut self, stable: crate::Timestamp) -> usize {
        self.order.collect(stable) + self.values.collect(stable)
    }

    /// Positions first, then values.
    fn snapshot_part(&self, cursor: Option<&[u8]>, max: usize) -> (SeqUpdate<V>, Option<Vec<u8>>) {
        let at = crate::lattice::Phase::read(cursor);
        let mut part = SeqUpdate::default();
        let next = if at.phase == 0 {
            let (order, next) = self.order.snapshot_part(at.inner.as_deref(), max);
            part.order = order;
            next
        } else {
            let (values, next) = self.values.snapshot_part(at.inner.as_deref(), max);
            part.values = values;
            next
        };
        (part, crate::lattice::Phase::next(at.phase, next, 2))
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

    /// Lists built by repeated pushes, unshifts or typing after one item
    /// keep short positions (the midpoint rule needs a digit per 16 items).
    #[test]
    fn positions_stay_short_under_common_edits() {
        let n = 20_000;
        let mut push: Option<Position> = None;
        let mut unshift: Option<Position> = None;
        let end = Position::between(None, None);
        let mut typed: Option<Position> = None;
        for _ in 0..n {
            push = Some(Position::between(push.as_ref(), None));
            unshift = Some(Position::between(None, unshift.as_ref()));
            let next = Position::between(typed.as_ref(), Some(&end));
            assert!(next < end);
            typed = Some(next);
        }
        for (what, p) in [("push", push), ("unshift", unshift), ("typing", typed)] {
            let len = p.map_or(0, |p| p.0.len());
            assert!(len <= 12, "{what}: {len} digits after {n} inserts");
        }
    }

    /// Positions no replica issues (from a faulty peer) or equal neighbours
    /// (two concurrent inserts that drew the same digit) never hang
    /// `between`: it falls back to "just above `lo`".
    #[test]
    fn between_returns_for_any_input() {
        let p = |d: &[u16]| Position(d.to_vec());
        for (lo, hi) in [
            (None, Some(p(&[]))),
            (None, Some(p(&[0]))),
            (None, Some(p(&[0, 0, 0]))),
            (Some(p(&[5])), Some(p(&[5]))),
            (Some(p(&[5, 7])), Some(p(&[5]))),
            (Some(p(&[5])), Some(p(&[5, 0]))),
            (Some(p(&[u16::MAX, u16::MAX])), None),
        ] {
            let got = Position::between(lo.as_ref(), hi.as_ref());
            assert!(lo.as_ref().is_none_or(|lo| *lo < got), "{lo:?} < {got:?}");
        }
        // Room only deep down is still found.
        let (lo, hi) = (p(&[5]), p(&[5, 0, 0, 1]));
        let got = Position::between(Some(&lo), Some(&hi));
        assert!(lo < got && got < hi, "{lo:?} < {got:?} < {hi:?}");
    }

    proptest::proptest! {
        #[test]
        fn between_is_strictly_between(
            a in proptest::collection::vec(proptest::prelude::any::<u16>(), 0..4),
            b in proptest::collection::vec(proptest::prelude::any::<u16>(), 0..4),
        ) {
            let (lo, hi) = (Position(a.clone().min(b.clone())), Position(a.max(b)));
            let got = Position::between(Some(&lo), Some(&hi));
            proptest::prop_assert!(lo < got);
            if Position::has_room(&lo.0, &hi.0) {
                proptest::prop_assert!(got < hi, "{:?} < {:?} < {:?}", lo, got, hi);
            }
        }
    }
}
