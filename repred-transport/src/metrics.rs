//! What a node reports through the [`metrics`](https://docs.rs/metrics)
//! facade: the names, what each counts, and its labels.
//!
//! Install a recorder (a Prometheus exporter, say) *before* spawning the
//! node: a node takes its metric handles when it starts and an object when
//! it is replicated, and handles taken with no recorder installed stay
//! no-ops. With no recorder a handle costs a branch; nothing is counted
//! twice in a hot path (the counters follow the replica's own [`Stats`] and
//! each stream's [`StreamStats`], by difference, where they are updated
//! already).
//!
//! Every metric has the label `node`: the node's id as its
//! [`Display`](repred::SourceId) prints it (8 hex digits), so several nodes
//! in one process stay apart. Per-object metrics add `object`, the name
//! given to [`Node::replicate`](crate::Node::replicate).
//!
//! | name | kind | labels | what |
//! |---|---|---|---|
//! | `repred_updates_local_total` | counter | node, object | local updates that changed the state |
//! | `repred_updates_applied_total` | counter | node, object | peers' updates that changed the state |
//! | `repred_updates_unchanged_total` | counter | node, object | peers' updates that were new but changed nothing |
//! | `repred_updates_old_total` | counter | node, object | peers' updates already seen (scuttlebutt's `OldData`) |
//! | `repred_updates_refused_total` | counter | node, object | peers' updates refused (timestamp too far ahead, bad or missing signature, below the floor) |
//! | `repred_snapshots_merged_total` | counter | node, object | peers' snapshots merged |
//! | `repred_snapshots_refused_total` | counter | node, object | peers' snapshots refused |
//! | `repred_snapshots_sent_total` | counter | node, object | snapshots sent to peers |
//! | `repred_relay_demotions_total` | counter | node, object | lazy-relay parents that did not deliver an announced update in time (a peer announcing what it never delivers shows here) |
//! | `repred_frames_sent_total`, `repred_frames_received_total` | counter | node, object | protocol frames on the object's streams |
//! | `repred_bytes_sent_total`, `repred_bytes_received_total` | counter | node, object | bytes of those frames |
//! | `repred_stream_updates_sent_total`, `repred_stream_updates_received_total` | counter | node, object | updates carried by those frames (history and live) |
//! | `repred_streams_open` | gauge | node, object | streams of the object open now (one per connected peer) |
//! | `repred_streams_opened_total` | counter | node, object | streams ever opened |
//! | `repred_streams_refused_total` | counter | node, object | streams ended because one side refused the other ([`Handle::refusals`](crate::Handle::refusals)) |
//! | `repred_connections_open` | gauge | node | QUIC connections open now |
//! | `repred_connections_opened_total` | counter | node, direction (`in`, `out`) | connections admitted (handshake verified) |
//! | `repred_connections_refused_total` | counter | node, reason (`cap`, `blocked`, `handshake`) | incoming connections refused |
//! | `repred_dials_failed_total` | counter | node, reason (`refused`, `unreachable`) | dials that did not connect: the peer refused the handshake (another cluster, revoked) or did not answer |
//! | `repred_violations_total` | counter | node | streams and connections closed because the peer broke the protocol |
//! | `repred_members` | gauge | node, state (`alive`, `suspect`, `down`) | members by what this node believes of them (itself included; the down ones it still remembers) |
//! | `repred_membership_datagrams_sent_total`, `..._received_total`, `..._refused_total` | counter | node | SWIM datagrams (refused: unauthenticated or malformed) |
//! | `repred_membership_bytes_sent_total`, `repred_membership_bytes_received_total` | counter | node | bytes of those datagrams |
//! | `repred_udp_bytes_sent_total`, `repred_udp_bytes_received_total` | counter | node | every UDP payload byte, QUIC and SWIM ([`NodeStats`](crate::NodeStats)); taken once a second |
//! | `repred_store_commits_total` | counter | node | group commits of a durable node |
//! | `repred_store_commit_failures_total` | counter | node | commits that failed (retried by themselves) |
//! | `repred_store_entries_written_total` | counter | node | log entries those commits wrote (a snapshot counts one) |
//! | `repred_store_commit_seconds` | histogram | node | how long each commit took, fsync included |
//!
//! [`Stats`]: repred::Stats
//! [`StreamStats`]: repred::StreamStats

