//! The core's sessions over a raw quinn stream on loopback: catch-up of a
//! fresh node, resync of equal replicas, and the same bytes through quinn
//! alone in the same run.

use std::collections::HashMap;
use std::collections::hash_map::Entry as MapEntry;
use std::hash::BuildHasherDefault;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint};
use repred::{Config, Envelope, Reduce, Replica, SourceId, Stamp, StreamOpts, Timestamp};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::{Deserialize, Serialize};

use crate::bigstate::BigLww;
use crate::gossip::{KeyHasher, Lww, Rng, Writes, value_text};

const NOW: u64 = 1_700_000_000_000;

// ------------------------------------------------ the catch-up map

/// A fixed-size byte string that encodes as bytes (a length and a copy), as
/// `serde_bytes` does for slices, rather than as N separately encoded
/// elements (serde's default for arrays, a call per byte each way).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Bytes<const N: usize>(pub [u8; N]);

impl<const N: usize> Serialize for Bytes<N> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de, const N: usize> Deserialize<'de> for Bytes<N> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<const N: usize>;
        impl<'de, const N: usize> serde::de::Visitor<'de> for Visit<N> {
            type Value = Bytes<N>;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                write!(f, "{N} bytes")
            }

            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes<N>, E> {
                let bytes =
                    <[u8; N]>::try_from(v).map_err(|_| E::invalid_length(v.len(), &self))?;
                Ok(Bytes(bytes))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Bytes<N>, A::Error> {
                let mut bytes = [0u8; N];
                for (i, b) in bytes.iter_mut().enumerate() {
                    *b = seq
                        .next_element()?
                        .ok_or_else(|| serde::de::Error::invalid_length(i, &self))?;
                }
                Ok(Bytes(bytes))
            }
        }
        d.deserialize_bytes(Visit::<N>)
    }
}

/// A key of the catch-up map: 16 bytes.
pub type Key = Bytes<16>;
/// A value of the catch-up map: 32 bytes.
pub type Value = Bytes<32>;

/// One write of the catch-up map. `at` orders it; on the wire it is `None`
/// when it equals the stamp of the update that carries the write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Put {
    pub key: Key,
    pub at: Option<Stamp>,
    pub value: Value,
}

/// An update of the catch-up map: one write (every history update here, so
/// it needs no allocation) or many (a snapshot).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Puts {
    One(Put),
    Many(Vec<Put>),
}

impl Puts {
    fn each(&mut self, mut f: impl FnMut(&mut Put)) {
        match self {
            Puts::One(put) => f(put),
            Puts::Many(puts) => puts.iter_mut().for_each(f),
        }
    }

    /// The writes `put` applied (a map's `reduce`).
    pub(crate) fn reduce_with(self, mut put: impl FnMut(&Put) -> bool) -> Option<Puts> {
        match self {
            Puts::One(p) => put(&p).then_some(Puts::One(p)),
            Puts::Many(puts) => {
                let changed: Vec<Put> = puts.into_iter().filter(|p| put(p)).collect();
                (!changed.is_empty()).then_some(Puts::Many(changed))
            }
        }
    }

    /// Fills in the stamp of writes that carry none (`Reduce::stamp`).
    pub(crate) fn stamp(&mut self, stamp: Stamp) {
        self.each(|p| {
            p.at.get_or_insert(stamp);
        });
    }

    /// Leaves implicit the stamps equal to the carrier's (`Reduce::unstamp`).
    pub(crate) fn unstamp(&mut self, stamp: Stamp) {
        self.each(|p| {
            if p.at == Some(stamp) {
                p.at = None;
            }
        });
    }
}

/// Last writer wins: whether `put`, stamped, replaces what `slot` holds
/// (and then it does).
pub(crate) fn overwrite(slot: &mut (Stamp, Value), stamp: Stamp, put: &Put) -> bool {
    if stamp > slot.0 {
        *slot = (stamp, put.value);
        true
    } else {
        false
    }
}

/// scuttlebutt's model with fixed-size keys and values, as a user with
/// 16-byte keys and 32-byte values would write it: key -> (stamp, value),
/// last writer wins per key, no allocation per write. (The gossip scenario
/// keeps [`Lww`]'s strings, which chitchat needs too.)
#[derive(Debug, Default)]
pub struct FixedLww(pub HashMap<Key, (Stamp, Value), BuildHasherDefault<KeyHasher>>);

