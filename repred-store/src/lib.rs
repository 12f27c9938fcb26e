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

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::Instant;

/// The embedded database, re-exported for the backends of
/// [`Store::open_with`].
pub use redb;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use repred::{Clock, Config, Entry, Identity, Reduce, Replica, SourceId, Timestamp};
use serde::{Deserialize, Serialize};

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

/// Errors of the store. None of them leaves a half-written replica behind:
/// a save either commits whole or not at all.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Another process has the file open.
    #[error("the store {0} is already open in another process")]
    InUse(String),
    /// The file is not a redb database, is truncated, or fails its checks.
    #[error("the store {path} is corrupt or truncated: {detail}")]
    Corrupt {
        /// The file.
        path: String,
        /// What redb said.
        detail: String,
    },
    /// The operating system refused to read or write the file: the path is
    /// a directory, the file system is read-only or full, permission is
    /// denied. The file itself may be fine; once the cause is gone, open
    /// the store again (or [`reopen`](Store::reopen) it).
    // The cause is in the message, not a `source`, so that a report that
    // walks the chain does not print it twice.
    #[error(
        "cannot read or write the store {path}: {cause} (it must be a file, not a directory, \
         that this user may write, on a writable file system with free space)"
    )]
    Io {
        /// The file.
        path: String,
        /// What the operating system said.
        cause: std::io::Error,
    },
    /// A record in the store does not decode: written by an incompatible
    /// version, or damaged.
    #[error("a stored {what} of '{name}' does not decode: {detail}")]
    Decode {
        /// Which replica.
        name: String,
        /// What was being read.
        what: &'static str,
        /// What the decoder said.
        detail: String,
    },
    /// A state or entry does not encode (its `Serialize` failed).
    #[error("'{name}' does not encode: {detail}")]
    Encode {
        /// Which replica.
        name: String,
        /// What the encoder said.
        detail: String,
    },
    /// A different replica (another source id) is saved under this name.
    #[error("'{name}' holds replica {stored}, not {given}")]
    WrongReplica {
        /// The name.
        name: String,
        /// The id on disk.
        stored: SourceId,
        /// The id of the replica being saved.
        given: SourceId,
    },
    /// A replica whose state may hold what no record accounts for
    /// ([`Replica::is_poisoned`]) is saved for the first time: its state
    /// cannot be saved. (Once saved, such a replica's saves append its
    /// records and hold back any snapshot until it rejoins.)
    #[error(
        "'{name}' is poisoned (a local reduce panicked), so its state is not saved; rejoin it first (Replica::rejoin)"
    )]
    Poisoned {
        /// Which replica.
        name: String,
    },
    /// The last [`reopen`](Store::reopen) failed, so the store has no
    /// database open; reopen it again.
    #[error("the store {path} is closed: its last reopen failed")]
    Closed {
        /// The file.
        path: String,
    },
    /// Reading or writing failed.
    // As for `Io`: the cause is in the message, so it is not a `source`.
    #[error("storage error: {0}")]
    Storage(redb::Error),
}

impl From<redb::Error> for StoreError {
    fn from(e: redb::Error) -> Self {
        Self::Storage(e)
    }
}

impl StoreError {
    /// Whether the disk or the database failed under the store, rather than
    /// the data: [`reopen`](Store::reopen) the store before retrying (after
    /// an I/O error redb refuses every later write until it is opened
    /// again, even once the cause is gone).
    pub fn needs_reopen(&self) -> bool {
        matches!(self, Self::Io { .. } | Self::Storage(_) | Self::Closed { .. })
    }
}

fn storage(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Storage(e.into())
}

/// What opening `path` failed with, by who is to blame: another process,
/// the operating system (a directory, a read-only or full file system), or
/// the file's contents.
fn open_error(path: &Path, e: redb::DatabaseError) -> StoreError {
    let path = path.display().to_string();
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen | redb::DatabaseError::LockProtocolMismatch => {
            StoreError::InUse(path)
        }
        redb::DatabaseError::Storage(redb::StorageError::Io(cause)) => io_error(path, cause),
        e => StoreError::Corrupt { path, detail: e.to_string() },
    }
}

/// An I/O error of the file: redb reports a file that is not a database as
/// `InvalidData`, and a short read of a truncated one as `UnexpectedEof`;
/// both are the contents' fault. Anything else is the operating system's.
fn io_error(path: String, cause: std::io::Error) -> StoreError {
    match cause.kind() {
        std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof => {
            StoreError::Corrupt { path, detail: cause.to_string() }
        }
        _ => StoreError::Io { path, cause },
    }
}

