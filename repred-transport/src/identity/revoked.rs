//! The revocation list: node ids every node refuses.

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use repred::SourceId;

use super::{CredentialsError, REVOKED_FILE, format_node_id, io_err, parse_node_id};

/// Parses a deny list: one node id per line ([`parse_node_id`]); `#` starts
/// a comment that runs to the end of the line; blank lines are ignored.
/// `path` only names the file in errors. A line that is not an id is an
/// error rather than skipped: a typo must not quietly let a revoked node
/// back in.
pub fn parse_revoked(path: &Path, text: &str) -> Result<BTreeSet<SourceId>, CredentialsError> {
    let mut ids = BTreeSet::new();
    for (n, line) in text.lines().enumerate() {
        let entry = line.split('#').next().unwrap_or_default().trim();
        if entry.is_empty() {
            continue;
        }
        let id = parse_node_id(entry).ok_or_else(|| CredentialsError::Corrupt {
            path: path.to_path_buf(),
            detail: format!("line {}: `{entry}` is not a node id (32 hex digits)", n + 1),
        })?;
        ids.insert(id);
    }
    Ok(ids)
}

/// The deny list at `path`; none there is an empty list.
pub(super) fn read_revoked(path: &Path) -> Result<BTreeSet<SourceId>, CredentialsError> {
    match fs::read(path) {
        Ok(bytes) => {
            let text = std::str::from_utf8(&bytes).map_err(|e| CredentialsError::Corrupt {
                path: path.to_path_buf(),
                detail: format!("not UTF-8 text: {e}"),
            })?;
            parse_revoked(path, text)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(BTreeSet::new()),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Adds `id` to the deny list of the data directory `dir`
/// (`<dir>/revoked`), creating the file if needed. Returns whether it was
/// added (`false`: it was listed already). The directory must exist, so a
/// mistyped one is an error rather than a list nobody reads. Nodes read the
/// list when they start.
pub fn revoke(dir: &Path, id: SourceId) -> Result<bool, CredentialsError> {
    if dir.as_os_str().is_empty() {
        return Err(CredentialsError::EmptyDataDir);
    }
    if !fs::metadata(dir).map_err(io_err(dir))?.is_dir() {
        return Err(CredentialsError::Corrupt {
            path: dir.to_path_buf(),
            detail: "not a directory".into(),
        });
    }
    let path = dir.join(REVOKED_FILE);
    // Read (and so check) what is there first: appending to a list that
    // does not parse would leave every node refusing to start.
    if read_revoked(&path)?.contains(&id) {
        return Ok(false);
    }
    let ends_in_newline = match fs::read(&path) {
        Ok(bytes) => bytes.last().is_none_or(|&b| b == b'\n'),
        Err(e) if e.kind() == io::ErrorKind::NotFound => true,
        Err(e) => return Err(io_err(&path)(e)),
    };
    let line = format!("{}{}\n", if ends_in_newline { "" } else { "\n" }, format_node_id(id));
    let mut file =
        OpenOptions::new().append(true).create(true).open(&path).map_err(io_err(&path))?;
    // One write of one short line with O_APPEND: concurrent appends do not
    // interleave within it.
    file.write_all(line.as_bytes()).map_err(io_err(&path))?;
    file.sync_all().map_err(io_err(&path))?;
    Ok(true)
}
