//! The static configuration checker (`faas-mesh-check`): what the sidecar would do with a
//! configuration, without a cluster.
//!
//! It runs the filter's own parser and plan compiler (`Config::parse`, `Plan::compile`), the very
//! code `on_configure` runs, so a refusal is reported word for word as the sidecar logs it, and
//! the effective rules shown for a function are the ones its sidecar enforces.
//!
//! The configuration comes from a JSON file (the operator's configuration file) or from a
//! rendered manifest (`envoyfilter.yaml`: the EXTENSION_CONFIG patch's `configuration.value`;
//! `envoyfilter-remote.yaml`: the HTTP_FILTER patch's; the native build's
//! `envoyfilter-native*.yaml`: the HTTP_FILTER patch's `filter_config.value`, the same JSON; or
//! `wasmplugin.yaml`: `spec.pluginConfig`, which Istio hands to the filter as JSON).

use faas_mesh_filter::config::Config;
use faas_mesh_filter::plan::{Plan, PodInfo};
use faas_mesh_filter::policy::{PolicyMode, PolicyRules};
use serde_json::Value;
use std::fmt::Write;

/// The sidecar's log line for a refused configuration (`host/root.rs`, `on_configure`), without
/// Envoy's `wasm log <plugin> <root id>:` prefix.
pub fn refusal_message(problem: &str) -> String {
    format!("invalid configuration: {problem}")
}

/// The plugin configuration carried by a file: the file itself when it is a configuration file,
/// or the configuration inside a rendered manifest (`*.yaml`, `*.yml`).
pub fn configuration_of(file_name: &str, text: &str) -> Result<String, String> {
    if !(file_name.ends_with(".yaml") || file_name.ends_with(".yml")) {
        return Ok(text.to_string());
    }
    for document in serde_yaml::Deserializer::from_str(text) {
        let value: Value = serde::Deserialize::deserialize(document)
            .map_err(|e| format!("not a YAML manifest: {e}"))?;
        match value["kind"].as_str() {
            Some("EnvoyFilter") => {
                let patches = value["spec"]["configPatches"].as_array();
                for patch in patches.into_iter().flatten() {
                    // envoyfilter.yaml: the Wasm filter by ECDS (EXTENSION_CONFIG);
                    // envoyfilter-remote.yaml: inline in the HTTP_FILTER patch.
                    let wasm = &patch["patch"]["value"]["typed_config"];
                    let inline = patch["applyTo"] == "HTTP_FILTER"
                        && wasm["@type"]
                            == "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
                    // The native build's EnvoyFilters: the dynamic-modules filter inline, its
                    // configuration in filter_config (the same JSON).
                    if patch["applyTo"] == "HTTP_FILTER"
                        && wasm["@type"]
                            == "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter"
                    {
                        return match &wasm["filter_config"]["value"] {
                            Value::String(s) => Ok(s.clone()),
                            Value::Null => Ok(String::new()),
                            other => Err(format!(
                                "the HTTP_FILTER patch's filter_config.value is not a string: {other}"
                            )),
                        };
                    }
                    if patch["applyTo"] == "EXTENSION_CONFIG" || inline {
                        let configuration = &wasm["config"]["configuration"];
                        return match &configuration["value"] {
                            Value::String(s) => Ok(s.clone()),
                            // No configuration at all: Envoy hands over no bytes (all defaults).
                            Value::Null => Ok(String::new()),
                            other => Err(format!(
                                "the {} patch's configuration.value is not a string: {other}",
                                patch["applyTo"].as_str().unwrap_or_default()
                            )),
                        };
                    }
                }
            }
            Some("WasmPlugin") => {
                return match &value["spec"]["pluginConfig"] {
                    Value::Null => Ok(String::new()),
                    config => serde_json::to_string(config).map_err(|e| e.to_string()),
                };
            }
            _ => {}
        }
    }
    Err(
        "no plugin configuration found (expected an EnvoyFilter with the Wasm filter in an \
         EXTENSION_CONFIG or HTTP_FILTER patch, one with the dynamic-modules filter, or a \
         WasmPlugin)"
            .to_string(),
    )
}

