//! Which build of the filter the harness runs: `FAAS_MESH_BUILD=wasm` (the default: the
//! proxy-wasm module in Envoy's V8) or `FAAS_MESH_BUILD=native` (the same core as an Envoy
//! dynamic module, `libfaas_mesh_filter_native.so`). Read once per test process; every test runs
//! against the one build, so one suite proves both (`make integration` runs it twice).
//!
//! What differs between the two builds is where Envoy puts what the filter gives it, never what
//! the filter does: the filter type in the extension config, the prefix of its stats, the log
//! component its lines appear under, and how it learns its pod (node metadata for the wasm
//! build; Istio's downward-API files for the native one, see [`write_pod_info`]).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The build of the filter under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterBuild {
    /// The proxy-wasm module (`faas_mesh_filter.wasm`), Envoy's `envoy.filters.http.wasm`.
    Wasm,
    /// The dynamic module (`libfaas_mesh_filter_native.so`), Envoy's
    /// `envoy.filters.http.dynamic_modules`.
    Native,
}

/// The dynamic-modules filter's `@type`.
pub const DYNAMIC_MODULE_FILTER_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter";
/// The Wasm filter's `@type`.
pub const WASM_FILTER_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
/// The `filter_name` the native module serves (the contract of issue 25).
pub const NATIVE_FILTER_NAME: &str = "faas-mesh-filter";
/// The environment variable naming the folder the native module reads its pod from.
pub const POD_INFO_ENV: &str = "FAAS_MESH_POD_INFO_DIR";
/// Where [`write_pod_info`] puts that folder, inside an Envoy's own folder.
pub const POD_INFO_DIR: &str = "pod-info";

impl FilterBuild {
    /// The build named by `$FAAS_MESH_BUILD` (unset or empty: wasm), read once. Any other value
    /// stops the test at once: a typo must not quietly test the other build.
    pub fn current() -> FilterBuild {
        static CURRENT: OnceLock<FilterBuild> = OnceLock::new();
        *CURRENT.get_or_init(|| {
            let value = std::env::var("FAAS_MESH_BUILD").unwrap_or_default();
            FilterBuild::parse(&value).unwrap_or_else(|e| panic!("{e}"))
        })
    }

    /// `wasm`, `native`, or empty (wasm).
    pub fn parse(value: &str) -> Result<FilterBuild, String> {
        match value {
            "" | "wasm" => Ok(FilterBuild::Wasm),
            "native" => Ok(FilterBuild::Native),
            other => Err(format!(
                "FAAS_MESH_BUILD={other:?}: expected \"wasm\" or \"native\""
            )),
        }
    }

    /// `wasm` or `native`.
    pub fn name(self) -> &'static str {
        match self {
            FilterBuild::Wasm => "wasm",
            FilterBuild::Native => "native",
        }
    }

    /// The prefix under which Envoy shows the filter's own stats: `wasmcustom.` for a Wasm
    /// module, `dynamicmodulescustom.` (Envoy's default `metrics_namespace`) for a dynamic module.
    pub fn stats_prefix(self) -> &'static str {
        match self {
            FilterBuild::Wasm => "wasmcustom.",
            FilterBuild::Native => "dynamicmodulescustom.",
        }
    }

    /// The log component the filter's own lines appear under (`[warning][wasm]`,
    /// `[warning][dynamic_modules]`).
    pub fn log_component(self) -> &'static str {
        match self {
            FilterBuild::Wasm => "wasm",
            FilterBuild::Native => "dynamic_modules",
        }
    }

    /// The extension config's `@type` for this build.
    pub fn filter_type(self) -> &'static str {
        match self {
            FilterBuild::Wasm => WASM_FILTER_TYPE,
            FilterBuild::Native => DYNAMIC_MODULE_FILTER_TYPE,
        }
    }

    /// The module of this build: [`crate::envoy::filter_wasm`] or [`native_module`].
    pub fn module(self) -> io::Result<PathBuf> {
        match self {
            FilterBuild::Wasm => crate::envoy::filter_wasm(),
            FilterBuild::Native => native_module(),
        }
    }
}

