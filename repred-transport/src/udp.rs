//! One UDP port for QUIC and membership: the socket quinn reads from hands
//! membership datagrams to the node's driver instead.
//!
//! Every QUIC packet sets the second bit of its first byte (RFC 9000's
//! fixed bit; long headers set the first too), and repred's endpoints never
//! negotiate greasing it away (`EndpointConfig::grease_quic_bit(false)`,
//! see [`endpoint_config`]), while a membership datagram starts with
//! [`DATAGRAM_MARKER`] (`0x21`), whose top two bits are clear. So the first
//! byte of each datagram says where it goes.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use repred_node::DATAGRAM_MARKER;
use tokio::sync::mpsc;

/// How many membership datagrams may wait for the driver; more are dropped,
/// as a full socket buffer would drop them.
pub(crate) const QUEUE: usize = 1_024;

/// A membership datagram as it arrived, not yet authenticated.
#[derive(Debug)]
pub(crate) struct Received {
    pub(crate) from: SocketAddr,
    pub(crate) bytes: Vec<u8>,
}

/// The endpoint settings every repred node uses: the fixed bit of QUIC
/// packets is never greased, so that it tells QUIC from membership.
pub(crate) fn endpoint_config() -> quinn::EndpointConfig {
    let mut config = quinn::EndpointConfig::default();
    // With greasing on, a peer could clear the fixed bit (0x40) of the
    // packets it sends us, and a short-header packet might then start with
    // 0x21. Off, no peer is told it may, and every QUIC packet sets it.
    config.grease_quic_bit(false);
    config
}

/// quinn's UDP socket, with the membership datagrams taken out of what it
/// receives.
pub(crate) struct DemuxSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    membership: mpsc::Sender<Received>,
    /// Membership datagrams dropped because the driver's queue was full.
    pub(crate) dropped: AtomicU64,
}

impl fmt::Debug for DemuxSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DemuxSocket").field("inner", &self.inner).finish_non_exhaustive()
    }
}

impl DemuxSocket {
    pub(crate) fn new(inner: Arc<dyn AsyncUdpSocket>, membership: mpsc::Sender<Received>) -> Self {
        Self { inner, membership, dropped: AtomicU64::new(0) }
    }

    /// Sends one membership datagram now, or fails with `WouldBlock` when
    /// the socket's buffer is full (then [`DemuxSocket::poller`] says when
    /// to try again).
    pub(crate) fn send(&self, to: SocketAddr, bytes: &[u8]) -> io::Result<()> {
        self.inner.try_send(&Transmit {
            destination: to,
            ecn: None,
            contents: bytes,
            segment_size: None,
            src_ip: None,
        })
    }

