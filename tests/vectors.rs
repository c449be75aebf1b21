//! The pure modules against the shared test vectors in `testdata/`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use faas_mesh_filter::call_id::is_safe_token;
use faas_mesh_filter::config::Config;
use faas_mesh_filter::plan::{Plan, PodInfo};
use faas_mesh_filter::policy::{PolicyMode, PolicyRules};
use faas_mesh_filter::rewrite::OtherFunction;
use faas_mesh_filter::rewrite::{NotFound, Rewriter, Route};
use faas_mesh_filter::trace::TraceOwner;
use serde_json::{json, Value};

fn vectors(name: &str) -> Value {
    let path = format!("{}/testdata/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn rewrite_vectors() {
    let v = vectors("rewrite.json");
    let defaults = &v["defaults"];
    let cases = v["cases"].as_array().expect("cases");
    assert!(cases.len() >= 40);
    for case in cases {
        let get = |key: &str| case.get(key).unwrap_or(&defaults[key]);
        let other = match get("other_function").as_str() {
            Some("pass") => OtherFunction::Pass,
            _ => OtherFunction::Reject,
        };
        let r = Rewriter::new(
            get("prefix").as_str().expect("prefix"),
            get("local").as_str(),
            get("namespace").as_str(),
            other,
        );
        let path = case["path"].as_str().expect("path");
        let got = match r.route(path.as_bytes()) {
            Route::Unprefixed => "unprefixed".to_string(),
            Route::Rewrite(p) => String::from_utf8(p).expect("utf8"),
            Route::NotFound(NotFound::MissingName) => "404 missing_name".into(),
            Route::NotFound(NotFound::InvalidName) => "404 invalid_name".into(),
            Route::NotFound(NotFound::OtherFunction) => "404 other_function".into(),
            Route::DotSegment => "400 dot_segment".into(),
        };
        assert_eq!(got, case["expect"].as_str().expect("expect"), "case {case}");
    }
}

/// A parsed configuration's value at a dotted key, for the `check` lists of the vectors.
fn field(c: &Config, path: &str) -> Value {
    let mode = |m: Option<PolicyMode>| {
        json!(m.map(|m| match m {
            PolicyMode::Enforce => "enforce",
            PolicyMode::Audit => "audit",
            PolicyMode::Off => "off",
        }))
    };
    let rules = |r: &PolicyRules, key: &str| match key {
        "mode" => mode(r.mode),
        "methods" => json!(r.methods),
        "max_inflight" => json!(r.max_inflight),
        "rate_limit.burst" => json!(r.rate_limit.map(|l| l.burst)),
        other => panic!("no accessor for policy rule {other}"),
    };
    match path {
        "function.name" => json!(c.function.name),
        "function.name_label" => json!(c.function.name_label),
        "rewrite.prefix" => json!(c.rewrite.prefix),
        "rewrite.other_function" => json!(match c.rewrite.other_function {
            OtherFunction::Reject => "reject",
            OtherFunction::Pass => "pass",
        }),
        "rewrite.gateway_principal" => json!(c.rewrite.gateway_principal),
        "headers.call_id" => json!(c.headers.call_id),
        "headers.trust_incoming_call_id" => json!(c.headers.trust_incoming_call_id),
        "tracing.b3" => json!(c.tracing.b3),
        "tracing.owner" => json!(match c.tracing.owner {
            TraceOwner::Envoy => "envoy",
            TraceOwner::Filter => "filter",
        }),
        "readiness.enabled" => json!(c.readiness.enabled),
        "readiness.path" => json!(c.readiness.path),
        "readiness.max_wait_ms" => json!(c.readiness.max_wait_ms),
        "readiness.retry_interval_ms" => json!(c.readiness.retry_interval_ms),
        "readiness.max_pending" => json!(c.readiness.max_pending),
        "readiness.max_pending_bytes" => json!(c.readiness.max_pending_bytes),
        p if p.starts_with("policy.default.") => {
            rules(&c.policy.default, &p["policy.default.".len()..])
        }
        p if p.starts_with("policy.functions.") => {
            let rest = &p["policy.functions.".len()..];
            let (name, key) = rest.split_once('.').expect("name.key");
            rules(&c.policy.functions[name], key)
        }
        other => panic!("no accessor for {other}"),
    }
}

fn raw(case: &Value) -> String {
    match case.get("raw") {
        Some(Value::String(s)) => s.clone(),
        _ => case["config"].to_string(),
    }
}

#[test]
fn configurations_that_load() {
    for case in vectors("config.json")["ok"].as_array().expect("ok") {
        let config = Config::parse(raw(case).as_bytes())
            .unwrap_or_else(|e| panic!("{}: refused: {e}", case["name"]));
        for (path, want) in case["check"].as_object().expect("check") {
            assert_eq!(&field(&config, path), want, "{}: {path}", case["name"]);
        }
    }
}

#[test]
fn configurations_refused_with_the_key_path() {
    for case in vectors("config.json")["error"].as_array().expect("error") {
        let got = Config::parse(raw(case).as_bytes())
            .map(|_| ())
            .map_err(|e| e.to_string());
        assert_eq!(
            got,
            Err(case["error"].as_str().expect("error").to_string()),
            "{case}"
        );
    }
}

#[test]
fn call_id_vectors() {
    for case in vectors("call_id.json")["cases"].as_array().expect("cases") {
        let value = case["value"].as_str().expect("value");
        assert_eq!(
            is_safe_token(value.as_bytes()),
            case["keep"] == true,
            "{case}"
        );
    }
}

#[test]
fn plan_resolves_the_local_function() {
    let config = |text: &str| Config::parse(text.as_bytes()).expect("parses");
    let pod = |label: Option<&str>| PodInfo {
        annotations: Vec::new(),
        label_value: label.map(str::to_string),
        namespace: Some("openfaas-fn".into()),
    };
    let plan = Plan::compile(&config("{}"), &pod(Some("figlet"))).expect("plan");
    assert_eq!(plan.function.as_deref(), Some("figlet"));
    assert_eq!(
        plan.rewriter.route(b"/function/figlet/x"),
        Route::Rewrite(b"/x".to_vec())
    );

    let plan = Plan::compile(
        &config(r#"{"function":{"name":"env"}}"#),
        &pod(Some("figlet")),
    )
    .expect("plan");
    assert_eq!(
        plan.function.as_deref(),
        Some("env"),
        "the explicit name wins"
    );

    let plan = Plan::compile(&config("{}"), &pod(None)).expect("plan");
    assert_eq!(plan.function, None);
    assert!(plan.notices.iter().any(|n| n.contains("faas_function")));

    let plan = Plan::compile(&config("{}"), &pod(Some("Not_A_Name"))).expect("plan");
    assert_eq!(
        plan.function, None,
        "a label that is no function name is not trusted"
    );

    let merged = Plan::compile(
        &config(r#"{"policy":{"default":{"mode":"audit"},"functions":{"figlet":{"mode":"off"},"env":{}}}}"#),
        &pod(Some("figlet")),
    )
    .expect("plan");
    assert_eq!(
        merged.policy.mode,
        PolicyMode::Off,
        "a function's entry overrides the default"
    );
    let default_only = Plan::compile(
        &config(r#"{"policy":{"default":{"mode":"audit"},"functions":{"env":{"mode":"off"}}}}"#),
        &pod(Some("figlet")),
    )
    .expect("plan");
    assert_eq!(
        default_only.policy.mode,
        PolicyMode::Audit,
        "no entry: the default"
    );
}

#[test]
fn the_local_functions_entry_overrides_the_default_rule_by_rule() {
    let config = Config::parse(
        br#"{"policy": {"default": {"methods": ["GET"], "max_body_bytes": 10},
                        "functions": {"env": {"methods": ["POST"]}, "figlet": {"mode": "off"}}}}"#,
    )
    .unwrap();
    let plan = |label: &str| {
        Plan::compile(
            &config,
            &PodInfo {
                label_value: Some(label.into()),
                annotations: Vec::new(),
                namespace: None,
            },
        )
        .unwrap()
    };
    let env = plan("env");
    assert!(env.policy.is_active());
    assert_eq!(
        env.policy.allow, "POST",
        "the entry's methods replace the default's"
    );
    assert_eq!(
        env.policy.max_body_bytes,
        Some(10),
        "the default's other rules stay"
    );
    let other = plan("shasum");
    assert_eq!(other.policy.allow, "GET", "no entry: the default");
    assert!(!plan("figlet").policy.is_active(), "mode off: no checks");
}

#[test]
fn trace_vectors() {
    use faas_mesh_filter::trace::{child, Source};
    let v = vectors("trace.json");
    let cases = v["cases"].as_array().expect("cases");
    assert!(cases.len() >= 20);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let values = trace_in(case);
        let incoming = trace_incoming(&values);
        let (context, source) = child(&incoming, [0xaa; 16], [0xbb; 8]);
        let want_source = match case["source"].as_str().unwrap() {
            "w3c" => Source::W3c,
            "b3_multi" => Source::B3Multi,
            "b3_single" => Source::B3Single,
            _ => Source::New,
        };
        assert_eq!(source, want_source, "{name}");
        let got: serde_json::Map<String, Value> = context
            .headers(true, true, incoming.has_b3_multi())
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.map_or(Value::Null, Value::String)))
            .collect();
        assert_eq!(Value::Object(got), case["out"], "{name}");
    }
}

