//! QEMU's JSON value model (`QObject`), with `QDict`'s observable member order.
//!
//! QEMU keeps JSON objects in a hash table of 512 buckets (`qobject/qdict.c`):
//! a key goes to bucket `tdb_hash(key) % 512`, new keys are inserted at the
//! *head* of their bucket's list, and iteration walks buckets in index order.
//! Every object QEMU writes on the wire (replies, events, the greeting, an
//! echoed `id`) is serialized in that order, and the first "unexpected"
//! argument QEMU reports is the first in that order. [`QDict`] reproduces it
//! exactly, so output order never has to be written down per message type.

use std::fmt;

/// Number of hash buckets in a QEMU `QDict` (`QDICT_BUCKET_MAX`).
pub const QDICT_BUCKET_MAX: u32 = 512;

/// The hash QEMU uses for `QDict` keys (`tdb_hash`, from gdbm via tdb).
pub fn tdb_hash(key: &str) -> u32 {
    let bytes = key.as_bytes();
    let mut value: u32 = 0x238F_13AF_u32.wrapping_mul(bytes.len() as u32);
    for (i, &b) in bytes.iter().enumerate() {
        value = value.wrapping_add(u32::from(b) << ((i as u32 * 5) % 24));
    }
    1_103_515_243_u32.wrapping_mul(value).wrapping_add(12345)
}

/// The bucket a key lands in.
pub fn bucket(key: &str) -> u32 {
    tdb_hash(key) % QDICT_BUCKET_MAX
}

/// A QEMU number (`QNum`): parsed integers that fit `i64` are `I64`, larger
/// non-negative ones `U64`, everything else `Double`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum QNum {
    /// Signed 64-bit integer.
    I64(i64),
    /// Unsigned integer above `i64::MAX`.
    U64(u64),
    /// IEEE double (may be non-finite: QEMU's `strtod` overflows to `inf`).
    Double(f64),
}

impl QNum {
    /// The value as an unsigned integer, if it is one.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            QNum::I64(i) => u64::try_from(i).ok(),
            QNum::U64(u) => Some(u),
            QNum::Double(_) => None,
        }
    }
}

/// A JSON value as QEMU holds it.
#[derive(Debug, Clone, PartialEq)]
pub enum QObject {
    /// `null`
    Null,
    /// `true` / `false`
    Bool(bool),
    /// A number.
    Num(QNum),
    /// A string (may contain NUL, which QEMU keeps as modified UTF-8).
    Str(String),
    /// An array.
    List(Vec<QObject>),
    /// An object.
    Dict(QDict),
    /// A value already written in QEMU's JSON format (a cached reply),
    /// copied to the output as is.
    Raw(std::sync::Arc<str>),
}

impl QObject {
    /// The QAPI type name QEMU uses in `Invalid parameter type …, expected: X`
    /// style messages for the type this value *is*.
    pub fn kind(&self) -> &'static str {
        match self {
            QObject::Null => "null",
            QObject::Bool(_) => "boolean",
            QObject::Num(_) => "number",
            QObject::Str(_) => "string",
            QObject::List(_) => "array",
            QObject::Dict(_) => "object",
            QObject::Raw(_) => "value",
        }
    }

    /// The dict inside, if this is one.
    pub fn as_dict(&self) -> Option<&QDict> {
        match self {
            QObject::Dict(d) => Some(d),
            _ => None,
        }
    }

    /// The string inside, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            QObject::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// A JSON object with QEMU's iteration order.
///
/// Entries are stored in insertion order; [`QDict::iter`] yields them in the
/// order QEMU's `qdict_first`/`qdict_next` would.
#[derive(Clone, Default, PartialEq)]
pub struct QDict {
    entries: Vec<(String, QObject)>,
}

