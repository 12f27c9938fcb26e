//! What the operating system refuses is told apart from a damaged file,
//! and a store recovers from a full disk once space is back.

#[path = "support/full_disk.rs"]
mod full_disk;

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::path::Path;

use full_disk::Disk;
use repred::{Config, GSet, Replica};
use repred_store::{Store, StoreError};

const NOW: u64 = 1_700_000_000_000;

type Numbers = GSet<u64>;

/// The kind of the operating system's error, or a panic naming what came
/// instead.
fn io_kind(result: Result<Store, StoreError>) -> ErrorKind {
    match result {
        Err(StoreError::Io { cause, .. }) => cause.kind(),
        Err(e) => panic!("expected StoreError::Io, got {e:?}: {e}"),
        Ok(store) => panic!("expected StoreError::Io, the store opened: {store:?}"),
    }
}

#[test]
fn a_directory_as_the_store_path_is_an_io_error_not_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let err = Store::open(dir.path()).unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(&err, StoreError::Io { cause, .. } if cause.kind() == ErrorKind::IsADirectory)
    );
    assert!(err.needs_reopen());
    assert!(message.contains(&dir.path().display().to_string()), "{message}");
    assert!(message.contains("not a directory"), "says what to do: {message}");
    assert!(!message.contains("corrupt"), "{message}");
}

/// Run by `a_read_only_directory_is_an_io_error` in a child process as an
/// unprivileged user, when the test itself runs as root (whom permission
/// bits do not stop).
const CHILD: &str = "REPRED_STORE_READ_ONLY_CHILD";

#[test]
fn a_read_only_directory_is_an_io_error() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;

    if let Some(path) = std::env::var_os(CHILD) {
        assert_eq!(io_kind(Store::open(Path::new(&path))), ErrorKind::PermissionDenied);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Others may enter the temporary directory (for the child below), not
    // write in `ro`.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let ro = dir.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    let path = ro.join("s.redb");

    let probe = ro.join("probe");
    if std::fs::File::create(&probe).is_err() {
        // Permission bits bind this user: the store is refused like the probe.
        assert_eq!(io_kind(Store::open(&path)), ErrorKind::PermissionDenied);
        return;
    }
    // Root writes anyway. The same open as `nobody` must be refused.
    std::fs::remove_file(&probe).unwrap();
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "a_read_only_directory_is_an_io_error", "--nocapture"])
        .env(CHILD, &path)
        .uid(65534)
        .gid(65534)
        .status();
    match status {
        Ok(status) => assert!(status.success(), "the unprivileged open: {status}"),
        Err(e) => {
            // Not allowed to drop privileges (a container without
            // CAP_SETUID): this user writes where the bits say no, so the
            // store must open, exactly as the probe did.
            eprintln!("cannot run as nobody ({e}); checking as a privileged user");
            Store::open(&path).expect("a privileged user opens it");
        }
    }
}

#[test]
fn a_full_disk_at_open_is_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Disk::default();
    disk.set_full(true);
    let path = dir.path().join("s.redb");
    assert_eq!(io_kind(Store::open_with(&path, disk.backend())), ErrorKind::StorageFull);
    disk.set_full(false);
    Store::open_with(&path, disk.backend()).expect("opens once there is space");
}

/// Loads `name` from a store opened on the plain file, as a restart would.
fn load_fresh(path: &Path) -> Replica<Numbers> {
    let store = Store::open(path).unwrap();
    store.load::<Numbers>("n", Config::default()).unwrap().expect("the replica is there")
}

