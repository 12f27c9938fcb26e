//! A peer's frames taken in, one by one.

use super::{Flow, Peer, Stream};
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};

use crate::frame::{self, ClockSummary, Frame, Kind};
use crate::reconcile::Reconciliation;
use crate::replica::Core;
use crate::snapshot::{Incoming, Refused};
use crate::{
    ChannelBinding, Clock, CloseReason, Event, Outcome, PeerMisbehaved, Reduce, Rejection, Stamp,
    StreamId, Timestamp,
};

impl Stream {
    fn handle_frame<T: Reduce>(
        &mut self,
        id: StreamId,
        core: &mut Core<T>,
        now: u64,
        bytes: &[u8],
    ) -> Result<Flow, PeerMisbehaved> {
        // A Ranges frame's values take about twenty times its bytes once
        // decoded: one that says nothing this side asked about, or more
        // than it could answer, is not decoded at all.
        if bytes.first() == Some(&(Kind::Ranges as u8)) {
            if self.peer.is_none() {
                return Err(PeerMisbehaved::BeforeHello("Ranges".into()));
            }
            let Some(rec) = &self.reconcile else {
                self.stats.frames_received += 1;
                return Ok(Flow::Continue);
            };
            let count = postcard::take_from_bytes::<usize>(&bytes[1..]).map_or(0, |(n, _)| n);
            if count > rec.most_ranges_owed() {
                return Err(PeerMisbehaved::Malformed {
                    kind: "Ranges".into(),
                    detail: format!(
                        "{count} ranges where at most {} answer ours",
                        rec.most_ranges_owed()
                    ),
                });
            }
        }
        let frame = frame::decode::<T::Update>(bytes, &mut core.inbox)?;
        self.stats.frames_received += 1;
        let peer = match (&frame, self.peer) {
            (Frame::Hello(_), Some(_)) => return Err(PeerMisbehaved::DuplicateHello),
            (Frame::Hello(_), None) | (Frame::Close(_), _) => None,
            (other, None) => {
                core.inbox.clear();
                return Err(PeerMisbehaved::BeforeHello(frame_name(other).into()));
            }
            (_, Some(peer)) => Some(peer),
        };
        match frame {
            Frame::Hello(hello) => {
                let signer = match &hello.signature {
                    Some(signature) => Some(
                        signature
                            .verify_hello(
                                &hello.claims(self.opts.binding.map(ChannelBinding::other_end)),
                            )
                            .map_err(|reason| PeerMisbehaved::HelloSignature {
                                id: hello.id,
                                reason,
                            })?,
                    ),
                    None => None,
                };
                // What a strict replica believes only when signed: anyone
                // could claim another's id in a new life, and have it
                // refused as reincarnated; or a high floor, and have this
                // replica forget deletes, refuse old writes, or find
                // itself stale and rejoin, dropping its own writes below it.
                let strict = core.config.is_strict();
                let life_proven = !strict || signer == Some(hello.id);
                self.floor_vouched = !strict
                    || signer.is_some_and(|s| core.config.trust_snapshots_from.contains(&s));
                // Who the peer is, for asking a snapshot of its own writes
                // back and pushing them as their origin: its id's key, or a
                // trusted signer, vouches for it (a strict replica's view).
                let id_vouched = life_proven || self.floor_vouched;
                if hello.id != core.id && life_proven {
                    // Our own id in another life is our own log replayed
                    // (or a twin, which nothing here can tell apart).
                    match core.lives.get(&hello.id) {
                        Some(&life) if life != hello.life => {
                            return Err(PeerMisbehaved::Reincarnated { id: hello.id });
                        }
                        Some(_) => {}
                        None => {
                            crate::replica::insert_bounded(&mut core.lives, hello.id, hello.life);
                        }
                    }
                }
                // Its bars in lazy relay are kept for its id, across its
                // streams, when the id's key signed this stream's Hello.
                if signer == Some(hello.id)
                    && self.opts.binding.is_some()
                    && self.opts.authenticated_peer.is_none()
                {
                    core.demoted.prove(id, hello.id);
                }
                let peer = Peer { id: hello.id, sends: hello.sends, receives: hello.receives };
                self.peer = Some(peer);
                // Wherever the stream is (one not awaiting the clock has
                // started already), and only from a peer holding more of
                // its writes than it got back so far: one without would
                // send a whole state for nothing, on every stream for as
                // long as the peer asks. A snapshot already going out, or
                // sent, holds all the peer asks for.
                self.peer_wants_snapshot = id_vouched
                    && hello.missing_own.is_some_and(|after| {
                        core.clock.get(hello.id) > after && !core.declines(hello.id, after, now)
                    })
                    && self.snapshot_out.is_none()
                    && self.stats.snapshots_sent == 0;
                self.peer_missing = hello.missing_own.filter(|_| id_vouched);
                if let Some(flow) = self.compare_floors(id, core, now, &hello)? {
                    return Ok(flow);
                }
                if hello.sends && self.opts.receives && id_vouched {
                    core.neighbours.insert(hello.id, id);
                }
                let equal = hello.clock.hash() == self.hello.hash();
                // Whoever sent a digest owes its clock when they differ;
                // both sides reach the same verdict from the same two
                // digests. To a peer that sent its whole clock, only the
                // part about its sources is owed: of the others it has
                // nothing to send.
                // Two digests that differ: the clocks are found out range by
                // range (see `reconcile`), the smaller id asking first.
                if !equal && self.hello_clock.is_some() {
                    match &hello.clock {
                        // As of our Hello, not of the moment it is sent:
                        // the peer takes what the Clock frame shows as held
                        // (`peer_heard`), and a write of ours made since
                        // may not have reached it yet.
                        ClockSummary::Full(clock) => {
                            let mine = self.hello_clock.as_ref();
                            self.owe_clock = Some(
                                clock
                                    .iter()
                                    .map(|(s, _)| (s, mine.map_or(Timestamp::ZERO, |m| m.get(s))))
                                    .collect(),
                            );
                        }
                        &ClockSummary::Digest { sources, .. } => {
                            let mine = self.hello_clock.take().unwrap_or_default();
                            let limit = core.config.max_unknown_sources;
                            let mut rec = Reconciliation::new(mine, sources, limit);
                            if (core.id, core.life) < (hello.id, hello.life) {
                                self.ranges_out.extend(rec.start());
                            }
                            self.reconcile = Some(rec);
                        }
                    }
                }
                let peer_clock = match hello.clock {
                    ClockSummary::Full(clock) => Some(clock),
                    ClockSummary::Digest { .. } if equal => {
                        Some(self.hello_clock.take().unwrap_or_else(|| match &self.hello {
                            ClockSummary::Full(clock) => clock.clone(),
                            ClockSummary::Digest { .. } => Clock::new(),
                        }))
                    }
                    ClockSummary::Digest { .. } => None,
                };
                self.hello_clock = None;
                core.emit(Event::Header {
                    stream: id,
                    id: hello.id,
                    clock: peer_clock.clone().unwrap_or_default(),
                    meta: hello.meta,
                });
                // Without it, history waits for the peer's Clock frame.
                if let Some(clock) = peer_clock {
                    self.peer_clock(core, &clock);
                }
                if !peer.sends {
                    self.mark_sync(id, core, false);
                }
            }
            Frame::Clock(clock) => self.peer_clock(core, &clock),
            Frame::Ranges(ranges) => {
                // Only while reconciling: otherwise the ranges say nothing
                // this side asked about.
                if let Some(rec) = &mut self.reconcile {
                    let answer = rec.handle(ranges).map_err(|detail| {
                        PeerMisbehaved::Malformed { kind: "Ranges".into(), detail: detail.into() }
                    })?;
                    self.ranges_out.extend(answer);
                    if rec.is_done() {
                        let theirs = self.reconcile.take().map(Reconciliation::into_theirs);
                        self.peer_clock(core, &theirs.unwrap_or_default());
                    }
                }
            }
            Frame::Updates => {
                let mut inbox = std::mem::take(&mut core.inbox);
                self.stats.updates_received += inbox.len() as u64;
                if self.opts.receives {
                    let track = core.config.lazy_relay || core.lazy_peers;
                    let mut last: Option<Stamp> = None;
                    let mut sources = std::mem::take(&mut core.sources);
                    sources.begin(inbox.len());
                    // The user's `Clone`, `stamp` and `unstamp` (and
                    // `Serialize`, for a signed update) run on each update
                    // staged, after its clock entry moved: should one panic
                    // (and the replica be used after the panic is caught),
                    // nothing of this frame stays staged or claimed, and the
                    // peer sends it again. Caught once a frame, as the
                    // reduces are (`Core::apply_staged`), not per update.
                    let shown = self.shown;
                    let staging = catch_unwind(AssertUnwindSafe(|| {
                        for (index, envelope) in inbox.iter_mut().enumerate() {
                            let stamp = envelope.stamp();
                            let staged = self.take_update(core, &mut sources, now, index, envelope);
                            if staged.is_ok() {
                                // New here: what a demoted peer delivers
                                // may lift its bar (an update we had, which
                                // anyone can echo unverified, does not).
                                core.demoted.delivered(stamp.source, id, stamp.ts);
                            }
                            if !matches!(staged, Err(Outcome::Rejected(_))) {
                                self.shown = self.shown.max(stamp.ts);
                            }
                            match staged {
                                // What we pull but cannot verify will not come
                                // from anyone: a sync waits for it no more.
                                Err(Outcome::Rejected(Rejection::Unverified(_)))
                                    if core.parents.contains_key(&stamp.source) =>
                                {
                                    core.refused.observe(stamp.source, stamp.ts);
                                }
                                // A refused update says nothing of what the
                                // peer will deliver, so it picks no parent.
                                Err(Outcome::Rejected(_)) => {}
                                _ if track => {
                                    if let Some(prev) = last
                                        && prev.source != stamp.source
                                    {
                                        self.track_parent(id, core, prev);
                                    }
                                    last = Some(stamp);
                                }
                                _ => {}
                            }
                        }
                    }));
                    if let Err(panic) = staging {
                        self.shown = shown;
                        core.unstage(&inbox);
                        inbox.clear();
                        core.inbox = inbox;
                        // Not written back: the table holds the raise of the
                        // update whose staging panicked.
                        core.sources = sources;
                        resume_unwind(panic);
                    }
                    sources.write_back(&mut core.clock, &mut self.known);
                    core.sources = sources;
                    core.inbox = inbox;
                    // The frame's reduces back to back (see `Core::stage`).
                    // Those after a reduce that panics are set back (their
                    // clock entries too), so they count as not shown.
                    let applied = catch_unwind(AssertUnwindSafe(|| core.apply_staged()));
                    if let Err(panic) = applied {
                        self.shown = shown;
                        resume_unwind(panic);
                    }
                    if let Some(prev) = last {
                        self.track_parent(id, core, prev);
                    }
                } else {
                    inbox.clear();
                    core.inbox = inbox;
                }
            }
            // A peer that said it sends nothing would never serve a Want.
            Frame::Have(stamps) if self.opts.receives && peer.is_some_and(|p| p.sends) => {
                core.lazy_peers = true;
                self.vet_claims(core, stamps.iter().map(|s| s.source))?;
                for stamp in stamps {
                    // What we would refuse is not worth a parent, and must
                    // not block honest announcements (a forged future ts
                    // would outbid them all).
                    if core.check(now, stamp.source, stamp.ts).is_ok() {
                        self.shown = self.shown.max(stamp.ts);
                        self.note_known(core, stamp.source, stamp.ts);
                        self.heard_of(id, core, now, stamp);
                    }
                }
            }
            Frame::Have(_) => {}
            Frame::Want(stamps) => {
                if self.sends_updates() {
                    for stamp in stamps {
                        // Honest peers want only what we announced, so a
                        // source we never saw is bogus: remembering it
                        // would let a peer grow this stream without bound.
                        if core.clock.get(stamp.source) > Timestamp::ZERO {
                            self.known.observe(stamp.source, stamp.ts);
                            self.eager.insert(stamp.source);
                            self.backfill.insert(stamp.source);
                        }
                    }
                }
            }
            Frame::Unwant(sources) => {
                for source in sources {
                    self.eager.remove(&source);
                    self.backfill.remove(&source);
                }
            }
            Frame::SnapshotBegin { sources, clock, digest, proof, entries, floor }
                if self.opts.receives =>
            {
                if self.snapshot_in.is_some() {
                    return Err(PeerMisbehaved::Malformed {
                        kind: "SnapshotBegin".into(),
                        detail: "a snapshot begun before the last one ended".into(),
                    });
                }
                // The floor the snapshot's state is collected at: the
                // sender's may have risen since its Hello (it took ours).
                if let Some(floor) = floor.filter(|&f| f > self.peer_floor) {
                    core.check_skew(now, floor).map_err(|e| PeerMisbehaved::Malformed {
                        kind: "SnapshotBegin".into(),
                        detail: format!("collection floor: {e}"),
                    })?;
                    // A begin's floor is signed by no one: a strict replica
                    // takes only the one its peer's Hello was signed with.
                    // Declined, not stale: the peer's next Hello says its
                    // floor now.
                    if core.config.is_strict() {
                        return self.refuse_snapshot(id, core, peer, Refused::Outdated(floor));
                    }
                    self.peer_floor = floor;
                }
                let incoming =
                    match Incoming::begin(core, sources, clock, digest, proof.as_ref(), entries) {
                        Ok(incoming) => incoming,
                        Err(refused) => return self.refuse_snapshot(id, core, peer, refused),
                    };
                // A strict replica took it for its trusted signer; but the
                // floor it was collected at is the sender's word.
                if !self.floor_vouched
                    && let Some(signer) = incoming.signer()
                {
                    let refusal = crate::SnapshotRefusal::UnprovenSender { signer };
                    return self.refuse_snapshot(id, core, peer, Refused::Untrusted(refusal));
                }
                if let Some(refused) = self.vet_floor(id, core) {
                    return self.refuse_snapshot(id, core, peer, refused);
                }
                core.receiving.insert(id, self.peer_floor);
                self.snapshot_in = Some(incoming);
                self.snapshot_heard = now;
                self.snapshot_begun = now;
                self.snapshot_bytes = 0;
                self.snapshot_floor = Some(self.peer_floor).filter(|&f| f > core.floor);
            }
            Frame::SnapshotClock(entries) if self.opts.receives => {
                let Some(incoming) = &mut self.snapshot_in else {
                    return Err(PeerMisbehaved::Malformed {
                        kind: "SnapshotClock".into(),
                        detail: "a snapshot clock before its begin".into(),
                    });
                };
                let skew = core.config.max_skew_millis;
                if let Err(refused) = incoming.clock_chunk(now, skew, entries) {
                    return self.refuse_snapshot(id, core, peer, refused);
                }
            }
            Frame::SnapshotPart { index, state, bytes, digest, proof } if self.opts.receives => {
                let Some(incoming) = &mut self.snapshot_in else {
                    return Err(PeerMisbehaved::Malformed {
                        kind: "SnapshotPart".into(),
                        detail: "a snapshot part before its begin".into(),
                    });
                };
                if let Err(refused) = incoming.part(index, &digest, proof.as_ref()) {
                    return self.refuse_snapshot(id, core, peer, refused);
                }
                let hint = incoming.take_size_hint();
                // The part is counted: should the user's `reserve` or
                // `reduce` panic on it (and the replica be used after the
                // panic is caught), the snapshot goes with it, or its end
                // would give the clock it stands for to a state that lacks
                // the part. Its next frame is then out of place, which
                // ends the stream.
                let incoming = self.snapshot_in.take();
                // Room for the whole state once, with the first part taken
                // (its clock checked), rather than doubling on the way.
                if let Some(entries) = hint {
                    core.state.reserve(entries.min(core.config.max_snapshot_reserve));
                }
                let floor = core.receiving.get(&id).copied().unwrap_or(core.floor);
                core.receive_part(peer.map_or(core.id, |p| p.id), floor, state, bytes);
                self.snapshot_in = incoming;
            }
            Frame::SnapshotEnd { parts, proof } if self.opts.receives => {
                let Some(incoming) = self.snapshot_in.take() else {
                    return Err(PeerMisbehaved::Malformed {
                        kind: "SnapshotEnd".into(),
                        detail: "a snapshot end before its begin".into(),
                    });
                };
                core.receiving.remove(&id);
                match incoming.end(parts, proof.as_ref()) {
                    Ok(clock) => {
                        core.finish_snapshot(peer.map_or(core.id, |p| p.id), &clock);
                        self.snapshots_taken += 1;
                        self.shown = self.shown.max(clock.max());
                        self.known.merge(&clock);
                        // The peer held all its snapshot stands for: a
                        // floor waiting for the Sync is judged against
                        // that too, or writes that reached it after its
                        // Hello, which the snapshot brought, would count
                        // as news of ours below its floor (stale).
                        if let Some(held) = &mut self.floor_clock {
                            held.merge(&clock);
                        }
                        // Taken from above our floor (we held nothing it
                        // could have forgotten, see `vet_floor`): its floor
                        // is ours now, or we would take writes below it
                        // that its state no longer holds the deletes of,
                        // and wait for ever to send the peer a snapshot.
                        if let Some(floor) = self.snapshot_floor.take().filter(|&f| f > core.floor)
                            && let Some(flow) = self.take_floor(id, core, &clock, floor)
                        {
                            return Ok(flow);
                        }
                    }
                    Err(refused) => return self.refuse_snapshot(id, core, peer, refused),
                }
            }
            // A stream that takes nothing ignores snapshots, as updates.
            Frame::SnapshotBegin { .. }
            | Frame::SnapshotClock(_)
            | Frame::SnapshotPart { .. }
            | Frame::SnapshotEnd { .. } => {}
            Frame::Sync => {
                if self.sync_frame || self.sync_received {
                    if self.opts.receives && peer.is_some_and(|p| p.sends) {
                        return Err(PeerMisbehaved::DuplicateSync);
                    }
                } else {
                    self.sync_frame = true;
                    self.settle(id, core, now);
                }
            }
            Frame::Advance(stamps) => {
                if self.opts.receives {
                    let track = core.config.lazy_relay || core.lazy_peers;
                    self.vet_claims(core, stamps.iter().map(|s| s.source))?;
                    for stamp in stamps {
                        let new_source = stamp.source.is_valid()
                            && core.clock.get(stamp.source) == Timestamp::ZERO;
                        let outcome = core.advance(now, stamp);
                        let rejected = matches!(outcome, Outcome::Rejected(_));
                        if !rejected {
                            self.shown = self.shown.max(stamp.ts);
                        }
                        if new_source && !rejected {
                            // A source only an advance vouches for: it stays
                            // in our clock, so it counts for good.
                            self.introduced += 1;
                        }
                        self.note_known(core, stamp.source, stamp.ts);
                        if track && !rejected {
                            if matches!(outcome, Outcome::Applied | Outcome::Unchanged) {
                                core.demoted.delivered(stamp.source, id, stamp.ts);
                            }
                            self.track_parent(id, core, stamp);
                        }
                    }
                }
            }
            Frame::Proofs(proofs) => {
                if self.opts.receives {
                    let track = core.config.lazy_relay || core.lazy_peers;
                    for proof in proofs {
                        let stamp = proof.stamp;
                        let outcome = core.prove(now, proof);
                        let rejected = matches!(outcome, Outcome::Rejected(_));
                        if !rejected {
                            self.shown = self.shown.max(stamp.ts);
                        }
                        if rejected && core.parents.contains_key(&stamp.source) {
                            core.refused.observe(stamp.source, stamp.ts);
                        }
                        self.note_known(core, stamp.source, stamp.ts);
                        if track && !rejected {
                            if matches!(outcome, Outcome::Applied | Outcome::Unchanged) {
                                core.demoted.delivered(stamp.source, id, stamp.ts);
                            }
                            self.track_parent(id, core, stamp);
                        }
                    }
                }
            }
            Frame::Close(reason) => {
                if let CloseReason::SnapshotRefused(
                    crate::SnapshotRefusal::Unsigned | crate::SnapshotRefusal::Untrusted(_),
                ) = &reason
                    && let (Some(peer), Some(after)) = (self.peer, self.peer_missing)
                    && (self.snapshot_out.is_some() || self.stats.snapshots_sent > 0)
                {
                    core.decline(peer.id, after, now);
                }
                return Ok(Flow::Closed(reason));
            }
        }
        Ok(Flow::Continue)
    }
}