/// What is stored of a replica besides its log.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Meta {
    id: SourceId,
    /// Newest timestamp issued or accepted: the hybrid clock's high-water
    /// mark, so that a restart never reissues one.
    last: Timestamp,
    /// Disk sequence of the first entry after the base.
    base_seq: u64,
    /// The next disk sequence.
    next_seq: u64,
    /// The base's clock; the base state itself is in `parts` (or, written
    /// by an earlier version, in `base`).
    base_clock: Clock,
    /// `T::snapshot()` of the base, postcard, in one blob: only in headers
    /// of earlier versions (empty in new ones, whose base is in `parts`).
    /// Rewritten as parts at the next save.
    base: Vec<u8>,
    /// The replica's life ([`Replica::life`]): the log goes on, so the life
    /// does, and peers that met it before a crash welcome it back.
    life: u64,
    /// The replica's collection floor ([`Replica::floor`]) when the base
    /// was taken: the base is collected to it. (Later collections are
    /// entries of the log.)
    floor: Timestamp,
    /// Where the base state is: its parts in [`PARTS`].
    parts: Parts,
    /// [`Replica::rejoined_below`]: a replica saved after a rejoin, before
    /// a peer brought it up, is not stale when it comes back.
    rejoined_below: Timestamp,
    /// [`Replica::rejoin_brought_back`], saved with it.
    rejoin_brought_back: Timestamp,
    /// [`Replica::rejoin_missing`]: a replica saved after a rejoin, before
    /// a snapshot brought back its own writes it lacks, still asks for one
    /// when it comes back.
    rejoin_missing: Timestamp,
    /// [`Replica::cut_parts_floor`] when the base was taken: the base holds
    /// parts of a snapshot no clock vouches for, from this floor.
    cut_parts_floor: Option<Timestamp>,
    /// [`Replica::stale_parts_floor`] at the last save: a verdict for those
    /// parts that nothing would find again after a restart.
    stale_parts_floor: Option<Timestamp>,
}

/// A header as written before a stale verdict for cut snapshot parts was
/// saved (read only).
#[derive(Deserialize)]
struct MetaV7 {
    id: SourceId,
    last: Timestamp,
    base_seq: u64,
    next_seq: u64,
    base_clock: Clock,
    base: Vec<u8>,
    life: u64,
    floor: Timestamp,
    parts: Parts,
    rejoined_below: Timestamp,
    rejoin_brought_back: Timestamp,
    rejoin_missing: Timestamp,
    cut_parts_floor: Option<Timestamp>,
}

impl From<MetaV7> for Meta {
    fn from(v7: MetaV7) -> Self {
        let MetaV7 {
            id,
            last,
            base_seq,
            next_seq,
            base_clock,
            base,
            life,
            floor,
            parts,
            rejoined_below,
            rejoin_brought_back,
            rejoin_missing,
            cut_parts_floor,
        } = v7;
        Meta {
            id,
            last,
            base_seq,
            next_seq,
            base_clock,
            base,
            life,
            floor,
            parts,
            rejoined_below,
            rejoin_brought_back,
            rejoin_missing,
            cut_parts_floor,
            stale_parts_floor: None,
        }
    }
}

impl MetaV7 {
    /// The header of a version before, newest first as in `Meta::decode`.
    fn decode(bytes: &[u8]) -> Result<Self, postcard::Error> {
        postcard::from_bytes(bytes)
            .or_else(|e| MetaV6::decode(bytes).map(MetaV7::from).map_err(|_| e))
    }
}

/// A header as written before the floor of a base's cut snapshot parts
/// was saved (read only).
#[derive(Deserialize)]
struct MetaV6 {
    id: SourceId,
    last: Timestamp,
    base_seq: u64,
    next_seq: u64,
    base_clock: Clock,
    base: Vec<u8>,
    life: u64,
    floor: Timestamp,
    parts: Parts,
    rejoined_below: Timestamp,
    rejoin_brought_back: Timestamp,
    rejoin_missing: Timestamp,
}

impl From<MetaV6> for MetaV7 {
    fn from(v6: MetaV6) -> Self {
        let MetaV6 {
            id,
            last,
            base_seq,
            next_seq,
            base_clock,
            base,
            life,
            floor,
            parts,
            rejoined_below,
            rejoin_brought_back,
            rejoin_missing,
        } = v6;
        MetaV7 {
            id,
            last,
            base_seq,
            next_seq,
            base_clock,
            base,
            life,
            floor,
            parts,
            rejoined_below,
            rejoin_brought_back,
            rejoin_missing,
            cut_parts_floor: None,
        }
    }
}

/// A header as written before a rejoin's missing writes were saved (read
/// only).
#[derive(Deserialize)]
struct MetaV5 {
    id: SourceId,
    last: Timestamp,
    base_seq: u64,
    next_seq: u64,
    base_clock: Clock,
    base: Vec<u8>,
    life: u64,
    floor: Timestamp,
    parts: Parts,
    rejoined_below: Timestamp,
    rejoin_brought_back: Timestamp,
}

/// The stored parts of a base state.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
struct Parts {
    /// Which generation of parts (0: none, the base is `T::default()` or
    /// an older header's blob).
    generation: u64,
    /// How many parts, indexed from 0.
    count: u64,
    /// [`Reduce::entries_hint`] of the state they were cut from: a load
    /// reserves that much once.
    entries: Option<u64>,
}

/// A header as written before rejoins were saved (read only).
#[derive(Deserialize)]
struct MetaV4 {
    id: SourceId,
    last: Timestamp,
    base_seq: u64,
    next_seq: u64,
    base_clock: Clock,
    base: Vec<u8>,
    life: u64,
    floor: Timestamp,
    parts: Parts,
}