/// A full disk fails the save; redb then refuses every write, even once
/// space is back, until the store is reopened; after the reopen the next
/// save writes everything the failed ones did not, and nothing of a failed
/// save was ever visible.
#[test]
fn a_full_disk_fails_saves_until_a_reopen_once_space_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let disk = Disk::default();
    let store = Store::open_with(&path, disk.backend()).unwrap();
    let mut r = store.load_or_create::<Numbers>("n", Config::default()).unwrap();
    for i in 0..10 {
        r.update(NOW, [i].into()).unwrap();
    }
    assert_eq!(store.save("n", &r).unwrap(), 10);

    disk.set_full(true);
    for i in 10..20 {
        r.update(NOW, [i].into()).unwrap();
    }
    let err = store.save("n", &r).unwrap_err();
    assert!(
        matches!(&err, StoreError::Io { cause, .. } if cause.kind() == ErrorKind::StorageFull),
        "{err:?}"
    );
    assert!(err.needs_reopen());
    assert!(err.to_string().contains("free space"), "says what to do: {err}");
    // A reopen while the disk is still full fails too, and leaves the
    // store closed rather than half open.
    assert!(store.reopen().is_err());
    assert!(matches!(store.save("n", &r), Err(StoreError::Closed { .. })));

    disk.set_full(false);
    store.reopen().expect("reopens once there is space");
    let back = store.load::<Numbers>("n", Config::default()).unwrap().unwrap();
    assert_eq!(*back.state(), (0..10).collect(), "what was saved, nothing of the failed save");
    assert_eq!(store.save("n", &r).unwrap(), 10, "the next save writes what failed");
    let (id, clock) = (r.id(), r.clock().clone());
    drop(store);

    let back = load_fresh(&path);
    assert_eq!(*back.state(), (0..20).collect());
    assert_eq!((back.id(), back.clock()), (id, &clock));
}

/// Without a reopen, redb keeps refusing after the space came back: the
/// reason the store offers one (and the node's writer uses it).
#[test]
fn without_a_reopen_a_store_stays_broken_after_a_full_disk() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Disk::default();
    let store = Store::open_with(dir.path().join("s.redb"), disk.backend()).unwrap();
    let mut r = store.load_or_create::<Numbers>("n", Config::default()).unwrap();
    disk.set_full(true);
    r.update(NOW, [1].into()).unwrap();
    assert!(store.save("n", &r).is_err());
    disk.set_full(false);
    let err = store.save("n", &r).unwrap_err();
    assert!(err.needs_reopen(), "{err}");
    store.reopen().unwrap();
    assert_eq!(store.save("n", &r).unwrap(), 1);
}

/// The disk fills up part-way through a commit, after each possible number
/// of writes: every save that returned is on disk after the reopen, a
/// failed one is there whole or not at all, and the next save completes
/// the log.
#[test]
fn a_disk_filling_mid_commit_loses_nothing_acknowledged_and_tears_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let disk = Disk::default();
    let store = Store::open_with(&path, disk.backend()).unwrap();
    let config = Config::default().history_limit(64);
    let mut r = store.load_or_create::<Numbers>("n", config.clone()).unwrap();
    let mut acked = BTreeSet::new();
    let mut next = 0u64;
    let mut failures = 0;
    for round in 0..60u64 {
        // A commit takes about ten writes and syncs: most rounds are cut,
        // each at another point.
        let budget = round % 12;
        // A few updates per save; now and then enough for a snapshot.
        let burst = if round % 7 == 0 { 80 } else { 3 };
        let written: Vec<u64> = (next..next + burst).collect();
        next += burst;
        for &n in &written {
            r.update(NOW, [n].into()).unwrap();
        }
        disk.fill_after(budget);
        match store.save("n", &r) {
            Ok(_) => {
                disk.set_full(false);
                acked.extend(written);
            }
            Err(e) => {
                failures += 1;
                assert!(e.needs_reopen(), "round {round}: {e}");
                disk.set_full(false);
                store.reopen().unwrap();
                let on_disk = store.load::<Numbers>("n", config.clone()).unwrap().unwrap();
                let missing: Vec<&u64> =
                    acked.iter().filter(|n| !on_disk.state().contains(n)).collect();
                assert!(missing.is_empty(), "round {round}: acknowledged, lost: {missing:?}");
                let failed: Vec<bool> =
                    written.iter().map(|n| on_disk.state().contains(n)).collect();
                assert!(
                    failed.iter().all(|&b| b) || failed.iter().all(|&b| !b),
                    "round {round}: the failed save is torn: {failed:?}"
                );
                store.save("n", &r).unwrap();
                acked.extend(written);
            }
        }
    }
    assert!(failures > 30, "the budget must cut commits: only {failures} failed");
    drop(store);
    let back = load_fresh(&path);
    assert_eq!(back.state().iter().copied().collect::<BTreeSet<u64>>(), acked);
    assert_eq!(back.state(), r.state());
}
