//! Any request headers through the request core, under a plan with every feature on: deciding
//! never panics, and what the core decides holds the product's promises: a reply or writes, never
//! both; a rewritten path starts with '/' and has no dot segment; the call id is a safe token;
//! every written value is free of control characters; the start time is always written.
#![no_main]
use faas_mesh_filter::call_id::is_safe_token;
use faas_mesh_filter::config::Config;
use faas_mesh_filter::plan::{Plan, PodInfo};
use faas_mesh_filter::request::{decide, Incoming, Peer};
use faas_mesh_filter::rewrite::has_dot_segment;
use libfuzzer_sys::fuzz_target;

const CONFIG: &str = r#"{"policy":{"default":{"mode":"audit","methods":["GET","POST"],
    "principals":["spiffe://cluster.local/ns/openfaas/sa/*"],"max_body_bytes":1000}}}"#;

fuzz_target!(|data: &[u8]| {
    let Ok(config) = Config::parse(CONFIG.as_bytes()) else {
        return;
    };
    let pod = PodInfo {
        label_value: Some("env".into()),
        namespace: Some("openfaas-fn".into()),
        annotations: Vec::new(),
    };
    let Ok(plan) = Plan::compile(&config, &pod) else {
        return;
    };
    // Lines of `name:value` (the first byte chooses whether the peer presented mTLS).
    let (mtls, rest) = data.split_first().map_or((false, data), |(b, r)| (b & 1 == 1, r));
    let text = String::from_utf8_lossy(rest);
    let items: Vec<(&str, &str)> = text
        .split('\n')
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| if n.is_empty() { (":path", v) } else { (n, v) })
        .collect();
    let map = faas_mesh_filter::header_map::serialize(&items);
    let incoming = Incoming::scan(&map, &plan);
    let entropy = vec![0x42; incoming.entropy_needed(&plan).len()];
    let peer = Peer {
        mtls,
        principal: mtls.then_some(b"spiffe://cluster.local/ns/openfaas/sa/x".as_slice()),
    };
    let d = decide(&plan, &incoming, &entropy, 1_700_000_000_000_000_000, peer);
    assert!(is_safe_token(d.call_id.as_bytes()) || d.call_id.is_empty());
    if d.reply.is_some() {
        assert!(d.writes.is_empty());
        return;
    }
    assert!(d.writes.iter().any(|(n, _)| *n == "x-start-time"));
    for (name, value) in &d.writes {
        if let Some(value) = value {
            if *name == ":path" {
                assert_eq!(value.first(), Some(&b'/'));
                let path = value.split(|&c| c == b'?').next().unwrap_or_default();
                assert!(!has_dot_segment(path), "forwarded a dot segment");
            } else if *name != "x-call-id" {
                assert!(value.iter().all(|c| c.is_ascii_graphic() || *c == b' '));
            }
        }
    }
});
