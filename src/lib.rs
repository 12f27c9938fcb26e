//! Fixtures shared by the workspace's integration tests and examples: small
//! reducers shaped like the models of the JavaScript originals, kept minimal
//! on purpose so that the core's tests do not depend on the stock lattices.
//!
//! ```
//! use repred::{Network, Replica, SourceId};
//! use repred_suite::Model;
//!
//! let mut net = Network::new();
//! let a = net.add(Replica::new(SourceId::new("a")?, Model::default()));
//! let b = net.add(Replica::new(SourceId::new("b")?, Model::default()));
//! net.link(a, b);
//! net.update(a, Model::set("colour", "red"))?;
//! net.advance(1);
//! net.update(b, Model::set("colour", "blue"))?; // newer: wins everywhere
//! net.pump();
//! assert_eq!(net[a].state().get("colour"), Some("blue"));
//! assert_eq!(net[a].state(), net[b].state());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![warn(missing_docs)]

use std::collections::{BTreeMap, BTreeSet};

use repred::{Reduce, Stamp};
use serde::{Deserialize, Serialize};

/// One key of a [`Model`]: the write's stamp (filled in by the replica for
/// local writes) and the value, `None` for a delete.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Write {
    /// Who wrote it and when; `None` until the replica stamps it.
    pub stamp: Option<Stamp>,
    /// The value; `None` deletes the key.
    pub value: Option<String>,
}

/// scuttlebutt's `Model`: key -> value, the newest stamp wins per key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Model(BTreeMap<String, (Stamp, Option<String>)>);

impl Model {
    /// A local write of `key`.
    pub fn set(key: &str, value: &str) -> BTreeMap<String, Write> {
        [(key.to_string(), Write { stamp: None, value: Some(value.to_string()) })].into()
    }

    /// A local delete of `key`.
    pub fn delete(key: &str) -> BTreeMap<String, Write> {
        [(key.to_string(), Write { stamp: None, value: None })].into()
    }

    /// A write with an explicit stamp, as it arrives from elsewhere.
    pub fn stamped(key: &str, value: &str, stamp: Stamp) -> BTreeMap<String, Write> {
        [(key.to_string(), Write { stamp: Some(stamp), value: Some(value.to_string()) })].into()
    }

    /// The value of `key`, if set and not deleted.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|(_, v)| v.as_deref())
    }

    /// The live keys and values, in key order.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.0.iter().filter_map(|(k, (_, v))| Some((k.clone(), v.clone()?))).collect()
    }
}

impl Reduce for Model {
    type Update = BTreeMap<String, Write>;

    fn reduce(&mut self, update: Self::Update) -> Option<Self::Update> {
        let mut changed = BTreeMap::new();
        for (key, write) in update {
            // Stamps are filled in before reduce; one still unset cannot be
            // ordered, so it is dropped.
            let Some(stamp) = write.stamp else { continue };
            let newer = self.0.get(&key).is_none_or(|(old, _)| stamp > *old);
            if newer {
                self.0.insert(key.clone(), (stamp, write.value.clone()));
                changed.insert(key, write);
            }
        }
        (!changed.is_empty()).then_some(changed)
    }

    fn snapshot(&self) -> Self::Update {
        self.0
            .iter()
            .map(|(k, (s, v))| (k.clone(), Write { stamp: Some(*s), value: v.clone() }))
            .collect()
    }

    fn stamp(update: &mut Self::Update, stamp: Stamp) {
        for write in update.values_mut() {
            write.stamp.get_or_insert(stamp);
        }
    }

    fn unstamp(change: &mut Self::Update, stamp: Stamp) {
        for write in change.values_mut() {
            if write.stamp == Some(stamp) {
                write.stamp = None;
            }
        }
    }
}

/// A grow-only set of names: repred's `non-virgins` example.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Names(pub BTreeSet<String>);

impl Names {
    /// An update adding `names`.
    pub fn add<const N: usize>(names: [&str; N]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }
}

impl Reduce for Names {
    type Update = BTreeSet<String>;

    fn reduce(&mut self, update: Self::Update) -> Option<Self::Update> {
        let added: BTreeSet<String> =
            update.into_iter().filter(|n| self.0.insert(n.clone())).collect();
        (!added.is_empty()).then_some(added)
    }

    fn snapshot(&self) -> Self::Update {
        self.0.clone()
    }
}

/// name -> newest number seen: repred's `on-the-wagon` max-map.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MaxMap(pub BTreeMap<String, u64>);

impl Reduce for MaxMap {
    type Update = BTreeMap<String, u64>;

    fn reduce(&mut self, update: Self::Update) -> Option<Self::Update> {
        let mut changed = BTreeMap::new();
        for (key, value) in update {
            let slot = self.0.entry(key.clone()).or_insert(0);
            if value > *slot {
                *slot = value;
                changed.insert(key, value);
            }
        }
        (!changed.is_empty()).then_some(changed)
    }

    fn snapshot(&self) -> Self::Update {
        self.0.clone()
    }
}

/// scuttlebutt's reliable event emitter: every event is kept, keyed by the
/// stamp of the update that carried it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Events(pub BTreeMap<Stamp, String>);

impl Events {
    /// An update emitting one event.
    pub fn emit(event: &str) -> Vec<(Option<Stamp>, String)> {
        vec![(None, event.to_string())]
    }

    /// The events' payloads, in stamp order.
    pub fn payloads(&self) -> Vec<&str> {
        self.0.values().map(String::as_str).collect()
    }
}

impl Reduce for Events {
    type Update = Vec<(Option<Stamp>, String)>;

    fn reduce(&mut self, update: Self::Update) -> Option<Self::Update> {
        let new: Vec<_> = update
            .into_iter()
            .filter(|(stamp, event)| {
                stamp.is_some_and(|s| self.0.insert(s, event.clone()).is_none())
            })
            .collect();
        (!new.is_empty()).then_some(new)
    }

    fn snapshot(&self) -> Self::Update {
        self.0.iter().map(|(s, e)| (Some(*s), e.clone())).collect()
    }

    fn stamp(update: &mut Self::Update, stamp: Stamp) {
        for (s, _) in update {
            s.get_or_insert(stamp);
        }
    }
}
