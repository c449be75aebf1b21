//! faas-mesh-filter: a proxy-wasm filter for the Envoy sidecar of OpenFaaS function pods.
//!
//! The pure modules decide; they never call the host and are tested natively with `cargo test`:
//! - [`config`]: the plugin configuration, read strictly in one pass and validated section by
//!   section with key-path errors; [`annotations`]: a function's own narrowing rules;
//! - [`plan`]: the configuration compiled for one pod (local function, effective policy);
//! - [`request`]: one request's decision (route, call id, headers, the policy's header checks);
//! - [`rewrite`]: `/function/<name>/...` paths to what the function expects;
//! - [`call_id`], [`timing`]: the values of the call-id, start-time and duration headers;
//! - [`trace`]: W3C and B3 trace context, read and written;
//! - [`reply`]: every reply the filter makes;
//! - [`policy`]: per-function policy rules and header checks, the rate-limit bucket, the shared
//!   counters (in-flight slots by owner);
//! - [`gate`], [`held`], [`body_budget`]: the readiness gate's shared records and decisions;
//! - [`header_map`]: the proxy-wasm header map wire format;
//! - [`metrics`]: the names of the filter's stats.
//!
//! [`host`] is everything that talks to Envoy: the [`host::Host`] interface (the ABI on wasm32,
//! an in-memory fake for native tests), the gate and the policy on one worker
//! ([`host::gate`], [`host::policy`], twins of the pure modules of the same name), and Envoy's
//! callbacks on any host ([`host::root`], [`host::call`], [`host::startup`]; the proxy-wasm entry
//! `host::wasm_entry` is wasm32 only).
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod annotations;
pub mod body_budget;
pub mod call_id;
pub mod config;
pub mod gate;
pub mod header_map;
pub mod held;
pub mod metrics;
pub mod plan;
pub mod policy;
pub mod reply;
pub mod request;
pub mod rewrite;
pub mod timing;
pub mod trace;

pub mod host;