/// What the sidecar of `function` (in `namespace`) does with this configuration: `Ok` with the
/// compiled plan, or `Err` with the message it logs when it refuses it.
pub fn compile(
    configuration: &str,
    function: Option<&str>,
    namespace: Option<&str>,
    annotations: &[(String, String)],
) -> Result<(Config, Plan), String> {
    let config =
        Config::parse(configuration.as_bytes()).map_err(|e| refusal_message(&e.to_string()))?;
    let pod = PodInfo {
        label_value: function.map(str::to_string),
        namespace: namespace.map(str::to_string),
        annotations: annotations.to_vec(),
    };
    let plan = Plan::compile(&config, &pod).map_err(|e| refusal_message(&e.to_string()))?;
    Ok((config, plan))
}

/// The annotations of `function` in a faas-cli `stack.yml` (`functions.<name>.annotations`):
/// what its pod, and so its sidecar, will carry.
pub fn stack_annotations(stack_yml: &str, function: &str) -> Result<Vec<(String, String)>, String> {
    let stack: Value =
        serde_yaml::from_str(stack_yml).map_err(|e| format!("not a stack.yml: {e}"))?;
    let Some(entry) = stack["functions"].get(function) else {
        return Err(format!("no function {function:?} under functions:"));
    };
    let Some(annotations) = entry.get("annotations") else {
        return Ok(Vec::new());
    };
    let map = annotations
        .as_object()
        .ok_or_else(|| format!("functions.{function}.annotations: expected a map"))?;
    Ok(map
        .iter()
        .map(|(k, v)| {
            let value = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.clone(), value)
        })
        .collect())
}

/// One line for a valid configuration: which functions have their own policy entry.
pub fn summary(config: &Config) -> String {
    let functions: Vec<&str> = config.policy.functions.keys().map(String::as_str).collect();
    if functions.is_empty() {
        "valid: every function gets policy.default".to_string()
    } else {
        format!(
            "valid: policy.functions has entries for {}; every other function gets policy.default",
            functions.join(", ")
        )
    }
}

/// The rules the sidecar of `function` enforces, in the words of the configuration reference.
pub fn effective_rules(config: &Config, plan: &Plan) -> String {
    // The rules the plan was compiled from: the default, overridden key by key by the local
    // function's entry, then narrowed by its annotations.
    let entry = plan
        .function
        .as_ref()
        .and_then(|f| config.policy.functions.get(f));
    let rules = &plan.rules;
    let mut out = String::new();
    let local = plan.function.as_deref().unwrap_or("(unknown)");
    let source = if config.function.name.is_some() {
        "function.name"
    } else {
        "pod label"
    };
    let _ = writeln!(out, "function          {local} (from the {source})");
    let _ = writeln!(
        out,
        "policy            {}",
        match entry {
            Some(_) => format!("policy.default overridden by policy.functions.{local}"),
            None => "policy.default (no entry of its own)".to_string(),
        }
    );
    for outcome in &plan.annotations {
        let _ = match outcome.refused {
            None => writeln!(out, "annotation        {} applied", outcome.annotation),
            Some(why) => writeln!(
                out,
                "annotation        {} refused ({why}); the operator's rule stands",
                outcome.annotation
            ),
        };
    }
    write_policy(&mut out, rules, plan.policy.mode);
    let _ = writeln!(
        out,
        "rewrite           {}{local}/<rest> -> /<rest>; another function's name: {}",
        config.rewrite.prefix,
        match config.rewrite.other_function {
            faas_mesh_filter::rewrite::OtherFunction::Reject => "404",
            faas_mesh_filter::rewrite::OtherFunction::Pass => "rewritten too",
        }
    );
    let _ = writeln!(
        out,
        "headers           call id {}, start time {}, duration {}; caller's call id {}",
        plan.headers.call_id,
        plan.headers.start_time,
        plan.headers.duration,
        if plan.headers.trust_incoming_call_id {
            "kept when safe"
        } else {
            "replaced"
        }
    );
    let tracing = match (plan.tracing.w3c, plan.tracing.b3) {
        (true, true) => "W3C traceparent and B3",
        (true, false) => "W3C traceparent",
        (false, true) => "B3",
        (false, false) => "off (trace headers pass untouched)",
    };
    let owner = match (plan.tracing.w3c || plan.tracing.b3, plan.tracing.owner) {
        (false, _) => "",
        (true, faas_mesh_filter::trace::TraceOwner::Envoy) => {
            ", bridged to Envoy's tracer's trace (tracing.owner envoy)"
        }
        (true, faas_mesh_filter::trace::TraceOwner::Filter) => {
            ", a span of the filter's own (tracing.owner filter)"
        }
    };
    let _ = writeln!(out, "tracing           {tracing}{owner}");
    let readiness =
        match &plan.readiness {
            None => "off".to_string(),
            Some(r) => format!(
            "on: probes {} via cluster {} every {} ms (timeout {} ms); holds a request up to {} \
             ms, at most {} at once",
            r.path, r.cluster, r.retry_interval_ms, r.probe_timeout_ms, r.max_wait_ms, r.max_pending
        ),
        };
    let _ = writeln!(out, "readiness         {readiness}");
    for notice in &plan.notices {
        let _ = writeln!(out, "note              {notice}");
    }
    out
}

