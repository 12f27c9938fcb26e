//! Crash-safe persistence for repred replicas, in an embedded redb file.
//!
//! The core stays free of I/O: a [`Store`] reads a replica's log through
//! [`Replica::entries_from`] and writes every entry it has not written yet in
//! one redb transaction (group commit: one fsync for the whole batch), and
//! [`Store::load`] rebuilds the replica with [`Replica::restore`]. What a
//! [`Store::save`] returned from is durable: after a crash or `kill -9` at any
//! moment, a load holds it, with the same source id, and the next local
//! timestamp is greater than every saved one even if the wall clock went back.
//!
//! The log on disk is compacted: once it holds more entries than the
//! replica's history limit, the next save writes a snapshot of the state
//! with its clock and drops the entries before it, so the file follows the
//! size of the state, not the number of updates.
//!
//! A snapshot is stored in parts ([`Reduce::snapshot_part`], about 1 MiB
//! each, [`Store::part_bytes`]), each a row of its own keyed by the
//! replica's name, the snapshot's generation and the part's index; a load
//! merges them one by one into the state, after reserving room for the
//! whole ([`Reduce::reserve`]). Neither a save nor a load holds more than
//! one part encoded besides the state and redb's page cache (1 GiB at
//! most by default, [`Store::open_with_cache_size`]). The header that
//! names a generation commits after its parts and removes older ones in
//! the same transaction, so a save cut at any point leaves the previous
//! snapshot whole. Stores written before parts (the base in one blob in
//! the header) load, and their next save stores the base as parts.
//!
//! It logs through [`tracing`](https://docs.rs/tracing): each commit at
//! `debug` with its entries, bytes and latency (fsync included), each
//! load at `debug` with the entries replayed, a reopen at `info`, and a
//! failed commit or reopen at `warn`. With no subscriber that costs
//! nothing measurable.
//!
//! ```
//! use repred::{Reduce, Replica, SourceId};
//! use repred_store::Store;
//! # #[derive(Default, Debug, PartialEq)]
//! # struct Max(u64);
//! # impl Reduce for Max {
//! #     type Update = u64;
//! #     fn reduce(&mut self, u: u64) -> Option<u64> { (u > self.0).then(|| { self.0 = u; u }) }
//! #     fn snapshot(&self) -> u64 { self.0 }
//! # }
//! let dir = tempfile::tempdir()?;
//! let store = Store::open(dir.path().join("node.redb"))?;
//! let mut replica = store.load_or_create::<Max>("max", Default::default())?;
//! replica.update(1_700_000_000_000, 42)?;
//! store.save("max", &replica)?; // durable from here on
//! drop((replica, store));
//!
//! let store = Store::open(dir.path().join("node.redb"))?;
//! let replica = store.load_or_create::<Max>("max", Default::default())?;
//! assert_eq!(replica.state(), &Max(42));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod error;
mod load;
mod meta;
mod save;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError, RwLock};

/// The embedded database, re-exported for the backends of
/// [`Store::open_with`].
pub use redb;
use redb::{Database, ReadableDatabase, TableDefinition};

pub use error::StoreError;
use error::{decode_error, io_error, open_error, storage};
use meta::Meta;
pub use save::Batch;

#[cfg(doc)]
use repred::{Reduce, Replica};

/// name -> what is known of the replica as a whole.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("repred_meta");
/// (name, disk sequence) -> one log entry.
const ENTRIES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("repred_entries");
/// (name, generation, index) -> one part of a snapshot
/// ([`Reduce::snapshot_part`]), postcard. A header names the one
/// generation it stands on; parts of any other are a save under way, or
/// one that never committed, and are not read.
const PARTS: TableDefinition<(&str, u64, u64), &[u8]> = TableDefinition::new("repred_parts");

/// Default target size of one stored snapshot part: a save or a load holds
/// about this much encoded besides the state (and redb's cache). Parts aim
/// a little under it, so that each fits a page of this size.
const PART_BYTES: usize = 1 << 20;
/// Parts start this many entries long, then follow the target size.
const FIRST_PART_ENTRIES: usize = 64;

