//! faas-mesh-filter: a proxy-wasm filter for the Envoy sidecar of OpenFaaS function pods.
//!
//! The pure modules decide; they never call the host and are tested natively with `cargo test`:
//! - [`config`]: the plugin configuration, parsed and validated with key-path errors;
//! - [`plan`]: the configuration compiled for one pod (local function, effective policy);
//! - [`rewrite`]: `/function/<name>/...` paths to what the function expects;
//! - [`call_id`], [`timing`]: the values of the call-id, start-time and duration headers;
//! - [`trace`]: W3C and B3 trace context, read and written;
//! - [`reply`]: the filter's own replies;
//! - [`policy`]: per-function policy checks and the rate-limit bucket;
//! - [`gate`]: the readiness gate's shared records and decisions;
//! - [`header_map`]: the proxy-wasm header map wire format;
//! - [`metrics`]: the names of the filter's stats.
//!
//! `host` (the ABI calls), `filter` (Envoy's callbacks) and `readiness` (the gate's probes,
//! holds and releases) are the thin adapter, built for wasm32 only.
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
pub mod metrics;
pub mod plan;
pub mod policy;
pub mod reply;
pub mod request;
pub mod rewrite;
pub mod strict_json;
pub mod timing;
pub mod trace;

pub mod enforcement;
#[cfg(target_arch = "wasm32")]
mod filter;
pub mod host;
pub mod readiness;
