//! Lazy relay: which stream each pulled source's updates come from (its
//! parent), what a parent owes and by when, and what becomes of a stream
//! that does not deliver.
//!
//! A parent that owes an announced update past the relay timeout is
//! demoted: another stream that announced the source is asked instead, and
//! the demoted one is barred from taking the role back by announcing, for
//! a relay timeout that doubles with each failure in a row (up to
//! [`MAX_BAR_DOUBLINGS`] doublings). Delivering what it owed, new here,
//! lifts the bar and the count. What only it is known to hold (what it
//! owed, or announced while barred) is not forgotten: should nobody else
//! deliver it, the role is offered back to it when the bar ends (or at
//! once, when a delivery lifts it), since a slow but honest peer may be
//! the only one holding newer updates. So a peer that keeps announcing
//! what it never delivers holds a source back for one relay timeout per
//! bar, ever more rarely, instead of once per lie; and one lie is asked of
//! its teller once a bar until the clock passes it. A peer whose identity
//! is proven keeps its bars across its streams (it cannot shed one by
//! reconnecting); a stream nobody vouches for keeps its own.

use std::collections::BTreeMap;

use super::{Replica, Stream, settle_waiting};
use crate::replica::Core;
use crate::{Reduce, SourceId, Stamp, StreamId, Timestamp};

/// How many times a demoted stream's bar doubles: with the default relay
/// timeout of 1 s, a stream that never delivers is asked again at most once
/// a minute or so (a bar of 64 s after each failed second).
pub(crate) const MAX_BAR_DOUBLINGS: u32 = 6;

/// How long after its bar ends a failure still counts towards the next
/// bar: a failure longer after than the longest bar counts afresh.
fn forgotten(timeout: u64) -> u64 {
    timeout.saturating_mul(1 << MAX_BAR_DOUBLINGS)
}

/// The stream a source's updates come from, and how far it is known to have
/// them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Parent {
    pub(crate) stream: StreamId,
    pub(crate) has: Timestamp,
    /// The peer is the source itself: it always has the newest.
    pub(crate) origin: bool,
    /// An update of the source that some peer announced and this replica
    /// lacks, and by when the parent must have delivered it (wall
    /// milliseconds) before another announcer is asked.
    pub(crate) due: Option<Due>,
}

/// What a parent owes, and by when.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Due {
    pub(crate) ts: Timestamp,
    pub(crate) deadline: u64,
}

impl Parent {
    pub(crate) fn new(stream: StreamId, has: Timestamp, origin: bool) -> Self {
        Self { stream, has, origin, due: None }
    }

    /// Someone announced `ts` at `now`: the parent owes it within `timeout`
    /// (the earliest deadline stands, so repeated announcements cannot put
    /// it off).
    pub(crate) fn expect(&mut self, ts: Timestamp, now: u64, timeout: u64) {
        match &mut self.due {
            Some(due) => due.ts = due.ts.max(ts),
            None => self.due = Some(Due { ts, deadline: now.saturating_add(timeout) }),
        }
    }
}

/// A stream that lost a source's parent role by not delivering in time.
#[derive(Clone, Copy, Debug)]
struct Demotion {
    /// Failures since it last delivered what it owed; its bar doubles with
    /// each.
    strikes: u32,
    /// What it last failed to deliver: delivering that, or newer, lifts the
    /// demotion.
    owed: Timestamp,
    /// Until when (wall milliseconds) its announcements do not take the
    /// role.
    until: u64,
    /// The newest it announced (or was known to hold) while barred that no
    /// other stream was known to have: offered the role for it when the bar
    /// ends, unless it has arrived by then.
    pending: Option<Timestamp>,
}

/// Whom a bar is kept for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Relayer {
    /// A peer whose identity was proven (by the transport, or by a Hello
    /// signed with its id's key on a bound stream): its bars outlast its
    /// streams, so it cannot shed one by reconnecting.
    Proven(SourceId),
    /// A peer nobody vouched for: its bars go with its stream (another
    /// stream might be anyone's).
    Stream(StreamId),
}

