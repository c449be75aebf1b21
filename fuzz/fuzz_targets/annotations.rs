//! Any annotation values against an operator's rules: narrowing never panics and never widens
//! (methods a subset, limits at most the operator's, mTLS never dropped, the mode untouched).
#![no_main]
use faas_mesh_filter::annotations::{narrow, KEYS, PREFIX};
use faas_mesh_filter::config::Config;
use libfuzzer_sys::fuzz_target;

const OPERATOR: &str = r#"{"policy":{"default":{"methods":["GET","POST"],"require_mtls":true,
    "principals":["spiffe://cluster.local/ns/openfaas/sa/*"],"max_body_bytes":1000,
    "max_inflight":8,"rate_limit":{"requests_per_second":10,"burst":20}}}}"#;

fuzz_target!(|data: &[u8]| {
    let Ok(config) = Config::parse(OPERATOR.as_bytes()) else {
        return;
    };
    let rules = config.policy.default;
    // Lines of `<key index><value>`; the key index picks one of the known keys, `mode` or junk.
    let text = String::from_utf8_lossy(data);
    let annotations: Vec<(String, String)> = text
        .split('\n')
        .filter_map(|line| {
            let mut chars = line.chars();
            let k = chars.next()? as usize;
            let key = KEYS.get(k % 9).copied().unwrap_or(if k % 9 == 7 { "mode" } else { "x" });
            Some((format!("{PREFIX}{key}"), chars.collect()))
        })
        .collect();
    let (out, outcomes) = narrow(&rules, &annotations);
    assert_eq!(outcomes.len(), annotations.len());
    assert_eq!(out.mode, rules.mode);
    assert_eq!(out.require_mtls, Some(true));
    let allowed = rules.methods.clone().unwrap_or_default();
    assert!(out.methods.unwrap_or_default().iter().all(|m| allowed.contains(m)));
    assert!(out.max_body_bytes <= rules.max_body_bytes && out.max_body_bytes.is_some());
    assert!(out.max_inflight <= rules.max_inflight && out.max_inflight.is_some());
    let (op, got) = (rules.rate_limit.unwrap(), out.rate_limit.unwrap());
    assert!(got.requests_per_second <= op.requests_per_second && got.burst <= op.burst);
    for p in out.principals.unwrap_or_default() {
        assert!(p.starts_with("spiffe://cluster.local/ns/openfaas/sa/"), "{p}");
    }
});
