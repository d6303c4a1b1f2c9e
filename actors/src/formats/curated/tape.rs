//! JSON payloads flattened onto a tape, without a DOM.
//!
//! A [`Tape`] holds the values of many records as one flat vector of
//! [`Elem`]s: an object or array is its opening element (which knows where
//! it ends) followed by its keys and values. Strings borrow from the
//! payload bytes when they have no escapes; escaped ones are unescaped into
//! the tape's own storage. Parsing is serde_json's, through a visitor that
//! only appends to the tape, so syntax errors, number semantics (integers
//! as `u64`/`i64`, everything else `f64`), the recursion limit and UTF-8
//! checks are exactly those of `serde_json::from_slice::<Value>`, with no
//! allocation per value.
//!
//! Inference and the column builders walk the tape; [`Tape::to_value`]
//! rebuilds a `serde_json::Value` for the rare places that need one (a value
//! stored as JSON text, a record with a repeated key).

use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// One element of a tape.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Elem<'a> {
    Null,
    Bool(bool),
    /// A non-negative integer that fits `u64` (serde_json's `PosInt`).
    U64(u64),
    /// A negative integer that fits `i64` (serde_json's `NegInt`).
    I64(i64),
    F64(f64),
    Str(Text<'a>),
    /// An object: the index just past its last key/value element, and its
    /// number of keys. Keys and values follow, alternating.
    Object {
        end: u32,
        len: u32,
    },
    /// An array: the index just past its last element, and its length.
    Array {
        end: u32,
        len: u32,
    },
    Key(Text<'a>),
}

/// A string on the tape: borrowed from the payload, or an index into the
/// tape's unescaped strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Text<'a> {
    Borrowed(&'a str),
    Owned(u32),
}

/// Many records' JSON values, flattened.
#[derive(Debug, Default)]
pub(crate) struct Tape<'a> {
    elems: Vec<Elem<'a>>,
    owned: Vec<String>,
}

/// A parse that failed: serde_json's error text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParseError(pub String);

impl<'a> Tape<'a> {
    pub fn with_capacity(elems: usize) -> Self {
        Tape {
            elems: Vec::with_capacity(elems),
            owned: Vec::new(),
        }
    }

    /// Appends one JSON document; returns the index of its root element.
    /// On error the tape is left as it was.
    pub fn push(&mut self, json: &'a [u8]) -> Result<u32, ParseError> {
        let start = self.elems.len();
        let owned = self.owned.len();
        let root = index::<serde_json::Error>(start).map_err(|e| ParseError(e.to_string()))?;
        let mut de = serde_json::Deserializer::from_slice(json);
        let parsed = ValueSeed(self).deserialize(&mut de).and_then(|()| de.end());
        match parsed {
            Ok(()) => Ok(root),
            Err(error) => {
                self.elems.truncate(start);
                self.owned.truncate(owned);
                Err(ParseError(error.to_string()))
            }
        }
    }

