//! Policy a function declares for itself, in its pod's annotations (its `stack.yml`), narrowed
//! into what the operator's configuration allows for it.
//!
//! An annotation may only narrow: fewer methods, smaller limits, a subset of the callers, mTLS
//! required. One that would widen anything, that is malformed, that names the mode (the operator's
//! alone) or that is unknown under the prefix is refused: the operator's rule stands, and the
//! refusal is reported (the adapter logs it and counts it). Pure: no host calls.

use crate::config::{MAX_BODY_BYTES, MAX_BURST, MAX_INFLIGHT, MAX_RATE, PROXIED_METHODS};
use crate::policy::{PolicyRules, RateLimit};

/// The prefix of the annotations the filter reads, in the OpenFaaS style (`com.openfaas.*`).
pub const PREFIX: &str = "com.openfaas.mesh.";

/// The annotations the filter understands (after [`PREFIX`]).
pub const KEYS: [&str; 7] = [
    "methods",
    "principals",
    "require_mtls",
    "max_body_bytes",
    "max_inflight",
    "rate_limit.requests_per_second",
    "rate_limit.burst",
];

/// OpenFaaS's own annotation for a function's readiness endpoint (`stack.yml`; the Pro gateway
/// probes it). When present and valid, the gate probes it instead of `readiness.path`.
pub const READY_PATH: &str = "com.openfaas.ready.http.path";
/// The longest readiness path taken from an annotation (a probe with a longer path could be
/// refused by the function's server, and the gate would never open).
pub const READY_PATH_MAX: usize = 1024;
/// Why the readiness-path annotation is refused.
pub const BAD_READY_PATH: &str = "expected a path starting with '/', of visible ASCII \
     characters, at most 1024 bytes; the gate probes readiness.path";

/// The readiness path a pod's annotations declare: `None` without [`READY_PATH`], else the
/// path (trimmed) or why it is refused.
pub fn ready_path(annotations: &[(String, String)]) -> Option<Result<&str, &'static str>> {
    let (_, value) = annotations.iter().find(|(name, _)| name == READY_PATH)?;
    let value = value.trim();
    Some(
        if value.len() <= READY_PATH_MAX && crate::config::is_request_path(value) {
            Ok(value)
        } else {
            Err(BAD_READY_PATH)
        },
    )
}

/// Why an annotation is refused: the texts are fixed (the log line adds the name and value), so
/// the module carries no formatting for them.
const NARROW_ONLY: &str = "it would widen the operator's rule";
pub const UNKNOWN: &str = "not one of the filter's annotations";

/// What became of one annotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The whole annotation name (`com.openfaas.mesh.max_inflight`).
    pub annotation: String,
    /// `None`: applied. `Some(why)`: refused, the operator's rule stands.
    pub refused: Option<&'static str>,
}

/// The operator's `rules` for the local function narrowed by the pod's annotations (name,
/// value); annotations without [`PREFIX`] are not looked at. Returns the rules to enforce and an
/// outcome per annotation with the prefix, in the order given.
#[cold]
#[inline(never)]
pub fn narrow(
    rules: &PolicyRules,
    annotations: &[(String, String)],
) -> (PolicyRules, Vec<Outcome>) {
    let mut out = rules.clone();
    let mut outcomes = Vec::new();
    let find = |key: &str| {
        annotations
            .iter()
            .find(|(name, _)| name.strip_prefix(PREFIX) == Some(key))
            .map(|(_, value)| value.trim())
    };
    for (name, value) in annotations {
        let Some(key) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let value = value.trim();
        let result = match key {
            "methods" => methods(rules, value).map(|m| out.methods = Some(m)),
            "principals" => principals(rules, value).map(|p| out.principals = Some(p)),
            "require_mtls" => require_mtls(rules, value).map(|b| out.require_mtls = Some(b)),
            "max_body_bytes" => limit(rules.max_body_bytes, value, MAX_BODY_BYTES)
                .map(|n| out.max_body_bytes = Some(n)),
            "max_inflight" => {
                limit(rules.max_inflight, value, MAX_INFLIGHT).map(|n| out.max_inflight = Some(n))
            }
            "rate_limit.requests_per_second" | "rate_limit.burst" => {
                // The two go together: checked (and reported) under each name present.
                rate_limit(
                    rules.rate_limit,
                    find("rate_limit.requests_per_second"),
                    find("rate_limit.burst"),
                )
                .map(|r| out.rate_limit = Some(r))
            }
            "mode" => Err("the mode is the operator's alone"),
            _ => Err(UNKNOWN),
        };
        outcomes.push(Outcome {
            annotation: name.clone(),
            refused: result.err(),
        });
    }
    // A refused half of the rate limit refuses the other half too.
    let rate_refused = outcomes.iter().any(|o| {
        o.refused.is_some()
            && o.annotation
                .strip_prefix(PREFIX)
                .is_some_and(|k| k.starts_with("rate_limit."))
    });
    if rate_refused {
        out.rate_limit = rules.rate_limit;
    }
    (out, outcomes)
}