use ::metrics::{Counter, Gauge, Histogram, Unit, counter, gauge, histogram};
use repred::{SourceId, Stats, StreamStats};

/// Local updates that changed the state.
pub const UPDATES_LOCAL: &str = "repred_updates_local_total";
/// Peers' updates that changed the state.
pub const UPDATES_APPLIED: &str = "repred_updates_applied_total";
/// Peers' updates that were new but changed nothing.
pub const UPDATES_UNCHANGED: &str = "repred_updates_unchanged_total";
/// Peers' updates already seen.
pub const UPDATES_OLD: &str = "repred_updates_old_total";
/// Peers' updates refused.
pub const UPDATES_REFUSED: &str = "repred_updates_refused_total";
/// Peers' snapshots merged.
pub const SNAPSHOTS_MERGED: &str = "repred_snapshots_merged_total";
/// Peers' snapshots refused.
pub const SNAPSHOTS_REFUSED: &str = "repred_snapshots_refused_total";
/// Lazy-relay parents that did not deliver an announced update in time.
pub const RELAY_DEMOTIONS: &str = "repred_relay_demotions_total";
/// Snapshots sent to peers.
pub const SNAPSHOTS_SENT: &str = "repred_snapshots_sent_total";
/// Frames sent on an object's streams.
pub const FRAMES_SENT: &str = "repred_frames_sent_total";
/// Frames received on an object's streams.
pub const FRAMES_RECEIVED: &str = "repred_frames_received_total";
/// Bytes of frames sent.
pub const BYTES_SENT: &str = "repred_bytes_sent_total";
/// Bytes of frames received.
pub const BYTES_RECEIVED: &str = "repred_bytes_received_total";
/// Updates sent on an object's streams.
pub const STREAM_UPDATES_SENT: &str = "repred_stream_updates_sent_total";
/// Updates received on an object's streams.
pub const STREAM_UPDATES_RECEIVED: &str = "repred_stream_updates_received_total";
/// Streams of an object open now.
pub const STREAMS_OPEN: &str = "repred_streams_open";
/// Streams of an object ever opened.
pub const STREAMS_OPENED: &str = "repred_streams_opened_total";
/// Streams ended because one side refused the other.
pub const STREAMS_REFUSED: &str = "repred_streams_refused_total";
/// QUIC connections open now.
pub const CONNECTIONS_OPEN: &str = "repred_connections_open";
/// Connections admitted, by direction.
pub const CONNECTIONS_OPENED: &str = "repred_connections_opened_total";
/// Incoming connections refused, by reason.
pub const CONNECTIONS_REFUSED: &str = "repred_connections_refused_total";
/// Dials that did not connect, by reason.
pub const DIALS_FAILED: &str = "repred_dials_failed_total";
/// Streams and connections closed for a protocol violation.
pub const VIOLATIONS: &str = "repred_violations_total";
/// Members by state.
pub const MEMBERS: &str = "repred_members";
/// SWIM datagrams sent.
pub const MEMBERSHIP_DATAGRAMS_SENT: &str = "repred_membership_datagrams_sent_total";
/// SWIM datagrams taken.
pub const MEMBERSHIP_DATAGRAMS_RECEIVED: &str = "repred_membership_datagrams_received_total";
/// SWIM datagrams refused.
pub const MEMBERSHIP_DATAGRAMS_REFUSED: &str = "repred_membership_datagrams_refused_total";
/// Bytes of SWIM datagrams sent.
pub const MEMBERSHIP_BYTES_SENT: &str = "repred_membership_bytes_sent_total";
/// Bytes of SWIM datagrams received.
pub const MEMBERSHIP_BYTES_RECEIVED: &str = "repred_membership_bytes_received_total";
/// Every UDP payload byte sent.
pub const UDP_BYTES_SENT: &str = "repred_udp_bytes_sent_total";
/// Every UDP payload byte received.
pub const UDP_BYTES_RECEIVED: &str = "repred_udp_bytes_received_total";
/// Group commits of a durable node.
pub const STORE_COMMITS: &str = "repred_store_commits_total";
/// Commits that failed.
pub const STORE_COMMIT_FAILURES: &str = "repred_store_commit_failures_total";
/// Log entries written by commits.
pub const STORE_ENTRIES_WRITTEN: &str = "repred_store_entries_written_total";
/// How long each commit took, in seconds.
pub const STORE_COMMIT_SECONDS: &str = "repred_store_commit_seconds";

