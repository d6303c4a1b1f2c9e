//! Finding records in a JSON body without building a DOM.
//!
//! [`scan_document`] walks a body once with serde_json (so it is validated
//! exactly as `serde_json::from_slice::<Value>` would) and keeps only what
//! the source asks for: the byte span of every record in the records array
//! (records stay the server's bytes, never re-serialized) and the small
//! values at the other body paths (next cursor, flags, watermark). Every
//! other value is skipped without allocating.
//!
//! [`raw_lookup`] then finds a field (the id, the watermark field) inside a
//! record's span: a scanner over JSON that the walk has already validated,
//! reading only the keys on the way and skipping values by bracket depth.
//!
//! Semantics are those of a `Value` lookup: a repeated key's last value
//! wins, a numeric segment indexes an array.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;

/// What a body holds at the records path.
#[derive(Debug, Default)]
pub enum Records<'b> {
    /// Nothing at the path.
    #[default]
    Missing,
    /// Something that is not an array (its kind, for the error).
    NotArray(&'static str),
    /// The records' JSON texts, borrowed from the body (re-serialized only
    /// when another wanted path runs through the records array).
    Found(Vec<Cow<'b, str>>),
}

/// The result of [`scan_document`].
#[derive(Debug, Default)]
pub struct Scanned<'b> {
    pub records: Records<'b>,
    /// The value at each of the other paths asked for (`None`: absent).
    pub values: Vec<Option<Value>>,
}

impl Scanned<'_> {
    fn not_array(&mut self, kind: &'static str) {
        self.records = Records::NotArray(kind);
    }
}

/// What a node of the walk is looking for.
#[derive(Debug, Clone, Copy)]
enum Want {
    Records,
    Value(usize),
}

/// Walks `body` once: the records array at `records` (dotted segments;
/// empty is the body itself) and the values at `paths`. Fails with
/// serde_json's error on anything that is not one valid JSON document.
pub fn scan_document<'b>(
    body: &'b [u8],
    records: &[String],
    paths: &[&[String]],
) -> Result<Scanned<'b>, serde_json::Error> {
    let mut out = Scanned {
        records: Records::Missing,
        values: vec![None; paths.len()],
    };
    let mut wanted: Vec<(Want, &[String])> = vec![(Want::Records, records)];
    wanted.extend(paths.iter().enumerate().map(|(i, p)| (Want::Value(i), *p)));
    let mut de = serde_json::Deserializer::from_slice(body);
    Node {
        depth: 0,
        wanted: &wanted,
        out: &mut out,
    }
    .deserialize(&mut de)?;
    de.end()?;
    // Skipped values were checked for syntax, not for UTF-8: check it all
    // (valid JSON is UTF-8 throughout; only strings may hold non-ASCII).
    std::str::from_utf8(body)
        .map_err(|e| <serde_json::Error as de::Error>::custom(format!("invalid utf-8: {e}")))?;
    Ok(out)
}

struct Node<'w, 'o, 'b> {
    depth: usize,
    wanted: &'w [(Want, &'w [String])],
    out: &'o mut Scanned<'b>,
}

impl<'w, 'b> Node<'w, '_, 'b> {
    /// The wanted paths that continue with `segment` below this node.
    fn below(&self, segment: impl Fn(&str) -> bool) -> Vec<(Want, &'w [String])> {
        self.wanted
            .iter()
            .filter(|(_, p)| p.get(self.depth).is_some_and(|s| segment(s)))
            .copied()
            .collect()
    }
}