/// The native module: `$NATIVE_MODULE`, else the release build in `target/`.
pub fn native_module() -> io::Result<PathBuf> {
    let path = std::env::var_os("NATIVE_MODULE")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::repo_root().join("target/release/libfaas_mesh_filter_native.so"));
    if path.is_file() {
        Ok(path)
    } else {
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no native module at {}: run `make native`", path.display()),
        ))
    }
}

/// What the pod tells its sidecar: labels, annotations, namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodInfo {
    pub labels: Vec<(String, String)>,
    pub annotations: Vec<(String, String)>,
    pub namespace: Option<String>,
}

/// Writes the pod's facts where the native module reads them: `dir/pod-info/labels` and
/// `annotations` as Kubernetes' downward API writes them for Istio (`/etc/istio/pod/…`: one
/// `key="value"` a line, sorted by key, the value quoted as Go's `%q` does), and
/// `dir/pod-info/namespace` (plain text) when there is one. Returns the folder; an Envoy running
/// the native build is started with `FAAS_MESH_POD_INFO_DIR` naming it ([`envoy_environment`]).
pub fn write_pod_info(dir: &Path, pod: &PodInfo) -> io::Result<PathBuf> {
    let folder = dir.join(POD_INFO_DIR);
    std::fs::create_dir_all(&folder)?;
    std::fs::write(folder.join("labels"), downward_api_map(&pod.labels))?;
    std::fs::write(
        folder.join("annotations"),
        downward_api_map(&pod.annotations),
    )?;
    let namespace = folder.join("namespace");
    match &pod.namespace {
        Some(ns) => std::fs::write(&namespace, ns)?,
        None => match std::fs::remove_file(&namespace) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        },
    }
    Ok(folder)
}

/// The environment an Envoy started in `dir` needs for this build, beyond its own: for the
/// native build, `FAAS_MESH_POD_INFO_DIR=<dir>/pod-info` (written by [`write_pod_info`]); the
/// wasm build reads its pod from the bootstrap's node metadata and needs nothing. Variables
/// listed with `None` must be removed from the inherited environment (the native module falls
/// back to `POD_NAMESPACE`, which must not leak in from the test's own environment).
pub fn envoy_environment(build: FilterBuild, dir: &Path) -> Vec<(&'static str, Option<PathBuf>)> {
    match build {
        FilterBuild::Wasm => Vec::new(),
        FilterBuild::Native => vec![
            (POD_INFO_ENV, Some(dir.join(POD_INFO_DIR))),
            ("POD_NAMESPACE", None),
        ],
    }
}

/// A map as the downward API writes it: `key="value"` lines sorted by key, joined by `\n`
/// (no newline after the last), the value quoted as Go's `strconv.Quote` does.
pub fn downward_api_map(entries: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = entries.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    sorted
        .iter()
        .map(|(k, v)| format!("{k}={}", go_quote(v)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Go's `strconv.Quote`: `"` and `\` escaped, the usual control escapes, other control bytes
/// as `\xNN`, printable text as it is.
fn go_quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if c.is_control() => {
                let n = c as u32;
                if n <= 0xffff {
                    out.push_str(&format!("\\u{n:04x}"));
                } else {
                    out.push_str(&format!("\\U{n:08x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_switch_takes_two_names_and_refuses_others() {
        assert_eq!(FilterBuild::parse(""), Ok(FilterBuild::Wasm));
        assert_eq!(FilterBuild::parse("wasm"), Ok(FilterBuild::Wasm));
        assert_eq!(FilterBuild::parse("native"), Ok(FilterBuild::Native));
        assert!(FilterBuild::parse("Native").is_err());
        assert!(FilterBuild::parse("so").is_err());
    }

    #[test]
    fn maps_are_written_as_the_downward_api_writes_them() {
        let entries = vec![
            ("version".to_string(), "1".to_string()),
            ("app".to_string(), "say \"hi\"\\\n\tend".to_string()),
        ];
        assert_eq!(
            downward_api_map(&entries),
            "app=\"say \\\"hi\\\"\\\\\\n\\tend\"\nversion=\"1\""
        );
        assert_eq!(downward_api_map(&[]), "");
        assert_eq!(go_quote("é\u{1}"), "\"é\\x01\"");
    }
}
