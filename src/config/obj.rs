//! A JSON object at a key path, read key by key: each accessor gives the value in the type the
//! key needs, or an error naming the key, what it expected and what it got.

use super::error::{join, quote, ConfigError, Step};
use serde_json::{Map, Value};

/// A JSON object at a key path, with the set of keys it may hold.
pub struct Obj<'a> {
    map: &'a Map<String, Value>,
    at: String,
}

impl<'a> Obj<'a> {
    /// `value` must be an object holding only `allowed` keys.
    pub fn new(value: &'a Value, at: &str, allowed: &[&str]) -> Result<Self, ConfigError> {
        let obj = Obj::any(value, at)?;
        if let Some(unknown) = obj.map.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(ConfigError::new(
                obj.path(unknown),
                format!("unknown key (expected one of: {})", allowed.join(", ")),
            ));
        }
        Ok(obj)
    }

    /// `value` must be an object; its keys are the caller's to check.
    pub fn any(value: &'a Value, at: &str) -> Result<Self, ConfigError> {
        match value {
            Value::Object(map) => Ok(Obj {
                map,
                at: at.to_string(),
            }),
            other => Err(ConfigError::new(
                if at.is_empty() { "configuration" } else { at },
                format!("expected an object, got {}", describe(other)),
            )),
        }
    }

    /// The key path of `key` in this object.
    pub fn path(&self, key: &str) -> String {
        join(&self.at, Step::Key(key))
    }

    /// The key path of item `i` of the list at `key`.
    pub fn item_path(&self, key: &str, i: usize) -> String {
        join(&self.path(key), Step::Index(i))
    }

    pub fn object(&self, key: &str, allowed: &[&str]) -> Result<Option<Obj<'a>>, ConfigError> {
        self.map
            .get(key)
            .map(|v| Obj::new(v, &self.path(key), allowed))
            .transpose()
    }

    pub fn any_object(&self, key: &str) -> Result<Option<Obj<'a>>, ConfigError> {
        self.map
            .get(key)
            .map(|v| Obj::any(v, &self.path(key)))
            .transpose()
    }

    fn typed<T>(
        &self,
        key: &str,
        expected: &str,
        pick: impl FnOnce(&'a Value) -> Option<T>,
    ) -> Result<Option<T>, ConfigError> {
        match self.map.get(key) {
            None => Ok(None),
            Some(v) => pick(v).map(Some).ok_or_else(|| {
                ConfigError::new(
                    self.path(key),
                    format!("expected {expected}, got {}", describe(v)),
                )
            }),
        }
    }

    pub fn string(&self, key: &str) -> Result<Option<&'a str>, ConfigError> {
        self.typed(key, "a string", Value::as_str)
    }

    pub fn boolean(&self, key: &str) -> Result<Option<bool>, ConfigError> {
        self.typed(key, "a boolean", Value::as_bool)
    }

    /// A whole number in `range`: what Envoy and the filter can honour for this key.
    pub fn int_in(&self, key: &str, range: (u64, u64)) -> Result<Option<u64>, ConfigError> {
        let (min, max) = range;
        let Some(n) = self.typed(key, "a positive integer", |v| {
            v.as_u64().filter(|n| *n >= 1)
        })?
        else {
            return Ok(None);
        };
        if n < min {
            Err(ConfigError::new(
                self.path(key),
                format!("expected at least {min}, got {n}"),
            ))
        } else if n > max {
            Err(ConfigError::new(
                self.path(key),
                format!("expected at most {max}, got {n}"),
            ))
        } else {
            Ok(Some(n))
        }
    }

    /// A number above 0 and at most `max` (no float formatting: it would pull in a formatter).
    pub fn positive_number(&self, key: &str, max: u64) -> Result<Option<f64>, ConfigError> {
        let Some(n) = self.typed(key, "a positive number", |v| {
            v.as_f64().filter(|n| n.is_finite() && *n > 0.0)
        })?
        else {
            return Ok(None);
        };
        if n > max as f64 {
            let got = self.map.get(key).map(describe).unwrap_or_default();
            return Err(ConfigError::new(
                self.path(key),
                format!("expected at most {max}, got {got}"),
            ));
        }
        Ok(Some(n))
    }

    pub fn strings(&self, key: &str) -> Result<Option<Vec<&'a str>>, ConfigError> {
        self.typed(key, "a list of strings", |v| {
            v.as_array()?.iter().map(Value::as_str).collect()
        })
    }

    pub fn one_of(
        &self,
        key: &str,
        choices: &[&'static str],
    ) -> Result<Option<&'static str>, ConfigError> {
        let expected = format!("one of \"{}\"", choices.join("\", \""));
        self.typed(key, &expected, |v| {
            let s = v.as_str()?;
            choices.iter().copied().find(|c| *c == s)
        })
    }
}

/// How a wrong value is shown in an error: strings quoted, long ones cut.
pub fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => quote(s),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "an object".into(),
    }
}
