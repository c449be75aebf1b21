//! What the operator asked for: the configuration's sections as plain Rust values, and their
//! defaults. Reading them from JSON is `parse.rs` and `sections.rs`; nothing here reads or checks.

use crate::policy::PolicyRules;
use crate::rewrite::OtherFunction;
use crate::trace::TraceOwner;
use std::collections::BTreeMap;

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

#[derive(Debug, Clone, Default, PartialEq)]
pub struct PolicySection {
    pub default: PolicyRules,
    pub functions: BTreeMap<String, PolicyRules>,
}

impl Default for FunctionSection {
    fn default() -> Self {
        FunctionSection {
            name_label: "faas_function".into(),
            name: None,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            function: FunctionSection::default(),
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
