//! `scuttlebutt/model` in Rust: string keys to JSON values, the newest
//! write wins per key.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::fmt;

use repred::{Reduce, SourceId, Stamp};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::id;
use crate::time::float_of;

/// A JSON value kept as its text: a relayed write goes out exactly as it
/// came in, and nothing is parsed that nobody reads.
///
/// ```
/// use repred_scuttlebutt::Json;
///
/// let v = Json::parse(r#"{"a":[1,2]}"#)?;
/// assert_eq!(v.as_str(), r#"{"a":[1,2]}"#);
/// assert_eq!(Json::from(&serde_json::json!("hi")).as_str(), r#""hi""#);
/// assert!(Json::parse("{nope").is_err());
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Json(Box<str>);

impl Json {
    /// JSON `null`.
    pub fn null() -> Self {
        Json("null".into())
    }

    /// Checks that `text` is one JSON value and keeps it (surrounding
    /// whitespace dropped).
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        let raw: &serde_json::value::RawValue = serde_json::from_str(text)?;
        Ok(Json(raw.get().into()))
    }

    /// A JSON string holding `text`.
    pub fn string(text: &str) -> Self {
        Json::from(&Value::String(text.to_string()))
    }

    /// From text that is known to be one JSON value already.
    pub(crate) fn from_raw(raw: &serde_json::value::RawValue) -> Self {
        Json(raw.get().into())
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Parsed.
    pub fn to_value(&self) -> Value {
        // The text was checked when it was made; `Null` cannot be reached.
        serde_json::from_str(&self.0).unwrap_or(Value::Null)
    }

    /// Whether this is JSON `null` (which `toJSON` leaves out).
    pub fn is_null(&self) -> bool {
        &*self.0 == "null"
    }
}

impl From<&Value> for Json {
    fn from(value: &Value) -> Self {
        Json(value.to_string().into())
    }
}

impl From<Value> for Json {
    fn from(value: Value) -> Self {
        Json::from(&value)
    }
}

impl fmt::Debug for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// As a string, so that non-self-describing formats (postcard, for the store
// and repred's own streams) can carry any JSON value.
impl Serialize for Json {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        // Checked again: it will be written into JSON lines as it is.
        Json::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// One write of a key: scuttlebutt's `[[key, value], ts, source]`.
///
/// `ts` and `source` are the JavaScript ones, kept exactly as they came, so
/// that the write goes on to other JavaScript peers unchanged. They are
/// `None` only in a local write passed to [`repred::Replica::update`]
/// directly, which stamps them (prefer [`Node::set`](crate::Node::set),
/// whose timestamps are floats exactly).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Write {
    /// The key.
    pub key: String,
    /// The value; `null` is a value (scuttlebutt has no delete), left out of
    /// [`Model::to_json`].
    pub value: Json,
    /// Float milliseconds.
    pub ts: Option<f64>,
    /// The JavaScript source id.
    pub source: Option<String>,
}

/// What travels between replicas of a [`Model`]: writes, and the long
/// JavaScript ids made known (see [`crate::id`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelChange {
    /// Writes, each with its own stamp.
    pub writes: Vec<Write>,
    /// Long JavaScript ids whose hashes are source ids, so that clocks can
    /// name them; carried when a write of a new source lost to a newer one.
    pub names: Vec<String>,
}

impl ModelChange {
    /// A local write of `key`, stamped by the replica that takes it.
    ///
    /// ```
    /// use repred::{Replica, SourceId};
    /// use repred_scuttlebutt::{Model, ModelChange};
    ///
    /// let mut r = Replica::new(SourceId::new("A")?, Model::default());
    /// r.update(1_700_000_000_000, ModelChange::set("k", serde_json::json!(1)))?;
    /// assert_eq!(r.state().get("k"), Some(serde_json::json!(1)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set(key: &str, value: impl Into<Json>) -> Self {
        ModelChange {
            writes: vec![Write {
                key: key.to_string(),
                value: value.into(),
                ts: None,
                source: None,
            }],
            names: Vec::new(),
        }
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.names.is_empty()
    }
}

/// One key's winning write.
#[derive(Clone, Debug, PartialEq)]
struct Cell {
    value: Json,
    ts: f64,
    source: String,
}

/// A key's current write, as [`Model::entry`] and [`Model::history`] show it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Entry<'a> {
    /// The key.
    pub key: &'a str,
    /// The value.
    pub value: &'a Json,
    /// Float milliseconds, as the writer stamped it.
    pub ts: f64,
    /// The writer's JavaScript id.
    pub source: &'a str,
}

