//! Finding where two clocks differ without sending either whole.
//!
//! Two replicas whose clock digests differ must each learn the other's
//! clock before sending history. Sending it whole costs ~25 bytes a source
//! (5 MB at 100,000 sources, more than a frame at 670,000) even when one
//! source differs. Instead they compare fingerprints of ranges of their
//! clocks, split the ranges that differ, and exchange entries only where a
//! range is small (range-based set reconciliation, after Meyer and the
//! negentropy protocol): O(d log n) bytes for d differences among n
//! sources.
//!
//! Ranges are prefixes of the source id's bytes, a nibble at a time (so a
//! range needs no bounds on the wire, and since ids are random or hashed,
//! a range of depth k holds about n / 16^k sources). Each side keeps the
//! ranges whose outcome it awaits; when none is left, it knows the peer's
//! clock: its own entries where the fingerprints matched, the peer's where
//! they were sent.
//!
//! What the peer says is held to the protocol, so that it costs us no more
//! than it costs the peer: a range it probes must be the root (from the
//! side that starts, once) or a child of one we probed and it split, each
//! once; a range it lists for us to answer must be one we probed, holding
//! at most [`MAX_ITEMS`] of ours (as the protocol's rule for listing
//! says); and the ranges we send in one reconciliation are bounded by the
//! size of the clocks involved ([`Reconciliation::new`]). Before, a frame
//! of small messages each asking for the root's entries had us copy the
//! whole clock once per message.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use serde::{Deserialize, Serialize};

use crate::{Clock, SourceId, Timestamp};

/// A range of source ids: those whose first `depth` nibbles are `nibbles`'.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub(crate) struct Prefix {
    depth: u8,
    /// The nibbles, packed two to a byte, high nibble first.
    packed: Vec<u8>,
}

/// A range that holds at most this many sources on one side is settled by
/// sending entries, if the other side holds at most [`MAX_ITEMS`].
const LEAF: u32 = 8;

/// The most entries one side sends for a range (so a message stays small).
const MAX_ITEMS: u32 = 1_024;

/// A source id is 32 nibbles.
const MAX_DEPTH: u8 = 32;

impl Prefix {
    pub(crate) fn root() -> Self {
        Prefix { depth: 0, packed: Vec::new() }
    }

    /// The range this one is a sixteenth of, and which sixteenth (`None`:
    /// the root).
    fn parent(&self) -> Option<(Prefix, u8)> {
        let depth = self.depth.checked_sub(1)?;
        let mut packed = self.packed.clone();
        let nibble = if depth.is_multiple_of(2) {
            packed.pop().map_or(0, |b| b >> 4)
        } else {
            let last = packed.last_mut()?;
            let nibble = *last & 0x0f;
            *last &= 0xf0;
            nibble
        };
        Some((Prefix { depth, packed }, nibble))
    }

    fn child(&self, nibble: u8) -> Prefix {
        let mut packed = self.packed.clone();
        if self.depth.is_multiple_of(2) {
            packed.push(nibble << 4);
        } else if let Some(last) = packed.last_mut() {
            *last |= nibble & 0x0f;
        }
        Prefix { depth: self.depth + 1, packed }
    }

    /// Whether this is a well-formed prefix (what came off the wire may
    /// not be).
    fn is_valid(&self) -> bool {
        self.depth <= MAX_DEPTH
            && self.packed.len() == usize::from(self.depth).div_ceil(2)
            && (self.depth.is_multiple_of(2) || self.packed.last().is_some_and(|b| b & 0x0f == 0))
    }

    /// The smallest and (exclusively) largest 16-byte ids in the range.
    fn bounds(&self) -> ([u8; 16], Option<[u8; 16]>) {
        let mut low = [0u8; 16];
        low[..self.packed.len()].copy_from_slice(&self.packed);
        // The next prefix of the same depth, as a 128-bit number.
        let value = u128::from_be_bytes(low);
        let step =
            if self.depth == 0 { None } else { Some(1u128 << (128 - 4 * u32::from(self.depth))) };
        let high = match step {
            None => None,
            Some(step) => value.checked_add(step).map(u128::to_be_bytes),
        };
        (low, high)
    }