fn list(value: &str) -> Vec<&str> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

fn methods(rules: &PolicyRules, value: &str) -> Result<Vec<String>, &'static str> {
    let asked = list(value);
    if asked.is_empty() {
        return Err("expected a comma-separated list of methods");
    }
    let mut methods: Vec<String> = Vec::new();
    for m in asked {
        if !PROXIED_METHODS.contains(&m) {
            return Err("expected methods of GET, POST, PUT, PATCH, DELETE, OPTIONS, HEAD");
        }
        if rules
            .methods
            .as_ref()
            .is_some_and(|allowed| !allowed.iter().any(|a| a == m))
        {
            return Err(NARROW_ONLY);
        }
        if !methods.iter().any(|known| known == m) {
            methods.push(m.to_string());
        }
    }
    Ok(methods)
}

/// Whether caller pattern `asked` (exact, or a prefix ending in `*`) admits only callers that
/// `allowed` admits.
fn within(asked: &str, allowed: &str) -> bool {
    match (asked.strip_suffix('*'), allowed.strip_suffix('*')) {
        (_, None) => asked == allowed,
        (Some(asked_prefix), Some(prefix)) => asked_prefix.starts_with(prefix),
        (None, Some(prefix)) => asked.starts_with(prefix),
    }
}

fn principals(rules: &PolicyRules, value: &str) -> Result<Vec<String>, &'static str> {
    let asked = list(value);
    if asked.is_empty() {
        return Err("expected a comma-separated list of SPIFFE IDs");
    }
    for p in &asked {
        let star = p.find('*');
        if !p.bytes().all(|c| c.is_ascii_graphic()) || star.is_some_and(|at| at + 1 != p.len()) {
            return Err("expected SPIFFE IDs, each optionally ending in '*'");
        }
        if rules
            .principals
            .as_ref()
            .is_some_and(|allowed| !allowed.iter().any(|a| within(p, a)))
        {
            return Err(NARROW_ONLY);
        }
    }
    Ok(asked.into_iter().map(str::to_string).collect())
}

fn require_mtls(rules: &PolicyRules, value: &str) -> Result<bool, &'static str> {
    match value {
        "true" => Ok(true),
        "false" if rules.require_mtls == Some(true) => Err(NARROW_ONLY),
        "false" => Ok(false),
        _ => Err("expected true or false"),
    }
}

fn integer(value: &str, range: (u64, u64)) -> Result<u64, &'static str> {
    value
        .parse::<u64>()
        .ok()
        .filter(|n| (range.0..=range.1).contains(n))
        .ok_or("expected a whole number in the range the configuration allows for this rule")
}

fn limit(operator: Option<u64>, value: &str, range: (u64, u64)) -> Result<u64, &'static str> {
    let n = integer(value, range)?;
    match operator {
        Some(max) if n > max => Err(NARROW_ONLY),
        _ => Ok(n),
    }
}

/// A decimal number (`100`, `2.5`, at most three decimals) in thousandths, without a float
/// parser.
fn thousandths(value: &str) -> Option<u64> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    let (whole, fraction) = match value.split_once('.') {
        Some((whole, fraction)) if digits(fraction) && fraction.len() <= 3 => (whole, fraction),
        Some(_) => return None,
        None => (value, ""),
    };
    if !digits(whole) {
        return None;
    }
    let mut milli: u64 = whole.parse::<u64>().ok()?.checked_mul(1000)?;
    let mut scale = 100;
    for c in fraction.bytes() {
        milli = milli.checked_add(u64::from(c - b'0') * scale)?;
        scale /= 10;
    }
    Some(milli)
}

