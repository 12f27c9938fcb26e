//! One line of the wire: parsing and writing, exactly as scuttlebutt's
//! `stream-serializer` does (`JSON.stringify(data) + '\n'`, split on `\n`,
//! `JSON.parse` each line).

use std::collections::HashMap;
use std::fmt;
use std::io::Write as _;

use serde::Deserialize;
use serde::de::{self, IgnoredAny, SeqAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::Json;

/// What is wrong with a line (see [`StreamError`](crate::StreamError)).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LineError {
    /// The line is not JSON (JavaScript's `JSON.parse` throws on it too).
    #[error("not JSON: {0}")]
    NotJson(String),
    /// A line grew past the limit before its newline.
    #[error("a line is longer than {limit} bytes")]
    Oversize {
        /// The limit ([`StreamOpts::max_line`](crate::StreamOpts::max_line)).
        limit: usize,
    },
    /// An object that is no header `{id, clock, meta}`.
    #[error("not a header: {0}")]
    BadHeader(String),
    /// A second header on one stream.
    #[error("a second header")]
    DuplicateHeader,
    /// An update before the peer's header.
    #[error("an update before the header")]
    UpdateBeforeHeader,
    /// An array that is no update `[[key, value], ts, source]`.
    #[error("not an update: {0}")]
    BadUpdate(String),
    /// JSON that the protocol has no use for (a number, `true`, a string
    /// other than `"SYNC"`).
    #[error("unexpected line: {0}")]
    Unexpected(String),
}

/// A peer's header: scuttlebutt's digest `{id, clock, meta}`.
#[derive(Clone, Debug, PartialEq)]
pub struct Header {
    /// The peer's id, if it sent one.
    pub id: Option<String>,
    /// What the peer has: source id to the newest float timestamp.
    pub clock: HashMap<String, f64>,
    /// The peer's `meta`, if any.
    pub meta: Option<Value>,
}

/// One update line, `[[key, value], ts, source]`.
#[derive(Clone, Debug, PartialEq)]
pub struct UpdateLine {
    /// The key.
    pub key: String,
    /// The value, as its JSON text.
    pub value: Json,
    /// Float milliseconds.
    pub ts: f64,
    /// The JavaScript source id.
    pub source: String,
}

/// A parsed line.
#[derive(Clone, Debug, PartialEq)]
pub enum Line {
    /// A header.
    Header(Header),
    /// An update.
    Update(UpdateLine),
    /// `"SYNC"`: the peer has sent all its history.
    Sync,
    /// An update line that was only checked to be JSON (a stream that takes
    /// no updates ignores them, as scuttlebutt does).
    Ignored,
}

/// Parses one line (without its `\n`). Updates are parsed whole only when
/// `updates` is set; otherwise an array line is only checked to be JSON.
///
/// ```
/// use repred_scuttlebutt::line::{Line, LineError, parse};
///
/// let Line::Update(u) = parse(br#"[["k",{"v":1}],1700000000000.5,"A"]"#, true)? else { panic!() };
/// assert_eq!((u.key.as_str(), u.value.as_str(), u.ts, u.source.as_str()), ("k", r#"{"v":1}"#, 1700000000000.5, "A"));
/// assert_eq!(parse(br#""SYNC""#, true)?, Line::Sync);
/// assert!(matches!(parse(b"{garbage", true), Err(LineError::NotJson(_))));
/// assert!(matches!(parse(br#"[1,2]"#, true), Err(LineError::BadUpdate(_))));
/// # Ok::<(), LineError>(())
/// ```
pub fn parse(line: &[u8], updates: bool) -> Result<Line, LineError> {
    let first = line.iter().copied().find(|b| !b.is_ascii_whitespace());
    match first {
        None => Err(LineError::NotJson("an empty line".into())),
        Some(b'[') if !updates => {
            serde_json::from_slice::<IgnoredAny>(line).map_err(not_json)?;
            Ok(Line::Ignored)
        }
        Some(b'[') => match serde_json::from_slice::<UpdateLine>(line) {
            Ok(update) => {
                if update.source == "__proto__" {
                    return Err(LineError::BadUpdate(
                        "the source \"__proto__\" is reserved".into(),
                    ));
                }
                Ok(Line::Update(update))
            }
            Err(e) if e.is_data() => Err(LineError::BadUpdate(e.to_string())),
            Err(e) => Err(not_json(e)),
        },
        Some(b'{') => parse_header(line),
        Some(b'"') => match serde_json::from_slice::<String>(line) {
            Ok(s) if s == "SYNC" => Ok(Line::Sync),
            Ok(s) => Err(LineError::Unexpected(format!("the string {s:?}"))),
            Err(e) => Err(not_json(e)),
        },
        Some(_) => {
            let value: Value = serde_json::from_slice(line).map_err(not_json)?;
            Err(LineError::Unexpected(truncated(&value.to_string())))
        }
    }
}

