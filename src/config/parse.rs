//! The parse driver: the text read once, strictly (`json.rs`), the sections read from it
//! (`sections.rs`), and the entries of `policy.functions` checked one by one as they stream past,
//! only the wanted ones kept.
//!
//! Errors come in one order whatever is kept: the text (JSON, duplicate keys) first, then the
//! sections, then the first bad policy entry.

use super::error::ConfigError;
use super::json::{self, Sink};
use super::keys::{MAX_CONFIG_BYTES, ROOT_KEYS, RULE_KEYS};
use super::obj::Obj;
use super::rules::rules;
use super::sections;
use super::types::{Config, FunctionSection};
use super::validate::function_name;
use crate::policy::PolicyRules;
use serde_json::Value;
use std::collections::BTreeMap;

/// Which entries of `policy.functions` a parse keeps. Every entry is validated either way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Keep {
    /// All of them (the render tool and the checker show any function's rules).
    All,
    /// Only the local function's (a sidecar enforces its own function only), or none when the
    /// local function is unknown.
    Only(Option<String>),
}

impl Keep {
    fn wants(&self, name: &str) -> bool {
        match self {
            Keep::All => true,
            Keep::Only(local) => local.as_deref() == Some(name),
        }
    }
}

const FUNCTIONS_PATH: &str = "policy.functions";

/// Says which entries to keep, from a `function` section.
type Decide<'k> = dyn FnMut(&FunctionSection) -> Keep + 'k;

/// What the single pass collects from `policy.functions`.
struct Entries<'k> {
    decide: &'k mut Decide<'k>,
    /// Decided from the `function` section when it is read (and valid); an entry read before it
    /// is kept by what the default section says (`provisional`), the usual case being no
    /// `function` section at all.
    keep: Option<Keep>,
    provisional: bool,
    /// A `function` section after the entries changed what is kept: they are read again.
    read_again: bool,
    /// The `function` section is wrong: the sections' error will be the answer.
    function_wrong: bool,
    kept: BTreeMap<String, PolicyRules>,
    /// The first bad entry, reported once the text and the sections are known good.
    problem: Option<ConfigError>,
}

impl Sink for Entries<'_> {
    fn member(&mut self, key: &str, value: &Value) {
        if key != "function" || !self.provisional && self.keep.is_some() {
            return;
        }
        let mut function = FunctionSection::default();
        match Obj::any(value, key).and_then(|o| sections::function(&o, &mut function)) {
            Ok(()) => {
                let keep = (self.decide)(&function);
                self.read_again = self.provisional && self.keep.as_ref() != Some(&keep);
                self.keep = Some(keep);
                self.provisional = false;
            }
            Err(_) => self.function_wrong = true,
        }
    }

    fn entry(&mut self, name: &str, path: &str, value: Value) {
        if self.problem.is_some() || self.function_wrong {
            return;
        }
        let checked = function_name(path, name)
            .and_then(|_| Obj::new(&value, path, RULE_KEYS))
            .and_then(|o| rules(&o));
        let keep = match &self.keep {
            Some(keep) => keep,
            None => {
                self.provisional = true;
                self.keep.insert((self.decide)(&FunctionSection::default()))
            }
        };
        match checked {
            Err(problem) => self.problem = Some(problem),
            Ok(rules) if keep.wants(name) => drop(self.kept.insert(name.into(), rules)),
            Ok(_) => {}
        }
    }
}

impl Config {
    /// Parses the plugin configuration, keeping every function's policy entry. Empty (or
    /// whitespace-only) input means all defaults, as Envoy passes no bytes when the manifest sets
    /// no configuration.
    pub fn parse(input: &[u8]) -> Result<Config, ConfigError> {
        Config::parse_with(input, |_| Keep::All)
    }

    /// Parses the plugin configuration in one pass; `keep` sees the `function` section (as soon
    /// as it is read and valid; the default one if there is none) and says which entries of
    /// `policy.functions` to keep. The same input gives the same error whatever `keep` says.
    ///
    /// `keep` is called once, or twice in one case: entries written before a `function` section
    /// are kept by what the default section says, and if the `function` section then says
    /// otherwise, the text is read a second time for the entries it wants (what a reader of the
    /// text would expect, at the cost of a second reading for that one order).
    pub fn parse_with(
        input: &[u8],
        mut keep: impl FnMut(&FunctionSection) -> Keep,
    ) -> Result<Config, ConfigError> {
        parse_once(input, &mut keep)
    }
}

