//! Each section of the configuration read from its JSON object into its defaults: one function
//! per section, called by the driver (`parse.rs`) in the order the errors are reported.

use super::error::ConfigError;
use super::keys::*;
use super::obj::Obj;
use super::rules::rules;
use super::types::*;
use super::validate::*;
use crate::rewrite::OtherFunction;
use crate::trace::TraceOwner;

/// Every section of the root object but the entries of `policy.functions` (streamed apart).
pub fn read_all(root: &Obj<'_>, config: &mut Config) -> Result<(), ConfigError> {
    if let Some(o) = root.object("function", FUNCTION_KEYS)? {
        function(&o, &mut config.function)?;
    }
    if let Some(o) = root.object("rewrite", REWRITE_KEYS)? {
        rewrite(&o, &mut config.rewrite)?;
    }
    if let Some(o) = root.object("headers", HEADERS_KEYS)? {
        headers(&o, &mut config.headers)?;
    }
    if let Some(o) = root.object("tracing", TRACING_KEYS)? {
        tracing(&o, &mut config.tracing)?;
    }
    if let Some(o) = root.object("readiness", READINESS_KEYS)? {
        readiness(&o, &mut config.readiness)?;
    }
    if let Some(o) = root.object("envoy", ENVOY_KEYS)? {
        envoy(&o, &mut config.envoy)?;
    }
    if let Some(o) = root.object("policy", POLICY_KEYS)? {
        policy(&o, &mut config.policy)?;
    }
    Ok(())
}

pub fn function(o: &Obj<'_>, f: &mut FunctionSection) -> Result<(), ConfigError> {
    if let Some(label) = o.string("name_label")? {
        f.name_label = label_key(&o.path("name_label"), label)?;
    }
    if let Some(name) = o.string("name")? {
        f.name = Some(function_name(&o.path("name"), name)?);
    }
    Ok(())
}

#[inline(always)]
fn rewrite(o: &Obj<'_>, r: &mut RewriteSection) -> Result<(), ConfigError> {
    if let Some(prefix) = o.string("prefix")? {
        r.prefix = path_prefix(&o.path("prefix"), prefix)?;
    }
    if let Some(v) = o.one_of("other_function", &["reject", "pass"])? {
        r.other_function = match v {
            "pass" => OtherFunction::Pass,
            _ => OtherFunction::Reject,
        };
    }
    if let Some(p) = o.string("gateway_principal")? {
        r.gateway_principal = gateway_principal(&o.path("gateway_principal"), p)?;
    }
    Ok(())
}

#[inline(always)]
fn headers(o: &Obj<'_>, h: &mut HeadersSection) -> Result<(), ConfigError> {
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
    for (key, name) in [("start_time", &h.start_time), ("duration", &h.duration)] {
        if *name == h.call_id {
            return Err(ConfigError::new(
                o.path(key),
                "must differ from headers.call_id",
            ));
        }
    }
    Ok(())
}

#[inline(always)]
fn tracing(o: &Obj<'_>, t: &mut TracingSection) -> Result<(), ConfigError> {
    if let Some(b) = o.boolean("b3")? {
        t.b3 = b;
    }
    if let Some(b) = o.boolean("w3c")? {
        t.w3c = b;
    }
    if let Some(v) = o.one_of("owner", &["envoy", "filter"])? {
        t.owner = match v {
            "filter" => TraceOwner::Filter,
            _ => TraceOwner::Envoy,
        };
    }
    Ok(())
}

#[inline(always)]
fn readiness(o: &Obj<'_>, r: &mut ReadinessSection) -> Result<(), ConfigError> {
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
    Ok(())
}

#[inline(always)]
fn envoy(o: &Obj<'_>, e: &mut EnvoySection) -> Result<(), ConfigError> {
    if let Some(b) = o.boolean("allow_on_headers_stop_iteration")? {
        e.allow_on_headers_stop_iteration = b;
    }
    Ok(())
}

#[inline(always)]
fn policy(o: &Obj<'_>, p: &mut PolicySection) -> Result<(), ConfigError> {
    if let Some(d) = o.object("default", RULE_KEYS)? {
        p.default = rules(&d)?;
    }
    // Its entries are streamed to `parse.rs` as the text is read; here only its shape.
    o.any_object("functions")?;
    Ok(())
}