fn not_json(e: serde_json::Error) -> LineError {
    LineError::NotJson(e.to_string())
}

fn truncated(text: &str) -> String {
    match text.char_indices().nth(64) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_string(),
    }
}

fn parse_header(line: &[u8]) -> Result<Line, LineError> {
    #[derive(Deserialize)]
    struct Raw {
        id: Option<Value>,
        clock: Option<Value>,
        meta: Option<Value>,
    }
    let raw: Raw = serde_json::from_slice(line)
        .map_err(|e| if e.is_data() { LineError::BadHeader(e.to_string()) } else { not_json(e) })?;
    let id = match raw.id {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) => Some(id),
        Some(other) => {
            return Err(LineError::BadHeader(format!(
                "its id is {}",
                truncated(&other.to_string())
            )));
        }
    };
    // scuttlebutt ends a stream whose header has no clock.
    let Some(Value::Object(entries)) = raw.clock else {
        return Err(LineError::BadHeader("it has no clock object".into()));
    };
    let mut clock = HashMap::with_capacity(entries.len());
    for (source, ts) in entries {
        match ts {
            // JSON.stringify writes NaN as null: "send everything", as a
            // missing entry.
            Value::Null => {}
            Value::Number(n) => {
                let ts = n.as_f64().ok_or_else(|| LineError::BadHeader(format!("{n}")))?;
                clock.insert(source, ts);
            }
            other => {
                return Err(LineError::BadHeader(format!(
                    "its clock gives {source:?} {}",
                    truncated(&other.to_string())
                )));
            }
        }
    }
    Ok(Line::Header(Header { id, clock, meta: raw.meta.filter(|m| !m.is_null()) }))
}

impl<'de> Deserialize<'de> for UpdateLine {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_seq(UpdateVisitor)
    }
}

struct UpdateVisitor;

impl<'de> Visitor<'de> for UpdateVisitor {
    type Value = UpdateLine;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("[[key, value], ts, source]")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<UpdateLine, A::Error> {
        let (key, value): (String, Box<RawValue>) =
            seq.next_element()?.ok_or_else(|| de::Error::invalid_length(0, &self))?;
        let ts: f64 = seq.next_element()?.ok_or_else(|| de::Error::invalid_length(1, &self))?;
        let source: String =
            seq.next_element()?.ok_or_else(|| de::Error::invalid_length(2, &self))?;
        // A fourth element is a signature; with signatures off it is
        // ignored (as scuttlebutt without `verify` does). No fifth.
        if seq.next_element::<IgnoredAny>()?.is_some()
            && seq.next_element::<IgnoredAny>()?.is_some()
        {
            return Err(de::Error::invalid_length(5, &self));
        }
        Ok(UpdateLine { key, value: Json::from_raw(&value), ts, source })
    }
}

/// Appends `s` as a JSON string, escaped as `JSON.stringify` escapes it.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Appends a float as JavaScript prints it for these values: whole numbers
/// without a fraction, others in the shortest form that reads back as the
/// same float.
pub fn write_f64(out: &mut Vec<u8>, f: f64) {
    // Writing into a Vec cannot fail.
    if f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 {
        // Whole (every JavaScript first write of a millisecond): as an
        // integer, as JSON.stringify prints it.
        let _ = write!(out, "{}", f as i64);
    } else {
        // serde_json's shortest round-trip formatter, much faster than
        // core's; JSON either way.
        let _ = serde_json::to_writer(&mut *out, &f);
    }
}

/// Appends an update line `[[key,value],ts,"source"]\n`.
///
/// ```
/// use repred_scuttlebutt::Json;
/// use repred_scuttlebutt::line::write_update;
///
/// let mut out = Vec::new();
/// write_update(&mut out, "k", &Json::string("v"), 1700000000000.0, "A");
/// assert_eq!(out, b"[[\"k\",\"v\"],1700000000000,\"A\"]\n");
/// ```
pub fn write_update(out: &mut Vec<u8>, key: &str, value: &Json, ts: f64, source: &str) {
    out.extend_from_slice(b"[[");
    write_str(out, key);
    out.push(b',');
    out.extend_from_slice(value.as_str().as_bytes());
    out.extend_from_slice(b"],");
    write_f64(out, ts);
    out.push(b',');
    write_str(out, source);
    out.extend_from_slice(b"]\n");
}