impl FixedLww {
    /// Applies one stamped write; whether it won.
    fn put(&mut self, put: &Put) -> bool {
        // Unstamped writes cannot be ordered; `stamp` has filled them in.
        let Some(stamp) = put.at else { return false };
        match self.0.entry(put.key) {
            MapEntry::Occupied(mut slot) => overwrite(slot.get_mut(), stamp, put),
            MapEntry::Vacant(slot) => {
                slot.insert((stamp, put.value));
                true
            }
        }
    }
}

impl Reduce for FixedLww {
    type Update = Puts;

    fn reduce(&mut self, update: Puts) -> Option<Puts> {
        update.reduce_with(|p| self.put(p))
    }

    fn snapshot(&self) -> Puts {
        let all = self.0.iter().map(|(&key, &(s, value))| Put { key, at: Some(s), value });
        Puts::Many(all.collect())
    }

    fn stamp(update: &mut Puts, stamp: Stamp) {
        update.stamp(stamp);
    }

    fn unstamp(change: &mut Puts, stamp: Stamp) {
        change.unstamp(stamp);
    }
}

/// A server and a client endpoint on 127.0.0.1 with a self-signed
/// certificate (TLS 1.3, ring), and a connection between them.
pub(crate) async fn connect() -> (Endpoint, Endpoint, Connection, Connection) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
    let der = cert.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls 1.3")
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], key)
        .expect("server cert");
    tls.alpn_protocols = vec![b"bench".to_vec()];
    let server_config = quinn::ServerConfig::with_crypto(Arc::new(
        QuicServerConfig::try_from(tls).expect("quic server config"),
    ));
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let server = Endpoint::server(server_config, any).expect("server endpoint");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).expect("root");
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"bench".to_vec()];
    let mut client = Endpoint::client(any).expect("client endpoint");
    client.set_default_client_config(quinn::ClientConfig::new(Arc::new(
        QuicClientConfig::try_from(tls).expect("quic client config"),
    )));
    let addr = server.local_addr().expect("server addr");
    let accept = {
        let server = server.clone();
        tokio::spawn(async move { server.accept().await.expect("incoming").await.expect("accept") })
    };
    let c = client.connect(addr, "localhost").expect("connect").await.expect("handshake");
    let s = accept.await.expect("accept task");
    (server, client, s, c)
}

/// A replica holding `total` history updates from `sources` sources of an
/// LWW map (16-byte keys, 32-byte values), all kept in its history.
pub fn history_source<T: Reduce<Update = Puts> + Default>(
    total: usize,
    sources: usize,
) -> Replica<T> {
    let config = Config::default().history_limit(total + 1);
    let config = part_bytes(config, "CATCHUP_PART_BYTES");
    let mut r = Replica::with_config(SourceId::random(), T::default(), config);
    for envelope in history_writes(total, sources) {
        r.apply(NOW + 2_000, envelope);
    }
    r
}

/// The catch-up scenario's writes, in order: `total` writes of 100,000
/// keys round-robin on `sources` sources.
fn history_writes(total: usize, sources: usize) -> impl Iterator<Item = Envelope<Puts>> {
    let ids: Vec<SourceId> = (0..sources)
        .map(|s| SourceId::from_bytes((s as u128 + 1).to_be_bytes()).expect("id"))
        .collect();
    let mut rng = Rng::new(99);
    let values: Vec<Value> = (0..1024)
        .map(|_| {
            let mut value = [0u8; 32];
            value.copy_from_slice(value_text(&mut rng, 32).as_bytes());
            Bytes(value)
        })
        .collect();
    (0..total).map(move |i| {
        let mut key = [0u8; 16];
        key.copy_from_slice(format!("key{:013}", i % 100_000).as_bytes());
        let ts = Timestamp::new(NOW + (i / 1000) as u64, (i % 1000) as u16 + 1);
        let update = Puts::One(Put { key: Bytes(key), at: None, value: values[i % values.len()] });
        Envelope::new(ids[i % sources], ts, update)
    })
}

/// `config` with the snapshot part size `var` names, if set (to measure
/// other sizes than the default).
pub(crate) fn part_bytes(config: Config, var: &str) -> Config {
    match std::env::var(var).ok().and_then(|v| v.parse().ok()) {
        Some(bytes) => config.snapshot_part_bytes(bytes),
        None => config,
    }
}

pub struct CatchUp {
    pub time: Duration,
    pub stream_bytes: u64,
    pub udp_bytes: u64,
    pub applied: u64,
}