fn write_policy(out: &mut String, rules: &PolicyRules, mode: PolicyMode) {
    let mode = match mode {
        PolicyMode::Enforce => "enforce (denials are answered)",
        PolicyMode::Audit => "audit (denials are logged and counted, requests pass)",
        PolicyMode::Off => "off (no checks)",
    };
    let list = |l: &Option<Vec<String>>, none: &str| match l {
        Some(l) => l.join(", "),
        None => none.to_string(),
    };
    let limit = |n: Option<u64>| n.map_or("unlimited".to_string(), |n| n.to_string());
    let _ = writeln!(out, "  mode            {mode}");
    let _ = writeln!(out, "  methods         {}", list(&rules.methods, "any"));
    let _ = writeln!(
        out,
        "  principals      {}",
        list(&rules.principals, "anyone")
    );
    let mtls = rules.require_mtls.unwrap_or(false) || rules.principals.is_some();
    let _ = writeln!(out, "  require_mtls    {}", if mtls { "yes" } else { "no" });
    let _ = writeln!(out, "  max_body_bytes  {}", limit(rules.max_body_bytes));
    let _ = writeln!(out, "  max_inflight    {}", limit(rules.max_inflight));
    let rate = match &rules.rate_limit {
        Some(r) => format!(
            "{} requests/s, burst {} (per pod)",
            r.requests_per_second, r.burst
        ),
        None => "none".to_string(),
    };
    let _ = writeln!(out, "  rate_limit      {rate}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_in_the_vectors_is_the_sidecars_log_line() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata");
        let vectors: Value =
            serde_json::from_str(&std::fs::read_to_string(root.join("config.json")).unwrap())
                .unwrap();
        let errors = vectors["error"].as_array().unwrap();
        assert!(!errors.is_empty());
        for case in errors {
            let raw = match &case["raw"] {
                Value::String(s) => s.clone(),
                _ => case["config"].to_string(),
            };
            let err = compile(&raw, Some("env"), None, &[]).err().unwrap();
            assert_eq!(
                err,
                format!("invalid configuration: {}", case["error"].as_str().unwrap())
            );
        }
    }

    #[test]
    fn the_configuration_inside_a_rendered_manifest_is_the_one_checked() {
        let config = r#"{"policy": {"functions": {"env": {"methods": ["GET"]}}}}"#;
        let files = crate::render::render_all(
            config,
            &crate::render::Module {
                wasm: b"\0asm\x01\0\0\0",
                image: "registry.example/f:1",
                version: "1",
            },
        )
        .unwrap();
        let native = crate::render::render_native(
            config,
            &crate::render::NativeModules {
                amd64: b"\x7fELF amd64",
                arm64: b"\x7fELF arm64",
            },
        )
        .unwrap();
        for name in [
            "envoyfilter.yaml",
            "envoyfilter-remote.yaml",
            "wasmplugin.yaml",
            "envoyfilter-native.yaml",
            "envoyfilter-native-amd64.yaml",
            "envoyfilter-native-arm64.yaml",
        ] {
            let file = files
                .iter()
                .chain(&native)
                .find(|f| f.name == name)
                .unwrap();
            let found = configuration_of(name, &file.contents).unwrap();
            let (config, plan) = compile(&found, Some("env"), None, &[]).unwrap();
            let rules = effective_rules(&config, &plan);
            assert!(rules.contains("  methods         GET\n"), "{name}: {rules}");
        }
        assert!(configuration_of("stack.yml", "kind: ConfigMap\n").is_err());
        assert_eq!(configuration_of("c.json", "{}").unwrap(), "{}");
    }

    #[test]
    fn effective_rules_merge_the_default_and_the_functions_entry() {
        let config = r#"{"policy": {"default": {"max_body_bytes": 1024, "methods": ["GET"]},
            "functions": {"env": {"methods": ["POST"], "rate_limit": {"requests_per_second": 2}}}}}"#;
        let (parsed, plan) = compile(config, Some("env"), Some("openfaas-fn"), &[]).unwrap();
        let env = effective_rules(&parsed, &plan);
        assert!(env.contains("  methods         POST\n"), "{env}");
        assert!(env.contains("  max_body_bytes  1024\n"), "{env}");
        assert!(
            env.contains("  rate_limit      2 requests/s, burst 2"),
            "{env}"
        );
        let (parsed, plan) = compile(config, Some("figlet"), None, &[]).unwrap();
        let figlet = effective_rules(&parsed, &plan);
        assert!(
            figlet.contains("policy.default (no entry of its own)"),
            "{figlet}"
        );
        assert!(figlet.contains("  methods         GET\n"), "{figlet}");
        assert!(figlet.contains("  rate_limit      none\n"), "{figlet}");
        assert_eq!(
            summary(&parsed),
            "valid: policy.functions has entries for env; every other function gets policy.default"
        );
    }

    #[test]
    fn a_functions_stack_yml_narrows_what_the_checker_shows_and_never_widens() {
        let config = r#"{"policy": {"default": {"methods": ["GET", "POST"], "max_inflight": 8}}}"#;
        let stack = r#"
functions:
  env:
    lang: dockerfile
    annotations:
      com.openfaas.mesh.methods: POST
      com.openfaas.mesh.max_inflight: "20"
      com.openfaas.mesh.mode: "off"
      com.openfaas.scale.min: "1"
  other:
    image: x
"#;
        let annotations = stack_annotations(stack, "env").unwrap();
        assert_eq!(annotations.len(), 4);
        let (parsed, plan) = compile(config, Some("env"), None, &annotations).unwrap();
        let env = effective_rules(&parsed, &plan);
        assert!(env.contains("  methods         POST\n"), "{env}");
        assert!(
            env.contains("  max_inflight    8\n"),
            "widening refused: {env}"
        );
        assert!(env.contains("  mode            enforce"), "{env}");
        assert!(
            env.contains("annotation        com.openfaas.mesh.methods applied"),
            "{env}"
        );
        assert!(
            env.contains("annotation        com.openfaas.mesh.max_inflight refused"),
            "{env}"
        );
        assert!(
            env.contains("annotation        com.openfaas.mesh.mode refused (the mode is the operator's alone)"),
            "{env}"
        );
        assert!(stack_annotations(stack, "other").unwrap().is_empty());
        assert!(stack_annotations(stack, "missing").is_err());
    }
}
