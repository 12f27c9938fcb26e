use std::collections::BTreeMap;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Reduce, Stamp};

/// Events of an [`EventLog`] update: each with the stamp of the update that
/// emitted it (`None`: the carrying update's) and its place in that update.
pub type Logged<T> = Vec<(Option<Stamp>, u32, T)>;

/// scuttlebutt's reliable event emitter: every event is kept, once, in
/// stamp order, and each replica sees each event exactly once.
///
/// ```
/// use repred::{EventLog, Network, Replica, SourceId};
///
/// let mut net = Network::new();
/// let a = net.add(Replica::new(SourceId::new("a")?, EventLog::default()));
/// let b = net.add(Replica::new(SourceId::new("b")?, EventLog::default()));
/// net.link(a, b);
/// net.update(a, EventLog::emit(["joined".to_string(), "said hi".to_string()]))?;
/// net.update(b, EventLog::emit(["joined".to_string()]))?;
/// net.pump();
/// assert_eq!(net[a].state().len(), 3);
/// assert_eq!(net[a].state(), net[b].state());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventLog<T>(BTreeMap<(Stamp, u32), T>);

impl<T> Default for EventLog<T> {
    fn default() -> Self {
        EventLog(BTreeMap::new())
    }
}

super::serde_as_snapshot!([T] EventLog<T>);

impl<T> EventLog<T> {
    /// An update emitting `events`, in order.
    pub fn emit(events: impl IntoIterator<Item = T>) -> Logged<T> {
        events.into_iter().zip(0u32..).map(|(e, i)| (None, i, e)).collect()
    }

    /// Every event with its stamp, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = (Stamp, &T)> {
        self.0.iter().map(|((s, _), e)| (*s, e))
    }

    /// How many events.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<T: Clone + Serialize + DeserializeOwned> Reduce for EventLog<T> {
    type Update = Logged<T>;

    fn reduce(&mut self, update: Logged<T>) -> Option<Logged<T>> {
        let mut new = Vec::new();
        for (stamp, index, event) in update {
            let Some(stamp) = stamp else { continue };
            if let std::collections::btree_map::Entry::Vacant(slot) = self.0.entry((stamp, index)) {
                slot.insert(event.clone());
                new.push((Some(stamp), index, event));
            }
        }
        (!new.is_empty()).then_some(new)
    }

    fn snapshot(&self) -> Logged<T> {
        self.0.iter().map(|((s, i), e)| (Some(*s), *i, e.clone())).collect()
    }

    fn entries_hint(&self) -> Option<u64> {
        Some(self.0.len() as u64)
    }

    fn snapshot_part(&self, cursor: Option<&[u8]>, max: usize) -> (Logged<T>, Option<Vec<u8>>) {
        let (part, next) = super::map_part(&self.0, cursor, max);
        (part.into_iter().map(|((s, i), e)| (Some(*s), *i, e.clone())).collect(), next)
    }

    fn stamp(update: &mut Logged<T>, stamp: Stamp) {
        for (s, _, _) in update {
            s.get_or_insert(stamp);
        }
    }

    fn unstamp(change: &mut Logged<T>, stamp: Stamp) {
        for (s, _, _) in change {
            if *s == Some(stamp) {
                *s = None;
            }
        }
    }
}
