//! The plugin configuration: parsed from the JSON string Envoy hands over in `on_configure`,
//! validated key by key, and reduced to plain Rust values with every default filled in.
//!
//! Errors name the key path and the problem (`policy.functions.env.max_inflight: expected a
//! positive integer, got -1`) because an operator reads them in the sidecar's log, far from the
//! manifest that caused them. Unknown keys are errors too: a typo must not silently fall back to
//! a default. Nothing here calls the host.

use crate::strict_json;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;

/// What the operator asked for, with defaults filled in. Per-request decisions use
/// [`crate::plan::Plan`], which is compiled from this once the local function is known.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub function: FunctionSection,
    pub rewrite: RewriteSection,
    pub headers: HeadersSection,
    pub tracing: TracingSection,
    pub readiness: ReadinessSection,
    pub policy: PolicySection,
    pub envoy: EnvoySection,
}

/// What the host running the filter allows; it must match the Wasm `PluginConfig`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvoySection {
    /// The `PluginConfig` sets `allow_on_headers_stop_iteration: true` (Envoy 1.35+; the shipped
    /// EnvoyFilter does, Istio's WasmPlugin cannot): the filter may then hold a request's headers
    /// while it reads the body, so a body of unknown length over `max_body_bytes` never reaches the
    /// function at all.
    pub allow_on_headers_stop_iteration: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FunctionSection {
    /// Pod label (from Istio node metadata) that names the function.
    pub name_label: String,
    /// Explicit function name; overrides the label.
    pub name: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtherFunction {
    /// `/function/<other>/...` answers 404.
    Reject,
    /// `/function/<other>/...` is rewritten like the local function's paths.
    Pass,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RewriteSection {
    pub prefix: String,
    pub other_function: OtherFunction,
    /// The OpenFaaS gateway's SPIFFE ID (mTLS peer): its requests are routed already, so they
    /// are not rewritten and keep its start time. `None` (configured as `""`): no such peer.
    pub gateway_principal: Option<String>,
}

/// The OpenFaaS gateway's identity under Istio mTLS (its service account, as the tutorial
/// installs it).
pub const DEFAULT_GATEWAY_PRINCIPAL: &str =
    "spiffe://cluster.local/ns/openfaas/sa/openfaas-controller";

#[derive(Debug, Clone, PartialEq)]
pub struct HeadersSection {
    /// Header names, lowercased (HTTP/2 and Envoy's header maps use lowercase names).
    pub call_id: String,
    pub start_time: String,
    pub duration: String,
    pub trust_incoming_call_id: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TracingSection {
    pub b3: bool,
    pub w3c: bool,
    /// Who creates this hop's span: Envoy's own tracer (the connection manager has a `tracing`
    /// block, as in a default Istio mesh) or the filter (no tracer in the sidecar).
    pub owner: TraceOwner,
}

/// `tracing.owner`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceOwner {
    /// Envoy's tracer owns the trace: it reads the caller's context before any HTTP filter runs
    /// and writes its own span into the request at the router, after them. The filter creates
    /// no ids; it only makes the formats Envoy does not write name Envoy's trace (or removes
    /// them).
    Envoy,
    /// No tracer in the sidecar: the filter continues the caller's trace with a span of its own,
    /// or starts one.
    Filter,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ReadinessSection {
    pub enabled: bool,
    pub cluster: String,
    pub authority: String,
    pub path: String,
    pub probe_timeout_ms: u64,
    pub retry_interval_ms: u64,
    pub max_wait_ms: u64,
    pub max_pending: u64,
    /// The request body bytes held in the pod at once while the function is not ready.
    pub max_pending_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyMode {
    Enforce,
    Audit,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub requests_per_second: f64,
    pub burst: u64,
}

/// One policy entry as written: every rule optional, so a function's entry can override the
/// default key by key.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PolicyRules {
    pub mode: Option<PolicyMode>,
    pub methods: Option<Vec<String>>,
    pub principals: Option<Vec<String>>,
    pub require_mtls: Option<bool>,
    pub max_body_bytes: Option<u64>,
    pub max_inflight: Option<u64>,
    pub rate_limit: Option<RateLimit>,
}

impl PolicyRules {
    /// `self` overridden key by key by `over`.
    pub fn merged_with(&self, over: &PolicyRules) -> PolicyRules {
        PolicyRules {
            mode: over.mode.or(self.mode),
            methods: over.methods.clone().or_else(|| self.methods.clone()),
            principals: over.principals.clone().or_else(|| self.principals.clone()),
            require_mtls: over.require_mtls.or(self.require_mtls),
            max_body_bytes: over.max_body_bytes.or(self.max_body_bytes),
            max_inflight: over.max_inflight.or(self.max_inflight),
            rate_limit: over.rate_limit.or(self.rate_limit),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct PolicySection {
    pub default: PolicyRules,
    pub functions: BTreeMap<String, PolicyRules>,
}

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

/// The methods the OpenFaaS gateway proxies; `policy.*.methods` may name only these.
pub const PROXIED_METHODS: [&str; 7] = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"];

impl Default for Config {
    fn default() -> Self {
        Config {
            function: FunctionSection {
                name_label: "faas_function".into(),
                name: None,
            },
            rewrite: RewriteSection {
                prefix: "/function/".into(),
                other_function: OtherFunction::Reject,
                gateway_principal: Some(DEFAULT_GATEWAY_PRINCIPAL.into()),
            },
            headers: HeadersSection {
                call_id: "x-call-id".into(),
                start_time: "x-start-time".into(),
                duration: "x-duration-seconds".into(),
                trust_incoming_call_id: true,
            },
            tracing: TracingSection {
                b3: true,
                w3c: true,
                // Istio turns its tracer on by default (Zipkin, 1 % sampling).
                owner: TraceOwner::Envoy,
            },
            readiness: ReadinessSection {
                enabled: true,
                cluster: "faas_function_local".into(),
                authority: "127.0.0.1:8080".into(),
                // of-watchdog's /_/ready follows the function's own `ready_path`; a server
                // without it is probed on /_/health instead (see `gate::fallback_path`).
                path: "/_/ready".into(),
                probe_timeout_ms: 1000,
                retry_interval_ms: 100,
                max_wait_ms: 30000,
                max_pending: 1024,
                max_pending_bytes: 16 << 20,
            },
            policy: PolicySection::default(),
            envoy: EnvoySection {
                allow_on_headers_stop_iteration: true,
            },
        }
    }
}

/// Which entries of `policy.functions` a parse keeps. Every entry is validated either way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Keep {
    /// All of them (the render tool and the checker show any function's rules).
    All,
    /// Only the local function's (a sidecar enforces its own function only), or none when the
    /// local function is unknown.
    Only(Option<String>),
}

/// The largest configuration a sidecar accepts. A policy is read entry by entry and only the
/// local function's entry is kept, so a VM's memory grows by about this much at most while it
/// reads one (wasm memory is never given back).
pub const MAX_CONFIG_BYTES: usize = 1 << 20;

impl Config {
    /// Parses the plugin configuration, keeping every function's policy entry. Empty (or
    /// whitespace-only) input means all defaults, as Envoy passes no bytes when the manifest sets
    /// no configuration.
    pub fn parse(input: &[u8]) -> Result<Config, ConfigError> {
        Config::parse_with(input, |_| Keep::All)
    }

    /// Parses the plugin configuration; `keep` sees the `function` section (once every section
    /// is valid) and says which entries of `policy.functions` to keep. The same input gives the
    /// same error whatever `keep` says: JSON and duplicate keys first, then the sections, then
    /// the policy entries.
    pub fn parse_with(
        input: &[u8],
        keep: impl FnOnce(&FunctionSection) -> Keep,
    ) -> Result<Config, ConfigError> {
        if input.iter().all(u8::is_ascii_whitespace) {
            let config = Config::default();
            keep(&config.function);
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
        // First the whole text (JSON, duplicate keys) and every section but the policy entries.
        let mut has_functions = false;
        let root = strict_json::read(input, FUNCTIONS_PATH, &mut |_, _, _| {
            has_functions = true;
            Ok(())
        })?;
        let mut config = Config::from_value(&root)?;
        let keep = keep(&config.function);
        if !has_functions {
            return Ok(config);
        }
        // Then the entries one by one: each validated, only the wanted ones kept.
        let functions = &mut config.policy.functions;
        strict_json::read(input, FUNCTIONS_PATH, &mut |name, path, value| {
            function_name(path, name)?;
            let rules = rules(&Obj::new(&value, path, RULE_KEYS)?)?;
            let wanted = match keep {
                Keep::All => true,
                Keep::Only(ref local) => local.as_deref() == Some(name),
            };
            if wanted {
                functions.insert(name.to_string(), rules);
            }
            Ok(())
        })?;
        Ok(config)
    }

    fn from_value(root: &Value) -> Result<Config, ConfigError> {
        let root = Obj::new(root, "", ROOT_KEYS)?;
        let mut config = Config::default();
        if let Some(o) = root.object("function", FUNCTION_KEYS)? {
            if let Some(label) = o.string("name_label")? {
                config.function.name_label = label_key(&o.path("name_label"), label)?;
            }
            if let Some(name) = o.string("name")? {
                config.function.name = Some(function_name(&o.path("name"), name)?);
            }
        }
        if let Some(o) = root.object("rewrite", REWRITE_KEYS)? {
            if let Some(prefix) = o.string("prefix")? {
                config.rewrite.prefix = path_prefix(&o.path("prefix"), prefix)?;
            }
            if let Some(v) = o.one_of("other_function", &["reject", "pass"])? {
                config.rewrite.other_function = match v {
                    "pass" => OtherFunction::Pass,
                    _ => OtherFunction::Reject,
                };
            }
            if let Some(p) = o.string("gateway_principal")? {
                config.rewrite.gateway_principal =
                    gateway_principal(&o.path("gateway_principal"), p)?;
            }
        }
        if let Some(o) = root.object("headers", HEADERS_KEYS)? {
            let h = &mut config.headers;
            for (key, slot) in [
                ("call_id", &mut h.call_id),
                ("start_time", &mut h.start_time),
                ("duration", &mut h.duration),
            ] {
                if let Some(name) = o.string(key)? {
                    *slot = header_name(&o.path(key), name)?;
                }
            }
            if let Some(b) = o.boolean("trust_incoming_call_id")? {
                h.trust_incoming_call_id = b;
            }
            distinct_headers(&o, h)?;
        }
        if let Some(o) = root.object("tracing", TRACING_KEYS)? {
            if let Some(b) = o.boolean("b3")? {
                config.tracing.b3 = b;
            }
            if let Some(b) = o.boolean("w3c")? {
                config.tracing.w3c = b;
            }
            if let Some(v) = o.one_of("owner", &["envoy", "filter"])? {
                config.tracing.owner = match v {
                    "filter" => TraceOwner::Filter,
                    _ => TraceOwner::Envoy,
                };
            }
        }
        if let Some(o) = root.object("readiness", READINESS_KEYS)? {
            let r = &mut config.readiness;
            if let Some(b) = o.boolean("enabled")? {
                r.enabled = b;
            }
            for (key, slot) in [("cluster", &mut r.cluster), ("authority", &mut r.authority)] {
                if let Some(s) = o.string(key)? {
                    *slot = visible(&o.path(key), s)?;
                }
            }
            if let Some(p) = o.string("path")? {
                r.path = request_path(&o.path("path"), p)?;
            }
            for (key, slot, range) in [
                (
                    "probe_timeout_ms",
                    &mut r.probe_timeout_ms,
                    PROBE_TIMEOUT_MS,
                ),
                (
                    "retry_interval_ms",
                    &mut r.retry_interval_ms,
                    RETRY_INTERVAL_MS,
                ),
                ("max_wait_ms", &mut r.max_wait_ms, MAX_WAIT_MS),
                ("max_pending", &mut r.max_pending, MAX_PENDING),
                (
                    "max_pending_bytes",
                    &mut r.max_pending_bytes,
                    MAX_PENDING_BYTES,
                ),
            ] {
                if let Some(n) = o.int_in(key, range)? {
                    *slot = n;
                }
            }
        }
        if let Some(o) = root.object("envoy", ENVOY_KEYS)? {
            if let Some(b) = o.boolean("allow_on_headers_stop_iteration")? {
                config.envoy.allow_on_headers_stop_iteration = b;
            }
        }
        if let Some(o) = root.object("policy", POLICY_KEYS)? {
            if let Some(d) = o.object("default", RULE_KEYS)? {
                config.policy.default = rules(&d)?;
            }
            // Its entries are read one by one by `parse_with`; here only its shape.
            o.any_object("functions")?;
        }
        Ok(config)
    }
}

const FUNCTIONS_PATH: &str = "policy.functions";

// The keys each object of the configuration accepts. The parser refuses any other key with the
// object's list (`unknown key (expected one of: ...)`); [`OBJECTS`] names them by key path for
// the documentation's test (tests/docs.rs), so a key added here is a key the docs must describe.
pub const ROOT_KEYS: &[&str] = &[
    "function",
    "rewrite",
    "headers",
    "tracing",
    "readiness",
    "policy",
    "envoy",
];
pub const FUNCTION_KEYS: &[&str] = &["name_label", "name"];
pub const REWRITE_KEYS: &[&str] = &["prefix", "other_function", "gateway_principal"];
pub const HEADERS_KEYS: &[&str] = &[
    "call_id",
    "start_time",
    "duration",
    "trust_incoming_call_id",
];
pub const TRACING_KEYS: &[&str] = &["b3", "w3c", "owner"];
pub const READINESS_KEYS: &[&str] = &[
    "enabled",
    "cluster",
    "authority",
    "path",
    "probe_timeout_ms",
    "retry_interval_ms",
    "max_wait_ms",
    "max_pending",
    "max_pending_bytes",
];
pub const ENVOY_KEYS: &[&str] = &["allow_on_headers_stop_iteration"];
pub const POLICY_KEYS: &[&str] = &["default", "functions"];
/// The rules of `policy.default` and of each `policy.functions.<name>` entry.
pub const RULE_KEYS: &[&str] = &[
    "mode",
    "methods",
    "principals",
    "require_mtls",
    "max_body_bytes",
    "max_inflight",
    "rate_limit",
];
pub const RATE_LIMIT_KEYS: &[&str] = &["requests_per_second", "burst"];

/// Stands for any function name in a key path of [`OBJECTS`] (`policy.functions.<name>.mode`).
pub const ANY_FUNCTION: &str = "<name>";

/// Every object of the configuration by key path, with the keys the parser accepts in it.
/// `policy.functions` holds one entry per function name, shown as [`ANY_FUNCTION`].
pub const OBJECTS: &[(&str, &[&str])] = &[
    ("", ROOT_KEYS),
    ("function", FUNCTION_KEYS),
    ("rewrite", REWRITE_KEYS),
    ("headers", HEADERS_KEYS),
    ("tracing", TRACING_KEYS),
    ("readiness", READINESS_KEYS),
    ("envoy", ENVOY_KEYS),
    ("policy", POLICY_KEYS),
    ("policy.default", RULE_KEYS),
    ("policy.default.rate_limit", RATE_LIMIT_KEYS),
    ("policy.functions", &[ANY_FUNCTION]),
    ("policy.functions.<name>", RULE_KEYS),
    ("policy.functions.<name>.rate_limit", RATE_LIMIT_KEYS),
];

fn rules(o: &Obj<'_>) -> Result<PolicyRules, ConfigError> {
    let mut r = PolicyRules {
        mode: o
            .one_of("mode", &["enforce", "audit", "off"])?
            .map(|m| match m {
                "audit" => PolicyMode::Audit,
                "off" => PolicyMode::Off,
                _ => PolicyMode::Enforce,
            }),
        require_mtls: o.boolean("require_mtls")?,
        max_body_bytes: o.int_in("max_body_bytes", MAX_BODY_BYTES)?,
        max_inflight: o.int_in("max_inflight", MAX_INFLIGHT)?,
        ..PolicyRules::default()
    };
    if let Some(list) = o.strings("methods")? {
        let path = o.path("methods");
        if list.is_empty() {
            return Err(ConfigError::new(path, "expected at least one method"));
        }
        let mut methods = Vec::with_capacity(list.len());
        for (i, m) in list.iter().enumerate() {
            if !PROXIED_METHODS.contains(m) {
                return Err(ConfigError::new(
                    format!("{path}[{i}]"),
                    format!(
                        "expected one of {}, got {}",
                        PROXIED_METHODS.join(", "),
                        quote(m)
                    ),
                ));
            }
            if !methods.iter().any(|known: &String| known == m) {
                methods.push((*m).to_string());
            }
        }
        r.methods = Some(methods);
    }
    if let Some(list) = o.strings("principals")? {
        let path = o.path("principals");
        for (i, p) in list.iter().enumerate() {
            let star = p.find('*');
            let visible = p.bytes().all(|c| c.is_ascii_graphic());
            if p.is_empty() || !visible || star.is_some_and(|at| at + 1 != p.len()) {
                return Err(ConfigError::new(
                    format!("{path}[{i}]"),
                    format!(
                        "expected a SPIFFE ID, optionally ending in '*', got {}",
                        quote(p)
                    ),
                ));
            }
        }
        r.principals = Some(list.into_iter().map(str::to_string).collect());
    }
    if let Some(rl) = o.object("rate_limit", RATE_LIMIT_KEYS)? {
        let rps = rl
            .positive_number("requests_per_second", MAX_RATE)?
            .ok_or_else(|| {
                ConfigError::new(rl.path("requests_per_second"), "required in rate_limit")
            })?;
        let burst = match rl.int_in("burst", MAX_BURST)? {
            Some(b) => b,
            // A bucket holds at least one second of traffic (and at least one request).
            None => rps.ceil().max(1.0) as u64,
        };
        r.rate_limit = Some(RateLimit {
            requests_per_second: rps,
            burst,
        });
    }
    Ok(r)
}

fn distinct_headers(o: &Obj<'_>, h: &HeadersSection) -> Result<(), ConfigError> {
    if h.start_time == h.call_id {
        return Err(ConfigError::new(
            o.path("start_time"),
            "must differ from headers.call_id",
        ));
    }
    if h.duration == h.call_id {
        return Err(ConfigError::new(
            o.path("duration"),
            "must differ from headers.call_id",
        ));
    }
    Ok(())
}

/// A JSON object at a key path, with the set of keys it may hold.
struct Obj<'a> {
    map: &'a Map<String, Value>,
    at: String,
}

impl<'a> Obj<'a> {
    /// `value` must be an object holding only `allowed` keys.
    fn new(value: &'a Value, at: &str, allowed: &[&str]) -> Result<Self, ConfigError> {
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
    fn any(value: &'a Value, at: &str) -> Result<Self, ConfigError> {
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

    fn path(&self, key: &str) -> String {
        if self.at.is_empty() {
            key.to_string()
        } else {
            format!("{}.{}", self.at, key)
        }
    }

    fn object(&self, key: &str, allowed: &[&str]) -> Result<Option<Obj<'a>>, ConfigError> {
        self.map
            .get(key)
            .map(|v| Obj::new(v, &self.path(key), allowed))
            .transpose()
    }

    fn any_object(&self, key: &str) -> Result<Option<Obj<'a>>, ConfigError> {
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

    fn string(&self, key: &str) -> Result<Option<&'a str>, ConfigError> {
        self.typed(key, "a string", Value::as_str)
    }

    fn boolean(&self, key: &str) -> Result<Option<bool>, ConfigError> {
        self.typed(key, "a boolean", Value::as_bool)
    }

    /// A whole number in `range`: what Envoy and the filter can honour for this key.
    fn int_in(&self, key: &str, range: (u64, u64)) -> Result<Option<u64>, ConfigError> {
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
    fn positive_number(&self, key: &str, max: u64) -> Result<Option<f64>, ConfigError> {
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

    fn strings(&self, key: &str) -> Result<Option<Vec<&'a str>>, ConfigError> {
        self.typed(key, "a list of strings", |v| {
            v.as_array()?.iter().map(Value::as_str).collect()
        })
    }

    fn one_of(
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
fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => quote(s),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "an object".into(),
    }
}

fn quote(s: &str) -> String {
    const MAX: usize = 64;
    let cut: String = s.chars().take(MAX).collect();
    let more = if s.chars().nth(MAX).is_some() {
        "…"
    } else {
        ""
    };
    format!("{:?}", cut + more)
}

/// A Kubernetes/OpenFaaS function name: a DNS-1123 label.
fn function_name(path: &str, s: &str) -> Result<String, ConfigError> {
    if is_function_name(s) {
        Ok(s.to_string())
    } else {
        Err(ConfigError::new(
            path,
            format!(
                "expected a function name (lowercase letters, digits and '-', starting and ending \
                 with a letter or digit, at most 63 characters), got {}",
                quote(s)
            ),
        ))
    }
}

pub fn is_function_name(s: &str) -> bool {
    let b = s.as_bytes();
    let edge_ok = |c: Option<&u8>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    !b.is_empty()
        && b.len() <= 63
        && edge_ok(b.first())
        && edge_ok(b.last())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// A Kubernetes label key: `[prefix/]name`, letters, digits, `-`, `_`, `.`.
fn label_key(path: &str, s: &str) -> Result<String, ConfigError> {
    let ok = !s.is_empty()
        && s.len() <= 317
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-_./".contains(&c));
    if ok {
        Ok(s.to_string())
    } else {
        Err(ConfigError::new(
            path,
            format!("expected a pod label key, got {}", quote(s)),
        ))
    }
}

fn path_prefix(path: &str, s: &str) -> Result<String, ConfigError> {
    let ok = s.len() >= 3
        && s.starts_with('/')
        && s.ends_with('/')
        && s.bytes()
            .all(|c| c.is_ascii_graphic() && !b"?#%".contains(&c));
    if ok {
        Ok(s.to_string())
    } else {
        Err(ConfigError::new(
            path,
            format!(
                "expected a path prefix that starts and ends with '/' (like \"/function/\"), got {}",
                quote(s)
            ),
        ))
    }
}

/// A SPIFFE ID, exactly (no wildcard: one identity), or `""` for none.
fn gateway_principal(path: &str, s: &str) -> Result<Option<String>, ConfigError> {
    if s.is_empty() {
        return Ok(None);
    }
    let ok = s.len() > "spiffe://".len()
        && s.starts_with("spiffe://")
        && s.bytes().all(|c| c.is_ascii_graphic() && c != b'*');
    if ok {
        Ok(Some(s.to_string()))
    } else {
        Err(ConfigError::new(
            path,
            format!(
                "expected a SPIFFE ID (spiffe://...), or \"\" for none, got {}",
                quote(s)
            ),
        ))
    }
}

/// A path the probe may ask for: starts with `/`, visible ASCII only.
pub fn is_request_path(s: &str) -> bool {
    s.starts_with('/') && s.bytes().all(|c| c.is_ascii_graphic())
}

fn request_path(path: &str, s: &str) -> Result<String, ConfigError> {
    if is_request_path(s) {
        Ok(s.to_string())
    } else {
        Err(ConfigError::new(
            path,
            format!("expected a path starting with '/', got {}", quote(s)),
        ))
    }
}

/// An HTTP header field name (RFC 9110 token), stored lowercase, that the filter may write:
/// not one that frames the message, is hop-by-hop, or that Envoy, tracing or the policy reads.
fn header_name(path: &str, s: &str) -> Result<String, ConfigError> {
    let tchar = |c: u8| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c);
    if s.is_empty() || s.len() > 128 || !s.bytes().all(tchar) {
        return Err(ConfigError::new(
            path,
            format!("expected an HTTP header name, got {}", quote(s)),
        ));
    }
    let name = s.to_ascii_lowercase();
    if RESERVED_HEADERS.contains(&name.as_str())
        || RESERVED_PREFIXES.iter().any(|p| name.starts_with(p))
    {
        return Err(ConfigError::new(
            path,
            format!(
                "{} is a header that HTTP, Envoy, tracing or the policy depends on \
                 (framing, hop-by-hop, routing, identity); choose a header of your own",
                quote(s)
            ),
        ));
    }
    Ok(name)
}

/// Header names the filter must never write (checked lowercase).
const RESERVED_HEADERS: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "content-type",
    "content-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "host",
    "expect",
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "location",
    "retry-after",
    "allow",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-client-cert",
    "x-http-method-override",
    "x-method-override",
    "x-http-method",
    "x-openfaas-internal",
    "traceparent",
    "tracestate",
    "b3",
];
const RESERVED_PREFIXES: &[&str] = &["x-envoy-", "x-b3-", "x-istio-", ":"];

/// A string that ends up in a header or a path: visible ASCII only (no spaces, no CR/LF).
fn visible(path: &str, s: &str) -> Result<String, ConfigError> {
    if s.trim().is_empty() {
        Err(ConfigError::new(path, "expected a non-empty string"))
    } else if !s.bytes().all(|c| c.is_ascii_graphic()) {
        Err(ConfigError::new(
            path,
            format!(
                "expected visible ASCII characters only (no spaces or control characters), got {}",
                quote(s)
            ),
        ))
    } else {
        Ok(s.to_string())
    }
}

/// The ranges of the numbers (inclusive): what Envoy and the filter can honour.
/// A probe's timeout goes to Envoy as milliseconds; a minute is far beyond any health check.
pub const PROBE_TIMEOUT_MS: (u64, u64) = (1, 60_000);
/// The tick that drives probes: under 10 ms would spin the worker, over a minute is not a retry.
pub const RETRY_INTERVAL_MS: (u64, u64) = (10, 60_000);
/// How long a request may be held: at most ten minutes (gateways time out long before).
pub const MAX_WAIT_MS: (u64, u64) = (1, 600_000);
pub const MAX_PENDING: (u64, u64) = (1, 65_536);
/// Bytes of request bodies held in one pod while the function starts.
pub const MAX_PENDING_BYTES: (u64, u64) = (1, 1 << 30);
pub const MAX_BODY_BYTES: (u64, u64) = (1, 1 << 30);
pub const MAX_INFLIGHT: (u64, u64) = (1, 1_000_000);
pub const MAX_BURST: (u64, u64) = (1, 1_000_000_000);
pub const MAX_RATE: u64 = 1_000_000;
