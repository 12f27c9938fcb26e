//! `bigstate`: a state of over a gigabyte reaches a fresh node over
//! loopback QUIC (issue 16). The source holds `BIGSTATE_KEYS` keys (default
//! 20,000,000) of an LWW map with 16-byte keys and 32-byte values, and a
//! short history, so a fresh peer is sent a streamed snapshot: the
//! sender's clock, then parts of about `Config::snapshot_part_bytes` (64
//! KiB) made from the map as the stream drains, under the default frame
//! limit. Raw quinn moves the same number of bytes in the same run. Both
//! replicas live in this one process, so its RSS holds both.

use std::hash::BuildHasherDefault;
use std::time::Instant;

use indexmap::IndexMap;
use indexmap::map::Entry as MapEntry;
use repred::{Config, Envelope, Reduce, Replica, SourceId, Stamp, Timestamp};

use crate::gossip::KeyHasher;
use crate::quic::{
    Bytes, Key, Put, Puts, Value, connect, cpu_time, fetch_until, overwrite, part_bytes, raw,
    runtime, serve,
};
use crate::{reset_peak, rss_kib};

const NOW: u64 = 1_700_000_000_000;

/// The catch-up map kept in insertion order, so that its snapshot can be
/// cut by position: key -> (stamp, value), last writer wins.
#[derive(Debug, Default)]
pub struct BigLww(pub(crate) IndexMap<Key, (Stamp, Value), BuildHasherDefault<KeyHasher>>);

impl BigLww {
    fn put(&mut self, put: &Put) -> bool {
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

impl BigLww {
    /// The positions of the part after `cursor` (an 8-byte position), of at
    /// most `max` entries, and the next cursor (`None`: the last part).
    fn part_range(
        &self,
        cursor: Option<&[u8]>,
        max: usize,
    ) -> (std::ops::Range<usize>, Option<Vec<u8>>) {
        let start = cursor
            .and_then(|c| c.try_into().ok())
            .map_or(0, |b: [u8; 8]| u64::from_le_bytes(b) as usize)
            .min(self.0.len());
        let end = start.saturating_add(max.max(1)).min(self.0.len());
        let next = (end < self.0.len()).then(|| (end as u64).to_le_bytes().to_vec());
        (start..end, next)
    }
}

/// A run of the map's entries, serialized as the `Vec<Put>` of a
/// `Puts::Many`.
struct Part<'a>(&'a indexmap::map::Slice<Key, (Stamp, Value)>);

impl serde::Serialize for Part<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|(&key, &(at, value))| Put { key, at: Some(at), value }))
    }
}

impl Reduce for BigLww {
    type Update = Puts;

    fn reduce(&mut self, update: Puts) -> Option<Puts> {
        update.reduce_with(|p| self.put(p))
    }

    fn snapshot(&self) -> Puts {
        Puts::Many(
            self.0.iter().map(|(&key, &(s, value))| Put { key, at: Some(s), value }).collect(),
        )
    }

    fn entries_hint(&self) -> Option<u64> {
        Some(self.0.len() as u64)
    }

    /// Room for the whole snapshot once (unless `BIGSTATE_RESERVE=0`, to
    /// measure the map growing by doubling instead).
    fn reserve(&mut self, entries: u64) {
        if std::env::var("BIGSTATE_RESERVE").is_ok_and(|v| v == "0") {
            return;
        }
        let entries = usize::try_from(entries).unwrap_or(usize::MAX);
        self.0.reserve(entries.saturating_sub(self.0.len()));
    }

    /// Parts by position: `max` entries from the cursor's.
    fn snapshot_part(&self, cursor: Option<&[u8]>, max: usize) -> (Puts, Option<Vec<u8>>) {
        let (range, next) = self.part_range(cursor, max);
        let part = self.0.as_slice()[range]
            .iter()
            .map(|(&key, &(s, value))| Put { key, at: Some(s), value })
            .collect();
        (Puts::Many(part), next)
    }

    /// The same part encoded from the map as it is read (`Puts::Many`'s
    /// shape), without a vector of its writes (unless `BIGSTATE_DIRECT=0`).
    fn serialize_snapshot_part<S: serde::Serializer>(
        &self,
        cursor: Option<&[u8]>,
        max: usize,
        serializer: S,
    ) -> Result<Option<Vec<u8>>, S::Error> {
        // `BIGSTATE_DIRECT=0`: build each part first, as a type that keeps
        // the default does (to measure the difference).
        static BUILD: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        if *BUILD.get_or_init(|| std::env::var("BIGSTATE_DIRECT").is_ok_and(|v| v == "0")) {
            let (part, next) = self.snapshot_part(cursor, max);
            serde::Serialize::serialize(&part, serializer)?;
            return Ok(next);
        }
        let (range, next) = self.part_range(cursor, max);
        serializer.serialize_newtype_variant(
            "Puts",
            1,
            "Many",
            &Part(&self.0.as_slice()[range]),
        )?;
        Ok(next)
    }

