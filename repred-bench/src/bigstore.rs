//! `bigstore`: the bigstate scenario's state (`BIGSTATE_KEYS` keys,
//! default 20,000,000, of an LWW map with 16-byte keys and 32-byte values)
//! saved to a repred-store file and loaded back, one snapshot part at a
//! time (issue 16): the time of each, and the peak RSS of each phase over
//! the state it reads or builds. For comparison, the step the store took
//! before parts: encoding the whole snapshot into one blob (the previous
//! store then also kept a second copy of it in its header cache, and redb
//! wrote it as one value).
//!
//! `STORE_CACHE_MIB` sets redb's page cache (default: redb's own, 1 GiB);
//! `STORE_DIR` where the file goes (default: the temporary directory; it
//! is removed at the end); `BIGSTATE_RESERVE=0` turns off the map's
//! reservation, so a load grows it by doubling.

use std::time::Instant;

use repred::{Config, Reduce, Replica};
use repred_store::Store;

use crate::bigstate::{BigLww, big_source, mib};
use crate::{reset_peak, rss_kib};

fn open(path: &std::path::Path, cache_mib: Option<usize>) -> Store {
    match cache_mib {
        Some(mib) => Store::open_with_cache_size(path, mib << 20),
        None => Store::open(path),
    }
    .expect("the store opens")
}

pub fn bigstore() {
    let keys: u64 =
        std::env::var("BIGSTATE_KEYS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000_000);
    let cache_mib: Option<usize> =
        std::env::var("STORE_CACHE_MIB").ok().and_then(|v| v.parse().ok());
    let dir = std::env::var_os("STORE_DIR").map_or_else(std::env::temp_dir, Into::into);
    let path = dir.join(format!("repred-bigstore-{}.redb", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let cache = cache_mib.map_or("redb's default 1024".to_string(), |m| m.to_string());
    println!("### bigstore: a state of {keys} keys saved and loaded (redb cache {cache} MiB)\n");
    println!(
        "`cargo run --release -p repred-bench -- bigstore` (`BIGSTATE_KEYS`, `STORE_CACHE_MIB`, `STORE_DIR`, `BIGSTATE_RESERVE=0`)\n"
    );

    let (base, _) = rss_kib();
    let source = big_source(keys);
    let (with_state, _) = rss_kib();
    let state = with_state - base;
    println!(
        "source built: RSS {:.1} MiB before, {:.1} MiB with it (its state: ~{:.1} MiB)\n",
        mib(base),
        mib(with_state),
        mib(state)
    );

    // What the store did before parts: the whole snapshot as one blob.
    reset_peak();
    let started = Instant::now();
    let blob = postcard::to_allocvec(&source.state().snapshot()).expect("encodes");
    let blob_time = started.elapsed();
    let blob_len = blob.len();
    drop(blob);
    let (_, blob_peak) = rss_kib();

    let store = open(&path, cache_mib);
    reset_peak();
    let (before_save, _) = rss_kib();
    let started = Instant::now();
    store.save("big", &source).expect("saved");
    let save_time = started.elapsed();
    let (after_save, save_peak) = rss_kib();
    let file = std::fs::metadata(&path).map_or(0, |m| m.len());
    drop(store);
    drop(source);
    let (dropped, _) = rss_kib();

    let store = open(&path, cache_mib);
    reset_peak();
    let (before_load, _) = rss_kib();
    let started = Instant::now();
    let loaded: Replica<BigLww> = store
        .load("big", Config::default().history_limit(1_024))
        .expect("loads")
        .expect("is there");
    let load_time = started.elapsed();
    let (after_load, load_peak) = rss_kib();
    assert_eq!(loaded.state().0.len() as u64, keys, "the load lacks entries");
    drop(store);
    let loaded_state = after_load.saturating_sub(before_load);

    println!(
        "| keys | file bytes | save | save peak over RSS before (MiB) | RSS after save (MiB) | load | loaded state (MiB) | load peak over RSS after (MiB) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {keys} | {file} | {:.2} s | {:.1} | {:.1} | {:.2} s | {:.1} | {:.1} |\n",
        save_time.as_secs_f64(),
        mib(save_peak.saturating_sub(before_save)),
        mib(after_save),
        load_time.as_secs_f64(),
        mib(loaded_state),
        mib(load_peak.saturating_sub(after_load)),
    );
    println!(
        "Before parts, a save first encoded the whole snapshot: {blob_len} bytes in {:.2} s, peak {:.1} MiB over the state alone. RSS after dropping the source and the store: {:.1} MiB.\n",
        blob_time.as_secs_f64(),
        mib(blob_peak.saturating_sub(with_state)),
        mib(dropped),
    );
    drop(loaded);
    let _ = std::fs::remove_file(&path);
}
