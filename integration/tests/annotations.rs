//! Policy a function declares in its own annotations (its `stack.yml`), which Istio puts in the
//! sidecar's node metadata: it may only narrow what the operator's configuration allows.

use faas_mesh_integration::envoy::{Envoy, EnvoyOptions};
use faas_mesh_integration::http::Request;
use faas_mesh_integration::stand_in::StandInFunction;
use std::time::Duration;

const OPERATOR: &str =
    r#"{"policy": {"default": {"methods": ["GET", "POST"], "max_body_bytes": 1000}}}"#;

async fn pod(annotations: &[(&str, &str)]) -> (StandInFunction, Envoy) {
    let function = StandInFunction::start().await.expect("function");
    let envoy = Envoy::start_accepted(
        EnvoyOptions::for_function(function.port())
            .config(OPERATOR)
            .annotations(annotations),
    )
    .await;
    (function, envoy)
}

async fn status(envoy: &Envoy, method: &str, body_len: usize) -> u16 {
    let mut request = Request::new(method, "/function/env/x");
    if body_len > 0 {
        request = request.body(vec![b'x'; body_len]);
    }
    envoy.send(&request).await.expect("response").status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn narrowing_annotations_are_enforced() {
    let (function, envoy) = pod(&[
        ("com.openfaas.mesh.methods", "POST"),
        ("com.openfaas.mesh.max_body_bytes", "100"),
        // Not the filter's: left alone.
        ("com.openfaas.scale.min", "1"),
    ])
    .await;
    assert_eq!(status(&envoy, "GET", 0).await, 405, "GET narrowed away");
    assert_eq!(status(&envoy, "POST", 100).await, 200);
    assert_eq!(
        status(&envoy, "POST", 101).await,
        413,
        "limit narrowed to 100"
    );
    assert_eq!(function.calls(), 1);
    let applied = envoy
        .wait_for_filter_stat("env", "annotations.applied", Duration::from_secs(10), |v| {
            v >= 2
        })
        .await;
    assert_eq!(applied, 2);
    let log = envoy.log();
    assert!(
        log.contains("annotation com.openfaas.mesh.methods applied"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn widening_malformed_and_mode_annotations_never_loosen_anything() {
    let (function, envoy) = pod(&[
        ("com.openfaas.mesh.methods", "GET,POST,DELETE"),
        ("com.openfaas.mesh.max_body_bytes", "5000"),
        ("com.openfaas.mesh.mode", "off"),
        ("com.openfaas.mesh.max_inflight", "lots"),
        ("com.openfaas.mesh.maxinflight", "1"),
    ])
    .await;
    // The operator's rules stand, every one of them.
    assert_eq!(status(&envoy, "DELETE", 0).await, 405);
    assert_eq!(status(&envoy, "PUT", 0).await, 405);
    assert_eq!(status(&envoy, "POST", 1001).await, 413);
    assert_eq!(status(&envoy, "GET", 0).await, 200);
    assert_eq!(status(&envoy, "POST", 1000).await, 200);
    assert_eq!(function.calls(), 2);
    let refused = envoy
        .wait_for_filter_stat("env", "annotations.refused", Duration::from_secs(10), |v| {
            v >= 5
        })
        .await;
    assert_eq!(refused, 5);
    let log = envoy.log();
    for name in [
        "com.openfaas.mesh.methods",
        "com.openfaas.mesh.max_body_bytes",
        "com.openfaas.mesh.mode",
        "com.openfaas.mesh.max_inflight",
        "com.openfaas.mesh.maxinflight",
    ] {
        assert!(
            log.contains(&format!("annotation {name} refused")),
            "no refusal logged for {name}"
        );
    }
    assert!(log.contains("the mode is the operator's alone"));
}

/// OpenFaaS's readiness-path annotation with a bad value (no leading `/`, a space): refused with
/// one warning and the `refused` gauge; the gate keeps probing its configured path (issue 23,
/// part 4), so it opens when the function answers that one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_readiness_path_annotation_is_refused_and_the_default_stays() {
    let function = StandInFunction::start().await.expect("function");
    let envoy = Envoy::start_accepted(
        EnvoyOptions::for_function(function.port())
            .config("{}")
            .annotations(&[("com.openfaas.ready.http.path", "ready now")]),
    )
    .await;
    assert_eq!(envoy.get("/function/env/x").await.status, 200);
    let refused = envoy
        .wait_for_filter_stat("env", "annotations.refused", Duration::from_secs(10), |v| {
            v >= 1
        })
        .await;
    assert_eq!(refused, 1);
    let log = envoy.log();
    assert!(
        log.contains(
            "annotation com.openfaas.ready.http.path refused (expected a path starting with '/'"
        ) && log.contains("the gate probes readiness.path"),
        "{log}"
    );
    assert!(function.probes() >= 1, "the default path was probed");
}

/// A valid readiness-path annotation is what the gate probes: the function's health endpoints
/// say 503, its own path (any other path of the stand-in) 200, and the gate opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readiness_path_annotation_is_what_the_gate_probes() {
    let function = StandInFunction::start().await.expect("function");
    function.set_healthy(false);
    let envoy = Envoy::start_accepted(
        EnvoyOptions::for_function(function.port())
            .config(r#"{"readiness": {"path": "/_/health", "max_wait_ms": 60000}}"#)
            .annotations(&[("com.openfaas.ready.http.path", "/custom/ready")]),
    )
    .await;
    let response = tokio::time::timeout(Duration::from_secs(20), envoy.get("/function/env/x"))
        .await
        .expect("served once the annotated path answers, not held");
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(function.probes(), 0, "the health endpoints were not probed");
}

/// An annotation's value is data, never more annotations: a value that quotes, escapes and breaks
/// lines to look like a narrowing annotation of its own (as a pod's owner may write any value)
/// changes nothing, and a value with quotes and backslashes reaches the filter exactly (the
/// native build reads Kubernetes' quoted downward-API file; the wasm build, node metadata).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_annotation_value_cannot_smuggle_another_annotation() {
    let (function, envoy) = pod(&[
        (
            "com.example.note",
            "x\"\ncom.openfaas.mesh.methods=\"POST\"\ncom.openfaas.mesh.max_body_bytes=\"1",
        ),
        ("com.example.path", "C:\\ \"quoted\" \t tab"),
        ("com.openfaas.mesh.max_body_bytes", "500"),
    ])
    .await;
    // Only the real annotation narrowed anything: GET is still allowed, bodies up to 500.
    assert_eq!(status(&envoy, "GET", 0).await, 200);
    assert_eq!(status(&envoy, "POST", 500).await, 200);
    assert_eq!(status(&envoy, "POST", 501).await, 413);
    assert_eq!(function.calls(), 2);
    let applied = envoy
        .wait_for_filter_stat("env", "annotations.applied", Duration::from_secs(10), |v| {
            v >= 1
        })
        .await;
    assert_eq!(applied, 1);
    assert_eq!(envoy.filter_stat("env", "annotations.refused").await, 0);
}