    fn stamp(update: &mut Puts, stamp: Stamp) {
        update.stamp(stamp);
    }

    fn unstamp(change: &mut Puts, stamp: Stamp) {
        change.unstamp(stamp);
    }
}

/// A replica of `keys` keys written by 16 sources, with a 1,024-record
/// history.
pub(crate) fn big_source(keys: u64) -> Replica<BigLww> {
    let config = part_bytes(Config::default().history_limit(1_024), "BIGSTATE_PART_BYTES");
    let mut source = Replica::with_config(SourceId::random(), BigLww::default(), config);
    let writers: Vec<SourceId> = (0..16u128)
        .map(|s| SourceId::from_bytes((s + 1).to_be_bytes()).expect("a valid id"))
        .collect();
    for i in 0..keys {
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&i.to_be_bytes());
        key[8..].copy_from_slice(b"bigstate");
        let mut value = [0u8; 32];
        value[..8].copy_from_slice(&i.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
        let ts = Timestamp::new(NOW + i / 60_000, (i % 60_000) as u16 + 1);
        let put = Put { key: Bytes(key), at: None, value: Bytes(value) };
        source
            .apply(NOW + 10_000_000, Envelope::new(writers[(i % 16) as usize], ts, Puts::One(put)));
    }
    source
}

pub(crate) fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

pub fn bigstate() {
    let keys: u64 =
        std::env::var("BIGSTATE_KEYS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000_000);
    println!("### bigstate: a fresh node takes a state of {keys} keys over loopback QUIC\n");
    println!("`cargo run --release -p repred-bench -- bigstate` (`BIGSTATE_KEYS` to change)\n");
    let (base, _) = rss_kib();
    let built = Instant::now();
    let source = big_source(keys);
    let (with_source, _) = rss_kib();
    println!(
        "source built in {:.1} s: {} entries; RSS {:.1} MiB before, {:.1} MiB with the source (its state: ~{:.1} MiB)\n",
        built.elapsed().as_secs_f64(),
        source.state().0.len(),
        mib(base),
        mib(with_source),
        mib(with_source - base),
    );
    // The transfer's peak, not the source's growth while it was built.
    reset_peak();
    let rt = runtime();
    // CPU of the whole process over each transfer (both ends, quinn).
    let cpu = cpu_time(false);
    let (time, stream_bytes, fresh, source) = rt.block_on(async {
        let (_s, _c, sconn, cconn) = connect().await;
        let start = Instant::now();
        let server = tokio::spawn(serve(sconn.clone(), source));
        let fresh: Replica<BigLww> = fetch_until(cconn, false, |r| r.stats().snapshots >= 1).await;
        let time = start.elapsed();
        let (source, bytes) = server.await.expect("the server task");
        (time, bytes, fresh, source)
    });
    // Both replicas still alive (the source was dropped before this was
    // read until issue 16's reserve: "RSS with both" held the fresh node
    // alone).
    let ours_cpu = cpu_time(false) - cpu;
    let (after, peak) = rss_kib();
    drop(source);
    assert_eq!(fresh.state().0.len() as u64, keys, "the fresh node lacks entries");
    let cpu = cpu_time(false);
    let (raw_time, _) = rt.block_on(raw(stream_bytes as usize));
    let raw_cpu = cpu_time(false) - cpu;
    println!(
        "| keys | stream bytes | repred time | MB/s | raw quinn time | raw MB/s | repred / raw | RSS with both (MiB) | peak RSS (MiB) | peak over both states (MiB) | CPU, repred | CPU, raw quinn |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let state = with_source - base;
    println!(
        "| {keys} | {stream_bytes} | {:.2} s | {:.0} | {:.2} s | {:.0} | {:.2} | {:.1} | {:.1} | {:.1} | {:.2} s | {:.2} s |\n",
        time.as_secs_f64(),
        stream_bytes as f64 / time.as_secs_f64() / 1e6,
        raw_time.as_secs_f64(),
        stream_bytes as f64 / raw_time.as_secs_f64() / 1e6,
        raw_time.as_secs_f64() / time.as_secs_f64(),
        mib(after),
        mib(peak),
        mib(peak.saturating_sub(base + 2 * state)),
        ours_cpu.as_secs_f64(),
        raw_cpu.as_secs_f64(),
    );
}
