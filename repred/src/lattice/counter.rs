use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Reduce, SourceId};

/// A counter that only goes up: each writer keeps its own total, the value
/// is their sum, and the merge keeps each writer's largest total.
///
/// The state is its own update; `increment` needs the writer's id because a
/// writer's total, not a delta, is what travels (a delta applied twice would
/// count twice).
///
/// ```
/// use repred::{GCounter, Network, Replica, SourceId};
///
/// let mut net = Network::new();
/// let a = net.add(Replica::new(SourceId::new("a")?, GCounter::default()));
/// let b = net.add(Replica::new(SourceId::new("b")?, GCounter::default()));
/// net.link(a, b);
/// let inc = net[a].state().increment(net[a].id(), 2);
/// net.update(a, inc)?;
/// let inc = net[b].state().increment(net[b].id(), 3);
/// net.update(b, inc)?;
/// net.pump();
/// assert_eq!(net[a].state().value(), 5);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GCounter(BTreeMap<SourceId, u64>);

impl GCounter {
    /// An update adding `n` to `writer`'s total.
    pub fn increment(&self, writer: SourceId, n: u64) -> GCounter {
        let total = self.0.get(&writer).copied().unwrap_or(0).saturating_add(n);
        GCounter(BTreeMap::from([(writer, total)]))
    }

    /// The count: every writer's total, summed.
    pub fn value(&self) -> u64 {
        self.0.values().fold(0u64, |sum, n| sum.saturating_add(*n))
    }

    /// One writer's total.
    pub fn of(&self, writer: SourceId) -> u64 {
        self.0.get(&writer).copied().unwrap_or(0)
    }
}

impl Reduce for GCounter {
    type Update = GCounter;

    fn reduce(&mut self, update: GCounter) -> Option<GCounter> {
        let mut changed = BTreeMap::new();
        for (writer, total) in update.0 {
            // A zero total is the bottom: storing it would change the map
            // without changing the count.
            if total > self.of(writer) {
                self.0.insert(writer, total);
                changed.insert(writer, total);
            }
        }
        (!changed.is_empty()).then_some(GCounter(changed))
    }

    fn snapshot(&self) -> GCounter {
        self.clone()
    }

    fn entries_hint(&self) -> Option<u64> {
        Some(self.0.len() as u64)
    }

    fn snapshot_part(&self, cursor: Option<&[u8]>, max: usize) -> (GCounter, Option<Vec<u8>>) {
        let (part, next) = super::map_part(&self.0, cursor, max);
        (GCounter(part.into_iter().map(|(w, n)| (*w, *n)).collect()), next)
    }
}

/// A counter that goes up and down: a [`GCounter`] of increments and one of
/// decrements.
///
/// ```
/// use repred::{PnCounter, Reduce, SourceId};
///
/// let me = SourceId::new("me")?;
/// let mut c = PnCounter::default();
/// c.reduce(c.increment(me, 5));
/// c.reduce(c.decrement(me, 7));
/// assert_eq!(c.value(), -2);
/// # Ok::<(), repred::InvalidSourceId>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PnCounter {
    /// The increments.
    pub up: GCounter,
    /// The decrements.
    pub down: GCounter,
}

impl PnCounter {
    /// An update adding `n` as `writer`.
    pub fn increment(&self, writer: SourceId, n: u64) -> PnCounter {
        PnCounter { up: self.up.increment(writer, n), down: GCounter::default() }
    }

    /// An update subtracting `n` as `writer`.
    pub fn decrement(&self, writer: SourceId, n: u64) -> PnCounter {
        PnCounter { up: GCounter::default(), down: self.down.increment(writer, n) }
    }

    /// Increments minus decrements.
    pub fn value(&self) -> i128 {
        i128::from(self.up.value()) - i128::from(self.down.value())
    }
}

impl Reduce for PnCounter {
    type Update = PnCounter;

    fn reduce(&mut self, update: PnCounter) -> Option<PnCounter> {
        let up = self.up.reduce(update.up);
        let down = self.down.reduce(update.down);
        (up.is_some() || down.is_some())
            .then(|| PnCounter { up: up.unwrap_or_default(), down: down.unwrap_or_default() })
    }

    fn snapshot(&self) -> PnCounter {
        self.clone()
    }

    fn entries_hint(&self) -> Option<u64> {
        Some((self.up.0.len() + self.down.0.len()) as u64)
    }

    /// Increments first, then decrements.
    fn snapshot_part(&self, cursor: Option<&[u8]>, max: usize) -> (PnCounter, Option<Vec<u8>>) {
        let at = super::Phase::read(cursor);
        let counter = if at.phase == 0 { &self.up } else { &self.down };
        let (part, next) = counter.snapshot_part(at.inner.as_deref(), max);
        let next = super::Phase::next(at.phase, next, 2);
        let part = if at.phase == 0 {
            PnCounter { up: part, down: GCounter::default() }
        } else {
            PnCounter { up: GCounter::default(), down: part }
        };
        (part, next)
    }
}
