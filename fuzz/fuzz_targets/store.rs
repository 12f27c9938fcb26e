//! Any bytes as a store file: `Store::open`, then loading replicas of two
//! types (and creating one) must return Ok or a typed `StoreError`, never
//! panic or hang. The file lives in one temporary directory (in /dev/shm
//! when there is one, so that fsync costs nothing) and is rewritten for
//! each input; keep inputs small with `-max_len` (the seeds, real store
//! files, are 48-72 KiB).
//!
//! A panic the store catches itself (it turns redb's panics on damaged
//! files into `StoreError::Corrupt`, see `fuzz/crashes/store/`) is no
//! crash: libFuzzer's panic hook, which aborts on every panic, is replaced
//! by one that keeps the message, and only a panic that escapes the
//! store's API aborts.
#![no_main]

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

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

/// The message of the latest panic, caught or not.
static LAST_PANIC: Mutex<String> = Mutex::new(String::new());

fn quiet_hook() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        std::panic::set_hook(Box::new(|info| {
            let backtrace = std::backtrace::Backtrace::force_capture();
            *LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()) = format!("{info}\n{backtrace}");
        }));
    });
}

fuzz_target!(|data: &[u8]| {
    quiet_hook();
    if std::panic::catch_unwind(|| one(data)).is_err() {
        let last = LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()).clone();
        eprintln!("a panic escaped the store's API: {last}");
        std::process::abort();
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