/// Compares two strings as JavaScript's `<` does: by UTF-16 code units.
///
/// ```
/// use std::cmp::Ordering;
/// use repred_scuttlebutt::model::js_cmp;
///
/// assert_eq!(js_cmp("A", "B"), Ordering::Less);
/// // U+FF61 is above U+1F600 by code point, below it in UTF-16.
/// assert_eq!(js_cmp("\u{ff61}", "\u{1f600}"), Ordering::Greater);
/// ```
pub fn js_cmp(a: &str, b: &str) -> Ordering {
    a.encode_utf16().cmp(b.encode_utf16())
}

/// The order of writes to one key: timestamp, then source as JavaScript
/// compares strings, then (only for a forged duplicate of one stamp) the
/// value's text, so that every replica picks the same one.
fn order(a: (f64, &str, &Json), b: (f64, &str, &Json)) -> Ordering {
    a.0.total_cmp(&b.0).then_with(|| js_cmp(a.1, b.1)).then_with(|| a.2.cmp(b.2))
}

/// scuttlebutt's `Model`: string keys to JSON values; per key the write with
/// the greatest `(ts, source)` wins.
///
/// That is `scuttlebutt/model`'s order for every write with a distinct
/// timestamp, and for equal ones it is the order in which its history
/// reaches a fresh peer (sorted by `ts`, then source, each replacing the
/// last). On equal timestamps a live JavaScript model keeps whichever
/// arrived last, which no deterministic rule can match everywhere; see the
/// README ("With JavaScript peers").
///
/// ```
/// use repred::Reduce;
/// use repred_scuttlebutt::{Json, Model, ModelChange, Write};
///
/// let w = |v: &str, ts: f64, s: &str| ModelChange {
///     writes: vec![Write { key: "k".into(), value: Json::string(v), ts: Some(ts), source: Some(s.into()) }],
///     names: vec![],
/// };
/// let mut m = Model::default();
/// m.reduce(w("new", 2.0, "A"));
/// assert!(m.reduce(w("old", 1.0, "B")).is_none(), "older loses");
/// m.reduce(w("tie", 2.0, "B"));
/// assert_eq!(m.to_json(), r#"{"k":"tie"}"#, "equal ts: the greater source wins");
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Model {
    entries: BTreeMap<String, Cell>,
    names: BTreeMap<SourceId, String>,
    /// `names` the other way round: a write's source is looked up here
    /// before it is hashed (a function of `names`, so equality holds).
    ids: HashMap<String, SourceId>,
}

impl Model {
    /// The value of `key`, as `model.get(key)`.
    pub fn get(&self, key: &str) -> Option<Value> {
        self.entries.get(key).map(|c| c.value.to_value())
    }

    /// The value of `key` as JSON text.
    pub fn get_json(&self, key: &str) -> Option<&Json> {
        self.entries.get(key).map(|c| &c.value)
    }

