//! Any bytes as a store file: `Store::open`, then loading replicas of two
//! types (and creating one) must return Ok or a typed `StoreError`, never
//! panic or hang. The file lives in one temporary directory (in /dev/shm
//! when there is one, so that fsync costs nothing) and is rewritten for
//! each input; keep inputs small with `-max_len` (the seeds, real store
//! files, are 48-72 KiB).
//!
//! redb 4.6 panics on some damaged files (see `fuzz/crashes/store/`). With
//! `REPRED_FUZZ_STORE_SKIP_REDB_PANICS=1` a panic raised inside redb's own
//! source is counted and the input passes, so that a run can look for
//! anything else; every other panic still aborts as a crash.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use libfuzzer_sys::fuzz_target;
use repred::{Config, LwwMap};
use repred_store::{Store, StoreError};
use repred_suite::Model;

fn path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let shm = std::path::Path::new("/dev/shm");
        let base = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
        let dir = base.join(format!("repred-fuzz-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        dir.join("fuzz.redb")
    })
}

/// Any error is fine: every `StoreError` is typed, and it must display.
fn typed<T>(result: Result<T, StoreError>) -> Option<T> {
    result.map_err(|e| e.to_string()).ok()
}

/// Whether the panic being unwound was raised in redb's source.
static IN_REDB: AtomicBool = AtomicBool::new(false);
static REDB_PANICS: AtomicU64 = AtomicU64::new(0);

/// With the variable set, a hook that lets panics raised in redb unwind
/// (to be caught below) and aborts on any other, as libFuzzer's does.
fn skip_redb_panics() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        let on = std::env::var_os("REPRED_FUZZ_STORE_SKIP_REDB_PANICS").is_some_and(|v| v == "1");
        if on {
            let default = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                let redb = info.location().is_some_and(|l| l.file().contains("/redb-"));
                if redb {
                    IN_REDB.store(true, Ordering::SeqCst);
                    let n = REDB_PANICS.fetch_add(1, Ordering::Relaxed) + 1;
                    if n.is_power_of_two() {
                        eprintln!("redb panics skipped: {n} (latest: {info})");
                    }
                } else {
                    default(info);
                    std::process::abort();
                }
            }));
        }
        on
    })
}

fuzz_target!(|data: &[u8]| {
    if skip_redb_panics() {
        IN_REDB.store(false, Ordering::SeqCst);
        let run = std::panic::catch_unwind(|| one(data));
        if let Err(panic) = run
            && !IN_REDB.load(Ordering::SeqCst)
        {
            std::panic::resume_unwind(panic);
        }
    } else {
        one(data);
    }
});

fn one(data: &[u8]) {
    let path = path();
    std::fs::write(path, data).expect("write the input file");
    let Some(store) = typed(Store::open(path)) else { return };
    let _ = typed(store.load::<Model>("model", Config::default()));
    let _ = typed(store.load::<LwwMap<String, String>>("lww", Config::default().history_limit(4)));
    if let Some(mut replica) = typed(store.load_or_create::<Model>("model", Config::default())) {
        // A loaded replica is usable and saves.
        let now = 1_700_000_000_000;
        if replica.update(now, Model::set("after", "fuzz")).is_ok() {
            let _ = typed(store.save("model", &replica));
        }
    }
}
