//! Speak scuttlebutt: Rust replicas that sync with the JavaScript originals.
//!
//! Dominic Tarr's `scuttlebutt` (npm, 5.6.x) replicates over a stream of
//! newline-delimited JSON: each side sends a header `{"id", "clock",
//! "meta"}`, then every update the other's clock lacks as `[change, ts,
//! source]` (`ts` float milliseconds, `source` a string id), then `"SYNC"`,
//! then live updates. This crate speaks it over repred's sans-IO core:
//!
//! - [`Model`] is `scuttlebutt/model`: string keys to JSON values, the write
//!   with the greatest `(ts, source)` wins per key. It is an ordinary
//!   [`repred::Reduce`], so a [`repred::Replica`] of it also replicates over
//!   repred's own QUIC transport and persists with `repred-store`.
//! - [`Node`] is one replica and its scuttlebutt streams, sans-IO
//!   (`handle` bytes in, `poll_transmit` bytes out, `poll_event`).
//! - [`Peer`] (features `tcp`, `websocket`, on by default) runs a node's
//!   streams over tokio TCP and WebSocket connections.
//! - [`id`] and [`time`] map JavaScript ids and float timestamps onto
//!   repred's `SourceId` and `Timestamp` without loss: an update that goes
//!   from JavaScript through Rust to JavaScript arrives as the same
//!   `[change, ts, source]`.
//!
//! ```
//! use repred_scuttlebutt::{Node, StreamOpts};
//! use serde_json::json;
//!
//! let now = 1_700_000_000_000;
//! let mut rust = Node::new("R")?;
//! rust.set(now, "greeting", json!("hello"))?;
//! let stream = rust.open(StreamOpts::default());
//!
//! // A JavaScript peer's first lines: its header and one update of its own.
//! let from_js = concat!(
//!     r#"{"id":"J","clock":{"J":1700000000001}}"#, "\n",
//!     r#"[["name","js"],1700000000001,"J"]"#, "\n",
//!     r#""SYNC""#, "\n",
//! );
//! rust.handle(stream, now, from_js.as_bytes())?;
//! assert_eq!(rust.model().to_json(), r#"{"greeting":"hello","name":"js"}"#);
//!
//! // What goes back: our header, the history the peer lacks, SYNC.
//! let mut out = Vec::new();
//! rust.poll_transmit(stream, &mut out);
//! let lines: Vec<&str> = std::str::from_utf8(&out)?.lines().collect();
//! assert!(lines[0].starts_with(r#"{"id":"R","clock":{"#));
//! assert!(lines[1].starts_with(r#"[["greeting","hello"],1700000000000.0002"#));
//! assert_eq!(lines[2], r#""SYNC""#);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod id;
pub mod line;
pub mod model;
#[cfg(feature = "tcp")]
mod net;
mod node;
#[cfg(test)]
mod tests;
pub mod time;

pub use line::LineError;
pub use model::{Json, Model, ModelChange, Write};
#[cfg(feature = "tcp")]
pub use net::{Peer, TransportError, now_millis};
pub use node::{
    DEFAULT_MAX_LINE, EndReason, Event, Node, NodeError, StreamError, StreamId, StreamOpts,
    StreamStats, own_source_id,
};

/// What generated code and examples use; re-exported so that they need not
/// depend on it themselves.
pub use serde_json;