    /// The current write of `key`, with its stamp.
    pub fn entry(&self, key: &str) -> Option<Entry<'_>> {
        self.entries.get_key_value(key).map(|(k, c)| entry(k, c))
    }

    /// Every key's current write, in key order.
    pub fn iter(&self) -> impl Iterator<Item = Entry<'_>> {
        self.entries.iter().map(|(k, c)| entry(k, c))
    }

    /// How many keys have a write (`null` ones too).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no key has a write.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The long JavaScript ids known, by source id.
    pub fn names(&self) -> &BTreeMap<SourceId, String> {
        &self.names
    }

    /// The JavaScript string of a source id (see [`id::js_id`]).
    pub fn js_id(&self, id: SourceId) -> std::borrow::Cow<'_, str> {
        id::js_id(id, &self.names)
    }

    /// `model.toJSON()` as text: an object of every key whose value is not
    /// `null`, keys sorted, no spaces.
    ///
    /// ```
    /// use repred::{Replica, SourceId};
    /// use repred_scuttlebutt::{Model, ModelChange};
    /// use serde_json::json;
    ///
    /// let mut r = Replica::new(SourceId::new("A")?, Model::default());
    /// r.update(1_700_000_000_000, ModelChange::set("b", json!({"x": 1})))?;
    /// r.update(1_700_000_000_000, ModelChange::set("a", json!("1")))?;
    /// r.update(1_700_000_000_000, ModelChange::set("gone", json!(null)))?;
    /// assert_eq!(r.state().to_json(), r#"{"a":"1","b":{"x":1}}"#);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn to_json(&self) -> String {
        let mut out = String::from("{");
        for (key, cell) in &self.entries {
            if cell.value.is_null() {
                continue;
            }
            if out.len() > 1 {
                out.push(',');
            }
            out.push_str(&Value::String(key.clone()).to_string());
            out.push(':');
            // Normalised (compact, as JSON.stringify writes it) whatever
            // spacing the writer used.
            out.push_str(&cell.value.to_value().to_string());
        }
        out.push('}');
        out
    }

    /// `model.history(sources)`: every key's current write that `clock` (JS
    /// ids to float timestamps, scuttlebutt's `sources`) does not cover,
    /// sorted by timestamp, then source, as scuttlebutt sends them.
    ///
    /// ```
    /// use std::collections::HashMap;
    /// use repred_scuttlebutt::{Json, Model, ModelChange, Write};
    /// use repred::Reduce;
    ///
    /// let mut m = Model::default();
    /// for (key, ts, source) in [("a", 5.0, "B"), ("b", 5.0, "A"), ("c", 1.0, "C")] {
    ///     m.reduce(ModelChange {
    ///         writes: vec![Write { key: key.into(), value: Json::null(), ts: Some(ts), source: Some(source.into()) }],
    ///         names: vec![],
    ///     });
    /// }
    /// let keys = |h: Vec<repred_scuttlebutt::model::Entry>| h.iter().map(|e| e.key.to_string()).collect::<Vec<_>>();
    /// assert_eq!(keys(m.history(&HashMap::new())), ["c", "b", "a"]);
    /// let clock = HashMap::from([("A".to_string(), 5.0), ("C".to_string(), 0.5)]);
    /// assert_eq!(keys(m.history(&clock)), ["c", "a"]);
    /// ```
    pub fn history(&self, clock: &HashMap<String, f64>) -> Vec<Entry<'_>> {
        let mut out: Vec<Entry<'_>> = self
            .entries
            .iter()
            .filter(|(_, c)| {
                clock
                    .get(&c.source)
                    .is_none_or(|&seen| seen.partial_cmp(&c.ts) == Some(Ordering::Less))
            })
            .map(|(k, c)| entry(k, c))
            .collect();
        out.sort_by(|a, b| a.ts.total_cmp(&b.ts).then_with(|| js_cmp(a.source, b.source)));
        out
    }

    /// Remembers a long id's name; whether it was new.
    fn register(&mut self, name: &str) -> bool {
        // Known already, or a short name: no hash needed.
        if self.ids.contains_key(name) || id::is_table_free(name) {
            return false;
        }
        let source = id::source_id(name);
        self.names.insert(source, name.to_string());
        self.ids.insert(name.to_string(), source);
        true
    }
}

fn entry<'a>(key: &'a str, cell: &'a Cell) -> Entry<'a> {
    Entry { key, value: &cell.value, ts: cell.ts, source: &cell.source }
}

impl Reduce for Model {
    type Update = ModelChange;

    fn reduce(&mut self, update: ModelChange) -> Option<ModelChange> {
        let mut out = ModelChange::default();
        for name in update.names {
            if self.register(&name) {
                out.names.push(name);
            }
        }
        for write in update.writes {
            // An unstamped write cannot be ordered against JavaScript's;
            // replicas stamp every write before reducing it.
            let (Some(ts), Some(source)) = (write.ts, write.source.as_deref()) else { continue };
            if !ts.is_finite() {
                continue;
            }
            if self.register(source) {
                out.names.push(source.to_string());
            }
            // scuttlebutt/model refuses it (its clock still moves).
            if write.key == "__proto__" {
                continue;
            }
            if let Some(cell) = self.entries.get(&write.key)
                && order((cell.ts, &cell.source, &cell.value), (ts, source, &write.value))
                    != Ordering::Less
            {
                continue;
            }
            let cell = Cell { value: write.value.clone(), ts, source: source.to_string() };
            self.entries.insert(write.key.clone(), cell);
            out.writes.push(write);
        }
        (!out.is_empty()).then_some(out)
    }

    fn snapshot(&self) -> ModelChange {
        ModelChange {
            writes: self
                .entries
                .iter()
                .map(|(key, c)| Write {
                    key: key.clone(),
                    value: c.value.clone(),
                    ts: Some(c.ts),
                    source: Some(c.source.clone()),
                })
                .collect(),
            names: self.names.values().cloned().collect(),
        }
    }

    /// Fills the JavaScript stamp of a write made through
    /// [`repred::Replica::update`]: the float of the replica's timestamp and
    /// the id's string (its short name, or its hex form).
    fn stamp(update: &mut ModelChange, stamp: Stamp) {
        for write in &mut update.writes {
            if write.ts.is_none() {
                write.ts = Some(float_of(stamp.ts));
            }
            if write.source.is_none() {
                write.source = Some(id::js_id_free(stamp.source));
            }
        }
    }
}
