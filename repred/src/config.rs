//! A replica's limits and policies.

use crate::SourceId;

#[cfg(doc)]
use crate::{Event, Replica, SnapshotRefusal, Stats};

/// Limits and policies of a replica.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// Most records the history keeps. Beyond it the oldest are dropped and
    /// peers that lack them get a snapshot instead. Default 65,536.
    pub history_limit: usize,
    /// How far ahead of this replica's wall clock a remote timestamp may be
    /// before it is refused as forged. Default 60 s.
    pub max_skew_millis: u64,
    /// Largest frame accepted from a peer, in bytes. Default 16 MiB.
    pub max_frame: usize,
    /// Target size of one Updates frame, in bytes. Default 64 KiB.
    pub batch_bytes: usize,
    /// Target size of one part of a snapshot, in bytes: a snapshot of any
    /// size travels in parts of about this much, interleaved with live
    /// updates, and neither end holds more than a part of it encoded.
    /// Default 64 KiB.
    pub snapshot_part_bytes: usize,
    /// Most bytes (as received) of what snapshot parts changed that the
    /// history keeps, for subscribers and a store, which read merged
    /// snapshots from it. Past it the oldest records are dropped, as past
    /// [`history_limit`](Config::history_limit): a store then saves a
    /// snapshot of the state, and peers that lacked the dropped updates get
    /// one, instead of the history holding a second copy of a large state
    /// it received. Default 32 MiB.
    pub history_snapshot_bytes: usize,
    /// Most entries a peer's snapshot may make this replica reserve room
    /// for before its parts arrive ([`Reduce::reserve`](crate::Reduce::reserve)):
    /// the sender's size hint is not signed, so a larger one reserves this
    /// much and the state grows as parts come beyond it. Default 2^25
    /// (33,554,432).
    pub max_snapshot_reserve: u64,
    /// Most sources a peer's snapshot's clock may name
    /// ([`PeerMisbehaved::SnapshotTooManySources`](crate::PeerMisbehaved::SnapshotTooManySources)):
    /// the clock comes in chunks and is held until all of it is in and its
    /// digest checked, about 40 bytes a source. Default 2^24 (16,777,216:
    /// 16 times the million sources a fresh replica is brought up from in
    /// `tests/digest.rs`, ~700 MB held at most).
    pub max_snapshot_sources: u64,
    /// How long a peer's snapshot may go without a byte of it once begun,
    /// before this replica refuses it
    /// ([`SnapshotRefusal::Stalled`]) and closes the stream. While one comes
    /// in, snapshots from other collection floors are declined and
    /// collection waits ([`Replica::receiving_snapshot`]), so a sender
    /// that stops midway must not hold them for ever. A slow link is not
    /// a stall: any bytes of the snapshot restart the wait. Zero refuses
    /// every snapshot at the next [`Replica::handle_timeout`]. Default
    /// 30,000 ms.
    pub snapshot_stall_millis: u64,
    /// Slowest a peer's snapshot may come in, in bytes per second, once
    /// [`snapshot_stall_millis`](Config::snapshot_stall_millis) has passed
    /// since it began: a snapshot begun at `t` with `b` bytes in is refused
    /// ([`SnapshotRefusal::TooSlow`]) at `t + stall + b / rate`. A byte
    /// now and then restarts the stall wait, so without it a sender could
    /// hold back collection and other floors' snapshots for ever at no
    /// cost; with it, for as long as it keeps up this much bandwidth, and
    /// no longer than the snapshot's size at this rate. (As a web server's
    /// minimum request body rate, e.g. Kestrel's 240 B/s after a 5 s
    /// grace.) The rate is each snapshot's: snapshots sharing a link (a
    /// fresh node pulling many objects over one connection) each get a
    /// share of it, and one refused is sent again from the start, so keep
    /// it under the link's speed divided by the snapshots that may come in
    /// at once over it. Zero: no minimum. Default 256 B/s.
    pub snapshot_min_rate: u64,
    /// Most undrained events kept; older ones are dropped (and counted in
    /// [`Stats::events_dropped`]). Default 4,096.
    pub max_events: usize,
    /// Refuse updates that are not signed by their source's key, clock
    /// advances without the source's signature, and snapshots not signed by
    /// a signer in [`trust_snapshots_from`](Config::trust_snapshots_from).
    /// Signed updates are verified whether or not this is set. Default off.
    pub require_signatures: bool,
    /// When set, only updates from these sources are accepted (besides our
    /// own), and, as with [`require_signatures`](Config::require_signatures),
    /// only signed ones: a list of names anyone could claim would guard
    /// nothing. Default: everyone.
    pub allowed_sources: Option<std::collections::BTreeSet<SourceId>>,
    /// The signers whose snapshots a strict replica (one that requires
    /// signatures or has an allow-list) takes. A snapshot stands for many
    /// updates whose own signatures it does not carry, so believing one is
    /// trusting its signer to have verified them. A strict replica refuses
    /// every other snapshot with [`Event::SnapshotRefused`] and closes that
    /// stream; if it has fallen behind the history of every trusted peer it
    /// stays behind, saying so, rather than take in anything unverified.
    /// Replicas that are not strict take any snapshot whose signature, if it
    /// has one, holds. A strict replica also believes the collection floor
    /// of a peer only when its Hello is signed by one of these, and takes a
    /// snapshot only from such a peer: one trusting nobody follows no
    /// peer's floor. Default: nobody.
    pub trust_snapshots_from: std::collections::BTreeSet<SourceId>,
    /// The most sources this replica does not know that one stream may name
    /// in claims it has not backed with updates (announcements, clock
    /// advances, refused updates). Past it the peer is cut off
    /// ([`PeerMisbehaved::TooManySources`](crate::PeerMisbehaved::TooManySources)).
    /// Clocks a peer sends are not refused for their size, but only this
    /// many of their unknown sources are remembered. Default 100,000.
    pub max_unknown_sources: usize,
    /// How long a peer that announced an update (lazy relay) or was asked
    /// for one may take to deliver it before another peer that has it is
    /// asked instead: one announcement, true or not, delays a source by at
    /// most this much. A peer that failed to deliver cannot take the role
    /// back by announcing for this long, doubled with each failure in a row
    /// up to 64 timeouts, until it delivers what it owed; what it announced
    /// meanwhile and nobody else delivered is asked of it when that ends.
    /// So a peer that announces and never delivers holds a source back for
    /// this long ever more rarely, at last once per 65 of these. Also how
    /// long a stream's sync waits for what its peer announced. Default
    /// 1,000 ms.
    pub relay_timeout_millis: u64,
    /// Relay other sources' updates lazily on tailing streams: announce them
    /// (a Have frame of `(source, ts)`) and push them only to peers that ask
    /// (Want), so that each replica pulls each source from one peer and a
    /// payload crosses each link it needs to once, not every link. Own
    /// updates, and the peer's own, are always pushed. A stream's sync
    /// (`SyncReceived`, `Synced`, and so the end of a stream without tail)
    /// waits until what the peer announced before its Sync has arrived, from
    /// whichever peer. Default off (every stream pushes everything the peer
    /// is not known to have).
    pub lazy_relay: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            history_limit: 65_536,
            max_skew_millis: 60_000,
            max_frame: 16 << 20,
            batch_bytes: 64 << 10,
            snapshot_part_bytes: 64 << 10,
            max_snapshot_reserve: 1 << 25,
            max_snapshot_sources: 1 << 24,
            snapshot_stall_millis: 30_000,
            snapshot_min_rate: 256,
            history_snapshot_bytes: 32 << 20,
            max_events: 4_096,
            require_signatures: false,
            allowed_sources: None,
            trust_snapshots_from: std::collections::BTreeSet::new(),
            max_unknown_sources: 100_000,
            relay_timeout_millis: 1_000,
            lazy_relay: false,
        }
    }
}

