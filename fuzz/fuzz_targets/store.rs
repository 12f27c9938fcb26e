//! Any bytes as a store file: `Store::open`, then loading replicas of two
//! types (and creating one) must return Ok or a typed `StoreError`, never
//! panic or hang. The file lives in one temporary directory (in /dev/shm
//! when there is one, so that fsync costs nothing) and is rewritten for
//! each input; keep inputs small with `-max_len` (the seeds, real store
//! files, are a few KiB to a few MiB).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

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

fuzz_target!(|data: &[u8]| {
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
});
