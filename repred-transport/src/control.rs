//! The node cores' own conversation on a connection: messages a node core
//! hands out for the peer at the other end
//! ([`NodeCore::poll_message`](repred_node::NodeCore::poll_message): a
//! comparison of views, the members one lacks) travel in order on one
//! unidirectional stream per direction, each framed by a four-byte
//! little-endian length, and go to the other core's
//! [`handle_message`](repred_node::NodeCore::handle_message).
//!
//! The peer is authenticated by the handshake, so what it says is its own;
//! a frame over [`MAX_MESSAGE`] bytes or a second control stream closes the
//! connection with a violation code, and the core refuses a message that
//! does not decode (then so does the connection).

use std::sync::Arc;

use quinn::{Connection, RecvStream};
use repred_node::ConnId;
use tokio::sync::mpsc;

use crate::CloseCode;
use crate::node::Inner;

/// The longest message a peer's node core may send: a member list goes in
/// chunks far below it.
pub(crate) const MAX_MESSAGE: usize = 1 << 20;

/// How many messages read from peers may wait for the driver; past it,
/// reading stops and QUIC's flow control holds the peer back.
pub(crate) const QUEUE: usize = 64;

/// Writes this node core's messages for the peer, opening the stream with
/// the first.
pub(crate) async fn write(conn: Connection, mut outgoing: mpsc::UnboundedReceiver<Vec<u8>>) {
    let Some(first) = outgoing.recv().await else { return };
    let Ok(mut send) = conn.open_uni().await else { return };
    let mut next = Some(first);
    while let Some(message) = next {
        let Ok(len) = u32::try_from(message.len()) else { return };
        let frame = [&len.to_le_bytes()[..], &message].concat();
        if send.write_all(&frame).await.is_err() {
            return;
        }
        next = outgoing.recv().await;
    }
    let _ = send.finish();
}

/// Reads the peer's messages and hands them to the driver, in order.
pub(crate) async fn read(inner: Arc<Inner>, conn: Connection, key: ConnId, mut recv: RecvStream) {
    loop {
        let mut len = [0u8; 4];
        if recv.read_exact(&mut len).await.is_err() {
            return;
        }
        let len = u32::from_le_bytes(len) as usize;
        if len > MAX_MESSAGE {
            let detail = format!("a node message of {len} bytes (at most {MAX_MESSAGE})");
            return inner.violation(&conn, CloseCode::BadMessage, &detail);
        }
        let mut message = vec![0u8; len];
        if recv.read_exact(&mut message).await.is_err() {
            return;
        }
        if inner.messages.send((key, message)).await.is_err() {
            return;
        }
    }
}
