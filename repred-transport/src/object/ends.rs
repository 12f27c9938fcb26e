//! The stream ends a node tells of ([`Node::stream_ends`](crate::Node::stream_ends)).

use std::pin::Pin;
use std::task::{Context, Poll};

use repred::{EndReason, SourceId};
use tokio_stream::Stream;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use super::Lagged;

/// One stream of an object that ended, with the peer it was with and why
/// ([`Node::stream_ends`](crate::Node::stream_ends)): what a driver that
/// streams an object with one chosen peer (`repred-place`'s route) needs to
/// move to another at once rather than after a timeout.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamEnded {
    /// The object's name.
    pub object: String,
    /// The peer's node id (`None`: a peer whose certificate named none).
    pub peer: Option<SourceId>,
    /// Why, as the core says it: [`EndReason::Local`] this node ended it
    /// (it released the object, [`Node::set_peers`](crate::Node::set_peers)
    /// dropped the peer, it shuts down, or it refused the peer's frames),
    /// [`EndReason::Remote`] the peer did, with its reason, and
    /// [`EndReason::Aborted`] the stream or its connection was lost without
    /// a Close (the peer crashed, the network, a connection the node core
    /// closed).
    pub reason: EndReason,
}

/// The stream of a node's [`StreamEnded`]s
/// ([`Node::stream_ends`](crate::Node::stream_ends)).
///
/// Yields `Err(Lagged)` when the reader fell more than 1,024 ends behind.
pub struct StreamEnds {
    pub(crate) inner: BroadcastStream<StreamEnded>,
}

impl Stream for StreamEnds {
    type Item = Result<StreamEnded, Lagged>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.inner)
            .poll_next(cx)
            .map(|item| item.map(|r| r.map_err(|BroadcastStreamRecvError::Lagged(n)| Lagged(n))))
    }
}

/// How many stream ends a slow [`StreamEnds`] reader may fall behind.
pub(crate) const STREAM_ENDS_CAPACITY: usize = 1024;