impl fmt::Debug for QDict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl QDict {
    /// An empty dict.
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts or replaces (`qdict_put_obj`): a replaced key keeps its place.
    pub fn put(&mut self, key: impl Into<String>, value: impl Into<QObject>) {
        let key = key.into();
        let value = value.into();
        if let Some(slot) = self.entries.iter_mut().find(|(k, _)| *k == key) {
            slot.1 = value;
        } else {
            self.entries.push((key, value));
        }
    }

    /// Looks a key up.
    pub fn get(&self, key: &str) -> Option<&QObject> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The string member `key`, if it is one.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(QObject::as_str)
    }

    /// Removes a key, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<QObject> {
        let pos = self.entries.iter().position(|(k, _)| k == key)?;
        Some(self.entries.remove(pos).1)
    }

    /// Whether the key is present.
    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no members.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Members in QEMU's iteration order: by bucket, and within a bucket the
    /// most recently inserted key first.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &QObject)> {
        // Sort keys computed once: (bucket, newest first).
        let mut idx: Vec<(u32, std::cmp::Reverse<usize>)> = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, (k, _))| (bucket(k), std::cmp::Reverse(i)))
            .collect();
        idx.sort_unstable();
        let idx = idx.into_iter().map(|(_, std::cmp::Reverse(i))| i);
        idx.into_iter()
            .map(move |i| (self.entries[i].0.as_str(), &self.entries[i].1))
    }

    /// Takes the members out, in insertion order.
    pub fn into_entries(self) -> impl Iterator<Item = (String, QObject)> {
        self.entries.into_iter()
    }

    /// Members in insertion order (the order the input text had them).
    pub fn iter_inserted(&self) -> impl Iterator<Item = (&str, &QObject)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }
}

impl From<bool> for QObject {
    fn from(b: bool) -> Self {
        QObject::Bool(b)
    }
}
impl From<i64> for QObject {
    fn from(n: i64) -> Self {
        QObject::Num(QNum::I64(n))
    }
}
impl From<u64> for QObject {
    fn from(n: u64) -> Self {
        i64::try_from(n).map_or(QObject::Num(QNum::U64(n)), |i| QObject::Num(QNum::I64(i)))
    }
}
impl From<f64> for QObject {
    fn from(n: f64) -> Self {
        QObject::Num(QNum::Double(n))
    }
}
impl From<&str> for QObject {
    fn from(s: &str) -> Self {
        QObject::Str(s.to_owned())
    }
}
impl From<String> for QObject {
    fn from(s: String) -> Self {
        QObject::Str(s)
    }
}
impl From<QDict> for QObject {
    fn from(d: QDict) -> Self {
        QObject::Dict(d)
    }
}
impl From<Vec<QObject>> for QObject {
    fn from(l: Vec<QObject>) -> Self {
        QObject::List(l)
    }
}

/// serde_json (with `preserve_order`) → QObject: members are inserted in the
/// order the `Value` holds them, which is how QEMU's output visitors insert
/// struct members (schema order). Build reply values in schema order.
impl From<&serde_json::Value> for QObject {
    fn from(v: &serde_json::Value) -> Self {
        match v {
            serde_json::Value::Null => QObject::Null,
            serde_json::Value::Bool(b) => QObject::Bool(*b),
            serde_json::Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    QObject::Num(QNum::I64(i))
                } else if let Some(u) = n.as_u64() {
                    QObject::Num(QNum::U64(u))
                } else {
                    QObject::Num(QNum::Double(n.as_f64().unwrap_or(f64::NAN)))
                }
            }
            serde_json::Value::String(s) => QObject::Str(s.clone()),
            serde_json::Value::Array(a) => QObject::List(a.iter().map(QObject::from).collect()),
            serde_json::Value::Object(m) => {
                let mut d = QDict::new();
                for (k, v) in m {
                    d.put(k.clone(), QObject::from(v));
                }
                QObject::Dict(d)
            }
        }
    }
}

