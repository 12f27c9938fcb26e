//! What a stream writes: history, batches, a snapshot or the ranges of
//! a clock's reconciliation, and the claims gathered on the way.

use super::{SessionError, Stream};
use std::collections::BTreeMap;

use crate::frame::{self, Hello, Kind, Writer};
use crate::history::Entry;
use crate::reconcile::Range;
use crate::replica::Core;
use crate::snapshot::Outgoing;
use crate::{Proof, Reduce, SourceId, Stamp, StreamId, Timestamp};

impl Stream {
    /// Appends this stream's next frames to `out`; returns how many bytes.
    pub(super) fn transmit<T: Reduce>(
        &mut self,
        id: StreamId,
        core: &mut Core<T>,
        out: &mut Vec<u8>,
    ) -> Result<usize, SessionError> {
        let before = out.len();
        if !self.hello_sent {
            let mut hello = Hello {
                id: core.id,
                clock: self.hello.clone(),
                meta: self.opts.meta.clone(),
                sends: self.opts.sends,
                receives: self.opts.receives,
                life: core.life,
                // The floor of the moment the stream opened, unless the
                // clock is still the one the Hello summarises: a floor
                // taken since (from a peer whose clock ours covers, say)
                // holds for that clock too, and a lower one would have
                // the peer refuse our snapshot as from below its floor.
                floor: if core.clock.digest() == self.hello.hash() {
                    core.floor
                } else {
                    self.hello_floor
                },
                // A stream that takes nothing would ignore the snapshot;
                // and while our clock claims none of our own writes, the
                // peer's history brings back what it has of them.
                // Nor does one that takes no snapshot at all.
                missing_own: (self.opts.receives
                    && core.own_missing > Timestamp::ZERO
                    && core.clock.get(core.id) > Timestamp::ZERO
                    && (!core.config.is_strict() || !core.config.trust_snapshots_from.is_empty()))
                .then_some(core.own_held),
                signature: None,
            };
            // What a strict peer believes of us only when signed.
            hello.signature = core
                .snapshot_signer
                .as_ref()
                .map(|i| i.sign_hello(&hello.claims(self.opts.binding)));
            frame::write_hello(out, &hello)?;
            self.hello_sent = true;
            self.stats.frames_sent += 1;
        }
        if let Some(part) = self.owe_clock.take().filter(|_| !self.ended) {
            let mut w = Writer::begin(out, Kind::Clock);
            w.put(&part)?;
            w.finish();
            self.stats.frames_sent += 1;
        }
        if !self.ranges_out.is_empty() && !self.ended {
            self.send_ranges(core, out)?;
        }
        if let Some(reason) = self.close_out.take() {
            let mut w = Writer::begin(out, Kind::Close);
            w.put(&reason)?;
            w.finish();
            self.stats.frames_sent += 1;
            self.count_sent(out.len() - before);
            return Ok(out.len() - before);
        }
        if self.ended {
            self.count_sent(out.len() - before);
            return Ok(out.len() - before);
        }
        if !self.intents.is_empty() {
            let intents = std::mem::take(&mut self.intents);
            let wants: Vec<Stamp> = intents
                .iter()
                .filter_map(|(&source, ts)| Some(Stamp { source, ts: (*ts)? }))
                .collect();
            let unwants: Vec<SourceId> =
                intents.iter().filter(|(_, ts)| ts.is_none()).map(|(&s, _)| s).collect();
            for (kind, empty) in
                [(Kind::Want, wants.is_empty()), (Kind::Unwant, unwants.is_empty())]
            {
                if empty {
                    continue;
                }
                let mut w = Writer::begin(out, kind);
                if kind == Kind::Want {
                    w.put(&wants)?;
                } else {
                    w.put(&unwants)?;
                }
                w.finish();
                self.stats.frames_sent += 1;
            }
        }
        if self.started && self.sends_updates() {
            self.send_backfill(core, out)?;
            self.send_snapshot(core, out)?;
            self.send_batch(core, out)?;
            if !self.done {
                self.finish_if_synced(core);
            }
        }
        // The sync follows the history, and a snapshot in parts, complete.
        let snapshot_done = self.snapshot_out.is_none() && !self.owes_snapshot(core);
        // To a peer that takes nothing, there is no history to send first.
        let sent = self.cursor >= self.sync_at || !self.sends_updates();
        if self.started && !self.sync_sent && sent && snapshot_done {
            Writer::begin(out, Kind::Sync).finish();
            self.stats.frames_sent += 1;
            self.mark_sync(id, core, true);
        }
        self.count_sent(out.len() - before);
        Ok(out.len() - before)
    }

