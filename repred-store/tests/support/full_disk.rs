//! A redb storage backend on a real file whose disk can be made "full":
//! while the shared flag is set, every write, sync and growth fails with
//! `ENOSPC` (`ErrorKind::StorageFull`), as a full file system answers.
//! Reads keep working. Shared by the store's and the transport's tests
//! (the latter include it by path).
#![allow(dead_code)]

use std::io;
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use repred_store::redb::backends::FileBackend;
use repred_store::redb::{BackendError, StorageBackend};

/// The switch the test flips, and how many operations it refused.
#[derive(Clone, Debug)]
pub struct Disk {
    full: Arc<AtomicBool>,
    /// Writes, syncs and resizes still allowed before the disk fills up;
    /// `u64::MAX`: no limit.
    budget: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
}

impl Default for Disk {
    fn default() -> Self {
        Self {
            full: Arc::default(),
            budget: Arc::new(AtomicU64::new(u64::MAX)),
            refused: Arc::default(),
        }
    }
}

impl Disk {
    /// Makes the disk full (`true`) or frees space again (`false`).
    pub fn set_full(&self, full: bool) {
        self.budget.store(u64::MAX, Ordering::SeqCst);
        self.full.store(full, Ordering::SeqCst);
    }

    /// Lets `ops` more writes, syncs or resizes through, then fills up:
    /// a commit can fail half-way.
    pub fn fill_after(&self, ops: u64) {
        self.full.store(false, Ordering::SeqCst);
        self.budget.store(ops, Ordering::SeqCst);
    }

    /// Whether the disk is full now.
    pub fn is_full(&self) -> bool {
        self.full.load(Ordering::SeqCst)
    }

    /// How many writes, syncs and resizes were refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::SeqCst)
    }

    /// The factory `Store::open_with` wants: a backend on the file at the
    /// path, sharing this switch.
    pub fn backend(&self) -> impl Fn(&Path) -> io::Result<FullDisk> + Send + Sync + 'static {
        let disk = self.clone();
        move |path| {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)?;
            let inner = FileBackend::new(file).map_err(io::Error::other)?;
            Ok(FullDisk { inner, disk: disk.clone() })
        }
    }

    fn check(&self) -> io::Result<()> {
        if !self.full.load(Ordering::SeqCst) {
            let spent = self.budget.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| {
                (b != u64::MAX && b > 0).then(|| b - 1)
            });
            match spent {
                Ok(_) | Err(u64::MAX) => return Ok(()),
                Err(_) => self.full.store(true, Ordering::SeqCst),
            }
        }
        self.refused.fetch_add(1, Ordering::SeqCst);
        Err(io::Error::from(io::ErrorKind::StorageFull))
    }
}

/// A file backend that refuses to write while its [`Disk`] is full.
#[derive(Debug)]
pub struct FullDisk {
    inner: FileBackend,
    disk: Disk,
}

impl StorageBackend for FullDisk {
    fn len(&self) -> Result<u64, io::Error> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        // Shrinking frees space, so a full disk allows it.
        if len > self.inner.len()? {
            self.disk.check()?;
        }
        self.inner.set_len(len)
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        self.disk.check()?;
        self.inner.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.disk.check()?;
        self.inner.write(offset, data)
    }

    fn close(&self) -> Result<(), io::Error> {
        self.inner.close()
    }

    // The file's locks are the file backend's: a second store on the same
    // file is refused as usual.
    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.query_lock_range(start, end)
    }
}