impl<'de: 'b, 'b> DeserializeSeed<'de> for Node<'_, '_, 'b> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        let ends_here = self.wanted.iter().any(|(_, p)| p.len() == self.depth);
        if !ends_here {
            return deserializer.deserialize_any(self);
        }
        let only_records = self
            .wanted
            .iter()
            .all(|(w, p)| matches!(w, Want::Records) && p.len() == self.depth);
        if only_records {
            return deserializer.deserialize_any(RecordsVisitor(self.out));
        }
        // A value path ends here (perhaps with others below it): take the
        // whole value and look the rest up in it.
        let value = Value::deserialize(deserializer)?;
        for (want, path) in self.wanted {
            let found = lookup(&value, &path[self.depth..]);
            match want {
                Want::Value(i) => self.out.values[*i] = found.cloned(),
                Want::Records => {
                    self.out.records = match found {
                        None => Records::Missing,
                        Some(Value::Array(items)) => Records::Found(
                            items.iter().map(|v| Cow::Owned(v.to_string())).collect(),
                        ),
                        Some(other) => Records::NotArray(kind(other)),
                    }
                }
            }
        }
        Ok(())
    }
}

impl<'de: 'b, 'b> Visitor<'de> for Node<'_, '_, 'b> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            let below = self.below(|s| s == key);
            if below.is_empty() {
                map.next_value::<IgnoredAny>()?;
            } else {
                map.next_value_seed(Node {
                    depth: self.depth + 1,
                    wanted: &below,
                    out: self.out,
                })?;
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0usize;
        loop {
            let below = self.below(|s| s.parse::<usize>().ok() == Some(index));
            let more = if below.is_empty() {
                seq.next_element::<IgnoredAny>()?.is_some()
            } else {
                seq.next_element_seed(Node {
                    depth: self.depth + 1,
                    wanted: &below,
                    out: self.out,
                })?
                .is_some()
            };
            if !more {
                return Ok(());
            }
            index += 1;
        }
    }
}

/// At the records path: an array's elements as raw spans, or the kind of
/// what is there instead.
struct RecordsVisitor<'o, 'b>(&'o mut Scanned<'b>);

impl<'de: 'b, 'b> Visitor<'de> for RecordsVisitor<'_, 'b> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(256));
        while let Some(raw) = seq.next_element::<&'de RawValue>()? {
            items.push(Cow::Borrowed(raw.get()));
        }
        self.0.records = Records::Found(items);
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        self.0.not_array("an object");
        Ok(())
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        self.0.not_array("a boolean");
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        self.0.not_array("a number");
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        self.0.not_array("a number");
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        self.0.not_array("a number");
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        self.0.not_array("a string");
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        // `null` at the path: a Value lookup finds it and it is not an array.
        self.0.not_array("null");
        Ok(())
    }
}

/// The value at `path` in `value`.
fn lookup<'v>(value: &'v Value, path: &[String]) -> Option<&'v Value> {
    let mut current = value;
    for segment in path {
        current = match current {
            Value::Object(map) => map.get(segment)?,
            Value::Array(items) => items.get(segment.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(current)
}

/// How a JSON value's kind reads in an error message.
pub fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The raw text of the value at `path` inside `json`, which must be valid
/// JSON (a span [`scan_document`] returned). `None` when a segment is
/// missing or walks into a scalar.
pub fn raw_lookup<'j>(json: &'j str, path: &[String]) -> Option<&'j str> {
    let bytes = json.as_bytes();
    let mut start = skip_ws(bytes, 0);
    let mut end = None;
    for segment in path {
        let (s, e) = match bytes.get(start)? {
            b'{' => find_key(json, start, segment)?,
            b'[' => {
                let index: usize = segment.parse().ok()?;
                find_index(bytes, start, index)?
            }
            _ => return None,
        };
        start = s;
        end = Some(e);
    }
    let end = match end {
        Some(end) => end,
        None => value_end(bytes, start)?,
    };
    json.get(start..end)
}

fn skip_ws(bytes: &[u8], mut at: usize) -> usize {
    while at < bytes.len() && matches!(bytes[at], b' ' | b'\t' | b'\n' | b'\r') {
        at += 1;
    }
    at
}