/// The request headers of a trace vector, as the adapter reports them (a header sent twice is
/// present but unusable).
fn trace_in(case: &Value) -> Vec<(String, Vec<u8>)> {
    case["in"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            let value = match v {
                Value::Array(_) => Vec::new(),
                other => other.as_str().unwrap().as_bytes().to_vec(),
            };
            (k.clone(), value)
        })
        .collect()
}

/// What the request core scans from those headers.
fn trace_incoming(values: &[(String, Vec<u8>)]) -> faas_mesh_filter::trace::TraceHeaders<'_> {
    let get = |name: &str| {
        values
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    };
    faas_mesh_filter::trace::TraceHeaders {
        traceparent: get("traceparent"),
        b3_trace_id: get("x-b3-traceid"),
        b3_span_id: get("x-b3-spanid"),
        b3_parent_span_id: get("x-b3-parentspanid"),
        b3_sampled: get("x-b3-sampled"),
        b3_flags: get("x-b3-flags"),
        b3_single: get("b3"),
    }
}

#[test]
fn trace_vectors_with_envoys_tracer() {
    use faas_mesh_filter::trace::bridge;
    let v = vectors("trace-envoy.json");
    let cases = v["cases"].as_array().expect("cases");
    assert!(cases.len() >= 15);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let values = trace_in(case);
        let incoming = trace_incoming(&values);
        // As the request core applies them: a removal of a header that did not arrive is skipped.
        let got: serde_json::Map<String, Value> = bridge(&incoming, true, true)
            .into_iter()
            .filter(|(k, v)| v.is_some() || incoming.has(k))
            .map(|(k, v)| (k.to_string(), v.map_or(Value::Null, Value::String)))
            .collect();
        assert_eq!(Value::Object(got), case["out"], "{name}");
        // The invariant behind every case: what the filter writes names the trace Envoy
        // continues, or nothing.
        let envoy = case["envoy"].as_str().unwrap();
        for (header, value) in case["out"].as_object().unwrap() {
            if let Some(value) = value.as_str() {
                assert_eq!(envoy, "continues", "{name}: {header} written");
                let caller = incoming
                    .b3_single
                    .or(incoming.b3_trace_id)
                    .map(|v| {
                        String::from_utf8_lossy(v)
                            .split('-')
                            .next()
                            .unwrap()
                            .to_string()
                    })
                    .unwrap();
                assert!(value.contains(&caller), "{name}: {header} {value}");
            }
        }
        // Only the W3C format is touched with B3 off, and the other way round.
        let w3c_only: Vec<_> = bridge(&incoming, true, false)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert!(w3c_only.iter().all(|k| *k == "traceparent"), "{name}");
        let b3_only: Vec<_> = bridge(&incoming, false, true)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert!(!b3_only.contains(&"traceparent"), "{name}");
    }
}