/// The demoted peers, per source. At most one entry per source and peer,
/// each made by a deadline that passed. A stream's entries go with it
/// ([`Replica::reparent`]); a proven peer's stay while they may still
/// count, at most [`MAX_BAR_DOUBLINGS`]-doubled timeouts past their bar.
#[derive(Debug, Default)]
pub(crate) struct Demotions {
    bars: BTreeMap<(SourceId, Relayer), Demotion>,
    /// The open streams whose peers were proven, and who they are.
    proven: BTreeMap<StreamId, SourceId>,
}

impl Demotions {
    /// `stream`'s peer is `peer`, proven: its bars are kept for the peer,
    /// across its streams, from now on.
    pub(crate) fn prove(&mut self, stream: StreamId, peer: SourceId) {
        self.proven.insert(stream, peer);
    }

    fn relayer(&self, stream: StreamId) -> Relayer {
        self.proven.get(&stream).map_or(Relayer::Stream(stream), |&p| Relayer::Proven(p))
    }

    /// `stream` failed to deliver `owed` of `source` by `now`: barred for
    /// `timeout` doubled once per earlier failure in a row.
    fn demote(
        &mut self,
        source: SourceId,
        stream: StreamId,
        owed: Timestamp,
        now: u64,
        timeout: u64,
    ) {
        let key = (source, self.relayer(stream));
        let d = self.bars.entry(key).or_insert(Demotion {
            strikes: 0,
            owed,
            until: now,
            pending: None,
        });
        // A failure longer after the last bar ended than the longest bar
        // counts afresh: an honest peer slow now and then is not barred for
        // a minute for a stumble of an hour ago, and a liar waiting that
        // long between lies gains nothing over the longest bar.
        if now > d.until.saturating_add(forgotten(timeout)) {
            d.strikes = 0;
        }
        d.strikes = d.strikes.saturating_add(1);
        d.owed = d.owed.max(owed);
        let bar = timeout.saturating_mul(1 << (d.strikes - 1).min(MAX_BAR_DOUBLINGS));
        d.until = now.saturating_add(bar);
        d.pending = None;
    }

    /// Whether `stream` may not take `source`'s role at `now`.
    fn barred(&self, source: SourceId, stream: StreamId, now: u64) -> bool {
        !self.bars.is_empty()
            && self.bars.get(&(source, self.relayer(stream))).is_some_and(|d| now < d.until)
    }

    /// A barred `stream` holds `ts` of `source`: offered the role for it
    /// when the bar ends.
    fn hold(&mut self, source: SourceId, stream: StreamId, ts: Timestamp) {
        let key = (source, self.relayer(stream));
        if let Some(d) = self.bars.get_mut(&key) {
            d.pending = Some(d.pending.map_or(ts, |p| p.max(ts)));
        }
    }

    /// `stream` delivered `ts` of `source`, new here: what it owed, or
    /// newer, lifts its demotion. What it announced while barred is then
    /// offered to it at once (at the next timeout), not forgotten: it may
    /// be the only one holding it.
    pub(crate) fn delivered(&mut self, source: SourceId, stream: StreamId, ts: Timestamp) {
        if self.bars.is_empty() {
            return;
        }
        let key = (source, self.relayer(stream));
        let Some(d) = self.bars.get_mut(&key).filter(|d| ts >= d.owed) else { return };
        if d.pending.is_some_and(|p| p > ts) {
            (d.strikes, d.until) = (0, 0);
        } else {
            self.bars.remove(&key);
        }
    }

    /// When a bar ends with something pending, if any does.
    pub(crate) fn next_offer(&self) -> Option<u64> {
        self.bars.values().filter(|d| d.pending.is_some()).map(|d| d.until).min()
    }

    /// The open streams of `relayer`'s peer, oldest first.
    fn streams_of(&self, relayer: Relayer) -> Vec<StreamId> {
        match relayer {
            Relayer::Stream(stream) => vec![stream],
            Relayer::Proven(peer) => {
                self.proven.iter().filter(|&(_, p)| *p == peer).map(|(&s, _)| s).collect()
            }
        }
    }