impl Config {
    /// Sets [`Config::history_limit`].
    pub fn history_limit(mut self, records: usize) -> Self {
        self.history_limit = records;
        self
    }

    /// Sets [`Config::max_skew_millis`].
    pub fn max_skew_millis(mut self, millis: u64) -> Self {
        self.max_skew_millis = millis;
        self
    }

    /// Sets [`Config::max_frame`].
    pub fn max_frame(mut self, bytes: usize) -> Self {
        self.max_frame = bytes;
        self
    }

    /// Sets [`Config::require_signatures`].
    pub fn require_signatures(mut self, on: bool) -> Self {
        self.require_signatures = on;
        self
    }

    /// Sets [`Config::allowed_sources`].
    pub fn allow_only(mut self, sources: impl IntoIterator<Item = SourceId>) -> Self {
        self.allowed_sources = Some(sources.into_iter().collect());
        self
    }

    /// Sets [`Config::trust_snapshots_from`].
    pub fn trust_snapshots_from(mut self, signers: impl IntoIterator<Item = SourceId>) -> Self {
        self.trust_snapshots_from = signers.into_iter().collect();
        self
    }

    /// Sets [`Config::max_unknown_sources`].
    pub fn max_unknown_sources(mut self, sources: usize) -> Self {
        self.max_unknown_sources = sources;
        self
    }

    /// Sets [`Config::relay_timeout_millis`].
    pub fn relay_timeout_millis(mut self, millis: u64) -> Self {
        self.relay_timeout_millis = millis;
        self
    }

    /// Whether this replica lets only signatures move its state and clock:
    /// it requires signatures, or has an allow-list.
    pub fn is_strict(&self) -> bool {
        self.require_signatures || self.allowed_sources.is_some()
    }

    /// Sets [`Config::lazy_relay`].
    pub fn lazy_relay(mut self, on: bool) -> Self {
        self.lazy_relay = on;
        self
    }

    /// Sets [`Config::snapshot_part_bytes`].
    pub fn snapshot_part_bytes(mut self, bytes: usize) -> Self {
        self.snapshot_part_bytes = bytes;
        self
    }

    /// Sets [`Config::history_snapshot_bytes`].
    pub fn history_snapshot_bytes(mut self, bytes: usize) -> Self {
        self.history_snapshot_bytes = bytes;
        self
    }

    /// Sets [`Config::max_snapshot_reserve`].
    pub fn max_snapshot_reserve(mut self, entries: u64) -> Self {
        self.max_snapshot_reserve = entries;
        self
    }

    /// Sets [`Config::max_snapshot_sources`].
    pub fn max_snapshot_sources(mut self, sources: u64) -> Self {
        self.max_snapshot_sources = sources;
        self
    }

    /// Sets [`Config::snapshot_stall_millis`].
    pub fn snapshot_stall_millis(mut self, millis: u64) -> Self {
        self.snapshot_stall_millis = millis;
        self
    }

    /// Sets [`Config::snapshot_min_rate`] (bytes per second; zero: none).
    pub fn snapshot_min_rate(mut self, bytes_per_sec: u64) -> Self {
        self.snapshot_min_rate = bytes_per_sec;
        self
    }

    /// Sets [`Config::batch_bytes`].
    pub fn batch_bytes(mut self, bytes: usize) -> Self {
        self.batch_bytes = bytes;
        self
    }
}