fn rate_limit(
    operator: Option<RateLimit>,
    rps: Option<&str>,
    burst: Option<&str>,
) -> Result<RateLimit, &'static str> {
    let milli = match (rps, operator) {
        (Some(v), _) => thousandths(v)
            .filter(|m| (1..=MAX_RATE * 1000).contains(m))
            .ok_or("requests_per_second: expected a number above 0 (at most three decimals)")?,
        // Only a smaller burst: the operator's rate stays.
        (None, Some(op)) => (op.requests_per_second * 1000.0).ceil() as u64,
        (None, None) => return Err("rate_limit.requests_per_second is required"),
    };
    let requests_per_second = milli as f64 / 1000.0;
    let burst = match burst {
        Some(b) => integer(b, MAX_BURST)?,
        None => milli.div_ceil(1000).max(1),
    };
    match operator {
        Some(op) if requests_per_second > op.requests_per_second || burst > op.burst => {
            Err(NARROW_ONLY)
        }
        _ => Ok(RateLimit {
            requests_per_second,
            burst,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readiness_path_annotation_is_a_path_or_refused() {
        let one = |v: &str| vec![(READY_PATH.to_string(), v.to_string())];
        assert_eq!(ready_path(&[]), None);
        assert_eq!(ready_path(&one("/ready")), Some(Ok("/ready")));
        assert_eq!(ready_path(&one(" /_/ready ")), Some(Ok("/_/ready")));
        let long = format!("/{}", "a".repeat(READY_PATH_MAX));
        for bad in ["ready", "", "/a b", "/a\r\nx: y", "http://x/ready", &long] {
            assert_eq!(ready_path(&one(bad)), Some(Err(BAD_READY_PATH)), "{bad:?}");
        }
        // Only that exact name.
        let other = vec![(
            "com.openfaas.ready.http.path2".to_string(),
            "/x".to_string(),
        )];
        assert_eq!(ready_path(&other), None);
    }
    use crate::config::Config;

    fn operator(json: &str) -> PolicyRules {
        let config = Config::parse(json.as_bytes()).unwrap();
        config.policy.default
    }

    fn ann(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (format!("{PREFIX}{k}"), v.to_string()))
            .collect()
    }

    fn refused(outcomes: &[Outcome]) -> Vec<&str> {
        outcomes
            .iter()
            .filter(|o| o.refused.is_some())
            .map(|o| o.annotation.strip_prefix(PREFIX).unwrap())
            .collect()
    }

    const OPERATOR: &str = r#"{"policy":{"default":{"methods":["GET","POST"],
        "principals":["spiffe://cluster.local/ns/openfaas/sa/*"],"max_body_bytes":1000,
        "max_inflight":8,"rate_limit":{"requests_per_second":10,"burst":20}}}}"#;

    #[test]
    fn narrowing_annotations_apply() {
        let rules = operator(OPERATOR);
        let (out, outcomes) = narrow(
            &rules,
            &ann(&[
                ("methods", "POST"),
                (
                    "principals",
                    "spiffe://cluster.local/ns/openfaas/sa/openfaas-controller",
                ),
                ("require_mtls", "true"),
                ("max_body_bytes", "100"),
                ("max_inflight", "2"),
                ("rate_limit.requests_per_second", "2.5"),
                ("rate_limit.burst", "3"),
            ]),
        );
        assert!(refused(&outcomes).is_empty(), "{outcomes:?}");
        assert_eq!(out.methods, Some(vec!["POST".to_string()]));
        assert_eq!(out.max_body_bytes, Some(100));
        assert_eq!(out.max_inflight, Some(2));
        assert_eq!(out.require_mtls, Some(true));
        assert_eq!(
            out.rate_limit,
            Some(RateLimit {
                requests_per_second: 2.5,
                burst: 3
            })
        );
        assert_eq!(out.mode, rules.mode);
    }

    #[test]
    fn every_way_to_widen_is_refused_and_the_operators_rule_stands() {
        let rules = operator(OPERATOR);
        for (key, value) in [
            ("methods", "GET,DELETE"),
            ("methods", "TRACE"),
            ("methods", ""),
            ("principals", "spiffe://cluster.local/ns/other/sa/x"),
            ("principals", "spiffe://cluster.local/ns/*"),
            ("principals", "*"),
            ("principals", "spiffe://cluster.local/ns/openfaas/sa/x*y"),
            ("max_body_bytes", "1001"),
            ("max_body_bytes", "-1"),
            ("max_body_bytes", "0"),
            ("max_body_bytes", "1e3"),
            ("max_inflight", "9"),
            ("max_inflight", "99999999999999999999"),
            ("rate_limit.requests_per_second", "10.001"),
            ("rate_limit.requests_per_second", "NaN"),
            ("rate_limit.requests_per_second", "0"),
            ("rate_limit.burst", "21"),
            ("mode", "off"),
            ("mode", "audit"),
            ("maxinflight", "1"),
            ("require_mtls", "yes"),
        ] {
            let (out, outcomes) = narrow(&rules, &ann(&[(key, value)]));
            assert_eq!(refused(&outcomes), [key], "{key}={value}: {outcomes:?}");
            assert_eq!(out, rules, "{key}={value} changed the rules");
        }
    }

    #[test]
    fn without_an_operator_rule_any_valid_limit_narrows() {
        let rules = operator(r#"{"policy":{"default":{"mode":"audit"}}}"#);
        let (out, outcomes) = narrow(
            &rules,
            &ann(&[
                ("methods", "GET"),
                ("max_inflight", "3"),
                ("require_mtls", "false"),
            ]),
        );
        assert!(refused(&outcomes).is_empty());
        assert_eq!(out.methods, Some(vec!["GET".to_string()]));
        assert_eq!(out.max_inflight, Some(3));
        assert_eq!(out.mode, rules.mode);
    }

    #[test]
    fn a_required_mtls_cannot_be_dropped() {
        let rules = operator(r#"{"policy":{"default":{"require_mtls":true}}}"#);
        let (out, outcomes) = narrow(&rules, &ann(&[("require_mtls", "false")]));
        assert_eq!(refused(&outcomes), ["require_mtls"]);
        assert_eq!(out.require_mtls, Some(true));
    }

    #[test]
    fn a_widening_half_of_the_rate_limit_refuses_both_halves() {
        let rules = operator(OPERATOR);
        let (out, outcomes) = narrow(
            &rules,
            &ann(&[
                ("rate_limit.requests_per_second", "5"),
                ("rate_limit.burst", "50"),
            ]),
        );
        assert_eq!(
            refused(&outcomes),
            ["rate_limit.requests_per_second", "rate_limit.burst"]
        );
        assert_eq!(out.rate_limit, rules.rate_limit);
        // A burst alone narrows under the operator's rate.
        let (out, outcomes) = narrow(&rules, &ann(&[("rate_limit.burst", "5")]));
        assert!(refused(&outcomes).is_empty(), "{outcomes:?}");
        assert_eq!(
            out.rate_limit,
            Some(RateLimit {
                requests_per_second: 10.0,
                burst: 5
            })
        );
    }

    #[test]
    fn other_annotations_are_not_looked_at() {
        let rules = operator(OPERATOR);
        let annotations = vec![
            ("prometheus.io/scrape".to_string(), "true".to_string()),
            (
                "com.openfaas.health.http.path".to_string(),
                "/ready".to_string(),
            ),
        ];
        let (out, outcomes) = narrow(&rules, &annotations);
        assert!(outcomes.is_empty());
        assert_eq!(out, rules);
    }

    #[test]
    fn decimals_are_read_without_a_float_parser() {
        assert_eq!(thousandths("100"), Some(100_000));
        assert_eq!(thousandths("2.5"), Some(2_500));
        assert_eq!(thousandths("0.001"), Some(1));
        for bad in ["", ".5", "1.", "1.2345", "-1", "1e3", "NaN", "inf", "1,5"] {
            assert_eq!(thousandths(bad), None, "{bad}");
        }
    }
}
