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
use std::path::Path;
use std::sync::Mutex;

use redb::{Database, ReadableDatabase, TableDefinition};
use repred::{Clock, Config, Entry, Identity, Reduce, Replica, SourceId, Timestamp};
use serde::{Deserialize, Serialize};

/// name -> what is known of the replica as a whole.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("repred_meta");
/// (name, disk sequence) -> one log entry.
const ENTRIES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("repred_entries");

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
    /// Reading or writing failed.
    #[error("storage error: {0}")]
    Storage(#[from] redb::Error),
}

fn storage(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Storage(e.into())
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
    /// The base's clock; the base state itself is in `base`.
    base_clock: Clock,
    /// `T::snapshot()` of the base, postcard; empty for `T::default()`.
    base: Vec<u8>,
}

/// A durable store of replicas, one redb file, many named replicas.
pub struct Store {
    db: Database,
    path: String,
    /// Each replica's header as on disk (or about to be): read once, then
    /// kept, since this process is the file's only writer.
    metas: Mutex<HashMap<String, Meta>>,
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
    /// [`StoreError::Corrupt`], never a panic.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path_str = path.as_ref().display().to_string();
        let db = match Database::create(path.as_ref()) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(StoreError::InUse(path_str));
            }
            Err(e) => return Err(StoreError::Corrupt { path: path_str, detail: e.to_string() }),
        };
        let txn = db.begin_write().map_err(storage)?;
        txn.open_table(META).map_err(storage)?;
        txn.open_table(ENTRIES).map_err(storage)?;
        txn.commit().map_err(storage)?;
        Ok(Self { db, path: path_str, metas: Mutex::new(HashMap::new()) })
    }

    fn read_meta(&self, name: &str) -> Result<Option<Meta>, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(META).map_err(storage)?;
        let Some(bytes) = table.get(name).map_err(storage)? else { return Ok(None) };
        postcard::from_bytes(bytes.value()).map(Some).map_err(|e| decode_error(name, "header", e))
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
            let snapshot: T::Update =
                postcard::from_bytes(&meta.base).map_err(|e| decode_error(name, "snapshot", e))?;
            base.reduce(snapshot);
        }
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(ENTRIES).map_err(storage)?;
        let mut entries = Vec::new();
        for item in table.range((name, meta.base_seq)..(name, meta.next_seq)).map_err(storage)? {
            let (_, value) = item.map_err(storage)?;
            let entry: Entry<T::Update> =
                postcard::from_bytes(value.value()).map_err(|e| decode_error(name, "entry", e))?;
            entries.push(entry);
        }
        // The restored replica numbers its log as the disk does, so the next
        // save appends where this one ended.
        Ok(Some(Replica::restore(
            meta.id,
            base,
            meta.base_clock,
            meta.last,
            meta.base_seq,
            entries,
            config,
        )))
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

    /// Encodes what `replica` has not saved yet, without writing: fast, so
    /// it can run while the replica is locked, leaving the slow commit for
    /// after the lock is released. Commit batches in the order they were
    /// prepared.
    ///
    /// The first save of a replica, a replica whose history dropped entries
    /// before they were saved (saved too rarely for its history limit), and
    /// a log on disk longer than the history limit are all saved as a fresh
    /// snapshot instead (counted as one entry).
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
            on_disk <= replica.config().history_limit && replica.end_seq() >= m.next_seq
        });
        let mut batch = match appendable.map(|m| (replica.entries_from(m.next_seq), m)) {
            Some((Ok(entries), meta)) => {
                let mut meta = meta.clone();
                let mut encoded = Vec::new();
                for (seq, entry) in entries {
                    encoded.push((seq, postcard::to_allocvec(entry).map_err(encode_error)?));
                    meta.next_seq = seq + 1;
                }
                Batch { name: name.to_string(), meta, entries: encoded, snapshot: false }
            }
            _ => {
                // A snapshot: the state with its clock stands for every entry
                // so far, so the entries on disk go.
                let base =
                    postcard::to_allocvec(&replica.state().snapshot()).map_err(encode_error)?;
                let meta = Meta {
                    id: replica.id(),
                    last: Timestamp::ZERO,
                    base_seq: replica.end_seq(),
                    next_seq: replica.end_seq(),
                    base_clock: replica.clock().clone(),
                    base,
                };
                Batch { name: name.to_string(), meta, entries: Vec::new(), snapshot: true }
            }
        };
        batch.meta.last = old.map_or(Timestamp::ZERO, |m| m.last).max(replica.last_timestamp());
        // Later batches continue from this one, before it is even committed.
        metas.insert(name.to_string(), batch.meta.clone());
        Ok(batch)
    }

    /// Writes a prepared batch in one transaction (one fsync); returns how
    /// many entries it held. When it returns, they are durable.
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

    fn write(&self, batch: &Batch) -> Result<usize, StoreError> {
        self.write_all(std::slice::from_ref(batch))
    }

    fn write_all(&self, batches: &[Batch]) -> Result<usize, StoreError> {
        let txn = self.db.begin_write().map_err(storage)?;
        for batch in batches {
            Self::write_batch(&txn, batch)?;
        }
        txn.commit().map_err(storage)?;
        Ok(batches.iter().map(Batch::len).sum())
    }

    fn write_batch(txn: &redb::WriteTransaction, batch: &Batch) -> Result<(), StoreError> {
        let name = batch.name.as_str();
        {
            let mut table = txn.open_table(ENTRIES).map_err(storage)?;
            if batch.snapshot {
                table.retain_in((name, 0)..=(name, u64::MAX), |_, _| false).map_err(storage)?;
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
        self.metas.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What [`Store::prepare`] encoded, ready for [`Store::commit`].
#[derive(Debug)]
pub struct Batch {
    name: String,
    meta: Meta,
    entries: Vec<(u64, Vec<u8>)>,
    snapshot: bool,
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
}

fn decode_error(name: &str, what: &'static str, e: postcard::Error) -> StoreError {
    StoreError::Decode { name: name.to_string(), what, detail: e.to_string() }
}