impl QObject {
    /// A value parsed from text that QEMU *wrote* (a recorded reply), so that
    /// writing it again reproduces the recorded member order. QEMU writes a
    /// bucket's members newest first; inserting the recorded members in
    /// reverse restores the original insertion order within each bucket.
    pub fn from_wire(v: &serde_json::Value) -> QObject {
        match v {
            serde_json::Value::Array(a) => {
                QObject::List(a.iter().map(QObject::from_wire).collect())
            }
            serde_json::Value::Object(m) => {
                let mut d = QDict::new();
                for (k, v) in m.iter().rev() {
                    d.put(k.clone(), QObject::from_wire(v));
                }
                QObject::Dict(d)
            }
            other => QObject::from(other),
        }
    }
}

/// QObject → serde_json, members in input (insertion) order. Non-finite
/// doubles, which JSON cannot hold, become `null`.
impl From<&QObject> for serde_json::Value {
    fn from(q: &QObject) -> Self {
        match q {
            QObject::Null => serde_json::Value::Null,
            QObject::Bool(b) => serde_json::Value::Bool(*b),
            QObject::Num(QNum::I64(i)) => (*i).into(),
            QObject::Num(QNum::U64(u)) => (*u).into(),
            QObject::Num(QNum::Double(d)) => serde_json::Number::from_f64(*d)
                .map_or(serde_json::Value::Null, serde_json::Value::Number),
            QObject::Str(s) => serde_json::Value::String(s.clone()),
            QObject::List(l) => serde_json::Value::Array(l.iter().map(Into::into).collect()),
            QObject::Raw(text) => serde_json::from_str(text).unwrap_or(serde_json::Value::Null),
            QObject::Dict(d) => serde_json::Value::Object(
                d.iter_inserted()
                    .map(|(k, v)| (k.to_owned(), v.into()))
                    .collect(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(keys: &[&str]) -> Vec<String> {
        let mut d = QDict::new();
        for k in keys {
            d.put(*k, QObject::Null);
        }
        d.iter().map(|(k, _)| k.to_owned()).collect()
    }

    #[test]
    fn reply_members_come_out_in_qemus_order() {
        // Orders observed on the wire from real QEMU (greeting, replies, events).
        assert_eq!(order(&["return", "id"]), ["return", "id"]);
        assert_eq!(order(&["error", "id"]), ["id", "error"]);
        assert_eq!(
            order(&["major", "minor", "micro"]),
            ["micro", "minor", "major"]
        );
        assert_eq!(
            order(&["timestamp", "event", "data"]),
            ["timestamp", "event", "data"]
        );
        assert_eq!(
            order(&["event", "data", "timestamp"]),
            ["timestamp", "event", "data"]
        );
        assert_eq!(order(&["class", "desc"]), ["class", "desc"]);
        assert_eq!(order(&["id", "status"]), ["status", "id"]);
    }

    #[test]
    fn recorded_text_is_written_back_in_the_recorded_order() {
        let text = r#"{"QMP": {"version": {"qemu": {"micro": 2, "minor": 0, "major": 10}, "package": "x"}, "capabilities": ["oob"]}}"#;
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        let q = QObject::from_wire(&v);
        fn keys(q: &QObject) -> Vec<String> {
            q.as_dict()
                .unwrap()
                .iter()
                .map(|(k, _)| k.to_owned())
                .collect()
        }
        let qmp = q.as_dict().unwrap().get("QMP").unwrap();
        let ver = qmp.as_dict().unwrap().get("version").unwrap();
        assert_eq!(
            keys(ver.as_dict().unwrap().get("qemu").unwrap()),
            ["micro", "minor", "major"]
        );
        assert_eq!(keys(qmp), ["version", "capabilities"]);
    }

    #[test]
    fn replacing_a_key_keeps_its_place_and_value_is_updated() {
        let mut d = QDict::new();
        d.put("a", 1i64);
        d.put("b", 2i64);
        d.put("a", 3i64);
        assert_eq!(d.len(), 2);
        assert_eq!(d.get("a"), Some(&QObject::from(3i64)));
    }
}
