//! What can go wrong in a store, each with what to do about it.

use std::path::Path;

use repred::SourceId;

#[cfg(doc)]
use crate::Store;
#[cfg(doc)]
use repred::Replica;

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

pub(crate) fn storage(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Storage(e.into())
}

/// What opening `path` failed with, by who is to blame: another process,
/// the operating system (a directory, a read-only or full file system), or
/// the file's contents.
pub(crate) fn open_error(path: &Path, e: redb::DatabaseError) -> StoreError {
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
pub(crate) fn io_error(path: String, cause: std::io::Error) -> StoreError {
    match cause.kind() {
        std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof => {
            StoreError::Corrupt { path, detail: cause.to_string() }
        }
        _ => StoreError::Io { path, cause },
    }
}

pub(crate) fn decode_error(name: &str, what: &'static str, e: postcard::Error) -> StoreError {
    StoreError::Decode { name: name.to_string(), what, detail: e.to_string() }
}
