//! One policy entry (`policy.default`, or `policy.functions.<name>`) read into its rules: each
//! rule optional, so an entry overrides the default key by key.

use super::error::{quote, ConfigError};
use super::keys::*;
use super::obj::Obj;
use crate::policy::{PolicyMode, PolicyRules, RateLimit};

/// The rules of one policy entry.
pub fn rules(o: &Obj<'_>) -> Result<PolicyRules, ConfigError> {
    Ok(PolicyRules {
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
        methods: methods(o)?,
        principals: principals(o)?,
        rate_limit: rate_limit(o)?,
    })
}

/// `methods`: at least one, each one the gateway proxies; repeats are dropped.
fn methods(o: &Obj<'_>) -> Result<Option<Vec<String>>, ConfigError> {
    let Some(list) = o.strings("methods")? else {
        return Ok(None);
    };
    if list.is_empty() {
        return Err(ConfigError::new(
            o.path("methods"),
            "expected at least one method",
        ));
    }
    let mut methods = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        if !PROXIED_METHODS.contains(m) {
            return Err(ConfigError::new(
                o.item_path("methods", i),
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
    Ok(Some(methods))
}

/// `principals`: SPIFFE IDs, each optionally ending in one `*`.
fn principals(o: &Obj<'_>) -> Result<Option<Vec<String>>, ConfigError> {
    let Some(list) = o.strings("principals")? else {
        return Ok(None);
    };
    for (i, p) in list.iter().enumerate() {
        let star = p.find('*');
        let visible = p.bytes().all(|c| c.is_ascii_graphic());
        if p.is_empty() || !visible || star.is_some_and(|at| at + 1 != p.len()) {
            return Err(ConfigError::new(
                o.item_path("principals", i),
                format!(
                    "expected a SPIFFE ID, optionally ending in '*', got {}",
                    quote(p)
                ),
            ));
        }
    }
    Ok(Some(list.into_iter().map(str::to_string).collect()))
}

/// `rate_limit`: a rate (required) and a burst (by default one second of traffic).
fn rate_limit(o: &Obj<'_>) -> Result<Option<RateLimit>, ConfigError> {
    let Some(rl) = o.object("rate_limit", RATE_LIMIT_KEYS)? else {
        return Ok(None);
    };
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
    Ok(Some(RateLimit {
        requests_per_second: rps,
        burst,
    }))
}
