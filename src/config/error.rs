//! A configuration problem (which key, what is wrong) and the key paths that name it. The lowest
//! layer of the configuration: the JSON reader and every validator use it, it uses neither.

use std::fmt;

/// A configuration problem: which key, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub problem: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, problem: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            problem: problem.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.problem)
    }
}

impl std::error::Error for ConfigError {}

/// The one way a key path grows: `a` + `b` is `a.b`, `""` + `b` is `b` (the root's members),
/// and an index `3` is `a[3]`.
pub enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// The key path of `step` under `at`.
pub fn join(at: &str, step: Step<'_>) -> String {
    match step {
        Step::Key(key) if at.is_empty() => key.to_string(),
        Step::Key(key) => format!("{at}.{key}"),
        Step::Index(i) => format!("{at}[{i}]"),
    }
}

/// A string as an error shows it: quoted, cut after 64 characters.
pub fn quote(s: &str) -> String {
    const MAX: usize = 64;
    let cut: String = s.chars().take(MAX).collect();
    let more = if s.chars().nth(MAX).is_some() {
        "…"
    } else {
        ""
    };
    format!("{:?}", cut + more)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_join_keys_with_dots_and_indexes_in_brackets() {
        assert_eq!(join("", Step::Key("policy")), "policy");
        assert_eq!(join("policy", Step::Key("default")), "policy.default");
        assert_eq!(join("a.methods", Step::Index(3)), "a.methods[3]");
        assert_eq!(
            ConfigError::new("a.b", "no").to_string(),
            "a.b: no",
            "an error shows its path, then its problem"
        );
    }
}