    /// The pending offers whose bars have ended by `now`, taken (each for
    /// one of its peer's streams to take up, see `relay_timeouts`).
    /// Demotions lifted by a delivery go with them, as do a proven peer's
    /// whose strikes would count afresh by now (`forgotten` after their
    /// bar).
    fn take_offers(&mut self, now: u64, forgotten: u64) -> Vec<(SourceId, Relayer, Timestamp)> {
        let Demotions { bars, .. } = self;
        let offers = bars
            .iter_mut()
            .filter(|(_, d)| d.until <= now)
            .filter_map(|(&(source, relayer), d)| d.pending.take().map(|ts| (source, relayer, ts)))
            .collect();
        bars.retain(|&(_, relayer), d| {
            d.strikes > 0
                && (matches!(relayer, Relayer::Stream(_))
                    || now <= d.until.saturating_add(forgotten))
        });
        offers
    }

    /// Forgets `stream`: it is gone. Its bars go with it, unless its peer
    /// was proven, whose bars it may meet again on its next stream.
    fn forget(&mut self, stream: StreamId) {
        self.proven.remove(&stream);
        self.bars.retain(|&(_, relayer), _| relayer != Relayer::Stream(stream));
    }
}

/// Makes the open stream (other than `except`) that is known to have the
/// most of `source`, if more than this replica, its parent, and asks it for
/// the source; with `expect = Some(ts)` it owes `ts` within the relay
/// timeout. A barred stream is not chosen, but is offered the role when its
/// bar ends for what it is known to hold. Returns the stream chosen.
fn adopt<T: Reduce>(
    core: &mut Core<T>,
    streams: &mut BTreeMap<StreamId, Stream>,
    source: SourceId,
    except: StreamId,
    expect: Option<Timestamp>,
    now: u64,
) -> Option<StreamId> {
    let mine = core.clock.get(source);
    let mut best: Option<(StreamId, Timestamp)> = None;
    // A peer that sends nothing would never serve the Want.
    for (&sid, s) in streams
        .iter()
        .filter(|(sid, s)| **sid != except && !s.ended && s.opts.receives)
        .filter(|(_, s)| s.peer.is_some_and(|p| p.sends))
    {
        let has = s.known.get(source);
        if has <= mine {
            continue;
        }
        if core.demoted.barred(source, sid, now) {
            core.demoted.hold(source, sid, has);
        } else if best.is_none_or(|(_, most)| has > most) {
            best = Some((sid, has));
        }
    }
    let (sid, has) = best?;
    let s = streams.get_mut(&sid)?;
    let origin = s.peer.is_some_and(|p| p.id == source);
    let mut parent = Parent::new(sid, has, origin);
    // It owes what it announced, not what the peer it replaces claimed:
    // a false claim would have it demoted in turn, and the role go back
    // to the peer that made the claim.
    if let Some(ts) = expect {
        parent.expect(ts.min(has), now, core.config.relay_timeout_millis);
    }
    core.parents.insert(source, parent);
    s.intents.insert(source, Some(mine));
    Some(sid)
}

