//! JavaScript source ids (any string) and repred's 16-byte [`SourceId`].
//!
//! scuttlebutt names a source by any string (its `createId()` makes 39-odd
//! hex digits); repred by 16 bytes. The mapping is one to one:
//!
//! - a string of 1 to 16 bytes that does not end in a zero byte is the
//!   [`SourceId`] of those bytes padded with zeros (`SourceId::new`), and
//!   back: `"A"` is `SourceId::new("A")`;
//! - `"~"` followed by 32 lowercase hex digits names the id of those 16
//!   bytes, for ids that are no such short name (a random repred id relayed
//!   to JavaScript appears so);
//! - any other string is hashed (SHA-256, the first byte forced into
//!   `0x80..=0xBF`, which no UTF-8 string starts with, so that a hashed id is
//!   never a short name). A hash cannot be undone, so the string travels
//!   with every write of that source and the [`Model`](crate::Model) keeps a
//!   table of such names (persisted with its state), from which the id is
//!   turned back into its string for clocks and history.

use std::borrow::Cow;
use std::collections::BTreeMap;

use repred::SourceId;
use sha2::{Digest, Sha256};

/// The [`SourceId`] of a JavaScript source id; deterministic, so every Rust
/// node maps a JS id to the same `SourceId`.
///
/// ```
/// use repred::SourceId;
/// use repred_scuttlebutt::id::{is_hashed, source_id};
///
/// assert_eq!(source_id("A"), SourceId::new("A")?);
/// let long = "C7B3D2A4E0F9E8B1A3C5D7E9F1A3B5C7D9E1F3";
/// assert!(is_hashed(source_id(long)));
/// assert_eq!(source_id(long), source_id(long));
/// # Ok::<(), repred::InvalidSourceId>(())
/// ```
pub fn source_id(js: &str) -> SourceId {
    if let Some(id) = short_id(js) {
        return id;
    }
    if let Some(id) = hex_id(js) {
        return id;
    }
    let digest = Sha256::digest(js.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    // A UTF-8 string never starts with a continuation byte: a hashed id can
    // never be mistaken for a short name, whatever the hash.
    bytes[0] = 0x80 | (bytes[0] & 0x3F);
    // Not all zero: its first byte is not.
    SourceId::from_bytes(bytes).unwrap_or_else(|_| SourceId::random())
}

/// Whether the string can be recovered from its id alone (a short name or
/// the hex form), so that no name table is needed for it.
pub fn is_table_free(js: &str) -> bool {
    short_id(js).is_some() || hex_id(js).is_some()
}

/// Whether `id` is the hash of a long JavaScript id (its string is in a
/// name table, not in the id).
pub fn is_hashed(id: SourceId) -> bool {
    (0x80..=0xBF).contains(&id.as_bytes()[0])
}

/// The JavaScript string of `id`: a hashed id's name from `names`, a short
/// name as itself, any other id (a random repred id, or a hashed one whose
/// name is not known here) in its hex form, which maps back to the same id.
///
/// ```
/// use std::collections::BTreeMap;
/// use repred::SourceId;
/// use repred_scuttlebutt::id::{js_id, source_id};
///
/// let names = BTreeMap::new();
/// assert_eq!(js_id(SourceId::new("A")?, &names), "A");
/// let raw = SourceId::from_bytes([0xff; 16])?;
/// let text = js_id(raw, &names).into_owned();
/// assert_eq!(text, format!("~{}", "ff".repeat(16)));
/// assert_eq!(source_id(&text), raw);
/// # Ok::<(), repred::InvalidSourceId>(())
/// ```
pub fn js_id(id: SourceId, names: &BTreeMap<SourceId, String>) -> Cow<'_, str> {
    if is_hashed(id)
        && let Some(name) = names.get(&id)
    {
        return Cow::Borrowed(name);
    }
    Cow::Owned(js_id_free(id))
}

/// The JavaScript string of an id without a name table: a short name as
/// itself, anything else in its hex form.
pub(crate) fn js_id_free(id: SourceId) -> String {
    match short_name_of(id.as_bytes()) {
        Some(name) => name.to_string(),
        None => hex_form(id),
    }
}

fn hex_form(id: SourceId) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(33);
    text.push('~');
    for b in id.as_bytes() {
        text.push(char::from(DIGITS[usize::from(b >> 4)]));
        text.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    text
}

fn short_id(js: &str) -> Option<SourceId> {
    let bytes = js.as_bytes();
    if bytes.is_empty() || bytes.len() > SourceId::LEN || bytes.last() == Some(&0) {
        return None;
    }
    SourceId::new(bytes).ok()
}

fn hex_id(js: &str) -> Option<SourceId> {
    let digits = js.strip_prefix('~')?.as_bytes();
    if digits.len() != 32 {
        return None;
    }
    let mut bytes = [0u8; 16];
    for (i, pair) in digits.chunks(2).enumerate() {
        let hi = hex_digit(pair[0])?;
        let lo = hex_digit(pair[1])?;
        bytes[i] = hi << 4 | lo;
    }
    let id = SourceId::from_bytes(bytes).ok()?;
    // Only the canonical form: an id that is a short name is spelled as
    // that name, so this string is an ordinary long id.
    short_name_of(&bytes).is_none().then_some(id)
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// The name 16 id bytes spell: UTF-8 up to the trailing zeros, not empty
/// (a UTF-8 string never starts with `0x80..=0xBF`, so a hashed id spells
/// none).
fn short_name_of(bytes: &[u8; 16]) -> Option<&str> {
    let end = bytes.iter().rposition(|&b| b != 0)? + 1;
    std::str::from_utf8(&bytes[..end]).ok()
}
