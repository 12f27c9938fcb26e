//! Saving a replica: a batch prepared from its log (and a snapshot in
//! parts when the log was compacted), committed in one transaction, or
//! discarded; and removing replicas from the store.

use std::time::Instant;

use redb::ReadableTable;
use repred::{Reduce, Replica, Timestamp};

use crate::error::storage;
use crate::meta::{Meta, Parts};
use crate::{ENTRIES, FIRST_PART_ENTRIES, META, PARTS, Store, StoreError};

impl Store {
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
                    rejoin_held: replica.rejoin_held(),
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
        batch.meta.rejoin_held = replica.rejoin_held();
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