/// Runs `f`, turning a panic into [`StoreError::Corrupt`]: redb trusts some
/// of what it reads from the file and panics on a few damaged ones (found by
/// `fuzz/fuzz_targets/store.rs`), and a damaged file must be an error a node
/// can report, never a crash.
fn guarded<R>(path: &Path, f: impl FnOnce() -> Result<R, StoreError>) -> Result<R, StoreError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let detail = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "the database panicked reading it".to_string());
        Err(StoreError::Corrupt { path: path.display().to_string(), detail })
    })
}

/// Closes a database, swallowing a panic inside redb: after a damaged file
/// made it panic once (see [`guarded`]) its internal locks may be poisoned,
/// and closing it (which writes) can panic again; a store must not crash
/// the process on the way out (found by `fuzz/fuzz_targets/store.rs`).
fn close(db: Option<Database>) {
    if let Some(db) = db {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(db)));
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        close(self.db.get_mut().unwrap_or_else(PoisonError::into_inner).take());
    }
}

/// Opens the database at a path: the file itself, or a custom backend.
type Opener = Box<dyn Fn(&Path) -> Result<Database, redb::DatabaseError> + Send + Sync>;

/// A durable store of replicas, one redb file, many named replicas.
pub struct Store {
    /// `None` only after a failed [`reopen`](Store::reopen). A lock so that
    /// a reopen can drop the database while every other method keeps
    /// taking `&self`: redb locks the file, so the old handle must be gone
    /// before the new one opens it.
    db: RwLock<Option<Database>>,
    path: PathBuf,
    open: Opener,
    /// Each replica's header as on disk (or about to be): read once, then
    /// kept, since this process is the file's only writer. Locked before
    /// `db` wherever both are held.
    metas: Mutex<HashMap<String, Meta>>,
    /// Target size of one stored snapshot part.
    part_bytes: usize,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (or creates) the store at `path`.
    ///
    /// A file that is not a store, or is truncated or damaged, is a
    /// [`StoreError::Corrupt`], never a panic; a path the operating system
    /// will not let it read and write (a directory, a read-only or full
    /// file system) is a [`StoreError::Io`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::start(path.as_ref(), Box::new(|path: &Path| Database::create(path)))
    }

    /// Opens (or creates) the store at `path`, as [`open`](Store::open),
    /// with redb's page cache limited to `bytes` (redb's default: 1 GiB).
    ///
    /// What a save or a load of a large state holds in memory besides the
    /// state itself is one part of its snapshot (about
    /// [`part_bytes`](Store::part_bytes)) and this cache, which redb fills
    /// with the pages it reads and writes up to its limit: a node that must
    /// stay within a budget sets it here.
    pub fn open_with_cache_size(path: impl AsRef<Path>, bytes: usize) -> Result<Self, StoreError> {
        let open = move |path: &Path| redb::Builder::new().set_cache_size(bytes).create(path);
        Self::start(path.as_ref(), Box::new(open))
    }

    /// Sets the target size of one stored part of a snapshot (default 1
    /// MiB): a save encodes, and a load decodes, one part at a time.
    pub fn part_bytes(mut self, bytes: usize) -> Self {
        self.part_bytes = bytes.max(1);
        self
    }

    /// Opens (or creates) a store on a custom redb storage backend, which
    /// `backend` makes for `path` (the name errors give; the backend
    /// decides what it means): for storage that is not a plain file, and
    /// for tests that make the disk fail.
    ///
    /// `backend` is called again at each [`reopen`](Store::reopen), after
    /// the previous backend was closed, and must reach the same data.
    pub fn open_with<B: redb::StorageBackend>(
        path: impl AsRef<Path>,
        backend: impl Fn(&Path) -> std::io::Result<B> + Send + Sync + 'static,
    ) -> Result<Self, StoreError> {
        let open = move |path: &Path| redb::Builder::new().create_with_backend(backend(path)?);
        Self::start(path.as_ref(), Box::new(open))
    }

    fn start(path: &Path, open: Opener) -> Result<Self, StoreError> {
        let db = Self::open_db(path, &open)?;
        tracing::debug!(path = %path.display(), "store opened");
        Ok(Self {
            db: RwLock::new(Some(db)),
            path: path.to_path_buf(),
            open,
            metas: Mutex::new(HashMap::new()),
            part_bytes: PART_BYTES,
        })
    }

    /// Opens the database and makes sure its tables exist.
    fn open_db(path: &Path, open: &Opener) -> Result<Database, StoreError> {
        guarded(path, || {
            let db = open(path).map_err(|e| open_error(path, e))?;
            let created = (|| {
                let txn = db.begin_write()?;
                txn.open_table(META)?;
                txn.open_table(ENTRIES)?;
                txn.open_table(PARTS)?;
                txn.commit()?;
                Ok::<_, redb::Error>(())
            })();
            created.map_err(|e| Self::locate(path, storage(e)))?;
            Ok(db)
        })
    }

    /// Closes the database and opens it again, as a restart of the process
    /// would: what was committed is there, what a failed commit began is
    /// not.
    ///
    /// After an I/O error (a full disk, say) redb refuses every later write
    /// until the database is opened again, even once the cause is gone;
    /// [`StoreError::needs_reopen`] tells such errors. If the reopen fails
    /// too, the store stays closed ([`StoreError::Closed`]) until a reopen
    /// succeeds. Replicas need nothing: their next save writes whatever the
    /// disk lacks.
    pub fn reopen(&self) -> Result<(), StoreError> {
        // Failed commits forgot what they assumed already; the rest is
        // re-read from the reopened file too rather than trusted across it.
        let mut metas = self.metas();
        metas.clear();
        let mut db = self.db.write().unwrap_or_else(PoisonError::into_inner);
        // Closed first: redb locks the file, so a second handle to it would
        // find it in use.
        close(db.take());
        match Self::open_db(&self.path, &self.open) {
            Ok(opened) => {
                tracing::info!(path = %self.path.display(), "store reopened");
                *db = Some(opened);
                Ok(())
            }
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "store reopen failed");
                Err(e)
            }
        }
    }

    /// Runs `f` on the open database.
    fn with_db<R>(
        &self,
        f: impl FnOnce(&Database) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        // A panic while this was held cannot have left the handle worse
        // than a failed I/O does, which a reopen cures.
        let db = self.db.read().unwrap_or_else(PoisonError::into_inner);
        let Some(db) = db.as_ref() else {
            return Err(StoreError::Closed { path: self.path.display().to_string() });
        };
        guarded(&self.path, || f(db)).map_err(|e| Self::locate(&self.path, e))
    }

    /// Names the file in an I/O error, which redb reports without it.
    fn locate(path: &Path, e: StoreError) -> StoreError {
        match e {
            StoreError::Storage(redb::Error::Io(cause)) => {
                io_error(path.display().to_string(), cause)
            }
            e => e,
        }
    }

    fn read_meta(&self, name: &str) -> Result<Option<Meta>, StoreError> {
        self.with_db(|db| {
            let txn = db.begin_read().map_err(storage)?;
            let table = txn.open_table(META).map_err(storage)?;
            let Some(bytes) = table.get(name).map_err(storage)? else { return Ok(None) };
            let meta = Meta::decode(bytes.value()).map_err(|e| decode_error(name, "header", e))?;
            // A header whose log ends before it begins was not written by
            // this code (found by the store fuzzer): refuse it rather than
            // compute with it.
            if meta.next_seq < meta.base_seq {
                return Err(StoreError::Decode {
                    name: name.to_string(),
                    what: "header",
                    detail: format!(
                        "its log ends at {} before it begins at {}",
                        meta.next_seq, meta.base_seq
                    ),
                });
            }
            Ok(Some(meta))
        })
    }

    fn metas(&self) -> std::sync::MutexGuard<'_, HashMap<String, Meta>> {
        // The map only caches what is on disk; a panic while it was held
        // cannot leave it worse than stale, and commit errors clear it.
        self.metas.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