/// Stream `id` announced `stamp`, which this replica lacks, at `now` (or
/// was offered the role for it when its bar ended): decides who owes it.
/// Returns whether `id` is to be asked for the source.
fn announced<T: Reduce>(core: &mut Core<T>, id: StreamId, stamp: Stamp, now: u64) -> bool {
    let timeout = core.config.relay_timeout_millis;
    if let Some(&origin) = core.neighbours.get(&stamp.source)
        && origin != id
        && !core.demoted.barred(stamp.source, origin, now)
    {
        // The source itself is a neighbour: it pushes its own updates,
        // so a relay pushing them too would only send duplicates. It
        // owes what was announced, though: a neighbour whose connection
        // died without a word would otherwise hold the source back.
        let parent =
            core.parents.entry(stamp.source).or_insert(Parent::new(origin, stamp.ts, true));
        if parent.stream != origin {
            core.unwants.push((parent.stream, stamp.source));
            *parent = Parent::new(origin, stamp.ts, true);
        }
        parent.expect(stamp.ts, now, timeout);
        return false;
    }
    match core.parents.get_mut(&stamp.source) {
        // Our parent announces instead of pushing: our Want is still on
        // its way, or it never had one (its push was a stray, sent before
        // an Unwant arrived). Ask again; a repeated Want is harmless.
        Some(parent) if parent.stream == id => {
            parent.has = parent.has.max(stamp.ts);
            parent.expect(stamp.ts, now, timeout);
            true
        }
        Some(parent) if parent.origin || parent.has >= stamp.ts => {
            parent.expect(stamp.ts, now, timeout);
            false
        }
        // It failed to deliver lately: it takes the role back by
        // delivering, or for this when its bar ends, if nobody else
        // delivers it first.
        _ if core.demoted.barred(stamp.source, id, now) => {
            core.demoted.hold(stamp.source, id, stamp.ts);
            false
        }
        Some(parent) => {
            core.unwants.push((parent.stream, stamp.source));
            *parent = Parent::new(id, stamp.ts, false);
            parent.expect(stamp.ts, now, timeout);
            true
        }
        None => {
            let mut parent = Parent::new(id, stamp.ts, false);
            parent.expect(stamp.ts, now, timeout);
            core.parents.insert(stamp.source, parent);
            true
        }
    }
}

impl Stream {
    /// The peer pushed `stamp` to us: it is (or becomes) the source's
    /// parent if the source has none, or if the peer is the source itself.
    pub(super) fn track_parent<T: Reduce>(&self, id: StreamId, core: &mut Core<T>, stamp: Stamp) {
        let origin = self.peer.is_some_and(|p| p.id == stamp.source);
        let parent = core.parents.entry(stamp.source).or_insert(Parent::new(id, stamp.ts, origin));
        if parent.stream == id {
            parent.has = parent.has.max(stamp.ts);
            if parent.due.is_some_and(|due| due.ts <= parent.has) {
                parent.due = None;
            }
        } else if origin && !parent.origin && !core.demoted.barred(stamp.source, id, core.wall) {
            // The origin pushes its own updates anyway: a relay that also
            // pushes them would deliver each one twice for good.
            core.unwants.push((parent.stream, stamp.source));
            *parent = Parent::new(id, stamp.ts, origin);
        }
    }

    /// The peer announced `stamp` (lazy relay): ask for the source from this
    /// peer unless its current parent is known to have it already, or this
    /// peer lately failed to deliver it.
    ///
    /// Whoever is asked owes the update within the relay timeout: if it
    /// has not delivered by then, another peer that announced it is asked
    /// instead ([`Replica::handle_timeout`]), so one announcement, true or
    /// false, delays a source by that much at most.
    pub(super) fn heard_of<T: Reduce>(
        &mut self,
        id: StreamId,
        core: &mut Core<T>,
        now: u64,
        stamp: Stamp,
    ) {
        if core.clock.has(stamp.source, stamp.ts) {
            return;
        }
        if !self.sync_frame {
            let deadline = now.saturating_add(core.config.relay_timeout_millis);
            let newest = self.heard.entry(stamp.source).or_insert((stamp.ts, deadline));
            newest.0 = newest.0.max(stamp.ts);
        }
        if announced(core, id, stamp, now) {
            self.intents.insert(stamp.source, Some(core.clock.get(stamp.source)));
        }
    }
}