/// A header as written before snapshots were stored in parts (read only).
#[derive(Deserialize)]
struct MetaV3 {
    id: SourceId,
    last: Timestamp,
    base_seq: u64,
    next_seq: u64,
    base_clock: Clock,
    base: Vec<u8>,
    life: u64,
    floor: Timestamp,
}

/// A header as written before collection floors (read only).
#[derive(Deserialize)]
struct MetaV2 {
    id: SourceId,
    last: Timestamp,
    base_seq: u64,
    next_seq: u64,
    base_clock: Clock,
    base: Vec<u8>,
    life: u64,
}

/// A header as written before replicas had lives (read only).
#[derive(Deserialize)]
struct MetaV1 {
    id: SourceId,
    last: Timestamp,
    base_seq: u64,
    next_seq: u64,
    base_clock: Clock,
    base: Vec<u8>,
}

impl Meta {
    fn decode(bytes: &[u8]) -> Result<Self, postcard::Error> {
        // Newest first: postcard ignores trailing bytes, so an older layout
        // would read a newer header's prefix, while a newer one runs out of
        // bytes on an older header.
        postcard::from_bytes(bytes)
            .or_else(|e| MetaV7::decode(bytes).map(Meta::from).map_err(|_| e))
    }
}

impl MetaV6 {
    /// The header of a version before, newest first as above.
    fn decode(bytes: &[u8]) -> Result<Self, postcard::Error> {
        postcard::from_bytes(bytes).or_else(|e| {
            if let Ok(v5) = postcard::from_bytes::<MetaV5>(bytes) {
                return Ok(MetaV6 {
                    id: v5.id,
                    last: v5.last,
                    base_seq: v5.base_seq,
                    next_seq: v5.next_seq,
                    base_clock: v5.base_clock,
                    base: v5.base,
                    life: v5.life,
                    floor: v5.floor,
                    parts: v5.parts,
                    rejoined_below: v5.rejoined_below,
                    rejoin_brought_back: v5.rejoin_brought_back,
                    rejoin_missing: Timestamp::ZERO,
                });
            }
            if let Ok(v4) = postcard::from_bytes::<MetaV4>(bytes) {
                return Ok(MetaV6 {
                    id: v4.id,
                    last: v4.last,
                    base_seq: v4.base_seq,
                    next_seq: v4.next_seq,
                    base_clock: v4.base_clock,
                    base: v4.base,
                    life: v4.life,
                    floor: v4.floor,
                    parts: v4.parts,
                    rejoined_below: Timestamp::ZERO,
                    rejoin_brought_back: Timestamp::ZERO,
                    rejoin_missing: Timestamp::ZERO,
                });
            }
            if let Ok(v3) = postcard::from_bytes::<MetaV3>(bytes) {
                return Ok(MetaV6 {
                    id: v3.id,
                    last: v3.last,
                    base_seq: v3.base_seq,
                    next_seq: v3.next_seq,
                    base_clock: v3.base_clock,
                    base: v3.base,
                    life: v3.life,
                    floor: v3.floor,
                    parts: Parts::default(),
                    rejoined_below: Timestamp::ZERO,
                    rejoin_brought_back: Timestamp::ZERO,
                    rejoin_missing: Timestamp::ZERO,
                });
            }
            if let Ok(v2) = postcard::from_bytes::<MetaV2>(bytes) {
                return Ok(MetaV6 {
                    id: v2.id,
                    last: v2.last,
                    base_seq: v2.base_seq,
                    next_seq: v2.next_seq,
                    base_clock: v2.base_clock,
                    base: v2.base,
                    life: v2.life,
                    floor: Timestamp::ZERO,
                    parts: Parts::default(),
                    rejoined_below: Timestamp::ZERO,
                    rejoin_brought_back: Timestamp::ZERO,
                    rejoin_missing: Timestamp::ZERO,
                });
            }
            let Ok(v1) = postcard::from_bytes::<MetaV1>(bytes) else { return Err(e) };
            // Its life was never written down: any fixed one will do, as
            // no peer of this version met it.
            let life = u64::from_le_bytes(v1.id.as_bytes()[..8].try_into().unwrap_or([1; 8]));
            Ok(MetaV6 {
                id: v1.id,
                last: v1.last,
                base_seq: v1.base_seq,
                next_seq: v1.next_seq,
                base_clock: v1.base_clock,
                base: v1.base,
                life: life.max(1),
                floor: Timestamp::ZERO,
                parts: Parts::default(),
                rejoined_below: Timestamp::ZERO,
                rejoin_brought_back: Timestamp::ZERO,
                rejoin_missing: Timestamp::ZERO,
            })
        })
    }
}

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

    /// Loads the replica saved under `name`, or `None` if there is none.
    pub fn load<T: Reduce + Default>(
        &self,
        name: &str,
        config: Config,
    ) -> Result<Option<Replica<T>>, StoreError> {
        self.load_with(name, T::default, config)
    }

    /// Loads the replica saved under `name` onto `base` (merged with it), or
    /// creates one from `base` under a fresh id and saves it at once: for
    /// states without a `Default`.
    pub fn load_onto<T: Reduce>(
        &self,
        name: &str,
        base: T,
        config: Config,
    ) -> Result<Replica<T>, StoreError> {
        self.load_or_start(name, base, config, None)
    }

    /// Like [`load_onto`](Store::load_onto), for a replica that signs with
    /// `identity`: its source id is the identity's, and a stored replica of
    /// another id is refused ([`StoreError::WrongReplica`]). Keep the
    /// identity's secret beside the store: without it, the stored id can no
    /// longer sign.
    pub fn load_onto_signed<T: Reduce>(
        &self,
        name: &str,
        identity: Identity,
        base: T,
        config: Config,
    ) -> Result<Replica<T>, StoreError> {
        self.load_or_start(name, base, config, Some(identity))
    }

    fn load_or_start<T: Reduce>(
        &self,
        name: &str,
        base: T,
        config: Config,
        identity: Option<Identity>,
    ) -> Result<Replica<T>, StoreError> {
        let Some(meta) = self.read_meta(name)? else {
            let replica = match identity {
                Some(identity) => Replica::with_identity(identity, base, config),
                None => Replica::with_config(SourceId::random(), base, config),
            };
            self.save(name, &replica)?;
            return Ok(replica);
        };
        if let Some(identity) = &identity
            && identity.id() != meta.id
        {
            return Err(StoreError::WrongReplica {
                name: name.to_string(),
                stored: meta.id,
                given: identity.id(),
            });
        }
        // This process is the file's only writer: what was there is there.
        let replica =
            self.load_with(name, move || base, config)?.ok_or_else(|| StoreError::Decode {
                name: name.to_string(),
                what: "header",
                detail: "vanished while loading".to_string(),
            })?;
        Ok(match identity {
            Some(identity) => replica.signing_with(identity),
            None => replica,
        })
    }

    fn load_with<T: Reduce>(
        &self,
        name: &str,
        base: impl FnOnce() -> T,
        config: Config,
    ) -> Result<Option<Replica<T>>, StoreError> {
        let Some(meta) = self.read_meta(name)? else { return Ok(None) };
        self.metas().insert(name.to_string(), meta.clone());
        let mut base = base();
        if !meta.base.is_empty() {
            // A header of an earlier version, its base in one blob.
            let snapshot: T::Update =
                postcard::from_bytes(&meta.base).map_err(|e| decode_error(name, "snapshot", e))?;
            base.reduce(snapshot);
        }
        let cap = config.max_snapshot_reserve;
        let snapshot_bytes = self.load_parts(name, &meta.parts, cap, &mut base)?;
        let entries = self.with_db(|db| {
            let txn = db.begin_read().map_err(storage)?;
            let table = txn.open_table(ENTRIES).map_err(storage)?;
            let mut entries = Vec::new();
            let range = (name, meta.base_seq)..(name, meta.next_seq);
            for item in table.range(range).map_err(storage)? {
                let (_, value) = item.map_err(storage)?;
                let entry: Entry<T::Update> = postcard::from_bytes(value.value())
                    .map_err(|e| decode_error(name, "entry", e))?;
                entries.push(entry);
            }
            Ok(entries)
        })?;
        tracing::debug!(
            path = %self.path.display(),
            name,
            entries = entries.len(),
            parts = meta.parts.count,
            snapshot_bytes = meta.base.len() as u64 + snapshot_bytes,
            "replica loaded"
        );
        // The restored replica numbers its log as the disk does, so the next
        // save appends where this one ended.
        Ok(Some(
            Replica::restore(
                meta.id,
                base,
                meta.base_clock,
                meta.last,
                meta.base_seq,
                entries,
                config,
            )
            .with_life(meta.life)
            .with_floor(meta.floor)
            .with_rejoined_below(meta.rejoined_below, meta.rejoin_brought_back)
            .with_rejoin_missing(meta.rejoin_missing)
            .with_cut_parts_floor(meta.cut_parts_floor)
            .with_stale_parts_floor(meta.stale_parts_floor),
        ))
    }

    /// Merges the stored parts of a base state into `state`, one at a
    /// time, after reserving room for them all (at most `cap` entries: a
    /// damaged header must not make the process abort on an allocation);
    /// returns their bytes.
    fn load_parts<T: Reduce>(
        &self,
        name: &str,
        parts: &Parts,
        cap: u64,
        state: &mut T,
    ) -> Result<u64, StoreError> {
        if parts.count == 0 {
            return Ok(0);
        }
        if let Some(entries) = parts.entries {
            state.reserve(entries.min(cap));
        }
        self.with_db(|db| {
            let txn = db.begin_read().map_err(storage)?;
            let table = txn.open_table(PARTS).map_err(storage)?;
            let g = parts.generation;
            let mut next = 0;
            let mut bytes = 0;
            for item in table.range((name, g, 0)..(name, g, parts.count)).map_err(storage)? {
                let (key, value) = item.map_err(storage)?;
                if key.value().2 != next {
                    break;
                }
                let part: T::Update = postcard::from_bytes(value.value())
                    .map_err(|e| decode_error(name, "snapshot part", e))?;
                bytes += value.value().len() as u64;
                state.reduce(part);
                next += 1;
            }
            if next != parts.count {
                return Err(StoreError::Decode {
                    name: name.to_string(),
                    what: "snapshot",
                    detail: format!("part {next} of {} is missing", parts.count),
                });
            }
            Ok(bytes)
        })
    }

    /// Loads the replica saved under `name`, or creates it with a fresh
    /// random id and saves that id at once.
    ///
    /// The id lives in the store: a node whose store is deleted comes back
    /// under a new id (the amnesia rule), so it can never reissue a
    /// timestamp its old self already used. Its old updates stay valid and
    /// come back from its peers like anyone else's.
    pub fn load_or_create<T: Reduce + Default>(
        &self,
        name: &str,
        config: Config,
    ) -> Result<Replica<T>, StoreError> {
        if let Some(replica) = self.load(name, config.clone())? {
            return Ok(replica);
        }
        let replica = Replica::with_config(SourceId::random(), T::default(), config);
        self.save(name, &replica)?;
        Ok(replica)
    }

    /// Writes every entry of `replica` not yet saved, in one transaction,
    /// and returns how many. When it returns, they are durable.
    ///
    /// The same as [`prepare`](Store::prepare) then [`commit`](Store::commit).
    pub fn save<T: Reduce>(&self, name: &str, replica: &Replica<T>) -> Result<usize, StoreError> {
        let batch = self.prepare(name, replica)?;
        self.commit(batch)
    }

    /// Encodes what `replica` has not saved yet, without committing: fast,
    /// so it can run while the replica is locked, leaving the slow commit
    /// (and its fsync) for after the lock is released. Commit batches in
    /// the order they were prepared, and [`discard`](Store::discard) those
    /// that will not be committed: later prepares continue from each
    /// batch.
    ///
    /// The first save of a replica, a replica whose history dropped entries
    /// before they were saved (saved too rarely for its history limit), and
    /// a log on disk longer than the history limit are all saved as a fresh
    /// snapshot instead (counted as one entry); for a
    /// [poisoned](Replica::is_poisoned) replica, that snapshot waits for its
    /// rejoin (the batch is empty; a first save is
    /// [`StoreError::Poisoned`]). A snapshot's parts are
    /// written here, one at a time, under a generation no header names yet
    /// (in a transaction without fsync), so that the batch holds none of
    /// them: this is the one part of a save that reads the state, so it
    /// runs under the caller's lock, as encoding the whole snapshot did.
    /// Until [`commit`](Store::commit) names them they count for nothing:
    /// a batch that fails or is dropped leaves the previous snapshot in
    /// place, and the next snapshot's commit removes them.
    pub fn prepare<T: Reduce>(
        &self,
        name: &str,
        replica: &Replica<T>,
    ) -> Result<Batch, StoreError> {
        let mut metas = self.metas();
        if !metas.contains_key(name)
            && let Some(meta) = self.read_meta(name)?
        {
            metas.insert(name.to_string(), meta);
        }
        let old = metas.get(name);
        if let Some(meta) = old
            && meta.id != replica.id()
        {
            return Err(StoreError::WrongReplica {
                name: name.to_string(),
                stored: meta.id,
                given: replica.id(),
            });
        }
        let encode_error = |e: postcard::Error| StoreError::Encode {
            name: name.to_string(),
            detail: e.to_string(),
        };
        let appendable = old.filter(|m| {
            // Entries on disk are keyed by the replica's own sequence
            // numbers, so they must line up.
            let on_disk = (m.next_seq - m.base_seq) as usize;
            // A base in one blob (an earlier version's header) would be
            // rewritten whole with every header: it is stored as parts
            // instead, once.
            on_disk <= replica.config().history_limit
                && replica.end_seq() >= m.next_seq
                && m.base.is_empty()
        });
        let mut batch = match appendable.map(|m| (replica.entries_from(m.next_seq), m)) {
            Some((Ok(entries), meta)) => {
                let mut meta = meta.clone();
                let mut encoded = Vec::new();
                for (seq, entry) in entries {
                    encoded.push((seq, postcard::to_allocvec(entry).map_err(encode_error)?));
                    meta.next_seq = seq + 1;
                }
                Batch {
                    name: name.to_string(),
                    meta,
                    entries: encoded,
                    snapshot: false,
                    snapshot_bytes: 0,
                }
            }
            // A poisoned replica's state holds what no entry accounts for
            // (Replica::is_poisoned): saved as a snapshot, it would come
            // back at the next start as if sound. What is on disk stays,
            // and loads without it; the rejoin that ends the poisoning
            // restarts the log, so the next save is a snapshot again.
            _ if replica.is_poisoned() => match old {
                Some(meta) => Batch {
                    name: name.to_string(),
                    meta: meta.clone(),
                    entries: Vec::new(),
                    snapshot: false,
                    snapshot_bytes: 0,
                },
                None => return Err(StoreError::Poisoned { name: name.to_string() }),
            },
            _ => {
                // A snapshot: the state with its clock stands for every entry
                // so far, so the entries on disk go. Its parts are written
                // now, under a new generation that no header names yet; the
                // commit makes the header name it.
                let newest = old.map_or(0, |m| m.parts.generation);
                // Parts of a snapshot no clock vouches for go with the
                // floor they are from (Replica::cut_parts_floor): without
                // it they would load as a fresh replica's state with no
                // sign of what they are, and mix with a higher floor's
                // snapshot. (Not an empty base instead: the snapshot may
                // end later, its parts sent again changing nothing and
                // leaving no record, and its clock would then claim them.)
                let (parts, bytes) = self.stage_parts(name, replica.state(), newest)?;
                let meta = Meta {
                    id: replica.id(),
                    last: Timestamp::ZERO,
                    base_seq: replica.end_seq(),
                    next_seq: replica.end_seq(),
                    base_clock: replica.clock().clone(),
                    base: Vec::new(),
                    life: replica.life(),
                    floor: replica.floor(),
                    parts,
                    rejoined_below: replica.rejoined_below(),
                    rejoin_brought_back: replica.rejoin_brought_back(),
                    rejoin_missing: replica.rejoin_missing(),
                    cut_parts_floor: replica.cut_parts_floor(),
                    stale_parts_floor: replica.stale_parts_floor(),
                };
                Batch {
                    name: name.to_string(),
                    meta,
                    entries: Vec::new(),
                    snapshot: true,
                    snapshot_bytes: bytes,
                }
            }
        };
        batch.meta.last = old.map_or(Timestamp::ZERO, |m| m.last).max(replica.last_timestamp());
        batch.meta.life = replica.life();
        batch.meta.rejoined_below = replica.rejoined_below();
        batch.meta.rejoin_brought_back = replica.rejoin_brought_back();
        batch.meta.rejoin_missing = replica.rejoin_missing();
        batch.meta.stale_parts_floor = replica.stale_parts_floor();
        // Later batches continue from this one, before it is even committed.
        metas.insert(name.to_string(), batch.meta.clone());
        Ok(batch)
    }

    /// Writes `state`'s snapshot as parts of about
    /// [`part_bytes`](Store::part_bytes) under a generation newer than any
    /// of `name`'s on disk and than `newest`, encoding one part at a time;
    /// returns where they are and their bytes.
    ///
    /// Committed without an fsync (redb's `Durability::None`): no header
    /// names these parts until the batch's commit, so a crash before it
    /// loses nothing (the previous snapshot and its parts stand), and that
    /// durable commit makes these pages durable with it.
    fn stage_parts<T: Reduce>(
        &self,
        name: &str,
        state: &T,
        newest: u64,
    ) -> Result<(Parts, usize), StoreError> {
        let encode_error = |e: postcard::Error| StoreError::Encode {
            name: name.to_string(),
            detail: e.to_string(),
        };
        let target = self.part_bytes;
        self.with_db(|db| {
            let mut txn = db.begin_write().map_err(storage)?;
            txn.set_durability(redb::Durability::None).map_err(storage)?;
            let (generation, count, bytes) = {
                let mut table = txn.open_table(PARTS).map_err(storage)?;
                let last = table
                    .range((name, 0, 0)..=(name, u64::MAX, u64::MAX))
                    .map_err(storage)?
                    .next_back()
                    .transpose()
                    .map_err(storage)?
                    .map_or(0, |(key, _)| key.value().1);
                let generation = last.max(newest) + 1;
                let mut cursor: Option<Vec<u8>> = None;
                let mut entries = FIRST_PART_ENTRIES;
                let mut buf = Vec::new();
                let (mut index, mut bytes) = (0u64, 0usize);
                loop {
                    // Encoded from the state as it is read
                    // (`Reduce::serialize_snapshot_part`): no part built.
                    buf.clear();
                    let mut out = postcard::Serializer {
                        output: postcard::ser_flavors::ExtendFlavor::new(std::mem::take(&mut buf)),
                    };
                    let next = state
                        .serialize_snapshot_part(cursor.as_deref(), entries, &mut out)
                        .map_err(encode_error)?;
                    buf = postcard::ser_flavors::Flavor::finalize(out.output)
                        .map_err(encode_error)?;
                    table.insert((name, generation, index), buf.as_slice()).map_err(storage)?;
                    index += 1;
                    bytes += buf.len();
                    // Aim at 7/8 of the target, in proportion to what
                    // this part's entries took: redb keeps a large value
                    // in a page of the next power of two, so a part just
                    // over 1 MiB would take 2.
                    let aim = (target as u128 * 7 / 8).max(1);
                    let scaled = entries as u128 * aim / (buf.len() as u128).max(1);
                    entries = scaled.clamp(1, entries as u128 * 2) as usize;
                    match next {
                        Some(next) => cursor = Some(next),
                        None => break,
                    }
                }
                (generation, index, bytes)
            };
            txn.commit().map_err(storage)?;
            let parts = Parts { generation, count, entries: state.entries_hint() };
            Ok((parts, bytes))
        })
    }

    /// Writes a prepared batch in one transaction (one fsync); returns how
    /// many entries it held. When it returns, they are durable.
    ///
    /// When it fails, nothing of the batch is on disk; prepare again (from
    /// the replica, which still holds its entries) to retry, after a
    /// [`reopen`](Store::reopen) if the error
    /// [needs one](StoreError::needs_reopen).
    pub fn commit(&self, batch: Batch) -> Result<usize, StoreError> {
        let result = self.write(&batch);
        if result.is_err() {
            // The disk did not move: forget what the batch assumed.
            self.metas().remove(&batch.name);
        }
        result
    }

    /// Writes several prepared batches (of different replicas, or of one in
    /// order) in one transaction: one fsync for all of them.
    pub fn commit_all(&self, batches: Vec<Batch>) -> Result<usize, StoreError> {
        let result = self.write_all(&batches);
        if result.is_err() {
            let mut metas = self.metas();
            for b in &batches {
                metas.remove(&b.name);
            }
        }
        result
    }

    /// Gives up batches that were prepared and will not be committed (a
    /// later batch of the same round failed to prepare, say): the store
    /// forgets what [`prepare`](Store::prepare) assumed they would write,
    /// so that the next prepare of each replica starts from its header on
    /// disk and writes their entries again. Without it, the next prepare
    /// would continue after entries that never reached the disk.
    pub fn discard(&self, batches: impl IntoIterator<Item = Batch>) {
        let mut metas = self.metas();
        for batch in batches {
            metas.remove(&batch.name);
        }
    }

    /// Deletes everything saved under `name` (its header, log and
    /// snapshot parts) in one transaction; returns whether anything was
    /// there. When it returns, it is gone from the disk: a later load of
    /// the name finds nothing, and a replica made again under it starts
    /// from scratch under a new source id.
    ///
    /// For a replica the caller stopped saving and will not bring back
    /// from here (one whose every entry is known to be held elsewhere:
    /// `repred-place` drops an object from a node once its other replicas
    /// cover it). Call it only once nothing saves or loads that replica
    /// any more: a [`Batch`] of it prepared before and committed after
    /// would leave a header over a log that is gone (a later load fails to
    /// decode it), and a load that reads it while the removal commits
    /// gets the replica as it was.
    ///
    /// It commits with an fsync on the calling thread: call it off an
    /// async runtime's workers. See [`remove_all`](Store::remove_all) to
    /// remove many in one commit.
    pub fn remove(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self.remove_all([name])? > 0)
    }

    /// Deletes everything saved under each of `names`, as
    /// [`remove`](Store::remove) does, all in one transaction (one fsync);
    /// returns how many of them had anything. When it fails, nothing was
    /// deleted.
    pub fn remove_all<'a>(
        &self,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Result<usize, StoreError> {
        let names: Vec<&str> = names.into_iter().collect();
        // The headers' cache is not locked across the commit: a load or a
        // save of another replica (which lock it) does not wait for this
        // fsync.
        let removed = self.with_db(|db| {
            let txn = db.begin_write().map_err(storage)?;
            let mut found = 0;
            {
                let mut meta = txn.open_table(META).map_err(storage)?;
                let mut entries = txn.open_table(ENTRIES).map_err(storage)?;
                let mut parts = txn.open_table(PARTS).map_err(storage)?;
                for &name in &names {
                    if meta.remove(name).map_err(storage)?.is_some() {
                        found += 1;
                    }
                    entries
                        .retain_in((name, 0)..=(name, u64::MAX), |_, _| false)
                        .map_err(storage)?;
                    parts
                        .retain_in((name, 0, 0)..=(name, u64::MAX, u64::MAX), |_, _| false)
                        .map_err(storage)?;
                }
            }
            txn.commit().map_err(storage)?;
            Ok(found)
        });
        // Whether it committed or not, the disk is the truth from here.
        let mut metas = self.metas();
        for name in &names {
            metas.remove(*name);
        }
        drop(metas);
        match &removed {
            Ok(found) => tracing::debug!(
                path = %self.path.display(),
                names = names.len(),
                found,
                "replicas removed from the store"
            ),
            Err(e) => tracing::warn!(
                path = %self.path.display(),
                names = names.len(),
                error = %e,
                "removing replicas from the store failed; nothing of it was deleted"
            ),
        }
        removed
    }

    fn write(&self, batch: &Batch) -> Result<usize, StoreError> {
        self.write_all(std::slice::from_ref(batch))
    }

    fn write_all(&self, batches: &[Batch]) -> Result<usize, StoreError> {
        let started = Instant::now();
        let written = self.with_db(|db| {
            let txn = db.begin_write().map_err(storage)?;
            for batch in batches {
                Self::write_batch(&txn, batch)?;
            }
            txn.commit().map_err(storage)?;
            Ok(batches.iter().map(Batch::len).sum())
        });
        let ms = started.elapsed().as_secs_f64() * 1e3;
        match &written {
            Ok(entries) => tracing::debug!(
                path = %self.path.display(),
                replicas = batches.len(),
                entries,
                bytes = batches.iter().map(Batch::bytes).sum::<usize>(),
                snapshots = batches.iter().filter(|b| b.snapshot).count(),
                ms,
                "store commit"
            ),
            Err(e) => tracing::warn!(
                path = %self.path.display(),
                replicas = batches.len(),
                error = %e,
                ms,
                "store commit failed; nothing of it is on disk"
            ),
        }
        written
    }

    fn write_batch(txn: &redb::WriteTransaction, batch: &Batch) -> Result<(), StoreError> {
        let name = batch.name.as_str();
        {
            let mut table = txn.open_table(ENTRIES).map_err(storage)?;
            if batch.snapshot {
                table.retain_in((name, 0)..=(name, u64::MAX), |_, _| false).map_err(storage)?;
                // Older snapshots' parts, and those of saves that never
                // committed, go with the header that named them (all of
                // them for a base of none).
                let g = match batch.meta.parts.count {
                    0 => u64::MAX,
                    _ => batch.meta.parts.generation,
                };
                txn.open_table(PARTS)
                    .map_err(storage)?
                    .retain_in((name, 0, 0)..(name, g, 0), |_, _| false)
                    .map_err(storage)?;
            }
            for (seq, bytes) in &batch.entries {
                table.insert((name, *seq), bytes.as_slice()).map_err(storage)?;
            }
        }
        let header = postcard::to_allocvec(&batch.meta)
            .map_err(|e| StoreError::Encode { name: name.to_string(), detail: e.to_string() })?;
        txn.open_table(META).map_err(storage)?.insert(name, header.as_slice()).map_err(storage)?;
        Ok(())
    }

    fn metas(&self) -> std::sync::MutexGuard<'_, HashMap<String, Meta>> {
        // The map only caches what is on disk; a panic while it was held
        // cannot leave it worse than stale, and commit errors clear it.
        self.metas.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What [`Store::prepare`] encoded, ready for [`Store::commit`].
