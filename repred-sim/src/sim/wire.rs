//! The simulated network's connections: links, streams, and how bytes
//! cross them with latency, in order per direction, until severed.

use std::collections::BTreeSet;

use rand::RngExt;
use repred::{ChannelBinding, Reduce, StreamOpts};
use repred_node::{Command, ConnId};

use super::Sim;
use crate::queue::Event;
use crate::{NodeIx, ObjectId};

/// One end of a simulated connection.
#[derive(Clone, Copy, Debug)]
pub(super) struct End {
    pub(super) node: NodeIx,
    pub(super) life: u32,
    pub(super) local: ConnId,
}

/// A simulated QUIC connection: reliable, ordered per direction, with
/// latency; dead once severed (a close, a crash, a partition).
#[derive(Debug)]
pub(super) struct Conn {
    pub(super) ends: [End; 2],
    pub(super) severed: bool,
    /// Per direction (by receiving side), when the last bytes arrive: later
    /// bytes never overtake them.
    pub(super) arrives: [u64; 2],
    pub(super) closed: [bool; 2],
}

impl<T: Reduce> Sim<T> {
    /// Ends a connection: no more bytes cross it; each end other than
    /// `except` learns it after `after` ms (`except` knows already).
    pub(super) fn sever(&mut self, conn: u64, except: NodeIx, after: u64) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        if c.severed {
            return;
        }
        c.severed = true;
        for side in 0..2 {
            if c.ends[side].node == except {
                c.closed[side] = true;
            } else {
                self.queue.push(self.now + after, Event::Closed { conn, side });
            }
        }
    }

    /// A handshake completed: the connection is up at both ends, with a
    /// stream per object both hold.
    pub(super) fn connect(&mut self, from: NodeIx, to: NodeIx) {
        let key = self.next_conn;
        self.next_conn += 1;
        let mut ends = [End { node: from, life: 0, local: 0 }; 2];
        for (side, node) in [(0, from), (1, to)] {
            let n = &mut self.nodes[node as usize];
            let local = n.next_conn;
            n.next_conn += 1;
            n.conns.insert(local, key);
            ends[side] = End { node, life: n.life, local };
        }
        self.conns.insert(key, Conn { ends, severed: false, arrives: [0; 2], closed: [false; 2] });
        let now = self.now;
        for (side, (node, peer)) in [(from, to), (to, from)].into_iter().enumerate() {
            let peer_id = self.nodes[peer as usize].id;
            let local = ends[side].local;
            self.nodes[node as usize].core.handle_connected(now, local, peer_id, peer, side == 0);
        }
        self.open_shared_streams(key, from, to);
    }

    /// Opens a stream on connection `key` for every object both ends hold,
    /// and sends what that makes each end say.
    fn open_shared_streams(&mut self, key: u64, from: NodeIx, to: NodeIx) {
        let shared: Vec<ObjectId> = self.nodes[from as usize]
            .objects
            .keys()
            .filter(|o| self.nodes[to as usize].objects.contains_key(o))
            .copied()
            .collect();
        for object in shared {
            self.open_stream(key, object);
        }
        self.flush(from);
        self.flush(to);
    }

    /// A data link is up: a connection the node cores do not know (not in
    /// their views, never rotated), with a stream per object both hold.
    pub(super) fn link_up(&mut self, from: NodeIx, to: NodeIx) {
        let key = self.next_conn;
        self.next_conn += 1;
        let mut ends = [End { node: from, life: 0, local: 0 }; 2];
        for (side, node) in [(0, from), (1, to)] {
            let n = &mut self.nodes[node as usize];
            let local = n.next_conn;
            n.next_conn += 1;
            n.conns.insert(local, key);
            n.links.insert(local);
            ends[side] = End { node, life: n.life, local };
        }
        self.conns.insert(key, Conn { ends, severed: false, arrives: [0; 2], closed: [false; 2] });
        self.open_shared_streams(key, from, to);
    }

    /// Opens a data link from `from` to `to`, beside the connections the
    /// node cores keep: the objects both hold sync over it (placement links
    /// the replicas of an object, which the cores' random views would not).
    /// Up after a round trip if `to` is up and reachable and the two are
    /// not connected already; otherwise nothing happens (ask again).
    pub fn link(&mut self, from: NodeIx, to: NodeIx) {
        if from == to || !self.nodes[from as usize].up {
            return;
        }
        let rtt = self.latency() + self.latency();
        let life = self.nodes[from as usize].life;
        self.queue.push(self.now + rtt, Event::Link { from, from_life: life, to });
    }

    /// Closes the data links between `a` and `b`: gone at `a` at once, at
    /// `b` one hop later.
    pub fn unlink(&mut self, a: NodeIx, b: NodeIx) {
        let links: Vec<(ConnId, u64)> = {
            let n = &self.nodes[a as usize];
            n.links
                .iter()
                .filter_map(|local| {
                    let key = *n.conns.get(local)?;
                    let c = self.conns.get(&key)?;
                    c.ends.iter().any(|e| e.node == b).then_some((*local, key))
                })
                .collect()
        };
        for (local, key) in links {
            let n = &mut self.nodes[a as usize];
            n.conns.remove(&local);
            n.links.remove(&local);
            for o in n.objects.values_mut() {
                if let Some(stream) = o.streams.remove(&key) {
                    o.replica.abort(stream);
                }
            }
            let hop = self.latency();
            self.sever(key, a, hop);
        }
    }

    /// Whether `a` and `b` have a connection that still carries bytes (one
    /// of the cores' or a data link).
    pub fn connected(&self, a: NodeIx, b: NodeIx) -> bool {
        let n = &self.nodes[a as usize];
        n.conns.values().any(|key| {
            self.conns.get(key).is_some_and(|c| !c.severed && c.ends.iter().any(|e| e.node == b))
        })
    }

    /// The peers `node` has data links to.
    pub fn links(&self, node: NodeIx) -> Vec<NodeIx> {
        let n = &self.nodes[node as usize];
        n.links
            .iter()
            .filter_map(|local| {
                let c = self.conns.get(n.conns.get(local)?)?;
                c.ends.iter().find(|e| e.node != node).map(|e| e.node)
            })
            .collect()
    }

    /// Opens `object`'s stream on both ends of a connection, if both hold it.
    pub(super) fn open_stream(&mut self, conn: u64, object: ObjectId) {
        let Some(c) = self.conns.get(&conn) else { return };
        if c.severed {
            return;
        }
        let ends = c.ends;
        // Each end holds it, has no stream of it here yet, and streams it
        // with the other.
        let both = ends.iter().zip(ends.iter().rev()).all(|(e, other)| {
            let n = &self.nodes[e.node as usize];
            n.objects
                .get(&object)
                .is_some_and(|o| !o.streams.contains_key(&conn) && o.admits(other.node))
        });
        if !both {
            return;
        }
        // As the transport's exporter value: one per connection and
        // object, the same at both ends, so signed Hellos are bound here too.
        let mut binding = [0u8; 32];
        binding[..8].copy_from_slice(&conn.to_le_bytes());
        binding[8..16].copy_from_slice(&object.to_le_bytes());
        let sides = [ChannelBinding::opener(binding), ChannelBinding::acceptor(binding)];
        for (end, side) in ends.into_iter().zip(sides) {
            let n = &mut self.nodes[end.node as usize];
            let o = n.objects.get_mut(&object).expect("checked above");
            if let Ok(stream) = o.replica.open(StreamOpts::default().binding(side)) {
                o.streams.insert(conn, stream);
            }
            n.dirty.insert(object);
        }
    }

    /// Carries out what a node's core and replicas have to say.
    pub(super) fn flush(&mut self, node: NodeIx) {
        let now = self.now;
        loop {
            let n = &mut self.nodes[node as usize];
            if !n.up {
                return;
            }
            if let Some(d) = n.core.poll_transmit() {
                n.traffic.datagrams += 1;
                n.traffic.datagram_bytes += d.bytes.len() as u64 + self.config.datagram_overhead;
                self.send_datagram(node, d.to, d.bytes);
                continue;
            }
            if let Some(command) = n.core.poll_command() {
                match command {
                    Command::Dial { addr, .. } => {
                        let rtt = self.latency() + self.latency();
                        let life = self.nodes[node as usize].life;
                        self.queue.push(
                            now + rtt,
                            Event::Handshake { from: node, from_life: life, to: addr },
                        );
                    }
                    Command::Close { conn, .. } => self.close(node, conn),
                }
                continue;
            }
            if let Some((local, bytes)) = n.core.poll_message() {
                if let Some(&conn) = n.conns.get(&local) {
                    self.send_control(node, conn, bytes);
                }
                continue;
            }
            if let Some(event) = n.core.poll_event() {
                self.observe(node, event);
                continue;
            }
            break;
        }
        let n = &mut self.nodes[node as usize];
        if let Some(at) = n.core.poll_timeout()
            && n.timer_at.is_none_or(|t| at < t)
        {
            n.timer_at = Some(at.max(now));
            let life = n.life;
            self.queue.push(at.max(now), Event::NodeTimer { node, life });
        }
        let dirty = std::mem::take(&mut self.nodes[node as usize].dirty);
        for object in dirty {
            self.transmit(node, object);
        }
    }

    /// Sends what `object`'s streams on `node` have to send, and arms its
    /// timer.
    fn transmit(&mut self, node: NodeIx, object: ObjectId) {
        let now = self.now;
        let life = self.nodes[node as usize].life;
        let Some(o) = self.nodes[node as usize].objects.get_mut(&object) else { return };
        let mut outgoing = Vec::new();
        for (&conn, &stream) in &o.streams {
            let mut buf = Vec::new();
            while let Ok(n) = o.replica.poll_transmit(stream, &mut buf) {
                if n == 0 {
                    break;
                }
            }
            if !buf.is_empty() {
                outgoing.push((conn, buf));
            }
        }
        // Streams the core ended are gone once their Close went out.
        let open: BTreeSet<repred::StreamId> = o.replica.open_streams().collect();
        o.streams.retain(|_, s| open.contains(s) || o.replica.stream_stats(*s).is_some());
        while o.replica.poll_event().is_some() {}
        if let Some(at) = o.replica.poll_timeout()
            && o.timer_at.is_none_or(|t| at < t)
        {
            let at = at.max(now);
            o.timer_at = Some(at);
            self.queue.push(at, Event::ObjectTimer { node, life, object });
        }
        for (conn, bytes) in outgoing {
            self.send_bytes(node, conn, object, bytes);
        }
    }

    fn send_datagram(&mut self, from: NodeIx, to: NodeIx, bytes: Vec<u8>) {
        if to as usize >= self.nodes.len() || self.rng.random_bool(self.config.loss) {
            return;
        }
        if !self.reachable(from, to) {
            return;
        }
        if self.rng.random_bool(self.config.duplicate) {
            let at = self.now + self.latency();
            self.queue.push(at, Event::Datagram { to, bytes: bytes.clone() });
        }
        let at = self.now + self.latency();
        self.queue.push(at, Event::Datagram { to, bytes });
    }

    fn send_bytes(&mut self, from: NodeIx, conn: u64, object: ObjectId, bytes: Vec<u8>) {
        if let Some((at, side)) = self.stream_arrival(from, conn, bytes.len()) {
            self.queue.push(at, Event::Bytes { conn, side, object, bytes });
        }
    }

    fn send_control(&mut self, from: NodeIx, conn: u64, bytes: Vec<u8>) {
        let overhead = self.config.packet_overhead * (bytes.len() as u64).div_ceil(1_200);
        self.nodes[from as usize].traffic.control_bytes += bytes.len() as u64 + overhead;
        if let Some((at, side)) = self.stream_arrival(from, conn, bytes.len()) {
            self.queue.push(at, Event::Control { conn, side, bytes });
        }
    }

    /// Counts `len` stream bytes sent by `from` on `conn`; when and at
    /// which end they arrive, if the connection still carries anything.
    /// Stream bytes are reliable and ordered: never before earlier ones.
    fn stream_arrival(&mut self, from: NodeIx, conn: u64, len: usize) -> Option<(u64, usize)> {
        let latency = self.latency();
        let overhead = self.config.packet_overhead * (len as u64).div_ceil(1_200);
        self.nodes[from as usize].traffic.stream_bytes += len as u64 + overhead;
        let c = self.conns.get_mut(&conn)?;
        if c.severed {
            return None;
        }
        let side = usize::from(c.ends[0].node == from);
        let at = (self.now + latency).max(c.arrives[side]);
        c.arrives[side] = at;
        Some((at, side))
    }

    /// `node`'s core closed a connection: gone here at once, at the peer
    /// one hop later.
    fn close(&mut self, node: NodeIx, local: ConnId) {
        let now = self.now;
        let n = &mut self.nodes[node as usize];
        let Some(conn) = n.conns.remove(&local) else { return };
        n.core.handle_disconnected(now, local);
        for o in n.objects.values_mut() {
            if let Some(stream) = o.streams.remove(&conn) {
                o.replica.abort(stream);
            }
        }
        let hop = self.latency();
        self.sever(conn, node, hop);
    }
}
