//! Loading a replica: its header, its snapshot's parts and its log.

use redb::ReadableDatabase;
use repred::{Config, Entry, Identity, Reduce, Replica, SourceId};

use crate::error::{decode_error, storage};
use crate::meta::Parts;
use crate::{ENTRIES, PARTS, Store, StoreError};

impl Store {
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
            .with_rejoin_held(meta.rejoin_held)
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
}