    pub fn get(&self, at: u32) -> Elem<'a> {
        self.elems[at as usize]
    }

    /// The text of a string or key.
    pub fn text<'t>(&'t self, text: Text<'a>) -> &'t str {
        match text {
            Text::Borrowed(s) => s,
            Text::Owned(i) => &self.owned[i as usize],
        }
    }

    /// The index just past the value at `at`.
    pub fn skip(&self, at: u32) -> u32 {
        match self.get(at) {
            Elem::Object { end, .. } | Elem::Array { end, .. } => end,
            _ => at + 1,
        }
    }

    /// The value at `at` as serde_json would have parsed it (later values
    /// of a repeated key replace earlier ones, in the first one's place).
    pub fn to_value(&self, at: u32) -> Value {
        match self.get(at) {
            Elem::Null => Value::Null,
            Elem::Bool(b) => Value::Bool(b),
            Elem::U64(n) => Value::Number(n.into()),
            Elem::I64(n) => Value::Number(n.into()),
            Elem::F64(f) => Number::from_f64(f).map_or(Value::Null, Value::Number),
            Elem::Str(t) | Elem::Key(t) => Value::String(self.text(t).to_string()),
            Elem::Array { end, len } => {
                let mut items = Vec::with_capacity(len as usize);
                let mut i = at + 1;
                while i < end {
                    items.push(self.to_value(i));
                    i = self.skip(i);
                }
                Value::Array(items)
            }
            Elem::Object { end, len } => {
                let mut map = Map::with_capacity(len as usize);
                let mut i = at + 1;
                while i < end {
                    let key = match self.get(i) {
                        Elem::Key(t) => self.text(t).to_string(),
                        _ => String::new(),
                    };
                    map.insert(key, self.to_value(i + 1));
                    i = self.skip(i + 1);
                }
                Value::Object(map)
            }
        }
    }

    /// The keys and value indexes of the object at `at`, in order.
    pub fn entries(&self, at: u32) -> Entries<'_, 'a> {
        let end = match self.get(at) {
            Elem::Object { end, .. } => end,
            _ => at + 1,
        };
        Entries {
            tape: self,
            next: at + 1,
            end,
        }
    }

    /// The value indexes of the array at `at`, in order.
    pub fn items(&self, at: u32) -> Items<'_, 'a> {
        let end = match self.get(at) {
            Elem::Array { end, .. } => end,
            _ => at + 1,
        };
        Items {
            tape: self,
            next: at + 1,
            end,
        }
    }

    fn push_elem(&mut self, elem: Elem<'a>) {
        self.elems.push(elem);
    }

    fn position(&self) -> usize {
        self.elems.len()
    }
}

fn index<E: de::Error>(at: usize) -> Result<u32, E> {
    u32::try_from(at).map_err(|_| E::custom("more than 2^32 json values in one batch"))
}

/// Iterator over an object's `(key, value index)` pairs.
pub(crate) struct Entries<'t, 'a> {
    tape: &'t Tape<'a>,
    next: u32,
    end: u32,
}

impl<'t> Iterator for Entries<'t, '_> {
    type Item = (&'t str, u32);

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.end {
            return None;
        }
        let key = match self.tape.get(self.next) {
            Elem::Key(t) => self.tape.text(t),
            _ => "",
        };
        let value = self.next + 1;
        self.next = self.tape.skip(value);
        Some((key, value))
    }
}

/// Iterator over an array's value indexes.
pub(crate) struct Items<'t, 'a> {
    tape: &'t Tape<'a>,
    next: u32,
    end: u32,
}

impl Iterator for Items<'_, '_> {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        if self.next >= self.end {
            return None;
        }
        let at = self.next;
        self.next = self.tape.skip(at);
        Some(at)
    }
}

/// Parses one value onto the tape.
struct ValueSeed<'t, 'a>(&'t mut Tape<'a>);

impl<'de: 'a, 'a> DeserializeSeed<'de> for ValueSeed<'_, 'a> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de: 'a, 'a> Visitor<'de> for ValueSeed<'_, 'a> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        self.0.push_elem(Elem::Bool(v));
        Ok(())
    }

    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        // serde_json's Value keeps non-negative integers as PosInt.
        self.0.push_elem(match u64::try_from(v) {
            Ok(u) => Elem::U64(u),
            Err(_) => Elem::I64(v),
        });
        Ok(())
    }

    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        self.0.push_elem(Elem::U64(v));
        Ok(())
    }

    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        self.0.push_elem(Elem::F64(v));
        Ok(())
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<(), E> {
        self.0.push_elem(Elem::Str(Text::Borrowed(v)));
        Ok(())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        let i = index(self.0.owned.len())?;
        self.0.owned.push(v.to_string());
        self.0.push_elem(Elem::Str(Text::Owned(i)));
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        self.0.push_elem(Elem::Null);
        Ok(())
    }

    fn visit_none<E>(self) -> Result<(), E> {
        self.0.push_elem(Elem::Null);
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let tape = self.0;
        let at = tape.position();
        tape.push_elem(Elem::Array { end: 0, len: 0 });
        let mut len = 0u32;
        while seq.next_element_seed(ValueSeed(tape))?.is_some() {
            len = len.saturating_add(1);
        }
        let end = index(tape.position())?;
        tape.elems[at] = Elem::Array { end, len };
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let tape = self.0;
        let at = tape.position();
        tape.push_elem(Elem::Object { end: 0, len: 0 });
        let mut len = 0u32;
        while map.next_key_seed(KeySeed(tape))?.is_some() {
            map.next_value_seed(ValueSeed(tape))?;
            len = len.saturating_add(1);
        }
        let end = index(tape.position())?;
        tape.elems[at] = Elem::Object { end, len };
        Ok(())
    }
}