/// Describes every metric above to the installed recorder (its help text
/// and unit). A node does it when it is spawned; call it yourself only to
/// describe them before any node starts.
pub fn describe() {
    use ::metrics::{describe_counter, describe_gauge, describe_histogram};
    let counters: &[(&'static str, Unit, &'static str)] = &[
        (UPDATES_LOCAL, Unit::Count, "Local updates that changed the state."),
        (UPDATES_APPLIED, Unit::Count, "Peers' updates that changed the state."),
        (UPDATES_UNCHANGED, Unit::Count, "Peers' updates that were new but changed nothing."),
        (UPDATES_OLD, Unit::Count, "Peers' updates already seen."),
        (UPDATES_REFUSED, Unit::Count, "Peers' updates refused (skew, signature, floor)."),
        (SNAPSHOTS_MERGED, Unit::Count, "Peers' snapshots merged."),
        (SNAPSHOTS_REFUSED, Unit::Count, "Peers' snapshots refused."),
        (SNAPSHOTS_SENT, Unit::Count, "Snapshots sent to peers."),
        (FRAMES_SENT, Unit::Count, "Protocol frames sent on the object's streams."),
        (FRAMES_RECEIVED, Unit::Count, "Protocol frames received on the object's streams."),
        (BYTES_SENT, Unit::Bytes, "Bytes of frames sent on the object's streams."),
        (BYTES_RECEIVED, Unit::Bytes, "Bytes of frames received on the object's streams."),
        (STREAM_UPDATES_SENT, Unit::Count, "Updates sent on the object's streams."),
        (STREAM_UPDATES_RECEIVED, Unit::Count, "Updates received on the object's streams."),
        (STREAMS_OPENED, Unit::Count, "Streams of the object ever opened."),
        (STREAMS_REFUSED, Unit::Count, "Streams ended because one side refused the other."),
        (CONNECTIONS_OPENED, Unit::Count, "Connections admitted, by direction."),
        (CONNECTIONS_REFUSED, Unit::Count, "Incoming connections refused, by reason."),
        (DIALS_FAILED, Unit::Count, "Dials that did not connect, by reason."),
        (VIOLATIONS, Unit::Count, "Streams and connections closed for a protocol violation."),
        (MEMBERSHIP_DATAGRAMS_SENT, Unit::Count, "SWIM datagrams sent."),
        (MEMBERSHIP_DATAGRAMS_RECEIVED, Unit::Count, "SWIM datagrams authenticated and taken."),
        (MEMBERSHIP_DATAGRAMS_REFUSED, Unit::Count, "SWIM datagrams refused."),
        (MEMBERSHIP_BYTES_SENT, Unit::Bytes, "Bytes of SWIM datagrams sent."),
        (MEMBERSHIP_BYTES_RECEIVED, Unit::Bytes, "Bytes of SWIM datagrams received."),
        (UDP_BYTES_SENT, Unit::Bytes, "UDP payload bytes sent, QUIC and SWIM."),
        (UDP_BYTES_RECEIVED, Unit::Bytes, "UDP payload bytes received, QUIC and SWIM."),
        (STORE_COMMITS, Unit::Count, "Group commits of the node's store."),
        (STORE_COMMIT_FAILURES, Unit::Count, "Store commits that failed."),
        (STORE_ENTRIES_WRITTEN, Unit::Count, "Log entries written by store commits."),
    ];
    for &(name, unit, help) in counters {
        describe_counter!(name, unit, help);
    }
    describe_gauge!(STREAMS_OPEN, Unit::Count, "Streams of the object open now.");
    describe_gauge!(CONNECTIONS_OPEN, Unit::Count, "QUIC connections open now.");
    describe_gauge!(MEMBERS, Unit::Count, "Members by what this node believes of them.");
    describe_histogram!(
        STORE_COMMIT_SECONDS,
        Unit::Seconds,
        "How long each store commit took, fsync included."
    );
}