#[derive(Debug)]
pub struct Batch {
    name: String,
    meta: Meta,
    entries: Vec<(u64, Vec<u8>)>,
    snapshot: bool,
    /// Bytes of the snapshot's parts, already staged on disk.
    snapshot_bytes: usize,
}

impl Batch {
    /// The replica's log sequence this batch saves up to: once it is
    /// committed, every entry below it is on disk (see
    /// [`Replica::release`](repred::Replica::release)).
    pub fn end_seq(&self) -> u64 {
        self.meta.next_seq
    }

    /// How many entries it holds (a snapshot counts as one).
    pub fn len(&self) -> usize {
        if self.snapshot { 1 } else { self.entries.len() }
    }

    /// Whether it holds nothing new.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of encoded entries, or of the snapshot, it writes.
    fn bytes(&self) -> usize {
        let entries: usize = self.entries.iter().map(|(_, bytes)| bytes.len()).sum();
        entries + self.snapshot_bytes
    }
}

fn decode_error(name: &str, what: &'static str, e: postcard::Error) -> StoreError {
    StoreError::Decode { name: name.to_string(), what, detail: e.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Headers written before `rejoin_missing`, before `cut_parts_floor`,
    /// and before `stale_parts_floor` were saved still load, their other
    /// fields intact:
    /// each field was the layout's last, so the older header is the
    /// newer's encoding without it.
    #[test]
    fn headers_from_before_the_last_fields_decode() {
        let id = SourceId::new("a").expect("a valid id");
        let meta = Meta {
            id,
            last: Timestamp::new(7, 1),
            base_seq: 3,
            next_seq: 9,
            base_clock: Clock::new(),
            base: Vec::new(),
            life: 5,
            floor: Timestamp::new(4, 0),
            parts: Parts { generation: 2, count: 1, entries: Some(10) },
            rejoined_below: Timestamp::new(6, 0),
            rejoin_brought_back: Timestamp::new(2, 0),
            rejoin_missing: Timestamp::new(3, 0),
            cut_parts_floor: Some(Timestamp::new(1, 0)),
            stale_parts_floor: Some(Timestamp::new(4, 0)),
        };
        let mut bytes = postcard::to_allocvec(&meta).expect("a header encodes");
        let newest = Meta::decode(&bytes).expect("the newest header decodes");
        assert_eq!(newest.stale_parts_floor, meta.stale_parts_floor);
        assert_eq!(newest.cut_parts_floor, meta.cut_parts_floor);
        assert_eq!(newest.rejoin_missing, meta.rejoin_missing);

        let stale = postcard::to_allocvec(&meta.stale_parts_floor).expect("a floor encodes");
        assert!(bytes.ends_with(&stale));
        bytes.truncate(bytes.len() - stale.len());
        let v7 = Meta::decode(&bytes).expect("the header before stale_parts_floor decodes");
        assert_eq!(v7.stale_parts_floor, None);
        assert_eq!(v7.cut_parts_floor, meta.cut_parts_floor);

        let cut = postcard::to_allocvec(&meta.cut_parts_floor).expect("a floor encodes");
        assert!(bytes.ends_with(&cut));
        bytes.truncate(bytes.len() - cut.len());
        let v6 = Meta::decode(&bytes).expect("the header before cut_parts_floor decodes");
        assert_eq!(v6.cut_parts_floor, None);
        assert_eq!(v6.rejoin_missing, meta.rejoin_missing);

        let missing = postcard::to_allocvec(&meta.rejoin_missing).expect("a stamp encodes");
        assert!(bytes.ends_with(&missing));
        bytes.truncate(bytes.len() - missing.len());
        let older = Meta::decode(&bytes).expect("the header before rejoin_missing decodes");
        assert_eq!((older.rejoin_missing, older.cut_parts_floor), (Timestamp::ZERO, None));
        for older in [&v6, &older] {
            assert_eq!((older.id, older.life, older.floor), (id, 5, meta.floor));
            assert_eq!((older.base_seq, older.next_seq), (3, 9));
            assert_eq!(older.rejoined_below, meta.rejoined_below);
            assert_eq!(older.rejoin_brought_back, meta.rejoin_brought_back);
            assert_eq!(older.parts.generation, 2);
        }
    }
}