    /// Wakes a task when the socket may take a datagram again.
    pub(crate) fn poller(&self) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn deliver(&self, from: SocketAddr, bytes: &[u8]) {
        let received = Received { from, bytes: bytes.to_vec() };
        if self.membership.try_send(received).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl AsyncUdpSocket for DemuxSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            let n = ready!(self.inner.poll_recv(cx, bufs, meta))?;
            let kept = demux(bufs, meta, n, |from, bytes| self.deliver(from, bytes));
            // Only membership arrived: read on (an empty answer is legal
            // for quinn too, but reading on keeps its waker registered).
            if kept > 0 || n == 0 {
                return Poll::Ready(Ok(kept));
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// Takes the membership datagrams out of what one receive filled: `n`
/// buffers, each described by its `RecvMeta`, each holding one datagram or,
/// with GRO, several of `stride` bytes (the last may be shorter). Hands each
/// membership datagram to `take` with its sender, moves what is left for
/// QUIC to the front (in order), and returns how many buffers that is.
fn demux(
    bufs: &mut [IoSliceMut<'_>],
    metas: &mut [RecvMeta],
    n: usize,
    mut take: impl FnMut(SocketAddr, &[u8]),
) -> usize {
    let mut kept = 0;
    for i in 0..n.min(bufs.len()).min(metas.len()) {
        let len = split(&mut bufs[i], &mut metas[i], &mut take);
        if len == 0 {
            continue;
        }
        if kept != i {
            let (front, back) = bufs.split_at_mut(i);
            let (to, from) = (&mut front[kept], &back[0]);
            if to.len() < len {
                // quinn's buffers are all one size; never here.
                continue;
            }
            to[..len].copy_from_slice(&from[..len]);
            metas[kept] = metas[i];
        }
        kept += 1;
    }
    kept
}

/// In one buffer: hands the membership segments to `take` and packs the
/// QUIC ones to the front, order kept (so all but the last are still
/// `stride` long); sets and returns the new length.
fn split(buf: &mut [u8], meta: &mut RecvMeta, take: &mut impl FnMut(SocketAddr, &[u8])) -> usize {
    let len = meta.len.min(buf.len());
    let stride = if meta.stride == 0 { len.max(1) } else { meta.stride };
    let (mut read, mut write) = (0, 0);
    while read < len {
        let end = (read + stride).min(len);
        if buf[read] == DATAGRAM_MARKER {
            take(meta.addr, &buf[read..end]);
        } else {
            buf.copy_within(read..end, write);
            write += end - read;
        }
        read = end;
    }
    meta.len = write;
    write
}

#[cfg(test)]
mod tests {
    use super::*;
    use quinn::Runtime;

    fn meta(addr: SocketAddr, len: usize, stride: usize) -> RecvMeta {
        RecvMeta { addr, len, stride, ..RecvMeta::default() }
    }

    /// A segment of `len` bytes starting with `first`, then `fill`.
    fn segment(first: u8, fill: u8, len: usize) -> Vec<u8> {
        let mut s = vec![fill; len];
        s[0] = first;
        s
    }

    #[test]
    fn gro_buffers_are_split_and_quic_keeps_its_order() {
        let (a, b): (SocketAddr, SocketAddr) =
            ("127.0.0.1:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap());
        let stride = 10;
        // Buffer 0: QUIC, membership, QUIC, short membership (GRO).
        let buf0 = [
            segment(0x40, 1, stride),
            segment(DATAGRAM_MARKER, 2, stride),
            segment(0xc0, 3, stride),
            segment(DATAGRAM_MARKER, 4, 4),
        ]
        .concat();
        // Buffer 1: only membership. Buffer 2: QUIC with a short last one.
        let buf1 =
            [segment(DATAGRAM_MARKER, 5, stride), segment(DATAGRAM_MARKER, 6, stride)].concat();
        let buf2 = [segment(0x41, 7, stride), segment(0x42, 8, 3)].concat();
        let mut storage: Vec<Vec<u8>> = vec![vec![0u8; 64]; 4];
        for (slot, data) in storage.iter_mut().zip([&buf0, &buf1, &buf2]) {
            slot[..data.len()].copy_from_slice(data);
        }
        let mut metas = [
            meta(a, buf0.len(), stride),
            meta(b, buf1.len(), stride),
            meta(a, buf2.len(), stride),
            RecvMeta::default(),
        ];
        let mut bufs: Vec<IoSliceMut<'_>> =
            storage.iter_mut().map(|s| IoSliceMut::new(s)).collect();
        let mut taken = Vec::new();
        let kept =
            demux(&mut bufs, &mut metas, 3, |from, bytes| taken.push((from, bytes.to_vec())));

        assert_eq!(kept, 2, "the all-membership buffer is gone");
        assert_eq!(
            taken,
            vec![
                (a, segment(DATAGRAM_MARKER, 2, stride)),
                (a, segment(DATAGRAM_MARKER, 4, 4)),
                (b, segment(DATAGRAM_MARKER, 5, stride)),
                (b, segment(DATAGRAM_MARKER, 6, stride)),
            ]
        );
        let quic0 = [segment(0x40, 1, stride), segment(0xc0, 3, stride)].concat();
        assert_eq!((metas[0].len, metas[0].stride, metas[0].addr), (2 * stride, stride, a));
        assert_eq!(&bufs[0][..metas[0].len], &quic0[..]);
        assert_eq!((metas[1].len, metas[1].addr), (buf2.len(), a), "moved up a slot");
        assert_eq!(&bufs[1][..metas[1].len], &buf2[..]);
    }

    #[test]
    fn a_single_datagram_without_gro_goes_one_way_or_the_other() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let mut quic = segment(0x40, 9, 30);
        let mut m = meta(a, 30, 30);
        let mut taken = 0;
        assert_eq!(split(&mut quic, &mut m, &mut |_, _| taken += 1), 30);
        let mut member = segment(DATAGRAM_MARKER, 9, 30);
        let mut m = meta(a, 30, 0);
        assert_eq!(split(&mut member, &mut m, &mut |_, _| taken += 1), 0);
        assert_eq!(taken, 1);
    }

    /// Over a real socket: a QUIC-looking datagram and a membership one
    /// sent to it; quinn's side reads only the first, the driver's queue
    /// gets the second.
    #[tokio::test]
    async fn a_real_socket_sorts_what_arrives() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        let inner = quinn::TokioRuntime.wrap_udp_socket(socket).unwrap();
        let (tx, mut rx) = mpsc::channel(QUEUE);
        let demux = DemuxSocket::new(inner, tx);
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let from = sender.local_addr().unwrap();
        let membership = segment(DATAGRAM_MARKER, 1, 50);
        let quic = segment(0xc3, 2, 60);
        sender.send_to(&membership, addr).unwrap();
        sender.send_to(&quic, addr).unwrap();
        sender.send_to(&membership, addr).unwrap();

        let mut storage = vec![0u8; 4 * 65_536];
        let (mut got, mut queued) = (Vec::new(), Vec::new());
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while got.is_empty() || queued.len() < 2 {
            assert!(tokio::time::Instant::now() < deadline, "got {got:?}, queued {queued:?}");
            let mut metas = [RecvMeta::default(); 4];
            let mut bufs: Vec<IoSliceMut<'_>> =
                storage.chunks_mut(65_536).map(IoSliceMut::new).collect();
            let read = std::future::poll_fn(|cx| demux.poll_recv(cx, &mut bufs, &mut metas));
            let pause = std::time::Duration::from_millis(50);
            if let Ok(n) = tokio::time::timeout(pause, read).await {
                for (m, b) in metas.iter().zip(&bufs).take(n.unwrap()) {
                    got.push((m.addr, b[..m.len].to_vec()));
                }
            }
            while let Ok(r) = rx.try_recv() {
                queued.push((r.from, r.bytes));
            }
        }
        assert_eq!(got, vec![(from, quic)]);
        assert_eq!(queued, vec![(from, membership.clone()), (from, membership.clone())]);
        // And it sends.
        let mut poller = demux.poller();
        while let Err(e) = demux.send(from, &membership) {
            assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "{e}");
            std::future::poll_fn(|cx| poller.as_mut().poll_writable(cx)).await.unwrap();
        }
        let mut back = [0u8; 100];
        sender.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        let (n, _) = sender.recv_from(&mut back).unwrap();
        assert_eq!(&back[..n], &membership[..]);
    }
}