/// Parses one object key onto the tape.
struct KeySeed<'t, 'a>(&'t mut Tape<'a>);

impl<'de: 'a, 'a> DeserializeSeed<'de> for KeySeed<'_, 'a> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de: 'a, 'a> Visitor<'de> for KeySeed<'_, 'a> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<(), E> {
        self.0.push_elem(Elem::Key(Text::Borrowed(v)));
        Ok(())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        let i = index(self.0.owned.len())?;
        self.0.owned.push(v.to_string());
        self.0.push_elem(Elem::Key(Text::Owned(i)));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(json: &str) {
        let mut tape = Tape::default();
        let root = tape.push(json.as_bytes()).unwrap();
        let expected: Value = serde_json::from_str(json).unwrap();
        assert_eq!(tape.to_value(root), expected, "{json}");
        assert_eq!(tape.skip(root) as usize, tape.elems.len());
    }

    #[test]
    fn values_round_trip_like_serde_json() {
        for json in [
            r#"{"a":1,"b":-2,"c":2.5,"d":"x","e":null,"f":true,"g":[1,[2,{}],[]],"h":{"i":{"j":"k"}}}"#,
            r#"{"esc":"tab\there \"q\" \u00e9 \ud83d\ude00","\u006bey":1}"#,
            r#"{"big":18446744073709551615,"bigger":18446744073709551616,"neg":-9223372036854775808,"e":1e5,"z":-0.0}"#,
            r#"[1,"two",{"three":3}]"#,
            r#""just a string""#,
            r#"{"dup":1,"x":2,"dup":"last"}"#,
            "  {\n \"ws\" : [ ] }  ",
        ] {
            round_trip(json);
        }
    }

    #[test]
    fn errors_are_serde_json_errors_and_leave_the_tape_unchanged() {
        let mut tape = Tape::default();
        tape.push(br#"{"ok":1}"#).unwrap();
        let before = tape.elems.len();
        for bad in [
            &b"{\"a\":"[..],
            b"{\"a\":1} x",
            b"nul",
            b"{\"a\":\"\xff\"}",
            b"",
        ] {
            let error = tape.push(bad).unwrap_err();
            let expected = serde_json::from_slice::<Value>(bad)
                .unwrap_err()
                .to_string();
            assert_eq!(error.0, expected);
            assert_eq!(tape.elems.len(), before);
        }
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert_eq!(
            tape.push(deep.as_bytes()).unwrap_err().0,
            serde_json::from_str::<Value>(&deep)
                .unwrap_err()
                .to_string()
        );
    }

    #[test]
    fn entries_and_items_walk_in_order() {
        let mut tape = Tape::default();
        let root = tape.push(br#"{"a":[1,{"b":2}],"c":"d"}"#).unwrap();
        let keys: Vec<&str> = tape.entries(root).map(|(k, _)| k).collect();
        assert_eq!(keys, ["a", "c"]);
        let (_, list) = tape.entries(root).next().unwrap();
        assert_eq!(tape.items(list).count(), 2);
    }
}
