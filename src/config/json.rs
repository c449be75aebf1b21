//! A strict reading of the configuration's JSON: what a reviewer reads is what the sidecar
//! enforces.
//!
//! `serde_json::Value` keeps the last of two equal keys, so `{"mode": "enforce", "mode": "off"}`
//! would silently enforce nothing. This reader walks the text with `serde`'s visitor and refuses
//! a key that an object already has, naming its key path. It also hands every entry of one chosen
//! object (`policy.functions`) to a callback instead of keeping it, so a sidecar can validate a
//! policy of thousands of functions while keeping only its own: memory is proportional to what the
//! pod needs, not to the cluster's policy. The root object's members are shown to the sink as
//! they are read, so the caller can act on one section (the `function` section says which
//! entries to keep) within the same single pass. Nothing here calls the host.

use super::error::{join, ConfigError, Step};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt;

/// What the reader shows while it reads. It never stops the reading: only the text itself (JSON,
/// duplicate keys) does, so a problem the sink finds is the sink's to keep and report after.
pub trait Sink {
    /// A member of the root object, read whole (the streamed object's entries already gone).
    fn member(&mut self, key: &str, value: &Value);
    /// An entry of the streamed object: its key, its key path and its value.
    fn entry(&mut self, key: &str, path: &str, value: Value);
}

/// Reads `input` as one JSON value. The entries of the object at key path `streamed` go to `sink`
/// and are left out of the returned tree (the object itself stays, empty).
pub fn read(input: &[u8], streamed: &str, sink: &mut dyn Sink) -> Result<Value, ConfigError> {
    let reader = Reader {
        streamed,
        sink: RefCell::new(sink),
        problem: RefCell::new(None),
    };
    let mut de = serde_json::Deserializer::from_slice(input);
    let parsed = Node {
        reader: &reader,
        path: String::new(),
    }
    .deserialize(&mut de)
    .and_then(|value| de.end().map(|()| value));
    match parsed {
        Ok(value) => Ok(value),
        Err(e) => Err(reader
            .problem
            .take()
            .unwrap_or_else(|| ConfigError::new("configuration", format!("invalid JSON: {e}")))),
    }
}

struct Reader<'r> {
    streamed: &'r str,
    sink: RefCell<&'r mut dyn Sink>,
    /// A problem with a key path, found while reading; serde's own error then only unwinds.
    problem: RefCell<Option<ConfigError>>,
}

impl Reader<'_> {
    fn fail<E: de::Error>(&self, problem: ConfigError) -> E {
        let text = problem.to_string();
        *self.problem.borrow_mut() = Some(problem);
        E::custom(text)
    }
}

/// The value at one key path.
struct Node<'a, 'r> {
    reader: &'a Reader<'r>,
    path: String,
}

impl<'de> DeserializeSeed<'de> for Node<'_, '_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_, '_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        loop {
            let node = Node {
                reader: self.reader,
                path: join(&self.path, Step::Index(items.len())),
            };
            match seq.next_element_seed(node)? {
                Some(item) => items.push(item),
                None => return Ok(Value::Array(items)),
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let streamed = self.path == self.reader.streamed;
        let root = self.path.is_empty();
        let mut object = Map::new();
        // The streamed object's values are not kept, so its keys are remembered apart.
        let mut seen = BTreeSet::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = join(&self.path, Step::Key(&key));
            let duplicate = if streamed {
                !seen.insert(key.clone())
            } else {
                object.contains_key(&key)
            };
            if duplicate {
                return Err(self.reader.fail(ConfigError::new(
                    path,
                    "duplicate key (JSON readers disagree on which value wins, so the sidecar \
                     refuses both)",
                )));
            }
            let value = map.next_value_seed(Node {
                reader: self.reader,
                path: path.clone(),
            })?;
            if streamed {
                self.reader.sink.borrow_mut().entry(&key, &path, value);
            } else {
                if root {
                    self.reader.sink.borrow_mut().member(&key, &value);
                }
                object.insert(key, value);
            }
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every member and entry, as the reader shows them.
    #[derive(Default)]
    struct Log {
        members: Vec<String>,
        entries: Vec<String>,
    }

    impl Sink for Log {
        fn member(&mut self, key: &str, _: &Value) {
            self.members.push(key.to_string());
        }
        fn entry(&mut self, key: &str, path: &str, _: Value) {
            self.entries.push(format!("{key} at {path}"));
        }
    }

    fn keep_all(input: &str) -> Result<(Value, Log), ConfigError> {
        let mut log = Log::default();
        let value = read(input.as_bytes(), "a.b", &mut log)?;
        Ok((value, log))
    }

    #[test]
    fn duplicates_are_refused_at_every_level_with_their_path() {
        for (input, path) in [
            (r#"{"x":1,"x":2}"#, "x"),
            (r#"{"a":{"c":{"m":"enforce","m":"off"}}}"#, "a.c.m"),
            (r#"{"a":{"b":{"env":{},"env":{}}}}"#, "a.b.env"),
            (r#"{"a":{"b":{"env":{"mode":1,"mode":2}}}}"#, "a.b.env.mode"),
            (r#"{"l":[{"k":1,"k":1}]}"#, "l[0].k"),
        ] {
            let e = keep_all(input).err().expect(input);
            assert_eq!(e.path, path, "{input}");
            assert!(e.problem.starts_with("duplicate key"), "{input}: {e}");
        }
    }

    #[test]
    fn streamed_entries_go_to_the_sink_and_not_into_the_tree() {
        let (value, log) = keep_all(r#"{"z":1,"a":{"b":{"f":{"m":1},"g":{}},"c":true}}"#).unwrap();
        assert_eq!(log.entries, ["f at a.b.f", "g at a.b.g"]);
        assert_eq!(
            value,
            serde_json::json!({"z": 1, "a": {"b": {}, "c": true}})
        );
    }

    #[test]
    fn the_roots_members_are_shown_in_order_and_nothing_deeper() {
        let (_, log) = keep_all(r#"{"z":{"y":1},"a":{"b":{"f":{}}},"x":[{"w":2}]}"#).unwrap();
        assert_eq!(log.members, ["z", "a", "x"]);
        let (_, log) = keep_all(r#"[{"z":1}]"#).unwrap();
        assert!(log.members.is_empty(), "a list at the root has no members");
    }

    #[test]
    fn broken_json_and_trailing_text_are_refused() {
        for input in ["{", "{} x", r#"{"a":}"#] {
            let e = keep_all(input).err().unwrap();
            assert!(
                e.to_string().starts_with("configuration: invalid JSON"),
                "{e}"
            );
        }
    }
}