fn parse_once<'k>(input: &[u8], decide: &'k mut Decide<'k>) -> Result<Config, ConfigError> {
    if input.iter().all(u8::is_ascii_whitespace) {
        let config = Config::default();
        decide(&config.function);
        return Ok(config);
    }
    if input.len() > MAX_CONFIG_BYTES {
        return Err(ConfigError::new(
            "configuration",
            format!(
                "{} bytes, more than the {MAX_CONFIG_BYTES} a sidecar accepts",
                input.len()
            ),
        ));
    }
    let mut entries = Entries {
        decide,
        keep: None,
        function_wrong: false,
        provisional: false,
        read_again: false,
        kept: BTreeMap::new(),
        problem: None,
    };
    let root = json::read(input, FUNCTIONS_PATH, &mut entries)?;
    let mut config = Config::default();
    sections::read_all(&Obj::new(&root, "", ROOT_KEYS)?, &mut config)?;
    if let Some(problem) = entries.problem {
        return Err(problem);
    }
    if entries.read_again {
        // Every entry is known good; this reading keeps the ones the `function` section wants.
        entries.kept.clear();
        entries.read_again = false;
        json::read(input, FUNCTIONS_PATH, &mut entries)?;
    }
    // Neither entries nor a `function` section: the default one is still what `keep` sees.
    if entries.keep.is_none() {
        (entries.decide)(&config.function);
    }
    config.policy.functions = entries.kept;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `text` keeping the local function `name` says (else `label`), and counts the calls.
    fn parse_as(text: &str, label: Option<&str>) -> (Result<Config, ConfigError>, Vec<String>) {
        let mut seen = Vec::new();
        let parsed = Config::parse_with(text.as_bytes(), |f| {
            seen.push(f.name.clone().unwrap_or_else(|| f.name_label.clone()));
            Keep::Only(f.name.clone().or(label.map(str::to_string)))
        });
        (parsed, seen)
    }

    fn kept(config: &Config) -> Vec<&str> {
        config.policy.functions.keys().map(String::as_str).collect()
    }

    const ENTRIES: &str = r#""functions":{"env":{"max_inflight":1},"figlet":{"max_inflight":2}}"#;

    #[test]
    fn the_function_section_first_decides_once_what_is_kept() {
        let text = format!(r#"{{"function":{{"name":"figlet"}},"policy":{{{ENTRIES}}}}}"#);
        let (config, seen) = parse_as(&text, Some("env"));
        assert_eq!(kept(&config.unwrap()), ["figlet"]);
        assert_eq!(seen, ["figlet"]);
    }

    #[test]
    fn without_a_function_section_the_default_one_decides_once() {
        let (config, seen) = parse_as(&format!(r#"{{"policy":{{{ENTRIES}}}}}"#), Some("env"));
        assert_eq!(kept(&config.unwrap()), ["env"]);
        assert_eq!(seen, ["faas_function"]);
        let (config, seen) = parse_as(r#"{"tracing":{}}"#, Some("env"));
        assert!(kept(&config.unwrap()).is_empty());
        assert_eq!(seen, ["faas_function"], "no entries: still asked once");
    }

    #[test]
    fn a_function_section_after_the_entries_still_decides() {
        // The default section wanted "env"; the later section names "figlet".
        let text = format!(r#"{{"policy":{{{ENTRIES}}},"function":{{"name":"figlet"}}}}"#);
        let (config, seen) = parse_as(&text, Some("env"));
        assert_eq!(kept(&config.unwrap()), ["figlet"]);
        assert_eq!(seen, ["faas_function", "figlet"]);
        // The same answer: what was kept stands.
        let text = format!(r#"{{"policy":{{{ENTRIES}}},"function":{{"name":"env"}}}}"#);
        let (config, seen) = parse_as(&text, None);
        assert_eq!(kept(&config.unwrap()), ["env"]);
        assert_eq!(seen, ["faas_function", "env"]);
    }

    #[test]
    fn errors_come_text_first_then_sections_then_entries_whatever_the_order() {
        let bad_entry = r#""functions":{"env":{"max_inflight":0}}"#;
        for (text, error) in [
            (
                format!(r#"{{"policy":{{{bad_entry}}},"function":{{"name":"x"}},"x":1,"x":2}}"#),
                "x: duplicate key",
            ),
            (
                format!(r#"{{"policy":{{{bad_entry}}},"tracing":{{"b3":1}}}}"#),
                "tracing.b3: expected a boolean, got 1",
            ),
            (
                format!(r#"{{"policy":{{{bad_entry}}},"function":{{"name":"-"}}}}"#),
                "function.name: expected a function name",
            ),
            (
                format!(r#"{{"function":{{"name":"figlet"}},"policy":{{{bad_entry}}}}}"#),
                "policy.functions.env.max_inflight: expected a positive integer, got 0",
            ),
        ] {
            for label in [None, Some("env")] {
                let e = parse_as(&text, label).0.unwrap_err().to_string();
                assert!(e.starts_with(error), "{text}: {e}");
            }
        }
    }
}