/// The `node` label's value.
pub(crate) fn node_label(id: SourceId) -> String {
    id.to_string()
}

/// One object's handles.
pub(crate) struct ObjectMetrics {
    local: Counter,
    applied: Counter,
    unchanged: Counter,
    old: Counter,
    refused: Counter,
    snapshots_merged: Counter,
    snapshots_refused: Counter,
    snapshots_sent: Counter,
    relay_demotions: Counter,
    frames_sent: Counter,
    frames_received: Counter,
    bytes_sent: Counter,
    bytes_received: Counter,
    updates_sent: Counter,
    updates_received: Counter,
    pub(crate) streams_open: Gauge,
    pub(crate) streams_opened: Counter,
    pub(crate) streams_refused: Counter,
}

impl ObjectMetrics {
    pub(crate) fn new(node: &str, object: &str) -> Self {
        let labels = [("node", node.to_string()), ("object", object.to_string())];
        Self {
            local: counter!(UPDATES_LOCAL, &labels),
            applied: counter!(UPDATES_APPLIED, &labels),
            unchanged: counter!(UPDATES_UNCHANGED, &labels),
            old: counter!(UPDATES_OLD, &labels),
            refused: counter!(UPDATES_REFUSED, &labels),
            snapshots_merged: counter!(SNAPSHOTS_MERGED, &labels),
            snapshots_refused: counter!(SNAPSHOTS_REFUSED, &labels),
            snapshots_sent: counter!(SNAPSHOTS_SENT, &labels),
            relay_demotions: counter!(RELAY_DEMOTIONS, &labels),
            frames_sent: counter!(FRAMES_SENT, &labels),
            frames_received: counter!(FRAMES_RECEIVED, &labels),
            bytes_sent: counter!(BYTES_SENT, &labels),
            bytes_received: counter!(BYTES_RECEIVED, &labels),
            updates_sent: counter!(STREAM_UPDATES_SENT, &labels),
            updates_received: counter!(STREAM_UPDATES_RECEIVED, &labels),
            streams_open: gauge!(STREAMS_OPEN, &labels),
            streams_opened: counter!(STREAMS_OPENED, &labels),
            streams_refused: counter!(STREAMS_REFUSED, &labels),
        }
    }

    /// Counts what the replica did between two readings of its stats.
    pub(crate) fn replica(&self, old: &Stats, new: &Stats) {
        add(&self.local, old.local, new.local);
        add(&self.applied, old.applied, new.applied);
        add(&self.unchanged, old.unchanged, new.unchanged);
        add(&self.old, old.old, new.old);
        add(&self.refused, old.rejected, new.rejected);
        add(&self.snapshots_merged, old.snapshots, new.snapshots);
        add(&self.snapshots_refused, old.snapshots_refused, new.snapshots_refused);
        add(&self.relay_demotions, old.relay_demotions, new.relay_demotions);
    }

    /// Counts what a stream moved between two readings of its stats.
    pub(crate) fn stream(&self, old: &StreamStats, new: &StreamStats) {
        add(&self.frames_sent, old.frames_sent, new.frames_sent);
        add(&self.frames_received, old.frames_received, new.frames_received);
        add(&self.bytes_sent, old.bytes_sent, new.bytes_sent);
        add(&self.bytes_received, old.bytes_received, new.bytes_received);
        add(&self.updates_sent, old.updates_sent, new.updates_sent);
        add(&self.updates_received, old.updates_received, new.updates_received);
        add(&self.snapshots_sent, old.snapshots_sent, new.snapshots_sent);
    }
}