    /// The reconciliation's ranges, a frame per batch's worth.
    fn send_ranges<T: Reduce>(
        &mut self,
        core: &Core<T>,
        out: &mut Vec<u8>,
    ) -> Result<(), SessionError> {
        let ranges = std::mem::take(&mut self.ranges_out);
        let mut chunk: Vec<&Range> = Vec::new();
        let mut size = 0;
        for (i, range) in ranges.iter().enumerate() {
            size += match range {
                Range::Items { items, .. } => 8 + 26 * items.len(),
                _ => 30,
            };
            chunk.push(range);
            if size >= core.config.batch_bytes || i + 1 == ranges.len() {
                let mut w = Writer::begin(out, Kind::Ranges);
                if let Err(e) = w.put(&chunk) {
                    w.abandon();
                    return Err(e.into());
                }
                w.finish();
                self.stats.frames_sent += 1;
                chunk.clear();
                size = 0;
            }
        }
        Ok(())
    }

    fn count_sent(&mut self, bytes: usize) {
        self.stats.bytes_sent += bytes as u64;
    }

    /// Whether the peer lacks nothing that fell off the history. On a lazy
    /// stream, what was announced and not wanted does not count: the peer
    /// pulls it elsewhere, and a later Want for it that finds it gone gets
    /// a snapshot then (see `send_backfill`). Otherwise every eviction would
    /// cost each lazy peer a whole snapshot.
    fn covers_horizon<T: Reduce>(&self, core: &Core<T>) -> bool {
        let horizon = core.history.horizon();
        if !self.lazy(core) {
            return self.known.covers(horizon);
        }
        horizon.iter().all(|(source, ts)| {
            self.known.has(source, ts)
                || (!self.pushes(source, core.id) && self.announced.has(source, ts))
        })
    }

    /// Begins a snapshot when the peer lacks what fell off the history,
    /// and sends its next parts (about a batch's worth a call, so the
    /// other streams of a connection get their turn in between). The
    /// history after it waits until it ends (see `send_batch`).
    fn send_snapshot<T: Reduce>(
        &mut self,
        core: &Core<T>,
        out: &mut Vec<u8>,
    ) -> Result<(), SessionError> {
        let history = &core.history;
        // While a snapshot goes out, what falls off the history is judged
        // once it ends: the snapshot holds all that came before its start,
        // which the peer is not known to hold until then (judged now, the
        // eviction of any such record, as every write of a full history
        // evicts one, called for another snapshot after it).
        if self.snapshot_out.is_none() {
            self.check_horizon(core);
        }
        if self.snapshot_out.is_none() {
            // A snapshot holds every record, so it waits for all of them to
            // be released; and one to a peer with a higher floor waits for
            // ours to rise (it would be refused: see `compare_floors`). A
            // poisoned state holds what no record accounts for: none goes
            // out until a rejoin (see `Replica::poison`).
            if !self.owes_snapshot(core)
                || core.sendable_end() < history.end_seq()
                || self.peer_floor > core.floor
                || core.poisoned
            {
                return Ok(());
            }
            self.snapshot_out = Some(Outgoing::begin(core, out)?);
            self.stats.frames_sent += 1;
            self.need_snapshot = false;
            self.peer_wants_snapshot = false;
            self.catching_up = true;
            // The snapshot holds everything recorded so far; history goes
            // on from here, once it ends (kept meanwhile: see
            // `Replica::keep_for_snapshots`).
            self.cursor = history.end_seq();
        }
        let Some(snapshot) = &mut self.snapshot_out else { return Ok(()) };
        let before = snapshot.frames();
        let done = snapshot.write(core, out, core.config.batch_bytes)?;
        self.stats.frames_sent += snapshot.frames() - before;
        if before == 0 {
            // Begun. The time is the last known, maybe old: the first look
            // takes the time anew whatever it finds (see
            // `Replica::end_unread_snapshots`).
            self.snapshot_out_seen = (u64::MAX, core.wall);
        }
        if let Some(clock) = done {
            self.stats.frames_sent += 1;
            self.stats.snapshots_sent += 1;
            self.known.merge(&clock);
            self.snapshot_out = None;
            self.check_horizon(core);
        }
        Ok(())
    }

