//! Faults around the filter: a missing probe cluster, a watchdog that answers 500 or hangs, a
//! function that dies mid-body, and a plugin that cannot load with fail_open on and off.

use faas_mesh_integration::envoy::{ConfigOutcome, Envoy, EnvoyOptions};
use faas_mesh_integration::filter_build::FilterBuild;
use faas_mesh_integration::http::{self, Request, Response};
use faas_mesh_integration::ports::ReservedPort;
use faas_mesh_integration::stand_in::StandInFunction;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

fn assert_not_ready(response: &Response) {
    assert_eq!(response.status, 503, "{}", response.text());
    assert_eq!(response.json()["error"], "function not ready");
    assert!(response.header("retry-after").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_probe_cluster_is_named_in_the_log_and_requests_get_503() {
    let function = StandInFunction::start().await.expect("function");
    let envoy = Envoy::start(
        EnvoyOptions::for_function(function.port())
            .config(r#"{"readiness": {"cluster": "no_such_cluster", "max_wait_ms": 400}}"#),
    )
    .await
    .expect("Envoy");
    assert_not_ready(&envoy.get("/function/env/").await);
    let log = envoy.log_when(|log| log.contains("no_such_cluster")).await;
    assert!(
        log.contains("readiness: cannot probe /_/ready on cluster \"no_such_cluster\""),
        "{log}"
    );
    assert_eq!(function.calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watchdog_answering_500_or_hanging_is_not_ready() {
    let function = StandInFunction::start().await.expect("function");
    function.set_probe_status(500);
    let envoy = Envoy::start(
        EnvoyOptions::for_function(function.port())
            .config(r#"{"readiness": {"max_wait_ms": 400}}"#),
    )
    .await
    .expect("Envoy");
    assert_not_ready(&envoy.get("/function/env/").await);
    // Probes go on while the function is not ready; how many fit in the 400 ms depends on the
    // machine's load, so the test waits (bounded) for a second one instead of counting.
    envoy
        .wait_for_filter_stat(
            "env",
            "readiness.probes_failed",
            Duration::from_secs(60),
            |v| v >= 2,
        )
        .await;
    drop(envoy);

    function.set_probe_status(0);
    function.set_probe_hangs(true);
    let envoy = Envoy::start(EnvoyOptions::for_function(function.port()).config(
        r#"{"readiness": {"path": "/_/ready", "probe_timeout_ms": 200, "max_wait_ms": 1000}}"#,
    ))
    .await
    .expect("Envoy");
    let started = Instant::now();
    assert_not_ready(&envoy.get("/function/env/").await);
    assert!(started.elapsed() >= Duration::from_millis(1000));
    // Hung probes time out and are retried, one at a time.
    envoy
        .wait_for_filter_stat(
            "env",
            "readiness.probes_failed",
            Duration::from_secs(60),
            |v| v >= 2,
        )
        .await;
    assert_eq!(function.calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_dying_mid_body_gives_a_clean_error_and_the_gate_waits_for_it() {
    let port = ReservedPort::new().expect("port");
    let function = StandInFunction::start_on(port.port())
        .await
        .expect("function");
    let envoy = Envoy::start(EnvoyOptions::for_function(port.port()))
        .await
        .expect("Envoy");
    assert_eq!(envoy.get("/function/env/warm").await.status, 200);

    // Headers and half a chunked body; the function dies; the rest of the body.
    let mut stream = tokio::net::TcpStream::connect(envoy.addr())
        .await
        .expect("connect");
    stream
        .write_all(b"POST /function/env/upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n0123456789abcdef\r\n")
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(function);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = stream
        .write_all(b"10\r\n0123456789abcdef\r\n0\r\n\r\n")
        .await;
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut raw),
    )
    .await
    .expect("an answer, not a hang");
    let head = String::from_utf8_lossy(&raw);
    assert!(
        head.starts_with("HTTP/1.1 503") || head.starts_with("HTTP/1.1 502"),
        "the caller got: {head:?}"
    );

    // The next request is held until the function is back, then served.
    let addr = envoy.addr();
    let next =
        tokio::spawn(async move { http::send(addr, &Request::get("/function/env/after")).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _function = StandInFunction::start_on(port.port())
        .await
        .expect("restart");
    let response = next.await.expect("task").expect("response");
    assert_eq!(response.status, 200);
}

/// A configuration the filter refuses is refused as a whole (the ECDS update is rejected), so
/// Envoy's failure policy never comes into play for it: with fail closed (as shipped) and with
/// FAIL_OPEN alike, a sidecar that never had a good configuration answers 500 and nothing
/// reaches the function unfiltered. (Failure policy governs a VM that fails at run time; this
/// filter is built not to: no panics, fuzzed parsers.) The native build's filter has no failure
/// policy to set (the dynamic-modules filter has none; a module that fails takes the sidecar
/// down), so it runs the shipped case only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_configuration_never_opens_a_way_past_the_filter() {
    let bad = r#"{"rewrite": {"prefx": "/fn/"}}"#;
    let function = StandInFunction::start().await.expect("function");
    let fail_open_cases: &[bool] = match FilterBuild::current() {
        FilterBuild::Wasm => &[false, true],
        FilterBuild::Native => &[false],
    };
    for &fail_open in fail_open_cases {
        let mut options = EnvoyOptions::for_function(function.port()).config(bad);
        options.fail_open = fail_open;
        let envoy = Envoy::start(options).await.expect("Envoy");
        assert_eq!(envoy.initial_config(), ConfigOutcome::Rejected);
        let response = envoy.get("/function/env/x").await;
        assert_eq!(response.status, 500, "fail_open {fail_open}");
        assert_eq!(
            function.calls(),
            0,
            "fail_open {fail_open}: a request got past"
        );
    }
}
