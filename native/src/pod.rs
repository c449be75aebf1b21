//! What the pod says about itself, in place of Istio's node metadata (which the dynamic-modules
//! ABI of Envoy 1.40 does not expose to an HTTP filter): the pod's labels and annotations from
//! Istio's downward-API files, and its namespace.
//!
//! - folder: env `FAAS_MESH_POD_INFO_DIR`, default `/etc/istio/pod` (where Istio's sidecar
//!   injector mounts the downward API);
//! - `labels`, `annotations`: one `key="value"` per line, the value quoted and escaped as
//!   Kubernetes writes it (Go's `%q`);
//! - namespace: the file `namespace` in that folder if present, else env `POD_NAMESPACE` (set
//!   on Istio's sidecar).

use std::path::PathBuf;

pub const DIR_ENV: &str = "FAAS_MESH_POD_INFO_DIR";
pub const DEFAULT_DIR: &str = "/etc/istio/pod";

#[derive(Debug, Default, Clone, PartialEq)]
pub struct PodFiles {
    pub labels: Vec<(String, String)>,
    pub annotations: Vec<(String, String)>,
    pub namespace: Option<String>,
}

impl PodFiles {
    /// Reads the folder named by the environment (missing files: nothing known).
    pub fn from_env() -> PodFiles {
        let dir = std::env::var_os(DIR_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DIR));
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
        let namespace = read("namespace")
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .or_else(|| {
                std::env::var("POD_NAMESPACE")
                    .ok()
                    .filter(|s| !s.is_empty())
            });
        PodFiles {
            labels: read("labels").map(|t| parse(&t)).unwrap_or_default(),
            annotations: read("annotations").map(|t| parse(&t)).unwrap_or_default(),
            namespace,
        }
    }

    pub fn label(&self, name: &[u8]) -> Option<&str> {
        (self.labels.iter())
            .find(|(k, _)| k.as_bytes() == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses the downward-API format: `key="value"` lines; a line that does not parse is skipped.
pub fn parse(text: &str) -> Vec<(String, String)> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<(String, String)> {
    let (key, rest) = line.split_once('=')?;
    let key = key.trim();
    if key.is_empty() {
        return None;
    }
    let rest = rest.trim();
    let inner = rest.strip_prefix('"')?.strip_suffix('"')?;
    Some((key.to_string(), unquote(inner)?))
}

/// Undoes Go's `%q` escaping (what the kubelet writes): `\"`, `\\`, `\n`, `\t`, `\r`, `\xNN`,
/// `\uNNNN`, `\UNNNNNNNN`; `None` for a broken escape.
fn unquote(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut bytes: Vec<u8> = Vec::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            flush(&mut bytes, &mut out);
            out.push(c);
            continue;
        }
        match chars.next()? {
            '"' => out.push('"'),
            '\\' => out.push('\\'),
            '\'' => out.push('\''),
            'n' => out.push('\n'),
            't' => out.push('\t'),
            'r' => out.push('\r'),
            'a' => out.push('\u{7}'),
            'b' => out.push('\u{8}'),
            'f' => out.push('\u{c}'),
            'v' => out.push('\u{b}'),
            'x' => {
                let hex: String = chars.by_ref().take(2).collect();
                bytes.push(u8::from_str_radix(&hex, 16).ok()?);
                continue;
            }
            'u' => out.push(char::from_u32(hex_number(&mut chars, 4)?)?),
            'U' => out.push(char::from_u32(hex_number(&mut chars, 8)?)?),
            _ => return None,
        }
        flush(&mut bytes, &mut out);
    }
    flush(&mut bytes, &mut out);
    Some(out)
}

fn hex_number(chars: &mut std::str::Chars<'_>, digits: usize) -> Option<u32> {
    let hex: String = chars.by_ref().take(digits).collect();
    if hex.len() != digits {
        return None;
    }
    u32::from_str_radix(&hex, 16).ok()
}

/// Raw `\xNN` bytes become text once the run ends (invalid UTF-8 replaced).
fn flush(bytes: &mut Vec<u8>, out: &mut String) {
    if !bytes.is_empty() {
        out.push_str(&String::from_utf8_lossy(bytes));
        bytes.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_downward_api_format() {
        let text = "faas_function=\"env\"\n\
                    app=\"env\"\n\
                    com.openfaas.mesh.policy=\"{\\\"max_inflight\\\": 2}\"\n\
                    broken line\n\
                    empty=\"\"\n\
                    multi=\"a\\nb\\tc \\u00e9\\\\\"\n";
        let pairs = parse(text);
        assert_eq!(
            pairs,
            vec![
                ("faas_function".into(), "env".into()),
                ("app".into(), "env".into()),
                (
                    "com.openfaas.mesh.policy".into(),
                    "{\"max_inflight\": 2}".into()
                ),
                ("empty".into(), String::new()),
                ("multi".into(), "a\nb\tc \u{e9}\\".into()),
            ]
        );
    }

    #[test]
    fn a_broken_escape_skips_the_line() {
        assert_eq!(
            parse("a=\"\\q\"\nb=\"ok\""),
            vec![("b".into(), "ok".into())]
        );
        assert_eq!(parse("a=\"\\u12\""), vec![]);
        assert_eq!(parse("a=unquoted"), vec![]);
    }

    #[test]
    fn hex_bytes_join_into_utf8() {
        assert_eq!(
            parse("a=\"\\xc3\\xa9\""),
            vec![("a".into(), "\u{e9}".into())]
        );
    }
}
