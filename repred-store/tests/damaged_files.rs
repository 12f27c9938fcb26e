//! Files the store fuzzer found that made redb panic at open: each must be
//! a typed error (or, if redb copes, a store that opens), never a panic.

use repred::{Config, GSet};
use repred_store::{Store, StoreError};

#[test]
fn damaged_files_found_by_the_fuzzer_are_typed_errors() {
    let crashes = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/crashes/store");
    let mut seen = 0;
    for entry in std::fs::read_dir(&crashes).expect("the fuzzer's reproducers are in the repo") {
        let file = entry.unwrap().path();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.redb");
        std::fs::copy(&file, &path).unwrap();
        match Store::open(&path) {
            Ok(store) => {
                // If it opens, loading, saving and closing must not panic
                // either.
                let loaded = store.load_or_create::<GSet<u64>>("set", Config::default());
                if let Ok(mut replica) = loaded {
                    let _ = replica.update(1_700_000_000_000, GSet::add(1));
                    let _ = store.save("set", &replica);
                }
                drop(store);
            }
            Err(StoreError::Corrupt { detail, .. }) => assert!(!detail.is_empty()),
            Err(other) => panic!("{}: {other}", file.display()),
        }
        seen += 1;
    }
    assert!(seen >= 3, "only {seen} reproducers");
}
