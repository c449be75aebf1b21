//! The keys each object of the configuration accepts, and the ranges of its numbers: what the
//! parser allows, and what tests/docs.rs compares with docs/configuration.md.

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

/// The methods the OpenFaaS gateway proxies; `policy.*.methods` may name only these.
pub const PROXIED_METHODS: [&str; 7] = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"];

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

/// The largest configuration a sidecar accepts. A policy is read entry by entry and only the
/// local function's entry is kept, so a VM's memory grows by about this much at most while it
/// reads one (wasm memory is never given back).
pub const MAX_CONFIG_BYTES: usize = 1 << 20;