#[test]
fn a_sidecar_keeps_only_its_own_functions_entry_but_checks_them_all() {
    use faas_mesh_filter::config::Keep;
    let text = r#"{"function":{"name":"env"},"policy":{"functions":{"figlet":{"max_inflight":2},"env":{"max_inflight":3}}}}"#;
    let config = Config::parse_with(text.as_bytes(), |f| {
        assert_eq!(
            f.name.as_deref(),
            Some("env"),
            "keep sees the function section"
        );
        Keep::Only(Some("env".into()))
    })
    .expect("parses");
    assert_eq!(config.policy.functions.len(), 1);
    assert_eq!(config.policy.functions["env"].max_inflight, Some(3));
    let none = Config::parse_with(text.as_bytes(), |_| Keep::Only(None)).expect("parses");
    assert!(none.policy.functions.is_empty());
    // Another function's bad entry is refused by every sidecar, with the same message.
    let bad = r#"{"policy":{"functions":{"env":{},"figlet":{"max_inflight":0}}}}"#;
    let all = Config::parse(bad.as_bytes()).expect_err("refused");
    let only = Config::parse_with(bad.as_bytes(), |_| Keep::Only(Some("env".into())))
        .expect_err("refused");
    assert_eq!(all, only);
    assert_eq!(
        all.to_string(),
        "policy.functions.figlet.max_inflight: expected a positive integer, got 0"
    );
}

