//! Deadlines of the snapshots a stream carries: one coming in is refused
//! once its sender goes quiet or trickles it in below the minimum rate,
//! and one going out ends the stream once its peer takes none of it for
//! as long. Either holds back collection (and one coming in, snapshots
//! from other floors) while it lasts, so neither may last for ever.

use super::{Flow, Replica, Stream};

use crate::snapshot::Refused;
use crate::{CloseReason, EndReason, PeerMisbehaved, Reduce, StreamId};

impl Stream {
    /// When the snapshot coming in on this stream, if any, is refused: as
    /// stalled (`stall` ms after its last bytes), or as too slow (behind
    /// `rate` bytes per second once `stall` ms passed since it began).
    pub(super) fn snapshot_deadline(&self, stall: u64, rate: u64) -> Option<u64> {
        (!self.ended && self.snapshot_in.is_some()).then(|| {
            let silent = self.snapshot_heard.saturating_add(stall);
            let slow = match rate {
                0 => u64::MAX,
                rate => self
                    .snapshot_begun
                    .saturating_add(stall)
                    .saturating_add(self.snapshot_bytes.saturating_mul(1_000) / rate),
            };
            silent.min(slow)
        })
    }

    /// Why the snapshot coming in is refused at `now`, its deadline
    /// passed (see [`snapshot_deadline`](Self::snapshot_deadline)).
    pub(super) fn snapshot_overdue(&self, now: u64, stall: u64) -> crate::SnapshotRefusal {
        let silent = now.saturating_sub(self.snapshot_heard);
        if silent >= stall {
            crate::SnapshotRefusal::Stalled { millis: silent }
        } else {
            crate::SnapshotRefusal::TooSlow {
                bytes: self.snapshot_bytes,
                millis: now.saturating_sub(self.snapshot_begun),
            }
        }
    }

    /// When the snapshot going out on this stream, if any, ends the stream
    /// unless the peer took some of it since it was last looked at.
    pub(super) fn unread_deadline(&self, stall: u64) -> Option<u64> {
        (!self.ended && self.snapshot_out.is_some())
            .then(|| self.snapshot_out_seen.1.saturating_add(stall))
    }
}

impl<T: Reduce> Replica<T> {
    /// Tells the replica that the driver handed some of `stream`'s bytes
    /// to the peer at wall time `now` (its flow control let them through):
    /// a snapshot going out on it is being taken in, so its deadline
    /// ([`PeerMisbehaved::SnapshotUnread`]) starts again. A driver that
    /// writes all [`poll_transmit`](Replica::poll_transmit) returns before
    /// polling again needs it only for writes that may wait on the peer; a
    /// slow peer then counts as slow, not gone, as a slow sender does for
    /// a snapshot coming in (any bytes restart its stall wait).
    pub fn sent(&mut self, stream: StreamId, now: u64) {
        self.core.wall = self.core.wall.max(now);
        if let Some(s) = self.streams.get_mut(&stream)
            && let Some(snapshot) = &s.snapshot_out
        {
            s.snapshot_out_seen = (snapshot.frames(), now);
        }
    }

    /// A snapshot coming in holds back others' from other floors, and
    /// collection (see `vet_floor`, `Replica::collect`): one whose sender
    /// went quiet midway, or trickles it in below the minimum rate, is
    /// refused, so that it holds them no longer than the stall limit, or
    /// the snapshot's size at that rate. What its parts merged stays, as
    /// when a link is cut.
    pub(super) fn refuse_stalled_snapshots(&mut self, now: u64) {
        let (stall, rate) =
            (self.core.config.snapshot_stall_millis, self.core.config.snapshot_min_rate);
        let stalled: Vec<(StreamId, crate::SnapshotRefusal)> = self
            .streams
            .iter()
            .filter(|(_, s)| s.snapshot_deadline(stall, rate).is_some_and(|d| d <= now))
            .map(|(&sid, s)| (sid, s.snapshot_overdue(now, stall)))
            .collect();
        for (sid, why) in stalled {
            let Replica { core, streams, .. } = self;
            let Some(stream) = streams.get_mut(&sid) else { continue };
            let peer = stream.peer;
            let refused = Refused::Untrusted(why);
            if let Ok(Flow::Refuse(reason)) = stream.refuse_snapshot(sid, core, peer, refused) {
                self.end_stream(sid, EndReason::Local(reason));
            }
        }
    }

    /// A snapshot going out holds back collection (its later parts are
    /// read from the state as they go, which must not lose tombstones
    /// meanwhile): one whose peer takes none of it, its flow control shut
    /// (the driver stops asking for frames, and says nothing was
    /// [`sent`](Replica::sent)), ends its stream
    /// once [`Config::snapshot_stall_millis`](crate::Config::snapshot_stall_millis)
    /// passes without a frame of it written, so that it holds collection
    /// no longer than that. The wait is counted from the first look after
    /// it began (the time it began is the replica's last known, which may
    /// be old), so it ends between one and two stall periods after the
    /// peer stopped.
    pub(super) fn end_unread_snapshots(&mut self, now: u64) {
        let stall = self.core.config.snapshot_stall_millis;
        let mut unread = Vec::new();
        for (&sid, stream) in self.streams.iter_mut().filter(|(_, s)| !s.ended) {
            let Some(snapshot) = &stream.snapshot_out else { continue };
            let (frames, since) = stream.snapshot_out_seen;
            if snapshot.frames() != frames {
                stream.snapshot_out_seen = (snapshot.frames(), now);
            } else if now >= since.saturating_add(stall) {
                unread.push((sid, now - since));
            }
        }
        for (sid, millis) in unread {
            let reason = CloseReason::Misbehaved(PeerMisbehaved::SnapshotUnread { millis });
            self.end_stream(sid, EndReason::Local(reason));
            // No Close waits to go out: the peer takes nothing, and a
            // driver blocked on its flow control would wait for ever to
            // send it. The stream is gone (`has_stream` says so).
            self.streams.remove(&sid);
        }
    }
}