/// The source side: reads the peer's Hello, then a blocking encoder fills
/// reused buffers with `poll_transmit` while a writer task hands the
/// previous one to quinn.
pub(crate) async fn serve<T>(conn: Connection, mut source: Replica<T>) -> (Replica<T>, u64)
where
    T: Reduce + Send + 'static,
    T::Update: Send,
{
    let (mut send, mut recv) = conn.accept_bi().await.expect("stream");
    let sid = source.open(StreamOpts::default().tail(false)).expect("open");
    let mut buf = vec![0u8; 64 << 10];
    while source.peer_id(sid).is_none() {
        let n = recv.read(&mut buf).await.expect("read").expect("hello");
        source.handle(sid, NOW + 2_000, &buf[..n]).expect("hello handled");
    }
    let (full_tx, mut full_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(3);
    let (free_tx, mut free_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    for _ in 0..4 {
        free_tx.try_send(Vec::with_capacity(512 << 10)).expect("pool");
    }
    let writer = tokio::spawn(async move {
        while let Some(chunk) = full_rx.recv().await {
            send.write_all(&chunk).await.expect("write");
            let mut chunk = chunk;
            chunk.clear();
            let _ = free_tx.send(chunk).await;
        }
        send.finish().expect("finish");
        let _ = send.stopped().await;
    });
    let encoder = tokio::task::spawn_blocking(move || {
        while let Some(mut out) = free_rx.blocking_recv() {
            while out.len() < 256 << 10 {
                if source.poll_transmit(sid, &mut out).expect("transmit") == 0 {
                    break;
                }
            }
            if out.is_empty() {
                break;
            }
            full_tx.blocking_send(out).expect("writer alive");
        }
        drop(full_tx);
        let bytes = source.stream_stats(sid).map_or(0, |s| s.bytes_sent);
        (source, bytes)
    });
    let (source, bytes) = encoder.await.expect("encoder");
    writer.await.expect("writer");
    (source, bytes)
}

async fn fetch<T: Reduce + Default>(conn: Connection, total: u64, tail: bool) -> Replica<T> {
    fetch_until(conn, tail, |r| r.stats().applied >= total).await
}

/// A fresh replica's side of a stream: its Hello, then what comes, until
/// `done` or the stream's end.
pub(crate) async fn fetch_until<T: Reduce + Default>(
    conn: Connection,
    tail: bool,
    done: impl Fn(&Replica<T>) -> bool,
) -> Replica<T> {
    let (mut send, mut recv) = conn.open_bi().await.expect("open stream");
    let mut fresh = Replica::new(SourceId::random(), T::default());
    let sid = fresh.open(StreamOpts::default().tail(tail)).expect("open");
    let mut out = Vec::new();
    while fresh.poll_transmit(sid, &mut out).expect("transmit") > 0 {}
    send.write_all(&out).await.expect("hello");
    out.clear();
    while !done(&fresh) {
        let Some(chunk) = recv.read_chunk(usize::MAX, true).await.expect("read") else { break };
        fresh.handle(sid, NOW + 2_000, &chunk.bytes).expect("handle");
        while fresh.poll_transmit(sid, &mut out).unwrap_or(0) > 0 {}
        if !out.is_empty() {
            let _ = send.write_all(&out).await;
            out.clear();
        }
    }
    let _ = send.finish();
    fresh
}

pub async fn catch_up(source: Replica<FixedLww>, total: u64) -> (CatchUp, Replica<FixedLww>) {
    let (_s, _c, sconn, cconn) = connect().await;
    let start = Instant::now();
    let server = tokio::spawn(serve(sconn.clone(), source));
    let fresh = fetch::<FixedLww>(cconn, total, false).await;
    let time = start.elapsed();
    let (source, stream_bytes) = server.await.expect("server");
    let outcome = CatchUp {
        time,
        stream_bytes,
        udp_bytes: sconn.stats().udp_tx.bytes,
        applied: fresh.stats().applied,
    };
    (outcome, source)
}

/// The same catch-up when the session may choose its path: the source's
/// map says how many entries a snapshot holds (`BigLww::entries_hint`), so
/// a fresh peer that lacks 1M history updates over 100,000 keys is sent
/// the 100,000 entries instead. Done when the fresh replica's clock is the
/// source's (a snapshot applies no history updates to count).
pub async fn catch_up_cheaper(source: Replica<BigLww>) -> (CatchUp, Replica<BigLww>) {
    let (_s, _c, sconn, cconn) = connect().await;
    let target = source.clock().clone();
    let start = Instant::now();
    let server = tokio::spawn(serve(sconn.clone(), source));
    // The clock is compared (100 sources) only once the snapshot is in:
    // after each of the ~6,000 reads it cost the receiving thread ~3 ms.
    let fresh: Replica<BigLww> =
        fetch_until(cconn, false, |r| r.stats().snapshots >= 1 && r.clock() == &target).await;
    let time = start.elapsed();
    let (source, stream_bytes) = server.await.expect("server");
    assert_eq!(fresh.clock(), &target, "the fresh node did not catch up");
    assert_eq!(fresh.state().0.len(), source.state().0.len(), "the fresh node lacks entries");
    let outcome = CatchUp {
        time,
        stream_bytes,
        udp_bytes: sconn.stats().udp_tx.bytes,
        applied: fresh.stats().snapshots,
    };
    (outcome, source)
}

/// quinn alone: `bytes` bytes written in 256 KiB chunks on one stream and
/// read until its end.
pub async fn raw(bytes: usize) -> (Duration, u64) {
    let (_s, _c, sconn, cconn) = connect().await;
    let data = vec![0x5Au8; 256 << 10];
    let start = Instant::now();
    let server = tokio::spawn(async move {
        let (mut send, mut recv) = sconn.accept_bi().await.expect("stream");
        let mut b = [0u8; 1];
        let _ = recv.read(&mut b).await;
        let mut left = bytes;
        while left > 0 {
            let n = left.min(data.len());
            send.write_all(&data[..n]).await.expect("write");
            left -= n;
        }
        send.finish().expect("finish");
        let _ = send.stopped().await;
        sconn.stats().udp_tx.bytes
    });
    let (mut send, mut recv) = cconn.open_bi().await.expect("open");
    send.write_all(&[1]).await.expect("hello");
    let mut got = 0usize;
    while let Some(chunk) = recv.read_chunk(usize::MAX, true).await.expect("read") {
        got += chunk.bytes.len();
    }
    assert_eq!(got, bytes);
    let time = start.elapsed();
    let udp = server.await.expect("server");
    (time, udp)
}

/// CPU time used so far: by this process (every thread, user and system)
/// or by the calling thread alone. A figure that other processes on a
/// loaded machine inflate less than wall time.
pub(crate) fn cpu_time(thread: bool) -> Duration {
    let clock = if thread { libc::CLOCK_THREAD_CPUTIME_ID } else { libc::CLOCK_PROCESS_CPUTIME_ID };
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `t` is a valid timespec for the call to fill in.
    if unsafe { libc::clock_gettime(clock, &mut t) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Encodes the whole transcript of `source` for a fresh replica, then
/// decodes and applies it into one, each on one core: (bytes, encode time,
/// apply time, updates applied).
fn catchup_cpu(source: &mut Replica<FixedLww>) -> (usize, Duration, Duration, u64) {
    let mut out = Vec::with_capacity(80 << 20);
    let mut from = Replica::new(SourceId::random(), FixedLww::default());
    let (sid, fid) = (
        source.open(StreamOpts::default().tail(false)).expect("open"),
        from.open(StreamOpts::default().tail(false)).expect("open"),
    );
    let mut hello = Vec::new();
    while from.poll_transmit(fid, &mut hello).unwrap_or(0) > 0 {}
    source.handle(sid, NOW + 2_000, &hello).expect("hello");
    let t = Instant::now();
    while source.poll_transmit(sid, &mut out).unwrap_or(0) > 0 {}
    let encode = t.elapsed();
    let t = Instant::now();
    from.handle(fid, NOW + 2_000, &out).expect("apply");
    let apply = t.elapsed();
    (out.len(), encode, apply, from.stats().applied)
}

/// The floor under decode + apply: the user's map alone reducing the same
/// writes, stamped and in the same order, into an empty map (as the fresh
/// replica's grows), no decoding, clock or history.
fn catchup_map_alone(total: usize) -> Duration {
    let writes: Vec<Puts> = history_writes(total, 100)
        .map(|e| {
            let stamp = e.stamp();
            let mut change = e.change;
            FixedLww::stamp(&mut change, stamp);
            change
        })
        .collect();
    let mut map = FixedLww::default();
    let t = Instant::now();
    let changed = writes.into_iter().filter_map(|w| map.reduce(w)).count();
    let elapsed = t.elapsed();
    assert_eq!(changed, total, "every write is newer than the last to its key");
    elapsed
}

/// `CATCHUP_RUNS` (default 3) QUIC runs, then the encoder and the applier
/// alone on one core each, `CATCHUP_CPU` times (default 1; set
/// `CATCHUP_RUNS=0 CATCHUP_CPU=5` to profile the core's paths alone), then
/// `CATCHUP_RUNS` runs by the cheaper path (alone with `CATCHUP_HISTORY=0`).
pub fn catchup() {
    let total = 1_000_000u64;
    let env = |name: &str, default: usize| {
        std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
    };
    let (runs, cpu) = (env("CATCHUP_RUNS", 3), env("CATCHUP_CPU", 1));
    let rt = runtime();
    // `CATCHUP_HISTORY=0`: the cheaper path's runs alone (to measure or
    // profile the streamed snapshot without the history path's load).
    if env("CATCHUP_HISTORY", 1) == 0 {
        catchup_cheaper(&rt, total, runs);
        return;
    }
    println!(
        "### catch-up: a fresh node pulls 1,000,000 history updates from 100 sources over loopback QUIC\n"
    );
    println!("`cargo run --release -p repred-bench -- catchup`\n");
    println!(
        "LWW map of fixed-size keys and values (`FixedLww`: 16-byte keys, 32-byte values, each encoded as bytes; one write per update, no allocation per write), 100,000 keys; the core's session (Hello, history, Sync) over one quinn 0.11 bidirectional stream, self-signed TLS 1.3 (ring); the source's encoder fills reused 256 KiB buffers with `poll_transmit` on a blocking thread while a writer task hands the previous buffer to quinn; the fresh node decodes and applies as chunks arrive. Raw quinn moves the same number of bytes on one stream on a fresh connection in the same run. Median of 3.\n"
    );
    println!(
        "| run | repred time | updates/s | stream bytes/update | UDP bytes/update | raw quinn time | raw MB/s | repred / raw throughput |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut source = history_source::<FixedLww>(total as usize, 100);
    let mut rows = Vec::new();
    for run in 1..=runs {
        let (ours, back) = rt.block_on(catch_up(source, total));
        source = back;
        assert_eq!(ours.applied, total);
        let (raw_time, _raw_udp) = rt.block_on(raw(ours.stream_bytes as usize));
        let ratio = raw_time.as_secs_f64() / ours.time.as_secs_f64();
        println!(
            "| {run} | {:.3} s | {:.2} M | {:.1} | {:.1} | {:.3} s | {:.0} | {:.2} |",
            ours.time.as_secs_f64(),
            total as f64 / ours.time.as_secs_f64() / 1e6,
            ours.stream_bytes as f64 / total as f64,
            ours.udp_bytes as f64 / total as f64,
            raw_time.as_secs_f64(),
            ours.stream_bytes as f64 / raw_time.as_secs_f64() / 1e6,
            ratio
        );
        rows.push(ratio);
    }
    rows.sort_by(f64::total_cmp);
    // Where the time goes, without QUIC: encoding the whole transcript, and
    // decoding and applying it into a fresh replica, each on one core.
    for _ in 0..cpu {
        let (bytes, encode, apply, applied) = catchup_cpu(&mut source);
        println!(
            "\nencoded payload per update (key + value): 48 bytes; median repred / raw throughput: {:.2}. Without QUIC, on one core each: encoding the transcript ({} bytes) takes {:.3} s ({:.1} M updates/s), decoding and applying it into a fresh replica {:.3} s ({:.1} M updates/s).\n",
            rows.get(rows.len() / 2).copied().unwrap_or(f64::NAN),
            bytes,
            encode.as_secs_f64(),
            total as f64 / encode.as_secs_f64() / 1e6,
            apply.as_secs_f64(),
            applied as f64 / apply.as_secs_f64() / 1e6,
        );
        let alone = catchup_map_alone(total as usize);
        println!(
            "The map alone reducing the same writes, stamped, in order, into an empty map: {:.3} s ({:.1} M updates/s).\n",
            alone.as_secs_f64(),
            total as f64 / alone.as_secs_f64() / 1e6,
        );
    }
    drop(source);
    catchup_cheaper(&rt, total, runs);
}

/// The catch-up scenario by the cheaper path (issue 16, point 4): the same
/// 1M history updates over 100,000 keys, but the map counts its entries,
/// so the session sends the fresh node a streamed snapshot of 100,000
/// entries instead of the history. Raw quinn moves the same bytes (the
/// state's encoding, its clock and the frames') in the same run.
fn catchup_cheaper(rt: &tokio::runtime::Runtime, total: u64, runs: usize) {
    println!(
        "#### the cheaper path: the same source, its map counting its entries (`BigLww`), so the fresh node is sent a streamed snapshot\n"
    );
    println!(
        "| run | repred time | stream bytes | snapshot parts' entries | raw quinn time, same bytes | repred / raw time | CPU, repred | CPU, raw quinn |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut source = history_source::<BigLww>(total as usize, 100);
    let entries = source.state().0.len();
    let mut rows = Vec::new();
    for run in 1..=runs {
        // CPU of the whole process (both ends, quinn, the runtime) over
        // each transfer, connection set-up included.
        let cpu = cpu_time(false);
        let (ours, back) = rt.block_on(catch_up_cheaper(source));
        let ours_cpu = cpu_time(false) - cpu;
        source = back;
        assert_eq!(ours.applied, 1, "the fresh node was not sent a snapshot");
        let cpu = cpu_time(false);
        let (raw_time, _) = rt.block_on(raw(ours.stream_bytes as usize));
        let raw_cpu = cpu_time(false) - cpu;
        let ratio = ours.time.as_secs_f64() / raw_time.as_secs_f64();
        println!(
            "| {run} | {:.3} s | {} | {entries} | {:.3} s | {:.2} | {:.1} ms | {:.1} ms |",
            ours.time.as_secs_f64(),
            ours.stream_bytes,
            raw_time.as_secs_f64(),
            ratio,
            ours_cpu.as_secs_f64() * 1e3,
            raw_cpu.as_secs_f64() * 1e3,
        );
        rows.push(ratio);
    }
    rows.sort_by(f64::total_cmp);
    println!(
        "\nmedian repred / raw quinn time by the cheaper path: {:.2} (goal: at most 1.5)\n",
        rows.get(rows.len() / 2).copied().unwrap_or(f64::NAN)
    );
    let cpu = std::env::var("CATCHUP_CPU").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    for _ in 0..cpu {
        let (bytes, encode, apply, inserts) = cheaper_cpu(&mut source);
        println!(
            "Without QUIC, one thread's CPU time: encoding the snapshot ({bytes} bytes) {:.1} ms, decoding and merging it into a fresh replica (in 1,200-byte reads, as quinn hands them over) {:.1} ms; the map's own inserts of the same entries into a reserved map {:.1} ms.\n",
            encode.as_secs_f64() * 1e3,
            apply.as_secs_f64() * 1e3,
            inserts.as_secs_f64() * 1e3,
        );
    }
}

/// The cheaper path's two ends without QUIC, each on one core: the source
/// encodes the whole session for a fresh replica (Hello answered, the
/// snapshot, Sync), then the fresh replica takes it in reads of a QUIC
/// packet's size; and, as a floor, the bare inserts of the snapshot's
/// entries into a reserved map.
fn cheaper_cpu(source: &mut Replica<BigLww>) -> (usize, Duration, Duration, Duration) {
    let mut out = Vec::with_capacity(8 << 20);
    let mut fresh = Replica::new(SourceId::random(), BigLww::default());
    let (sid, fid) = (
        source.open(StreamOpts::default().tail(false)).expect("open"),
        fresh.open(StreamOpts::default().tail(false)).expect("open"),
    );
    let mut hello = Vec::new();
    while fresh.poll_transmit(fid, &mut hello).unwrap_or(0) > 0 {}
    let t = cpu_time(true);
    source.handle(sid, NOW + 2_000, &hello).expect("hello");
    while source.poll_transmit(sid, &mut out).unwrap_or(0) > 0 {}
    let encode = cpu_time(true) - t;
    source.close(sid);
    let t = cpu_time(true);
    // As a driver does: what the stream has to send is polled after each
    // read.
    let mut reply = Vec::new();
    for chunk in out.chunks(1_200) {
        fresh.handle(fid, NOW + 2_000, chunk).expect("apply");
        while fresh.poll_transmit(fid, &mut reply).unwrap_or(0) > 0 {}
        reply.clear();
    }
    let apply = cpu_time(true) - t;
    assert_eq!(fresh.clock(), source.clock(), "the fresh replica did not catch up");
    let puts: Vec<Put> = source
        .state()
        .0
        .iter()
        .map(|(&key, &(s, value))| Put { key, at: Some(s), value })
        .collect();
    let mut map = BigLww::default();
    let t = cpu_time(true);
    map.reserve(puts.len() as u64);
    let changed = map.reduce(Puts::Many(puts));
    let inserts = cpu_time(true) - t;
    assert_eq!(changed.map(|c| matches!(c, Puts::Many(p) if p.len() == map.0.len())), Some(true));
    (out.len(), encode, apply, inserts)
}

/// Equal replicas of `sources` sources exchange Hello and Sync over QUIC:
/// UDP bytes both ways for the exchange (the connection is already up).
async fn resync_once(sources: usize) -> u64 {
    let (_s, _c, sconn, cconn) = connect().await;
    let mut a = Replica::new(SourceId::random(), Lww::default());
    let mut b = Replica::new(SourceId::random(), Lww::default());
    for s in 0..sources {
        let id = SourceId::from_bytes((s as u128 + 1).to_be_bytes()).expect("id");
        let mut key = [0u8; 16];
        key.copy_from_slice(format!("key{:013}", s % 1000).as_bytes());
        let e = Envelope::new(
            id,
            Timestamp::new(NOW, 1),
            Writes { set: vec![(key, "v".into())], at: Vec::new() },
        );
        a.apply(NOW, e.clone());
        b.apply(NOW, e);
    }
    // Let the handshake's last packets (session tickets, acks) go first.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = sconn.stats().udp_tx.bytes + cconn.stats().udp_tx.bytes;
    let side = |conn: Connection, mut r: Replica<Lww>, opens: bool| async move {
        let (mut send, mut recv) =
            if opens { conn.open_bi().await } else { conn.accept_bi().await }.expect("stream");
        let sid = r.open(StreamOpts::default().tail(false)).expect("open");
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            while r.poll_transmit(sid, &mut out).unwrap_or(0) > 0 {}
            if !out.is_empty() {
                send.write_all(&out).await.expect("write");
                out.clear();
            }
            if r.stream_count() == 0 {
                break;
            }
            match recv.read(&mut buf).await {
                Ok(Some(n)) => {
                    let _ = r.handle(sid, NOW, &buf[..n]);
                }
                _ => break,
            }
        }
        let _ = send.finish();
        let _ = send.stopped().await;
        r.stream_stats(sid).map_or(0, |s| s.bytes_sent)
    };
    let a_task = tokio::spawn(side(cconn.clone(), a, true));
    let b_task = tokio::spawn(side(sconn.clone(), b, false));
    let _ = a_task.await;
    let _ = b_task.await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let after = sconn.stats().udp_tx.bytes + cconn.stats().udp_tx.bytes;
    after - before
}

pub fn resync() {
    println!("### resync: two equal replicas over QUIC (an open connection)\n");
    println!("`cargo run --release -p repred-bench -- resync`\n");
    println!(
        "| sources | session bytes both ways (Hello + Sync) | UDP bytes both ways for the exchange |"
    );
    println!("|---:|---:|---:|");
    let rt = runtime();
    for sources in [10usize, 100, 100_000] {
        let udp = rt.block_on(resync_once(sources));
        let session = session_bytes(sources);
        println!("| {sources} | {session} | {udp} |");
    }
    println!();
}

/// The session bytes of the same exchange, from the streams' counters (the
/// in-memory network carries the same frames).
fn session_bytes(sources: usize) -> u64 {
    let mut net = repred::Network::new();
    let a = net.add(Replica::new(SourceId::random(), Lww::default()));
    let b = net.add(Replica::new(SourceId::random(), Lww::default()));
    for s in 0..sources {
        let id = SourceId::from_bytes((s as u128 + 1).to_be_bytes()).expect("id");
        let mut key = [0u8; 16];
        key.copy_from_slice(format!("key{:013}", s % 1000).as_bytes());
        let e = Envelope::new(
            id,
            Timestamp::new(NOW, 1),
            Writes { set: vec![(key, "v".into())], at: Vec::new() },
        );
        net[a].apply(NOW, e.clone());
        net[b].apply(NOW, e);
    }
    let link = net.link(a, b);
    net.pump();
    let [(_, sa), (_, sb)] = net.streams(link);
    net[a].stream_stats(sa).map_or(0, |s| s.bytes_sent)
        + net[b].stream_stats(sb).map_or(0, |s| s.bytes_sent)
}

/// One writer, `subs` subscribers, each on its own QUIC connection: the
/// writer makes `total` local updates while its streams send; returns the
/// time until every subscriber has applied all of them.
async fn fanout_once(subs: usize, total: u64) -> Duration {
    let (server, client, first_s, first_c) = connect().await;
    let mut pairs = vec![(first_s, first_c)];
    let addr = server.local_addr().expect("addr");
    for _ in 1..subs {
        let accept = {
            let server = server.clone();
            tokio::spawn(async move { server.accept().await.expect("incoming").await.expect("ok") })
        };
        let c = client.connect(addr, "localhost").expect("connect").await.expect("handshake");
        pairs.push((accept.await.expect("accept"), c));
    }
    let mut subscribers = Vec::new();
    let mut streams = Vec::new();
    for (s, c) in pairs {
        subscribers.push(tokio::spawn(fetch::<Lww>(c, total, true)));
        streams.push(s.accept_bi().await.expect("stream"));
    }
    // History for every update, so a subscriber that falls behind is sent
    // them rather than a snapshot (which would skip the counting).
    let config = Config::default().history_limit(total as usize + 1);
    let mut writer = Replica::with_config(SourceId::random(), Lww::default(), config);
    let mut outs = Vec::new();
    let mut buf = vec![0u8; 4096];
    for (send, recv) in streams {
        let sid = writer.open(StreamOpts::default()).expect("open");
        let mut recv = recv;
        while writer.peer_id(sid).is_none() {
            let n = recv.read(&mut buf).await.expect("read").expect("hello");
            writer.handle(sid, NOW, &buf[..n]).expect("hello");
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(2);
        let mut send = send;
        let task = tokio::spawn(async move {
            while let Some(chunk) = rx.recv().await {
                send.write_all(&chunk).await.expect("write");
            }
            let _ = send.finish();
            let _ = send.stopped().await;
        });
        outs.push((sid, tx, task, recv));
    }
    let mut rng = Rng::new(5);
    let values: Vec<String> = (0..256).map(|_| value_text(&mut rng, 32)).collect();
    let start = Instant::now();
    let mut written = 0u64;
    loop {
        let until = (written + 1000).min(total);
        while written < until {
            let mut key = [0u8; 16];
            key.copy_from_slice(format!("key{:013}", written % 10_000).as_bytes());
            let set = vec![(key, values[written as usize % values.len()].clone())];
            writer.update(NOW, Writes { set, at: Vec::new() }).expect("update");
            written += 1;
        }
        let mut all_sent = written == total;
        for (sid, tx, _, _) in &outs {
            if tx.capacity() > 0 {
                let mut out = Vec::with_capacity(256 << 10);
                while out.len() < 256 << 10 && writer.poll_transmit(*sid, &mut out).unwrap_or(0) > 0
                {
                }
                if !out.is_empty() {
                    tx.send(out).await.expect("writer task");
                }
            }
            all_sent &= writer.stream_stats(*sid).is_some_and(|s| s.updates_sent == total);
        }
        if all_sent {
            break;
        }
        if std::env::var("FANOUT_DEBUG").is_ok() {
            let sent: Vec<u64> = outs
                .iter()
                .map(|(sid, ..)| writer.stream_stats(*sid).map_or(0, |s| s.updates_sent))
                .collect();
            eprintln!("written {written} sent {sent:?}");
        }
        tokio::task::yield_now().await;
    }
    for (_, tx, task, _) in outs {
        drop(tx);
        let _ = task.await;
    }
    for s in subscribers {
        assert_eq!(s.await.expect("subscriber").stats().applied, total);
    }
    start.elapsed()
}

pub fn fanout() {
    let subs: usize = std::env::var("FANOUT_SUBS").ok().and_then(|v| v.parse().ok()).unwrap_or(16);
    let total: u64 =
        std::env::var("FANOUT_UPDATES").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    println!("### live fan-out: one writer, 16 subscribers over QUIC\n");
    println!("`cargo run --release -p repred-bench -- fanout`\n");
    println!(
        "The writer makes 100,000 local updates (LWW map, one 16-byte key and a 32-byte value each) while 16 streams, one QUIC connection per subscriber, send them; time until every subscriber has applied all of them. Writer and subscribers share the 2 cores.\n"
    );
    println!("| run | time | updates/s written | updates/s delivered (all subscribers) |");
    println!("|---:|---:|---:|---:|");
    let rt = runtime();
    for run in 1..=3 {
        let t = rt.block_on(fanout_once(subs, total));
        println!(
            "| {run} | {:.3} s | {:.2} M | {:.2} M |",
            t.as_secs_f64(),
            total as f64 / t.as_secs_f64() / 1e6,
            (subs as u64 * total) as f64 / t.as_secs_f64() / 1e6
        );
    }
    println!();
}