    /// The entries of `clock` in this range.
    fn entries<'a>(&self, clock: &'a Clock) -> impl Iterator<Item = (SourceId, Timestamp)> + 'a {
        let (low, high) = self.bounds();
        let lower = Bound::Included(SourceId::from_hash_raw(low));
        let upper = match high {
            Some(high) => Bound::Excluded(SourceId::from_hash_raw(high)),
            None => Bound::Unbounded,
        };
        clock.range(lower, upper)
    }

    fn fingerprint(&self, clock: &Clock) -> (u64, u32) {
        self.entries(clock).fold((0u64, 0u32), |(fp, n), (source, ts)| {
            (fp.wrapping_add(mix(source, ts)), n.saturating_add(1))
        })
    }
}

/// One entry's share of a fingerprint (a sum, so order does not matter).
fn mix(source: SourceId, ts: Timestamp) -> u64 {
    let b = source.as_bytes();
    let lo = u64::from_le_bytes(b[..8].try_into().unwrap_or_default());
    let hi = u64::from_le_bytes(b[8..].try_into().unwrap_or_default());
    // splitmix64's finalizer, over the id's halves and the timestamp.
    let mut x = lo ^ hi.rotate_left(21) ^ ts.to_raw().rotate_left(42) ^ 0x9E37_79B9_7F4A_7C15;
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// What one side says of a range.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Range {
    /// My fingerprint and count of this range: tell me where we differ.
    Probe { prefix: Prefix, fingerprint: u64, count: u32 },
    /// Yours matches mine here.
    Equal { prefix: Prefix },
    /// My entries in this range; `reply`: in answer to yours (else send
    /// yours back).
    Items { prefix: Prefix, items: Vec<(SourceId, Timestamp)>, reply: bool },
}

/// One stream's reconciliation.
#[derive(Debug)]
pub(crate) struct Reconciliation {
    /// Our clock as our Hello summarised it: fixed, so that both sides
    /// compare the clocks their digests were of.
    mine: Clock,
    /// What is learned of the peer's clock so far.
    theirs: Clock,
    /// Ranges whose outcome we await.
    open: BTreeSet<Prefix>,
    /// How many entries the peer sent us of sources we do not know, at most
    /// `max_unknown`: past it they are not remembered (a clock is
    /// information, not a claim).
    unknown: usize,
    max_unknown: usize,
    /// Whether it has begun (this side started, or the peer spoke): before
    /// that, no open range does not mean done.
    engaged: bool,
    /// Whether this side started (and so probed the root), or the peer
    /// did: the root is probed once, by one side.
    root_probed: bool,
    /// Ranges we probed that the peer is splitting, with the sixteenths it
    /// has probed so far (a bit each): each is answered once.
    splitting: BTreeMap<Prefix, u16>,
    /// Ranges sent so far, and the most this reconciliation may send.
    sent: usize,
    budget: usize,
}

/// Ranges a reconciliation may send whatever the clocks' sizes.
const BASE_BUDGET: usize = 4_096;

/// The most of a peer's announced sources its budget counts (the Hello's
/// count is the peer's word): 2^24, as many as a snapshot's clock may name
/// by default.
const MAX_PEER_SOURCES: u64 = 1 << 24;

impl Reconciliation {
    /// Reconciles `mine` with a peer's clock of `theirs` sources (as its
    /// Hello says), remembering at most `max_unknown` of its sources we do
    /// not know.
    ///
    /// It sends at most 4,096 ranges, plus two per source of ours and per
    /// unknown source it may remember, plus one per 16 of the peer's
    /// sources (counted up to [`MAX_PEER_SOURCES`]): telling two clocks
    /// apart takes about one range for every [`LEAF`] sources where they
    /// differ, a sixteenth more per level, and a small clock facing a
    /// large one about one range per [`MAX_ITEMS`] of the large one's
    /// sources, so an honest peer stays below even where the clocks differ
    /// in every source; a peer that probes on and on (claiming counts it
    /// does not hold, each forcing a split) is refused past it.
    pub(crate) fn new(mine: Clock, theirs: u64, max_unknown: usize) -> Self {
        let peer = usize::try_from(theirs.min(MAX_PEER_SOURCES)).unwrap_or(usize::MAX) / 16;
        let budget = BASE_BUDGET
            .saturating_add(mine.len().saturating_add(max_unknown).saturating_mul(2))
            .saturating_add(peer);
        Self {
            mine,
            theirs: Clock::new(),
            open: BTreeSet::new(),
            unknown: 0,
            max_unknown,
            engaged: false,
            root_probed: false,
            splitting: BTreeMap::new(),
            sent: 0,
            budget,
        }
    }

    /// The first message, from the side that starts.
    pub(crate) fn start(&mut self) -> Vec<Range> {
        self.engaged = true;
        self.root_probed = true;
        let root = Prefix::root();
        let (fingerprint, count) = root.fingerprint(&self.mine);
        self.open.insert(root.clone());
        self.sent += 1;
        vec![Range::Probe { prefix: root, fingerprint, count }]
    }