    /// Whether what fell off the history since the last look is held by
    /// the peer; if not, a snapshot is owed. Moves the cursor past what
    /// fell off.
    fn check_horizon<T: Reduce>(&mut self, core: &Core<T>) {
        let history = &core.history;
        let lagged = self.cursor < history.first_seq();
        if lagged || self.horizon_generation != history.horizon_generation() {
            self.horizon_generation = history.horizon_generation();
            self.cursor = self.cursor.max(history.first_seq());
            if !self.covers_horizon(core) {
                self.need_snapshot = true;
            }
        }
    }

    fn send_batch<T: Reduce>(
        &mut self,
        core: &Core<T>,
        out: &mut Vec<u8>,
    ) -> Result<(), SessionError> {
        let history = &core.history;
        let end = core.sendable_end();
        // A snapshot still owed (held back until released) comes first: the
        // records after a gap would be of no use before it. So does one
        // being sent: a record of a source now would claim to the peer
        // every older one of that source (its clock moves to it), some of
        // which may be in parts still to come; a stream cut then would
        // leave the peer claiming what it never got.
        if self.cursor >= end || self.owes_snapshot(core) || self.snapshot_out.is_some() {
            return Ok(());
        }
        let lazy = self.lazy(core);
        let mut w = Writer::begin(out, Kind::Updates);
        let mut count = 0u64;
        // Advances and proofs go after the updates they follow, in frames of
        // their own.
        let mut claims = Claims::default();
        // Lazy relay: the newest record per source announced, not sent.
        let mut haves: BTreeMap<SourceId, Timestamp> = BTreeMap::new();
        while self.cursor < end && w.body_len() < core.config.batch_bytes {
            let Some(record) = history.get(self.cursor) else { break };
            if lazy
                && let Some(stamp) = record.stamp()
                && stamp.source.is_valid()
                && !self.known.has(stamp.source, stamp.ts)
                && !self.pushes(stamp.source, core.id)
            {
                let newest = haves.entry(stamp.source).or_insert(stamp.ts);
                *newest = (*newest).max(stamp.ts);
                self.cursor += 1;
                continue;
            }
            match record {
                // An unsigned update that changed nothing here goes to an
                // eager peer as a clock advance: the records before it,
                // which made it redundant, went first on this stream (or
                // the peer had them; what a merged snapshot brought, the
                // peer has too, or the horizon it raised sends it a
                // snapshot). A lazy stream holds some of those back, so it
                // sends the update whole.
                Entry::Unchanged(e)
                    if !lazy && e.signature.is_none() && !self.known.has(e.source, e.ts) =>
                {
                    self.known.observe(e.source, e.ts);
                    claims.advances.push(e.stamp());
                }
                // Sent unless the peer has it; one clock lookup for both.
                Entry::Change(e) | Entry::Unchanged(e) | Entry::Relayed { envelope: e, .. } => {
                    match self.known.observe_if(e.source, e.ts, || w.put(e)) {
                        Ok(sent) => count += u64::from(sent),
                        Err(err) => {
                            w.abandon();
                            return Err(err.into());
                        }
                    }
                }
                Entry::Advance(stamp) if !self.known.has(stamp.source, stamp.ts) => {
                    self.known.observe(stamp.source, stamp.ts);
                    claims.advances.push(*stamp);
                }
                Entry::Proven(proof) if !self.known.has(proof.stamp.source, proof.stamp.ts) => {
                    self.known.observe(proof.stamp.source, proof.stamp.ts);
                    claims.proofs.push(proof);
                }
                _ => {}
            }
            self.cursor += 1;
        }
        if count == 0 {
            w.abandon();
        } else {
            w.finish();
            self.stats.frames_sent += 1;
            self.stats.updates_sent += count;
        }
        self.stats.frames_sent += claims.write(out)?;
        if !haves.is_empty() {
            for (&source, &ts) in &haves {
                self.announced.observe(source, ts);
            }
            let haves: Vec<Stamp> =
                haves.into_iter().map(|(source, ts)| Stamp { source, ts }).collect();
            let mut w = Writer::begin(out, Kind::Have);
            w.put(&haves)?;
            w.finish();
            self.stats.frames_sent += 1;
        }
        Ok(())
    }