/// The index just past the string starting at `at` (a `"`).
fn string_end(bytes: &[u8], at: usize) -> Option<usize> {
    let mut i = at + 1;
    loop {
        let rel = memchr::memchr2(b'"', b'\\', &bytes[i..])?;
        i += rel;
        if bytes[i] == b'\\' {
            i += 2;
        } else {
            return Some(i + 1);
        }
    }
}

/// The index just past the value starting at `at`.
fn value_end(bytes: &[u8], at: usize) -> Option<usize> {
    match *bytes.get(at)? {
        b'"' => string_end(bytes, at),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = at;
            while i < bytes.len() {
                match bytes[i] {
                    b'"' => {
                        i = string_end(bytes, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            None
        }
        _ => {
            let mut i = at;
            while i < bytes.len()
                && !matches!(bytes[i], b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
            {
                i += 1;
            }
            Some(i)
        }
    }
}

/// The span of the value of `key` in the object at `at`; the last one when
/// the key repeats. The first match is taken at once when nothing after it
/// could be a repeat (no `"key"` and no `\u` escape further on), which is
/// nearly always: ids come early in a record.
fn find_key(json: &str, at: usize, key: &str) -> Option<(usize, usize)> {
    let bytes = json.as_bytes();
    let needle = format!("\"{key}\"");
    let plain_key = !key.contains(['"', '\\']) && !key.chars().any(char::is_control);
    let mut found = None;
    let mut i = skip_ws(bytes, at + 1);
    if bytes.get(i) == Some(&b'}') {
        return None;
    }
    loop {
        let key_end = string_end(bytes, i)?;
        let raw_key = &json[i + 1..key_end - 1];
        let matches = if raw_key.contains('\\') {
            serde_json::from_str::<String>(&json[i..key_end]).ok()? == key
        } else {
            raw_key == key
        };
        i = skip_ws(bytes, key_end);
        // ':'
        i = skip_ws(bytes, i + 1);
        let end = value_end(bytes, i)?;
        if matches {
            found = Some((i, end));
            let rest = &bytes[end..];
            if plain_key
                && memchr::memmem::find(rest, needle.as_bytes()).is_none()
                && memchr::memmem::find(rest, b"\\u").is_none()
            {
                return found;
            }
        }
        i = skip_ws(bytes, end);
        match bytes.get(i)? {
            b',' => i = skip_ws(bytes, i + 1),
            _ => return found,
        }
    }
}

/// The span of element `index` of the array at `at`.
fn find_index(bytes: &[u8], at: usize, index: usize) -> Option<(usize, usize)> {
    let mut i = skip_ws(bytes, at + 1);
    if bytes.get(i) == Some(&b']') {
        return None;
    }
    let mut n = 0;
    loop {
        let end = value_end(bytes, i)?;
        if n == index {
            return Some((i, end));
        }
        n += 1;
        i = skip_ws(bytes, end);
        match bytes.get(i)? {
            b',' => i = skip_ws(bytes, i + 1),
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs(path: &str) -> Vec<String> {
        if path.is_empty() {
            Vec::new()
        } else {
            path.split('.').map(str::to_string).collect()
        }
    }

    /// What a DOM lookup finds, for comparison.
    fn dom(body: &str, path: &str) -> Option<Value> {
        let v: Value = serde_json::from_str(body).ok()?;
        lookup(&v, &segs(path)).cloned()
    }

    #[test]
    fn records_and_values_match_a_dom_lookup() {
        let body = r#"{"meta":{"next":"c2","more":true},"data":[{"id":1},{"id":"x","n":[1,2]}, 3 ],"data2":null}"#;
        let records = segs("data");
        let next = segs("meta.next");
        let more = segs("meta.more");
        let absent = segs("meta.nope");
        let scanned = scan_document(body.as_bytes(), &records, &[&next, &more, &absent]).unwrap();
        let Records::Found(items) = scanned.records else {
            panic!("no records")
        };
        let texts: Vec<&str> = items.iter().map(|r| r.as_ref()).collect();
        assert_eq!(texts, [r#"{"id":1}"#, r#"{"id":"x","n":[1,2]}"#, "3"]);
        assert_eq!(scanned.values[0], dom(body, "meta.next"));
        assert_eq!(scanned.values[1], dom(body, "meta.more"));
        assert_eq!(scanned.values[2], None);
    }

    #[test]
    fn kinds_at_the_records_path() {
        for (body, expected) in [
            (r#"{"data":{"a":1}}"#, Some("an object")),
            (r#"{"data":"x"}"#, Some("a string")),
            (r#"{"data":null}"#, Some("null")),
            (r#"{"other":[]}"#, None),
        ] {
            let scanned = scan_document(body.as_bytes(), &segs("data"), &[]).unwrap();
            match (scanned.records, expected) {
                (Records::NotArray(k), Some(e)) => assert_eq!(k, e, "{body}"),
                (Records::Missing, None) => {}
                (other, e) => panic!("{body}: {other:?} vs {e:?}"),
            }
        }
        let root = scan_document(b"[1, {\"a\":2}]", &[], &[]).unwrap();
        assert!(matches!(root.records, Records::Found(items) if items.len() == 2));
    }

    #[test]
    fn repeated_keys_take_the_last_value_and_nested_paths_work() {
        let body =
            r#"{"data":[1],"next":"a","data":[2,3],"next":"b","deep":{"list":[{"x":1},{"x":2}]}}"#;
        let x = segs("deep.list.1.x");
        let next = segs("next");
        let scanned = scan_document(body.as_bytes(), &segs("data"), &[&next, &x]).unwrap();
        assert!(matches!(scanned.records, Records::Found(ref items) if items.len() == 2));
        assert_eq!(scanned.values[0], Some(Value::from("b")));
        assert_eq!(scanned.values[1], Some(Value::from(2)));
    }

    #[test]
    fn a_value_path_through_the_records_falls_back_to_a_value() {
        let body = r#"{"data":[{"id":7,"next":"n"}]}"#;
        let next = segs("data.0.next");
        let scanned = scan_document(body.as_bytes(), &segs("data"), &[&next]).unwrap();
        assert_eq!(scanned.values[0], Some(Value::from("n")));
        let Records::Found(items) = scanned.records else {
            panic!()
        };
        assert_eq!(items[0], r#"{"id":7,"next":"n"}"#);
    }

    #[test]
    fn invalid_bodies_are_serde_json_errors() {
        for bad in [&b"{\"data\":[1,"[..], b"{\"data\":[]} x", b""] {
            let expected = serde_json::from_slice::<Value>(bad)
                .unwrap_err()
                .to_string();
            let got = scan_document(bad, &segs("data"), &[])
                .unwrap_err()
                .to_string();
            assert_eq!(got, expected);
        }
        // Bad UTF-8 inside a skipped value is caught too.
        let error = scan_document(b"{\"data\":[\"\xff\"]}", &segs("data"), &[]).unwrap_err();
        let text = error.to_string();
        assert!(text.contains("utf-8") || text.contains("unicode"), "{text}");
    }

    #[test]
    fn raw_lookup_matches_a_dom_lookup() {
        let record = r#" {"id" : "a\"b", "n": {"deep": [10, {"x": "}"}, 30]}, "s": "{[", "id2": -1.5e3, "e":{}, "l":[], "id":"last"} "#;
        for path in [
            "id",
            "n.deep.0",
            "n.deep.1.x",
            "n.deep.2",
            "n.deep.3",
            "s",
            "id2",
            "e",
            "e.x",
            "l",
            "l.0",
            "missing",
            "s.x",
            "",
        ] {
            let raw = raw_lookup(record, &segs(path));
            let parsed = raw.map(|r| serde_json::from_str::<Value>(r).unwrap());
            assert_eq!(parsed, dom(record, path), "{path}");
        }
        assert_eq!(raw_lookup(r#"{"\u0069d": 5}"#, &segs("id")), Some("5"));
    }
}