impl<T: Reduce> Replica<T> {
    /// Lazy relay: the sources `gone` pushed to us are asked for from
    /// another peer known to have more, if any; otherwise the next Have for
    /// them picks a parent.
    pub(super) fn reparent(&mut self, gone: StreamId) {
        let Replica { core, streams, .. } = self;
        core.neighbours.retain(|_, stream| *stream != gone);
        core.demoted.forget(gone);
        let orphans: Vec<SourceId> =
            core.parents.iter().filter(|(_, p)| p.stream == gone).map(|(&s, _)| s).collect();
        let now = core.wall;
        for source in orphans {
            core.parents.remove(&source);
            adopt(core, streams, source, gone, None, now);
        }
        // What was refused of a source is kept only while we pull it: a
        // peer could otherwise grow it by every stream's worth of sources
        // it made us pull and then sent forged updates of.
        let parents = &core.parents;
        core.refused.retain(|source| parents.contains_key(&source));
    }

    /// Lazy relay's timers at `now`: a parent that owes an announced
    /// update past its deadline loses the role to another peer that
    /// announced more, and is barred for a while; a barred stream whose bar
    /// ended is offered the role for what it announced meanwhile, if that
    /// has not come; a sync waits no longer for announcements that are
    /// overdue.
    pub(super) fn relay_timeouts(&mut self, now: u64) {
        let Replica { core, streams, .. } = self;
        let timeout = core.config.relay_timeout_millis;
        let overdue: Vec<(SourceId, Parent)> = core
            .parents
            .iter()
            .filter(|(_, p)| p.due.is_some_and(|d| d.deadline <= now))
            .map(|(&s, &p)| (s, p))
            .collect();
        for (source, parent) in overdue {
            let Some(due) = parent.due else { continue };
            if core.clock.has(source, due.ts) {
                if let Some(p) = core.parents.get_mut(&source) {
                    p.due = None;
                }
                continue;
            }
            core.demoted.demote(source, parent.stream, due.ts, now, timeout);
            core.stats.relay_demotions += 1;
            if adopt(core, streams, source, parent.stream, Some(due.ts), now).is_some() {
                core.unwants.push((parent.stream, source));
                // What only the demoted stream is known to hold is asked of
                // it again when its bar ends, unless it has come by then:
                // slow is not lying, and nobody else may ever have it. (A
                // lie is thus asked of its teller once a bar until the
                // clock passes it.)
                let held =
                    streams.get(&parent.stream).map_or(Timestamp::ZERO, |s| s.known.get(source));
                let has = core.parents.get(&source).map_or(Timestamp::ZERO, |p| p.has);
                if held > has {
                    core.demoted.hold(source, parent.stream, held);
                }
            } else if let Some(p) = core.parents.get_mut(&source) {
                // Nobody else has it: stay, and wait for the next
                // announcement rather than spin.
                p.due = None;
            }
        }
        for (source, relayer, ts) in core.demoted.take_offers(now, forgotten(timeout)) {
            if core.clock.has(source, ts) {
                continue;
            }
            // Of the peer's streams that could serve it (a proven peer may
            // have two while it reconnects), the one known to hold the
            // most of the source, the newest on a tie: not the old one
            // that failed and may be dead. With none open the offer is
            // dropped: a stream it opens again announces afresh.
            let best = core
                .demoted
                .streams_of(relayer)
                .into_iter()
                .filter_map(|sid| {
                    let s = streams.get(&sid)?;
                    let serves = !s.ended && s.opts.receives && s.peer.is_some_and(|p| p.sends);
                    serves.then(|| (s.known.get(source), sid))
                })
                .max();
            let Some((_, sid)) = best else { continue };
            if announced(core, sid, Stamp { source, ts }, now)
                && let Some(s) = streams.get_mut(&sid)
            {
                s.intents.insert(source, Some(core.clock.get(source)));
            }
        }
        for sid in settle_waiting(core, streams, now) {
            self.close_if_done(sid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each failure in a row doubles the bar, up to `MAX_BAR_DOUBLINGS`
    /// doublings; only delivering what was owed, or newer, lifts it.
    #[test]
    fn a_bar_doubles_with_each_failure_until_the_stream_delivers() {
        let (o, s) = (SourceId::new("o").unwrap(), StreamId(1));
        let (timeout, mut now) = (1_000, 5_000);
        let mut demoted = Demotions::default();
        let mut bars = Vec::new();
        for owed in 1..=9 {
            demoted.demote(o, s, Timestamp::new(owed, 0), now, timeout);
            assert!(demoted.barred(o, s, now) && !demoted.barred(o, StreamId(2), now));
            let until = demoted.bars[&(o, Relayer::Stream(s))].until;
            assert!(demoted.barred(o, s, until - 1) && !demoted.barred(o, s, until));
            bars.push((until - now) / timeout);
            now = until;
        }
        assert_eq!(bars, [1, 2, 4, 8, 16, 32, 64, 64, 64]);
        assert_eq!(demoted.next_offer(), None, "nothing announced while barred");
        demoted.hold(o, s, Timestamp::new(20, 0));
        demoted.hold(o, s, Timestamp::new(15, 0));
        assert_eq!(demoted.next_offer(), Some(now));
        assert_eq!(demoted.take_offers(now - 1, forgotten(timeout)), []);
        let offer = (o, Relayer::Stream(s), Timestamp::new(20, 0));
        assert_eq!(demoted.take_offers(now, forgotten(timeout)), [offer]);
        assert_eq!(demoted.take_offers(now, forgotten(timeout)), [], "taken once");
        demoted.delivered(o, s, Timestamp::new(8, 0));
        assert!(demoted.bars.contains_key(&(o, Relayer::Stream(s))), "older than what it owed");
        demoted.delivered(o, s, Timestamp::new(9, 0));
        assert!(demoted.bars.is_empty(), "delivered what it owed");
        demoted.demote(o, s, Timestamp::new(30, 0), now, timeout);
        assert_eq!(demoted.bars[&(o, Relayer::Stream(s))].until - now, timeout, "counted afresh");
        demoted.forget(s);
        assert!(demoted.bars.is_empty());
    }

    /// A proven peer's bar outlasts its stream: its next stream meets it,
    /// and is offered what it announces under it; an unproven stream's
    /// goes with it. A gone peer's bar is dropped once its strikes would
    /// count afresh.
    #[test]
    fn a_proven_peers_bar_outlasts_its_stream() {
        let (o, p) = (SourceId::new("o").unwrap(), SourceId::new("p").unwrap());
        let (timeout, now) = (1_000, 5_000);
        let mut demoted = Demotions::default();
        demoted.prove(StreamId(1), p);
        demoted.demote(o, StreamId(1), Timestamp::new(1, 0), now, timeout);
        demoted.demote(o, StreamId(2), Timestamp::new(1, 0), now, timeout);
        demoted.forget(StreamId(1));
        demoted.forget(StreamId(2));
        demoted.prove(StreamId(3), p);
        assert!(demoted.barred(o, StreamId(3), now), "the proven peer's next stream");
        assert!(!demoted.barred(o, StreamId(4), now), "the unproven stream's bar went with it");
        demoted.demote(o, StreamId(3), Timestamp::new(2, 0), now + timeout, timeout);
        let until = demoted.bars[&(o, Relayer::Proven(p))].until;
        assert_eq!(until - (now + timeout), 2 * timeout, "a second strike, on another stream");
        demoted.hold(o, StreamId(3), Timestamp::new(3, 0));
        demoted.forget(StreamId(3));
        demoted.prove(StreamId(5), p);
        let offers = demoted.take_offers(until, forgotten(timeout));
        assert_eq!(offers, [(o, Relayer::Proven(p), Timestamp::new(3, 0))]);
        assert_eq!(demoted.streams_of(Relayer::Proven(p)), [StreamId(5)], "its open stream");
        demoted.forget(StreamId(5));
        assert!(demoted.bars.contains_key(&(o, Relayer::Proven(p))));
        let _ = demoted.take_offers(until + forgotten(timeout), forgotten(timeout));
        assert!(demoted.bars.contains_key(&(o, Relayer::Proven(p))), "may still count");
        let _ = demoted.take_offers(until + forgotten(timeout) + 1, forgotten(timeout));
        assert!(demoted.bars.is_empty(), "would count afresh: dropped");
    }
}
