//! Timers as data: deadlines in a heap, handed back when due.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

/// Pending timers of kind `K`, each due at a wall time in milliseconds.
///
/// The state machine that owns it never sleeps: its driver asks for the
/// earliest deadline ([`Timers::next`]) and comes back then with the time;
/// [`Timers::pop_due`] hands over what is due, in deadline order (ties in
/// the order they were set), so one seed replays one run exactly.
#[derive(Debug)]
pub(crate) struct Timers<K> {
    heap: BinaryHeap<Reverse<(u64, u64)>>,
    kinds: HashMap<u64, K>,
    next_seq: u64,
}

impl<K> Default for Timers<K> {
    fn default() -> Self {
        Self { heap: BinaryHeap::new(), kinds: HashMap::new(), next_seq: 0 }
    }
}

impl<K> Timers<K> {
    pub(crate) fn set(&mut self, deadline: u64, kind: K) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.heap.push(Reverse((deadline, seq)));
        self.kinds.insert(seq, kind);
    }

    /// The earliest deadline, if any.
    pub(crate) fn next(&self) -> Option<u64> {
        self.heap.peek().map(|Reverse((deadline, _))| *deadline)
    }

    /// The earliest timer due at `now`, if any.
    pub(crate) fn pop_due(&mut self, now: u64) -> Option<K> {
        let Reverse((deadline, seq)) = *self.heap.peek()?;
        if deadline > now {
            return None;
        }
        self.heap.pop();
        self.kinds.remove(&seq)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_timers_come_out_in_deadline_then_insertion_order() {
        let mut t = Timers::default();
        t.set(30, "c");
        t.set(10, "a");
        t.set(10, "b");
        assert_eq!(t.next(), Some(10));
        assert_eq!(t.pop_due(5), None);
        assert_eq!(t.pop_due(20), Some("a"));
        assert_eq!(t.pop_due(20), Some("b"));
        assert_eq!(t.pop_due(20), None);
        assert_eq!(t.pop_due(30), Some("c"));
        assert_eq!(t.len(), 0);
    }
}