/// Adds what a monotonic count grew by.
fn add(counter: &Counter, old: u64, new: u64) {
    if new > old {
        counter.increment(new - old);
    }
}

/// A node's handles.
pub(crate) struct NodeMetrics {
    pub(crate) label: String,
    pub(crate) connections_open: Gauge,
    pub(crate) opened_in: Counter,
    pub(crate) opened_out: Counter,
    pub(crate) refused_cap: Counter,
    pub(crate) refused_blocked: Counter,
    pub(crate) refused_handshake: Counter,
    pub(crate) dial_refused: Counter,
    pub(crate) dial_unreachable: Counter,
    pub(crate) violations: Counter,
    pub(crate) alive: Gauge,
    pub(crate) suspect: Gauge,
    pub(crate) down: Gauge,
    pub(crate) datagrams_sent: Counter,
    pub(crate) datagrams_received: Counter,
    pub(crate) datagrams_refused: Counter,
    pub(crate) membership_tx: Counter,
    pub(crate) membership_rx: Counter,
    pub(crate) udp_tx: Counter,
    pub(crate) udp_rx: Counter,
    pub(crate) store: StoreMetrics,
}

/// A durable node's store handles.
#[derive(Clone)]
pub(crate) struct StoreMetrics {
    pub(crate) commits: Counter,
    pub(crate) commit_failures: Counter,
    pub(crate) entries_written: Counter,
    pub(crate) commit_seconds: Histogram,
}

impl StoreMetrics {
    /// Handles that count nothing, for unit tests.
    #[cfg(test)]
    pub(crate) fn noop() -> Self {
        Self {
            commits: Counter::noop(),
            commit_failures: Counter::noop(),
            entries_written: Counter::noop(),
            commit_seconds: Histogram::noop(),
        }
    }
}

impl NodeMetrics {
    pub(crate) fn new(id: SourceId) -> Self {
        let label = node_label(id);
        let node = [("node", label.clone())];
        let with = |key: &'static str, value: &'static str| {
            [("node", label.clone()), (key, value.to_string())]
        };
        Self {
            connections_open: gauge!(CONNECTIONS_OPEN, &node),
            opened_in: counter!(CONNECTIONS_OPENED, &with("direction", "in")),
            opened_out: counter!(CONNECTIONS_OPENED, &with("direction", "out")),
            refused_cap: counter!(CONNECTIONS_REFUSED, &with("reason", "cap")),
            refused_blocked: counter!(CONNECTIONS_REFUSED, &with("reason", "blocked")),
            refused_handshake: counter!(CONNECTIONS_REFUSED, &with("reason", "handshake")),
            dial_refused: counter!(DIALS_FAILED, &with("reason", "refused")),
            dial_unreachable: counter!(DIALS_FAILED, &with("reason", "unreachable")),
            violations: counter!(VIOLATIONS, &node),
            alive: gauge!(MEMBERS, &with("state", "alive")),
            suspect: gauge!(MEMBERS, &with("state", "suspect")),
            down: gauge!(MEMBERS, &with("state", "down")),
            datagrams_sent: counter!(MEMBERSHIP_DATAGRAMS_SENT, &node),
            datagrams_received: counter!(MEMBERSHIP_DATAGRAMS_RECEIVED, &node),
            datagrams_refused: counter!(MEMBERSHIP_DATAGRAMS_REFUSED, &node),
            membership_tx: counter!(MEMBERSHIP_BYTES_SENT, &node),
            membership_rx: counter!(MEMBERSHIP_BYTES_RECEIVED, &node),
            udp_tx: counter!(UDP_BYTES_SENT, &node),
            udp_rx: counter!(UDP_BYTES_RECEIVED, &node),
            store: StoreMetrics {
                commits: counter!(STORE_COMMITS, &node),
                commit_failures: counter!(STORE_COMMIT_FAILURES, &node),
                entries_written: counter!(STORE_ENTRIES_WRITTEN, &node),
                commit_seconds: histogram!(STORE_COMMIT_SECONDS, &node),
            },
            label,
        }
    }
}