#[test]
fn a_configuration_over_the_size_limit_is_refused_and_one_under_it_loads() {
    use faas_mesh_filter::config::{Keep, MAX_CONFIG_BYTES};
    // Entries of about 30 bytes, enough of them to pass the limit by one entry.
    let entry = |i: usize| format!(r#""fn-{i}":{{"max_inflight":{}}}"#, i % 100 + 1);
    let document = |n: usize| {
        let entries: Vec<String> = (0..n).map(entry).collect();
        format!(r#"{{"policy":{{"functions":{{{}}}}}}}"#, entries.join(","))
    };
    let mut n = MAX_CONFIG_BYTES / 32;
    while document(n).len() <= MAX_CONFIG_BYTES {
        n += 1000;
    }
    while document(n - 1).len() > MAX_CONFIG_BYTES {
        n -= 1;
    }
    let text = document(n);
    let e = Config::parse(text.as_bytes()).expect_err("too large");
    assert_eq!(e.path, "configuration");
    assert!(e.problem.contains(&MAX_CONFIG_BYTES.to_string()), "{e}");
    let text = document(n - 1);
    let config =
        Config::parse_with(text.as_bytes(), |_| Keep::Only(Some("fn-7".into()))).expect("loads");
    assert_eq!(config.policy.functions.len(), 1);
    assert_eq!(config.policy.functions["fn-7"].max_inflight, Some(8));
}

#[test]
fn request_vectors() {
    use faas_mesh_filter::request::{decide, Incoming, Peer};
    let v = vectors("request.json");
    let cases = v["cases"].as_array().expect("cases");
    assert!(cases.len() >= 15);
    for case in cases {
        let name = case["name"].as_str().expect("name");
        let config = Config::parse(case["config"].to_string().as_bytes()).expect(name);
        let pod = PodInfo {
            label_value: Some("env".into()),
            namespace: Some("openfaas-fn".into()),
            annotations: Vec::new(),
        };
        let plan = Plan::compile(&config, &pod).expect(name);
        let pairs: Vec<(String, String)> = case["headers"]
            .as_array()
            .expect("headers")
            .iter()
            .map(|h| (h[0].as_str().unwrap().into(), h[1].as_str().unwrap().into()))
            .collect();
        let refs: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let map = faas_mesh_filter::header_map::serialize(&refs);
        let incoming = Incoming::scan(&map, &plan);
        let entropy = vec![0x5a; incoming.entropy_needed(&plan).len()];
        let principal = case["peer"]["principal"].as_str().map(str::as_bytes);
        let peer = Peer {
            mtls: case["peer"]["mtls"].as_bool().unwrap_or(false),
            principal,
        };
        let d = decide(&plan, &incoming, &entropy, 1_700_000_000_000_000_000, peer);
        let expect = &case["expect"];
        assert_eq!(
            d.reply.as_ref().map(|r| u64::from(r.status)),
            expect["status"].as_u64(),
            "{name}: status"
        );
        if let Some(allow) = expect["allow"].as_str() {
            assert_eq!(
                d.reply.as_ref().and_then(|r| r.allow.as_deref()),
                Some(allow),
                "{name}"
            );
        }
        if let Some(id) = expect["call_id"].as_str() {
            assert_eq!(d.call_id, id, "{name}");
        }
        // The writes in the order the adapter makes them: :path, the call id, the rest.
        let mut writes: Vec<(&str, Option<Vec<u8>>)> = d.writes.clone();
        if d.write_call_id {
            let at = usize::from(writes.first().is_some_and(|(n, _)| *n == ":path"));
            writes.insert(at, ("x-call-id", Some(d.call_id.clone().into_bytes())));
        }
        let want = expect["writes"].as_array().expect("writes");
        assert_eq!(writes.len(), want.len(), "{name}: writes {writes:?}");
        for ((got_name, got_value), w) in writes.iter().zip(want) {
            assert_eq!(*got_name, w[0].as_str().unwrap(), "{name}");
            let got = got_value
                .as_ref()
                .map(|v| String::from_utf8_lossy(v).into_owned());
            match w[1].as_str() {
                None => assert_eq!(got, None, "{name}: {got_name}"),
                Some("<uuid>") => {
                    let id = got.expect("a call id");
                    assert_eq!(id, d.call_id, "{name}: the header carries the decided id");
                    assert_eq!(id.len(), 36, "{name}");
                }
                Some("<trace>") => assert!(got.is_some_and(|v| !v.is_empty()), "{name}"),
                Some(value) => assert_eq!(got.as_deref(), Some(value), "{name}: {got_name}"),
            }
        }
        let denied: Vec<&str> = d.denied.iter().map(|r| r.tag()).collect();
        let want_denied: Vec<&str> = expect["denied"]
            .as_array()
            .expect("denied")
            .iter()
            .map(|r| r.as_str().unwrap())
            .collect();
        assert_eq!(denied, want_denied, "{name}");
    }
}

#[test]
fn gate_probe_vectors() {
    use faas_mesh_filter::gate::probe::{outcome, status, Asked, ProbeOutcome};
    let v = vectors("gate.json");
    let defaults = &v["probe"]["defaults"];
    let cases = v["probe"]["cases"].as_array().expect("cases");
    assert!(cases.len() >= 20);
    let mut seen = std::collections::BTreeSet::new();
    for case in cases {
        let why = case["why"].as_str().expect("why");
        let get = |key: &str| case.get(key).unwrap_or(&defaults[key]);
        let asked = Asked {
            path: get("path").as_str().expect("path"),
            fell_back: get("fell_back").as_bool().expect("fell_back"),
            verify: get("verify").as_bool().expect("verify"),
        };
        let now = get("now_ms").as_u64().expect("now_ms");
        let retry = get("retry_interval_ms")
            .as_u64()
            .expect("retry_interval_ms");
        let read = std::cell::Cell::new(false);
        let held_since = || {
            read.set(true);
            get("held_since_ms").as_u64()
        };
        let answer = status(case["status"].as_str().map(str::as_bytes));
        let got = match outcome(answer, asked, now, retry, held_since) {
            ProbeOutcome::FallBack(path) => json!({"outcome": "fall_back", "path": path}),
            ProbeOutcome::Ready { lease_ms } => json!({"outcome": "ready", "lease_ms": lease_ms}),
            ProbeOutcome::Failed { rearm, lease_ms } => {
                json!({"outcome": "failed", "rearm": rearm, "lease_ms": lease_ms})
            }
        };
        assert_eq!(got, case["expect"], "{why}");
        // The held record (a shared-data read) is read only to time the next probe after a
        // failure.
        assert_eq!(read.get(), got["outcome"] == "failed", "{why}");
        seen.insert(got["outcome"].as_str().unwrap().to_string());
        if got["outcome"] == "failed" {
            seen.insert(format!("rearm {}", got["rearm"]));
        }
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        ["failed", "fall_back", "ready", "rearm false", "rearm true"],
        "every outcome has a vector"
    );
}

#[test]
fn gate_response_vectors() {
    use faas_mesh_filter::gate::response::{after_response, AfterResponse};
    let v = vectors("gate.json");
    let cases = v["response"]["cases"].as_array().expect("cases");
    let mut seen = std::collections::BTreeSet::new();
    for case in cases {
        let why = case["why"].as_str().expect("why");
        let flags = case["flags"].as_u64().expect("flags");
        let read = std::cell::Cell::new(false);
        let status = case["status"].as_str().expect("status").as_bytes();
        let verdict = after_response(status, || {
            read.set(true);
            flags
        });
        let got = match verdict {
            AfterResponse::Nothing => "nothing",
            AfterResponse::UpstreamGone { flags: f } => {
                assert_eq!(f, flags, "{why}");
                "upstream_gone"
            }
            AfterResponse::Check { flags: f } => {
                assert_eq!(f, if read.get() { flags } else { 0 }, "{why}");
                "check"
            }
        };
        assert_eq!(got, case["expect"].as_str().expect("expect"), "{why}");
        assert_eq!(read.get(), case["flags_read"] == true, "{why}: flags read");
        seen.insert(got);
    }
    assert_eq!(seen.len(), 3, "every verdict has a vector");
}