    /// The most ranges the peer's next message may hold: sixteen for each
    /// range of ours it has yet to answer (a split), and for each it is
    /// splitting, and the root's probe, if it starts.
    pub(crate) fn most_ranges_owed(&self) -> usize {
        self.open.len().saturating_add(self.splitting.len()).saturating_mul(16).saturating_add(1)
    }

    /// Whether the peer's clock is fully known.
    pub(crate) fn is_done(&self) -> bool {
        self.engaged && self.open.is_empty() && self.splitting.is_empty()
    }

    /// The peer's clock, once done.
    pub(crate) fn into_theirs(self) -> Clock {
        self.theirs
    }

    /// Handles the peer's message; returns the answer (empty: nothing to
    /// say). `Err` for a message that breaks the protocol.
    pub(crate) fn handle(&mut self, ranges: Vec<Range>) -> Result<Vec<Range>, &'static str> {
        self.engaged = true;
        let mut out = Vec::new();
        for range in ranges {
            match range {
                Range::Probe { prefix, fingerprint, count } => {
                    if !prefix.is_valid() {
                        return Err("a malformed range");
                    }
                    self.take_probe(&prefix)?;
                    self.answer(prefix, fingerprint, count, &mut out);
                }
                Range::Equal { prefix } => {
                    if self.open.remove(&prefix) {
                        self.settle(&prefix);
                    }
                }
                Range::Items { prefix, items, reply } => {
                    if !prefix.is_valid() {
                        return Err("a malformed range");
                    }
                    if items.len() > MAX_ITEMS as usize {
                        return Err("too many entries for one range");
                    }
                    // Listed in answer to our probe, or to our list.
                    if !self.open.remove(&prefix) {
                        if reply {
                            continue;
                        }
                        return Err("entries for a range we did not probe");
                    }
                    self.learn(&prefix, items)?;
                    if !reply {
                        // The peer lists a range only where ours are few
                        // enough to list back (see `answer`).
                        let mine: Vec<_> = prefix.entries(&self.mine).collect();
                        if mine.len() > MAX_ITEMS as usize {
                            return Err("entries asked for a range too large to list");
                        }
                        self.sent += 1;
                        out.push(Range::Items { prefix, items: mine, reply: true });
                    }
                }
            }
            if self.sent > self.budget {
                return Err("more ranges than the clocks call for");
            }
        }
        Ok(out)
    }

    /// Accepts the peer's probe of `prefix` if the protocol has it probe
    /// that range now: the root, by the side that starts, once; or a
    /// sixteenth of a range we probed, which the peer splits instead of
    /// answering, each sixteenth once.
    fn take_probe(&mut self, prefix: &Prefix) -> Result<(), &'static str> {
        let Some((parent, nibble)) = prefix.parent() else {
            if std::mem::replace(&mut self.root_probed, true) {
                return Err("the root probed twice");
            }
            return Ok(());
        };
        if self.open.remove(&parent) {
            self.splitting.insert(parent.clone(), 0);
        }
        let Some(seen) = self.splitting.get_mut(&parent) else {
            return Err("a range probed that we did not split");
        };
        let bit = 1u16 << nibble;
        if *seen & bit != 0 {
            return Err("a range probed twice");
        }
        *seen |= bit;
        if *seen == u16::MAX {
            self.splitting.remove(&parent);
        }
        Ok(())
    }

    fn answer(&mut self, prefix: Prefix, fingerprint: u64, count: u32, out: &mut Vec<Range>) {
        let (mine, my_count) = prefix.fingerprint(&self.mine);
        if mine == fingerprint && my_count == count {
            self.settle(&prefix);
            self.sent += 1;
            out.push(Range::Equal { prefix });
        } else if (my_count <= LEAF && count <= MAX_ITEMS)
            || (count <= LEAF && my_count <= MAX_ITEMS)
            || prefix.depth >= MAX_DEPTH
        {
            let items: Vec<_> = prefix.entries(&self.mine).collect();
            self.open.insert(prefix.clone());
            self.sent += 1;
            out.push(Range::Items { prefix, items, reply: false });
        } else {
            for nibble in 0..16 {
                let child = prefix.child(nibble);
                let (fingerprint, count) = child.fingerprint(&self.mine);
                self.open.insert(child.clone());
                out.push(Range::Probe { prefix: child, fingerprint, count });
            }
            self.sent += 16;
        }
    }

    /// The peer holds exactly our entries in this range.
    fn settle(&mut self, prefix: &Prefix) {
        for (source, ts) in prefix.entries(&self.mine) {
            self.theirs.observe(source, ts);
        }
    }

    /// The peer's entries in this range.
    fn learn(
        &mut self,
        prefix: &Prefix,
        items: Vec<(SourceId, Timestamp)>,
    ) -> Result<(), &'static str> {
        let (low, high) = prefix.bounds();
        for (source, ts) in items {
            let bytes = *source.as_bytes();
            if bytes < low || high.is_some_and(|h| bytes >= h) {
                return Err("an entry outside its range");
            }
            if self.mine.get(source) == Timestamp::ZERO {
                if self.unknown >= self.max_unknown {
                    continue;
                }
                self.unknown += 1;
            }
            self.theirs.observe(source, ts);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock(n: u64, skip: Option<u64>, bump: Option<u64>) -> Clock {
        (0..n)
            .filter(|i| Some(*i) != skip)
            .map(|i| {
                let mut b = [0u8; 16];
                b[..8].copy_from_slice(
                    &mix(SourceId::from_hash_raw([1; 16]), Timestamp::new(i, 0)).to_be_bytes(),
                );
                b[8..].copy_from_slice(&i.to_be_bytes());
                let ts =
                    if Some(i) == bump { Timestamp::new(9_000, 0) } else { Timestamp::new(5, 0) };
                (SourceId::from_hash_raw(b), ts)
            })
            .collect()
    }

    /// Runs two reconciliations against each other, `a`'s side starting;
    /// returns both results and the bytes exchanged.
    fn run(a: &Clock, b: &Clock) -> (Clock, Clock, usize) {
        run_remembering(a, b, usize::MAX)
    }

    /// As [`run`], each side remembering at most `max_unknown` sources it
    /// does not know.
    fn run_remembering(a: &Clock, b: &Clock, max_unknown: usize) -> (Clock, Clock, usize) {
        let mut x = Reconciliation::new(a.clone(), b.len() as u64, max_unknown);
        let mut y = Reconciliation::new(b.clone(), a.len() as u64, max_unknown);
        let mut to_y = x.start();
        let mut bytes = 0;
        for _ in 0..200 {
            bytes += postcard::to_allocvec(&to_y).unwrap().len();
            let to_x = y.handle(std::mem::take(&mut to_y)).unwrap();
            bytes += postcard::to_allocvec(&to_x).unwrap().len();
            to_y = x.handle(to_x).unwrap();
            if to_y.is_empty() && x.is_done() && y.is_done() {
                break;
            }
        }
        assert!(x.is_done() && y.is_done());
        (x.into_theirs(), y.into_theirs(), bytes)
    }

    #[test]
    fn each_side_learns_the_others_clock() {
        for (a, b) in [
            (clock(100, None, None), clock(100, Some(3), None)),
            (clock(5_000, None, Some(77)), clock(5_000, Some(1_234), None)),
            (clock(0, None, None), clock(300, None, None)),
            (clock(40, None, None), clock(40, None, None)),
        ] {
            let (a_learned, b_learned, _) = run(&a, &b);
            assert_eq!(a_learned, b);
            assert_eq!(b_learned, a);
        }
    }

    /// A range asked for again and again: before, each of a frame's
    /// small messages listing the root for us to answer had us copy our
    /// whole clock.
    #[test]
    fn a_range_is_answered_once() {
        let mine = clock(5_000, None, None);
        let mut x = Reconciliation::new(mine.clone(), 0, 100);
        x.start();
        let list = || Range::Items { prefix: Prefix::root(), items: Vec::new(), reply: false };
        // Ours are too many to list back, as the protocol's rule says.
        assert_eq!(x.handle(vec![list()]), Err("entries asked for a range too large to list"));
        let mut y = Reconciliation::new(clock(10, None, None), 0, 100);
        y.start();
        let answer = y.handle(vec![list()]).expect("an answer to our probe");
        assert!(
            matches!(&answer[..], [Range::Items { reply: true, items, .. }] if items.len() == 10)
        );
        assert_eq!(y.handle(vec![list()]), Err("entries for a range we did not probe"));
        // Nor is the root probed twice, or by the side that started.
        let root = |count| Range::Probe { prefix: Prefix::root(), fingerprint: 1, count };
        assert_eq!(x.handle(vec![root(2_000)]), Err("the root probed twice"));
        let mut z = Reconciliation::new(mine, 0, 100);
        assert!(z.handle(vec![root(2_000)]).is_ok());
        assert_eq!(z.handle(vec![root(2_000)]), Err("the root probed twice"));
    }

    /// A peer's probe is of a sixteenth of a range we probed, once each.
    #[test]
    fn only_the_sixteenths_of_our_probes_are_taken() {
        let mut x = Reconciliation::new(clock(5_000, None, None), 0, 100);
        x.start();
        let probe = |prefix: Prefix| Range::Probe { prefix, fingerprint: 1, count: 2_000 };
        let deep = Prefix::root().child(3).child(4);
        assert_eq!(x.handle(vec![probe(deep)]), Err("a range probed that we did not split"));
        let child = Prefix::root().child(3);
        assert!(x.handle(vec![probe(child.clone())]).is_ok());
        assert_eq!(x.handle(vec![probe(child)]), Err("a range probed twice"));
    }

    /// A peer that claims thousands of sources in every range we split,
    /// forcing split after split, is refused once the ranges sent pass
    /// what the clocks call for: before, each of its probes cost us
    /// sixteen, down to 32 levels.
    #[test]
    fn a_peer_that_splits_for_ever_is_refused() {
        let mut x = Reconciliation::new(clock(100, None, None), 0, 100);
        let mut ours = x.start();
        let mut sent = ours.len();
        for round in 0.. {
            assert!(round < 64, "never refused");
            let split: Vec<Range> = ours
                .iter()
                .filter_map(|r| match r {
                    Range::Probe { prefix, .. } => Some(prefix.clone()),
                    _ => None,
                })
                .flat_map(|p| (0..16).map(move |n| p.child(n)))
                .take(200_000)
                .map(|prefix| Range::Probe { prefix, fingerprint: 1, count: 2_000 })
                .collect();
            match x.handle(split) {
                Ok(answer) => {
                    sent += answer.len();
                    ours = answer;
                }
                Err(e) => {
                    assert_eq!(e, "more ranges than the clocks call for");
                    break;
                }
            }
        }
        assert!(sent <= BASE_BUDGET + 2 * 200 + 16, "{sent} ranges sent");
    }

    /// A split whose sixteenths come in two messages: the range's outcome
    /// is known only once all have come.
    #[test]
    fn a_split_in_two_messages_is_awaited_whole() {
        let a = clock(5_000, None, Some(77));
        let b = clock(5_000, Some(1_234), None);
        let (na, nb) = (a.len() as u64, b.len() as u64);
        let mut x = Reconciliation::new(a, nb, usize::MAX);
        let mut y = Reconciliation::new(b.clone(), na, usize::MAX);
        let mut to_y = x.start();
        for _ in 0..200 {
            let mut to_x = y.handle(std::mem::take(&mut to_y)).expect("y's answer");
            let rest = to_x.split_off(to_x.len() / 2);
            to_y = x.handle(to_x).expect("x's answer");
            assert!(rest.is_empty() || !x.is_done(), "done before the rest came");
            to_y.extend(x.handle(rest).expect("x's answer"));
            if to_y.is_empty() && x.is_done() && y.is_done() {
                break;
            }
        }
        assert_eq!(x.into_theirs(), b);
    }

    /// A small clock facing a large one sends about one range per
    /// `MAX_ITEMS` of the large one's sources, whatever it remembers of
    /// them: its budget counts the peer's size too (before, a replica of
    /// 40 sources remembering 1,000 unknown ones was cut off by a peer of
    /// a million).
    #[test]
    fn a_small_clock_reconciles_with_a_large_one_whatever_it_remembers() {
        let large = clock(1_000_000, None, None);
        let small = clock(40, None, Some(3));
        // The large side starts; neither cuts the other off.
        let (of_small, of_large, _) = run_remembering(&large, &small, 1_000);
        assert_eq!(of_small, small, "the large side learns the small one's clock whole");
        assert!(of_large.len() <= 40 + 1_000, "{} sources remembered", of_large.len());
        assert!(small.iter().all(|(s, _)| of_large.get(s) == large.get(s)), "its own sources");
    }

    #[test]
    fn a_million_sources_lacking_one_cost_a_few_kilobytes() {
        let a = clock(1_000_000, None, None);
        let b = clock(1_000_000, Some(424_242), None);
        let (a_learned, b_learned, bytes) = run(&a, &b);
        assert_eq!(a_learned, b);
        assert_eq!(b_learned, a);
        assert!(bytes < 3_000, "{bytes} bytes");
    }
}
