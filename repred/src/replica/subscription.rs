//! Reading a replica's applied changes in order, as a cursor.

use super::Replica;
use crate::history::{Entry, History};
use crate::{Reduce, SourceId, Timestamp};

/// A reader's place in a replica's stream of applied changes.
///
/// It is a cursor, not a queue: a subscriber that falls further behind than
/// the history keeps is told how many changes it missed and can re-read the
/// whole state instead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscription {
    next: u64,
}

/// One applied change, as a subscription sees it.
#[derive(Debug, PartialEq, Eq)]
pub struct Change<'a, U> {
    /// Where it came from: its origin, or for a snapshot, the peer that
    /// sent it.
    pub source: SourceId,
    /// The origin's timestamp ([`Timestamp::ZERO`] for a snapshot).
    pub ts: Timestamp,
    /// What changed.
    pub change: &'a U,
    /// Whether it came from merging a peer's snapshot.
    pub via_snapshot: bool,
}

/// What a subscription reads next.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery<'a, U> {
    /// A change.
    Change(Change<'a, U>),
    /// This many changes were dropped from the history before they were
    /// read; the state still holds their effect.
    Lagged {
        /// How many.
        missed: u64,
    },
}

/// Iterator over a subscription's unread changes.
pub struct Changes<'a, U> {
    history: &'a History<U>,
    subscription: &'a mut Subscription,
}

impl<'a, U> Iterator for Changes<'a, U> {
    type Item = Delivery<'a, U>;

    fn next(&mut self) -> Option<Self::Item> {
        let first = self.history.first_seq();
        if self.subscription.next < first {
            let missed = first - self.subscription.next;
            self.subscription.next = first;
            return Some(Delivery::Lagged { missed });
        }
        loop {
            let record = self.history.get(self.subscription.next)?;
            self.subscription.next += 1;
            let change = match record {
                Entry::Change(e) => {
                    Change { source: e.source, ts: e.ts, change: &e.change, via_snapshot: false }
                }
                Entry::Relayed { envelope: e, change } => {
                    Change { source: e.source, ts: e.ts, change, via_snapshot: false }
                }
                Entry::Merge { from, change, .. } => {
                    Change { source: *from, ts: Timestamp::ZERO, change, via_snapshot: true }
                }
                Entry::Advance(_)
                | Entry::Unchanged(_)
                | Entry::Proven(_)
                | Entry::Covered { .. }
                | Entry::Collected { .. }
                | Entry::Receiving { .. } => {
                    continue;
                }
            };
            return Some(Delivery::Change(change));
        }
    }
}

impl<T: Reduce> Replica<T> {
    /// A subscription to every change applied from now on, local or remote.
    pub fn subscribe(&self) -> Subscription {
        Subscription { next: self.core.history.end_seq() }
    }

    /// A subscription that starts with the changes still in the history.
    pub fn subscribe_from_start(&self) -> Subscription {
        Subscription { next: self.core.history.first_seq() }
    }

    /// The changes a subscription has not seen yet, oldest first.
    pub fn changes<'a>(&'a self, subscription: &'a mut Subscription) -> Changes<'a, T::Update> {
        Changes { history: &self.core.history, subscription }
    }
}