    /// Lazy relay: the records of newly wanted sources that the cursor
    /// already passed, in log order (so per source in timestamp order), before
    /// anything newer; a snapshot when some of them are gone.
    fn send_backfill<T: Reduce>(
        &mut self,
        core: &Core<T>,
        out: &mut Vec<u8>,
    ) -> Result<(), SessionError> {
        if self.backfill.is_empty() {
            return Ok(());
        }
        let sources = std::mem::take(&mut self.backfill);
        let history = &core.history;
        if sources.iter().any(|&s| history.horizon().get(s) > self.known.get(s)) {
            // Some are gone: the snapshot (sent next) holds them all.
            self.need_snapshot = true;
            return Ok(());
        }
        let mut w = Writer::begin(out, Kind::Updates);
        let mut count = 0u64;
        // Advances and proofs wait in `claims` until an update follows them
        // (then they go first, keeping per-source order) or the end.
        let mut claims = Claims::default();
        for seq in history.first_seq()..self.cursor.min(history.end_seq()) {
            let Some(record) = history.get(seq) else { continue };
            let Some(stamp) = record.stamp() else { continue };
            if !sources.contains(&stamp.source) || self.known.has(stamp.source, stamp.ts) {
                continue;
            }
            match record {
                Entry::Change(e) | Entry::Unchanged(e) | Entry::Relayed { envelope: e, .. } => {
                    if !claims.is_empty() {
                        if count > 0 {
                            w.finish();
                            self.stats.frames_sent += 1;
                        } else {
                            w.abandon();
                        }
                        self.stats.frames_sent += claims.write(out)?;
                        w = Writer::begin(out, Kind::Updates);
                        count = 0;
                    }
                    if let Err(err) = w.put(e) {
                        w.abandon();
                        return Err(err.into());
                    }
                    count += 1;
                    self.stats.updates_sent += 1;
                    if w.body_len() >= core.config.batch_bytes {
                        w.finish();
                        self.stats.frames_sent += 1;
                        w = Writer::begin(out, Kind::Updates);
                        count = 0;
                    }
                }
                Entry::Advance(_) | Entry::Proven(_) => {
                    if count > 0 {
                        w.finish();
                        self.stats.frames_sent += 1;
                        w = Writer::begin(out, Kind::Updates);
                        count = 0;
                    }
                    match record {
                        Entry::Proven(proof) => claims.proofs.push(proof),
                        _ => claims.advances.push(stamp),
                    }
                }
                Entry::Merge { .. }
                | Entry::Covered { .. }
                | Entry::Collected { .. }
                | Entry::Receiving { .. } => continue,
            }
            self.known.observe(stamp.source, stamp.ts);
        }
        if count > 0 {
            w.finish();
            self.stats.frames_sent += 1;
        } else {
            w.abandon();
        }
        self.stats.frames_sent += claims.write(out)?;
        Ok(())
    }
}

/// Clock advances and proofs gathered for their own frames.
#[derive(Default)]
pub(super) struct Claims<'a> {
    advances: Vec<Stamp>,
    proofs: Vec<&'a Proof>,
}

impl Claims<'_> {
    fn is_empty(&self) -> bool {
        self.advances.is_empty() && self.proofs.is_empty()
    }

    /// Writes what was gathered (advances first) and empties it; returns
    /// the number of frames written.
    fn write(&mut self, out: &mut Vec<u8>) -> Result<u64, SessionError> {
        let mut frames = 0;
        if !self.advances.is_empty() {
            let mut w = Writer::begin(out, Kind::Advance);
            w.put(&self.advances)?;
            w.finish();
            self.advances.clear();
            frames += 1;
        }
        if !self.proofs.is_empty() {
            let mut w = Writer::begin(out, Kind::Proofs);
            w.put(&self.proofs)?;
            w.finish();
            self.proofs.clear();
            frames += 1;
        }
        Ok(frames)
    }
}
