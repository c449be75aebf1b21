//! Trace context, stats and the dashboard through a real Envoy.

use faas_mesh_integration::envoy::{Envoy, EnvoyOptions};
use faas_mesh_integration::filter_build::FilterBuild;
use faas_mesh_integration::http::{self, Request, Response};
use faas_mesh_integration::stand_in::StandInFunction;
use serde_json::Value;
use std::collections::BTreeSet;

async fn pod(config: &str) -> (StandInFunction, Envoy) {
    let function = StandInFunction::start().await.expect("function");
    let envoy = Envoy::start(EnvoyOptions::for_function(function.port()).config(config))
        .await
        .expect("Envoy");
    (function, envoy)
}

/// The one value of a header the function received.
fn received(response: &Response, name: &str) -> Option<String> {
    assert_eq!(response.status, 200, "{}", response.text());
    let echo = response.json();
    let values = echo["headers"][name].as_array()?.clone();
    assert_eq!(values.len(), 1, "{name}: {values:?}");
    values[0].as_str().map(str::to_string)
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `00-<trace>-<span>-<flags>` split, checked for shape.
fn traceparent(value: &str) -> (String, String, String) {
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "{value}");
    assert_eq!(parts[0], "00");
    assert!(
        is_hex(parts[1], 32) && is_hex(parts[2], 16) && is_hex(parts[3], 2),
        "{value}"
    );
    (parts[1].into(), parts[2].into(), parts[3].into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_function_gets_a_child_span_in_both_formats() {
    // No tracer in this sidecar's connection manager: the filter owns the trace.
    let (_f, envoy) = pod(r#"{"tracing": {"owner": "filter"}}"#).await;
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";

    // W3C from the caller, with vendor state.
    let response = envoy
        .send(
            &Request::get("/function/env/")
                .header(
                    "traceparent",
                    &format!("00-{caller_trace}-{caller_span}-01"),
                )
                .header("tracestate", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"),
        )
        .await
        .expect("send");
    let (trace, span, flags) = traceparent(&received(&response, "traceparent").expect("tp"));
    assert_eq!((trace.as_str(), flags.as_str()), (caller_trace, "01"));
    assert_ne!(span, caller_span, "this hop is a new span");
    assert_eq!(
        received(&response, "b3").as_deref(),
        Some(format!("{caller_trace}-{span}-1-{caller_span}").as_str())
    );
    assert_eq!(
        received(&response, "tracestate").as_deref(),
        Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
    );

    // B3 multi-header, as an Istio sidecar forwards it, 64-bit trace id, not sampled.
    let response = envoy
        .send(
            &Request::get("/function/env/")
                .header("x-b3-traceid", "a3ce929d0e0e4736")
                .header("x-b3-spanid", "e457b5a2e4d86bd1")
                .header("x-b3-parentspanid", "05e3ac9a4f6e3b90")
                .header("x-b3-sampled", "0"),
        )
        .await
        .expect("send");
    let (trace, span, flags) = traceparent(&received(&response, "traceparent").expect("tp"));
    assert_eq!(
        trace, "0000000000000000a3ce929d0e0e4736",
        "64-bit ids padded for W3C"
    );
    assert_eq!(flags, "00");
    assert_eq!(
        received(&response, "x-b3-traceid").as_deref(),
        Some("a3ce929d0e0e4736")
    );
    assert_eq!(
        received(&response, "x-b3-spanid").as_deref(),
        Some(span.as_str())
    );
    assert_eq!(
        received(&response, "x-b3-parentspanid").as_deref(),
        Some("e457b5a2e4d86bd1")
    );
    assert_eq!(received(&response, "x-b3-sampled").as_deref(), Some("0"));

    // Nothing from the caller: a new trace, the same in both formats; two calls, two traces.
    let mut traces = BTreeSet::new();
    for _ in 0..2 {
        let response = envoy.get("/function/env/").await;
        let (trace, span, flags) = traceparent(&received(&response, "traceparent").expect("tp"));
        assert_eq!(flags, "00");
        assert_eq!(received(&response, "b3"), Some(format!("{trace}-{span}")));
        traces.insert(trace);
    }
    assert_eq!(traces.len(), 2);

    // Malformed (here uppercase hex) is replaced, not repaired.
    let response = envoy
        .send(&Request::get("/function/env/").header(
            "traceparent",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
        ))
        .await
        .expect("send");
    let (trace, _, _) = traceparent(&received(&response, "traceparent").expect("tp"));
    assert_ne!(trace, caller_trace, "a malformed id was kept (lowercased)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracing_formats_can_be_turned_off() {
    let (_f, envoy) = pod(r#"{"tracing": {"w3c": false, "owner": "filter"}}"#).await;
    let response = envoy
        .send(&Request::get("/function/env/").header("traceparent", "garbage"))
        .await
        .expect("send");
    assert_eq!(
        received(&response, "traceparent").as_deref(),
        Some("garbage"),
        "w3c is off: untouched"
    );
    assert!(received(&response, "b3").is_some());
    drop(envoy);

    let (_f, envoy) = pod(r#"{"tracing": {"w3c": false, "b3": false, "owner": "filter"}}"#).await;
    let response = envoy.get("/function/env/").await;
    assert!(received(&response, "traceparent").is_none());
    assert!(received(&response, "b3").is_none());
}

/// The request mix of the stats tests: 3 rewritten GETs, 1 unprefixed GET, 1 other function,
/// 2 DELETEs the policy denies.
async fn request_mix(envoy: &Envoy) -> Vec<String> {
    for i in 0..3 {
        assert_eq!(envoy.get(&format!("/function/env/{i}")).await.status, 200);
    }
    assert_eq!(envoy.get("/plain").await.status, 200);
    assert_eq!(envoy.get("/function/other/").await.status, 404);
    let mut denied = Vec::new();
    for _ in 0..2 {
        let response = envoy
            .send(&Request::new("DELETE", "/function/env/x"))
            .await
            .expect("send");
        assert_eq!(response.status, 405);
        denied.push(response.header("x-call-id").expect("call id").to_string());
    }
    denied
}

/// `name{labels} value` lines of the Prometheus output, as (series, value).
async fn prometheus(envoy: &Envoy) -> Vec<(String, f64)> {
    let text = http::send(envoy.admin_addr(), &Request::get("/stats/prometheus"))
        .await
        .expect("prometheus")
        .text();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_shows_labelled_counters_after_a_request_mix() {
    let (_f, envoy) = pod(r#"{"policy": {"default": {"methods": ["GET"]}}}"#).await;
    let denied = request_mix(&envoy).await;
    let series = prometheus(&envoy).await;
    let value = |s: &str| {
        series
            .iter()
            .find(|(name, _)| name == s)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("no series {s}"))
    };
    assert_eq!(value(r#"faas_mesh_filter_requests{function="env"}"#), 7.0);
    assert_eq!(value(r#"faas_mesh_filter_rewritten{function="env"}"#), 5.0);
    assert_eq!(value(r#"faas_mesh_filter_not_found{function="env"}"#), 1.0);
    assert_eq!(
        value(r#"faas_mesh_filter_policy_allowed{function="env"}"#),
        4.0
    );
    assert_eq!(
        value(r#"faas_mesh_filter_policy_denied{function="env",reason="method"}"#),
        2.0
    );
    assert_eq!(
        value(r#"faas_mesh_filter_readiness_ready{function="env"}"#),
        1.0
    );
    assert!(value(r#"faas_mesh_filter_readiness_probes_sent{function="env"}"#) >= 1.0);
    assert!(value(r#"faas_mesh_filter_config_loaded{}"#) >= 1.0);

    // One warning per denial, naming the function and the call id; nothing above debug for
    // the requests that passed. The filter's lines appear under its build's log component
    // (`wasm`, or `dynamic_modules` for the native build).
    let component = FilterBuild::current().log_component();
    let warning = format!("[warning][{component}]");
    let log = envoy
        .log_when(|log| log.matches(&warning).count() >= 2)
        .await;
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains(&warning)).collect();
    assert_eq!(warnings.len(), 2, "{warnings:#?}");
    for id in &denied {
        assert!(
            warnings
                .iter()
                .any(|l| l.contains(&format!("call {id} for function \"env\": denied (method)"))),
            "no warning for {id}: {warnings:#?}"
        );
    }
    let per_request_info = log
        .lines()
        .filter(|l| l.contains(&format!("[info][{component}]")) && l.contains("call "))
        .count();
    assert_eq!(per_request_info, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_queries_only_metrics_envoy_exports() {
    let path = faas_mesh_integration::repo_root().join("dashboards/faas-mesh-filter.json");
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("dashboard")).expect("JSON");
    let mut queried = BTreeSet::new();
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    for expr in &exprs {
        for (i, _) in expr.match_indices("faas_mesh_filter_") {
            let name: String = expr[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            queried.insert(name);
        }
    }
    assert!(queried.len() >= 10, "{queried:?}");

    // Everything the dashboard shows, exercised: policy with and without audit, the gate.
    let (_f, envoy) = pod(
        r#"{"policy": {"default": {"methods": ["GET"], "max_inflight": 10},
                        "functions": {"env": {"mode": "audit"}}}}"#,
    )
    .await;
    for target in ["/function/env/a", "/function/other/"] {
        envoy.get(target).await;
    }
    let response = envoy
        .send(&Request::new("DELETE", "/function/env/x"))
        .await
        .expect("send");
    assert_eq!(response.status, 200, "audit mode lets it through");
    let exported: BTreeSet<String> = prometheus(&envoy)
        .await
        .into_iter()
        .map(|(series, _)| series.split('{').next().unwrap_or_default().to_string())
        .collect();
    let missing: Vec<&String> = queried.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics Envoy does not export: {missing:?}"
    );
}

fn collect_exprs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr" | "query", Value::String(s)) => out.push(s.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}