fn frame_name<U>(frame: &Frame<U>) -> &'static str {
    match frame {
        Frame::Hello(_) => "Hello",
        Frame::Updates => "Updates",
        Frame::SnapshotBegin { .. } => "SnapshotBegin",
        Frame::SnapshotClock(_) => "SnapshotClock",
        Frame::Ranges(_) => "Ranges",
        Frame::SnapshotPart { .. } => "SnapshotPart",
        Frame::SnapshotEnd { .. } => "SnapshotEnd",
        Frame::Sync => "Sync",
        Frame::Close(_) => "Close",
        Frame::Advance(_) => "Advance",
        Frame::Clock(_) => "Clock",
        Frame::Have(_) => "Have",
        Frame::Want(_) => "Want",
        Frame::Unwant(_) => "Unwant",
        Frame::Proofs(_) => "Proofs",
    }
}

/// Splits `data` into frames and handles each, stopping at the first error
/// or Close. Returns how many bytes were consumed.
pub(super) fn handle_frames<T: Reduce>(
    stream: &mut Stream,
    id: StreamId,
    core: &mut Core<T>,
    now: u64,
    data: &[u8],
) -> (usize, Result<Flow, PeerMisbehaved>) {
    let mut at = 0;
    while data.len() - at >= 4 {
        let mut prefix = [0u8; 4];
        prefix.copy_from_slice(&data[at..at + 4]);
        let len = u32::from_le_bytes(prefix) as usize;
        if len > core.config.max_frame {
            let limit = core.config.max_frame as u64;
            return (at, Err(PeerMisbehaved::FrameTooLarge { len: len as u64, limit }));
        }
        if len == 0 {
            return (at, Err(PeerMisbehaved::EmptyFrame));
        }
        if data.len() - at - 4 < len {
            break;
        }
        let body = &data[at + 4..at + 4 + len];
        at += 4 + len;
        match stream.handle_frame(id, core, now, body) {
            Ok(Flow::Continue) => {}
            other => return (at, other),
        }
    }
    (at, Ok(Flow::Continue))
}