/// Appends the sync line `"SYNC"\n`.
pub fn write_sync(out: &mut Vec<u8>) {
    out.extend_from_slice(b"\"SYNC\"\n");
}

/// Appends a header line `{"id":..,"clock":{..},"meta":..}\n`.
pub fn write_header<'a>(
    out: &mut Vec<u8>,
    id: &str,
    clock: impl IntoIterator<Item = (&'a str, f64)>,
    meta: Option<&Value>,
) {
    out.extend_from_slice(b"{\"id\":");
    write_str(out, id);
    out.extend_from_slice(b",\"clock\":{");
    for (i, (source, ts)) in clock.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, source);
        out.push(b':');
        write_f64(out, ts);
    }
    out.push(b'}');
    if let Some(meta) = meta {
        out.extend_from_slice(b",\"meta\":");
        out.extend_from_slice(meta.to_string().as_bytes());
    }
    out.extend_from_slice(b"}\n");
}

#[cfg(test)]
mod tests {
    // Literals written as JavaScript prints them.
    #![allow(clippy::excessive_precision)]
    use super::*;

    #[test]
    fn strings_are_escaped_as_json_stringify_does() {
        let mut out = Vec::new();
        write_str(&mut out, "a\"b\\c\nd\u{1}é😀");
        assert_eq!(String::from_utf8(out.clone()).unwrap(), r#""a\"b\\c\nd\u0001é😀""#);
        let back: String = serde_json::from_slice(&out).unwrap();
        assert_eq!(back, "a\"b\\c\nd\u{1}é😀");
    }

    #[test]
    fn floats_read_back_exactly() {
        for f in [1.0, 0.5, 1.1, 1_700_000_000_000.000_244_140_625, 1_700_000_000_000.000_999, 1e21]
        {
            let mut out = Vec::new();
            write_f64(&mut out, f);
            let back: f64 = serde_json::from_slice(&out).unwrap();
            assert_eq!(back, f, "{}", String::from_utf8_lossy(&out));
        }
    }

    #[test]
    fn validation() {
        // Heritage 26 and 60: shapes scuttlebutt's validate() refuses, and
        // JSON that means nothing here.
        let bad_updates: [&[u8]; 7] = [
            br#"[["k","v"],"1","A"]"#,
            br#"[["k","v"],1,2]"#,
            br#"[["k","v"],1]"#,
            br#"[["k"],1,"A"]"#,
            br#"[[5,"v"],1,"A"]"#,
            br#"[["k","v"],1,"A","sig","more"]"#,
            br#"[["k","v"],1,"__proto__"]"#,
        ];
        for line in bad_updates {
            assert!(
                matches!(parse(line, true), Err(LineError::BadUpdate(_))),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
        assert!(matches!(parse(br#"[["k","v"],1,"A","sig"]"#, true), Ok(Line::Update(_))));
        assert!(matches!(parse(br#"{"id":"A"}"#, true), Err(LineError::BadHeader(_))));
        assert!(matches!(parse(br#"{"clock":{"A":"x"}}"#, true), Err(LineError::BadHeader(_))));
        assert!(matches!(parse(br#"{"id":5,"clock":{}}"#, true), Err(LineError::BadHeader(_))));
        assert!(matches!(parse(br#""HELLO""#, true), Err(LineError::Unexpected(_))));
        assert!(matches!(parse(b"42", true), Err(LineError::Unexpected(_))));
        assert!(matches!(parse(b"", true), Err(LineError::NotJson(_))));
        assert!(matches!(parse(b"  \r", true), Err(LineError::NotJson(_))));
        assert!(matches!(parse(b"[[\"k\",", true), Err(LineError::NotJson(_))));
        assert!(matches!(parse(b"\xff\xfe", true), Err(LineError::NotJson(_))));
        assert_eq!(parse(br#"[1,2]"#, false), Ok(Line::Ignored), "a non-writable stream");
        let Ok(Line::Header(h)) =
            parse(br#"{"id":"A","clock":{"A":1.5,"B":null},"meta":"m"}"#, true)
        else {
            panic!("a header")
        };
        assert_eq!(h.clock, HashMap::from([("A".to_string(), 1.5)]));
        assert_eq!(h.meta, Some(Value::String("m".into())));
    }
}
