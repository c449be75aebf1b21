//! The readiness gate through a real Envoy: requests that arrive before the function can serve
//! are held, not failed, and released when its watchdog answers `/_/health`.
//!
//! Every scenario runs with 1, 2 and 4 Envoy workers: readiness learned on one worker must reach
//! the others, and the pod-wide `max_pending` must hold across them.

use faas_mesh_integration::envoy::{Envoy, EnvoyOptions};
use faas_mesh_integration::http::{self, Request, Response};
use faas_mesh_integration::ports::ReservedPort;
use faas_mesh_integration::stand_in::StandInFunction;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// The function the pods under test run.
const FUNCTION: &str = "env";
/// How long a test waits for a stat of the filter (a loaded machine).
const STAT_LIMIT: Duration = Duration::from_secs(20);

/// An Envoy for a function that is not running yet (its port is reserved, nothing listens).
async fn envoy_before_function(concurrency: u32, plugin_config: &str) -> (Envoy, ReservedPort) {
    let port = ReservedPort::new().expect("port");
    let mut options = EnvoyOptions::for_function(port.port()).config(plugin_config);
    options.concurrency = concurrency;
    let envoy = Envoy::start_accepted(options).await;
    (envoy, port)
}

fn assert_gate_reply(response: &Response, error: &str) {
    assert_eq!(response.status, 503, "{}", response.text());
    assert_eq!(
        response.header("x-openfaas-internal"),
        Some("faas-mesh-filter")
    );
    assert_eq!(response.header("retry-after"), Some("1"));
    let call_id = response.header("x-call-id").expect("call id").to_string();
    let body = response.json();
    assert_eq!(body["error"], error);
    assert_eq!(body["call_id"], call_id.as_str());
    assert_eq!(body["function"], "env");
}

/// 50 requests (GET, and POST with bodies) while the function is down; it comes up 2 s later.
async fn held_requests_are_released_when_the_function_comes_up(concurrency: u32) {
    let (envoy, port) = envoy_before_function(concurrency, "{}").await;
    let addr = envoy.addr();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..50usize {
        let request = if i % 2 == 0 {
            Request::get(&format!("/function/env/get/{i}?q={i}"))
        } else {
            // Bodies of a few KB, different for every request.
            Request::new("POST", &format!("/function/env/post/{i}"))
                .body(format!("body-{i}-").repeat(200 + i))
        };
        calls.spawn(async move {
            let response = http::send(addr, &request).await;
            (request, response, Instant::now())
        });
    }
    // All 50 are held by the filter (not merely in flight) before the function starts.
    envoy
        .wait_for_filter_stat(FUNCTION, "readiness.pending", STAT_LIMIT, |v| v == 50)
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(envoy.filter_stat(FUNCTION, "readiness.released").await, 0);

    let function = StandInFunction::start_on(port.port())
        .await
        .expect("function");
    let up = Instant::now();
    let mut slowest = Duration::ZERO;
    while let Some(done) = calls.join_next().await {
        let (request, response, at) = done.expect("task");
        let response =
            response.unwrap_or_else(|e| panic!("{} {}: {e}", request.method, request.target));
        assert_eq!(
            response.status,
            200,
            "{}: {}",
            request.target,
            response.text()
        );
        let echo = response.json();
        assert_eq!(echo["method"], request.method.as_str());
        let want_path = request.target.trim_start_matches("/function/env");
        assert_eq!(echo["path"], want_path);
        assert_eq!(
            echo["body"],
            String::from_utf8_lossy(&request.body).as_ref()
        );
        slowest = slowest.max(at.saturating_duration_since(up));
    }
    // How fast the release is depends on the machine's load: reported (the goal is 200 ms, the
    // README's figure), not asserted. That every held request was released and served is.
    eprintln!(
        "concurrency {concurrency}: all 50 answered {slowest:?} after the function came up \
         (goal: 200 ms)"
    );
    assert_eq!(function.calls(), 50);
    assert_eq!(envoy.filter_stat(FUNCTION, "readiness.held").await, 50);
    assert_eq!(envoy.filter_stat(FUNCTION, "readiness.released").await, 50);
    assert_eq!(envoy.filter_stat(FUNCTION, "readiness.timed_out").await, 0);
    assert_eq!(envoy.filter_stat(FUNCTION, "readiness.pending").await, 0);
    assert_eq!(envoy.filter_stat(FUNCTION, "readiness.ready").await, 1);

    // Once ready, requests cost no probe.
    let probes = function.probes();
    for i in 0..20 {
        assert_eq!(envoy.get(&format!("/function/env/{i}")).await.status, 200);
    }
    assert_eq!(
        function.probes(),
        probes,
        "requests probed a ready function"
    );
}

/// The function never comes up: each held request gets 503 + Retry-After after `max_wait_ms`.
async fn held_requests_time_out_with_503(concurrency: u32) {
    let (envoy, _port) =
        envoy_before_function(concurrency, r#"{"readiness": {"max_wait_ms": 600}}"#).await;
    let addr = envoy.addr();
    let started = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..6 {
        calls.spawn(async move {
            let request = Request::new("POST", &format!("/function/env/{i}")).body("payload");
            http::send(addr, &request).await
        });
    }
    while let Some(done) = calls.join_next().await {
        let response = done.expect("task").expect("a response, not a reset");
        assert_gate_reply(&response, "function not ready");
        assert!(response.header("x-duration-seconds").is_none());
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(600),
        "answered after {waited:?}"
    );
    assert_eq!(envoy.filter_stat(FUNCTION, "readiness.timed_out").await, 6);
    assert_eq!(envoy.filter_stat(FUNCTION, "readiness.pending").await, 0);
    assert!(envoy.filter_stat(FUNCTION, "readiness.probes_failed").await >= 2);
}

/// `max_pending + k` requests while the function is down: exactly k immediate 503s.
async fn beyond_max_pending_is_answered_at_once(concurrency: u32) {
    let (envoy, port) = envoy_before_function(
        concurrency,
        r#"{"readiness": {"max_pending": 5, "max_wait_ms": 20000}}"#,
    )
    .await;
    let addr = envoy.addr();
    let mut held = tokio::task::JoinSet::new();
    for i in 0..5 {
        held.spawn(
            async move { http::send(addr, &Request::get(&format!("/function/env/h{i}"))).await },
        );
    }
    envoy
        .wait_for_filter_stat(FUNCTION, "readiness.pending", STAT_LIMIT, |v| v == 5)
        .await;
    let mut extra = tokio::task::JoinSet::new();
    for i in 0..3 {
        extra.spawn(async move {
            http::send(addr, &Request::get(&format!("/function/env/x{i}"))).await
        });
    }
    let mut refused = 0;
    while let Some(done) = extra.join_next().await {
        let response = done.expect("task").expect("response");
        assert_gate_reply(
            &response,
            "too many requests waiting for the function to become ready",
        );
        refused += 1;
    }
    assert_eq!(refused, 3);
    assert_eq!(
        envoy
            .filter_stat(FUNCTION, "readiness.rejected_queue_full")
            .await,
        3
    );

    let _function = StandInFunction::start_on(port.port())
        .await
        .expect("function");
    while let Some(done) = held.join_next().await {
        assert_eq!(done.expect("task").expect("response").status, 200);
    }
    assert_eq!(envoy.filter_stat(FUNCTION, "readiness.released").await, 5);
}

/// A client that hangs up while held leaves the wait list; the function never sees it.
async fn a_client_that_hangs_up_is_forgotten(concurrency: u32) {
    let (envoy, port) = envoy_before_function(concurrency, "{}").await;
    let mut stream = tokio::net::TcpStream::connect(envoy.addr())
        .await
        .expect("connect");
    stream
        .write_all(b"GET /function/env/gone HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    envoy
        .wait_for_filter_stat(FUNCTION, "readiness.pending", STAT_LIMIT, |v| v == 1)
        .await;
    drop(stream);
    envoy
        .wait_for_filter_stat(FUNCTION, "readiness.abandoned", STAT_LIMIT, |v| v == 1)
        .await;
    assert_eq!(envoy.filter_stat(FUNCTION, "readiness.pending").await, 0);

    let function = StandInFunction::start_on(port.port())
        .await
        .expect("function");
    assert_eq!(envoy.get("/function/env/here").await.status, 200);
    assert_eq!(
        function.calls(),
        1,
        "the abandoned request reached the function"
    );
}

/// The function is killed and restarted while traffic flows: requests during the outage are
/// held and then served.
async fn a_restarted_function_is_waited_for(concurrency: u32) {
    let port = ReservedPort::new().expect("port");
    let function = StandInFunction::start_on(port.port())
        .await
        .expect("function");
    let mut options = EnvoyOptions::for_function(port.port());
    options.concurrency = concurrency;
    let envoy = Envoy::start(options).await.expect("Envoy");
    let addr = envoy.addr();
    assert_eq!(envoy.get("/function/env/warm").await.status, 200);
    let held_before = envoy.filter_stat(FUNCTION, "readiness.held").await;

    // Four clients in a loop, one request at a time each.
    let stop_at = Instant::now() + Duration::from_millis(2500);
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..4 {
        clients.spawn(async move {
            let mut statuses = Vec::new();
            let mut i = 0;
            while Instant::now() < stop_at {
                let response = http::send(addr, &Request::get(&format!("/function/env/c{c}/{i}")))
                    .await
                    .expect("a response, not a reset");
                statuses.push(response.status);
                i += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            statuses
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(function); // the function process dies
    tokio::time::sleep(Duration::from_millis(800)).await;
    let function = StandInFunction::start_on(port.port())
        .await
        .expect("restart");

    let mut failed = 0;
    let mut total = 0;
    while let Some(done) = clients.join_next().await {
        let statuses = done.expect("client");
        total += statuses.len();
        failed += statuses.iter().filter(|s| **s >= 500).count();
        assert!(
            statuses.iter().all(|s| *s == 200 || *s == 503),
            "{statuses:?}"
        );
    }
    eprintln!(
        "concurrency {concurrency}: {failed} of {total} requests failed across a function restart"
    );
    // What can fail: a client's request in flight at the kill, and requests a worker sent on
    // before it knew. A worker knows from the first failure it sees (before that caller gets its
    // answer), so each client meets at most one such failure per worker, in whatever order a
    // loaded machine runs them; everything else is held and served. (Typically 2 to 4 fail.)
    let bound = 4 * (1 + concurrency as usize);
    assert!(
        failed <= bound,
        "{failed} requests failed (at most {bound} expected)"
    );
    assert!(
        envoy.filter_stat(FUNCTION, "readiness.held").await > held_before,
        "nothing was held during the outage"
    );
    assert_eq!(envoy.filter_stat(FUNCTION, "readiness.ready").await, 1);
    assert!(function.calls() > 0, "no traffic after the restart");
}

macro_rules! with_workers {
    ($($module:ident: $workers:expr),*) => {$(
        mod $module {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn held_requests_are_released_when_the_function_comes_up() {
                super::held_requests_are_released_when_the_function_comes_up($workers).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn held_requests_time_out_with_503() {
                super::held_requests_time_out_with_503($workers).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn beyond_max_pending_is_answered_at_once() {
                super::beyond_max_pending_is_answered_at_once($workers).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_client_that_hangs_up_is_forgotten() {
                super::a_client_that_hangs_up_is_forgotten($workers).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_restarted_function_is_waited_for() {
                super::a_restarted_function_is_waited_for($workers).await
            }
        }
    )*};
}

with_workers!(one_worker: 1, two_workers: 2, four_workers: 4);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_function_counts_as_ready_and_a_disabled_gate_holds_nothing() {
    // /_/ready answers 429 at max_inflight: alive, so requests go through.
    let function = StandInFunction::start().await.expect("function");
    function.set_saturated(true);
    let envoy = Envoy::start(
        EnvoyOptions::for_function(function.port())
            .config(r#"{"readiness": {"path": "/_/ready"}}"#),
    )
    .await
    .expect("Envoy");
    assert_eq!(envoy.get("/function/env/a").await.status, 200);
    drop(envoy);

    // Unhealthy (503 on /_/health): held, then 503 from the gate.
    function.set_healthy(false);
    let envoy = Envoy::start(
        EnvoyOptions::for_function(function.port())
            .config(r#"{"readiness": {"max_wait_ms": 300}}"#),
    )
    .await
    .expect("Envoy");
    assert_gate_reply(&envoy.get("/function/env/a").await, "function not ready");
    drop(envoy);

    // Gate off: nothing is held, the request goes straight to the (unhealthy) function.
    let envoy = Envoy::start(
        EnvoyOptions::for_function(function.port()).config(r#"{"readiness": {"enabled": false}}"#),
    )
    .await
    .expect("Envoy");
    assert_eq!(envoy.get("/function/env/a").await.status, 200);
    assert_eq!(envoy.filter_stat(FUNCTION, "readiness.held").await, 0);
}

/// Requests that ask whether the function is up are never held (issue 23, part 3): the health and
/// readiness endpoints themselves (by the path the function sees: direct, or under the prefix)
/// and the OpenFaaS gateway's probe (by its user agent, any path)
/// reach the function at once while the gate holds every other call, and get its answer of the
/// moment. Before, each was held up to `max_wait_ms` (the gateway's probe a tenth of it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness_requests_and_the_gateways_probe_are_never_held() {
    let function = StandInFunction::start().await.expect("function");
    function.set_healthy(false); // /_/health and /_/ready answer 503: the gate holds
    let mut options = EnvoyOptions::for_function(function.port())
        .config(r#"{"readiness": {"max_wait_ms": 120000}}"#);
    options.concurrency = 2;
    let envoy = Envoy::start_accepted(options).await;
    let addr = envoy.addr();
    let ordinary =
        tokio::spawn(async move { http::send(addr, &Request::get("/function/env/work")).await });
    envoy
        .wait_for_filter_stat(FUNCTION, "readiness.pending", STAT_LIMIT, |v| v == 1)
        .await;

    let asks = [
        Request::get("/_/health"),
        Request::get("/function/env/_/ready?verbose=1"),
        Request::get("/function/env/anything").header("User-Agent", "com.openfaas.gateway/probe"),
    ];
    for request in &asks {
        // Held, it would wait two minutes: a generous bound tells "at once" from "held".
        let response = tokio::time::timeout(Duration::from_secs(20), http::send(addr, request))
            .await
            .unwrap_or_else(|_| panic!("{}: held, not answered", request.target))
            .expect("a response");
        assert_eq!(
            response.header("x-openfaas-internal"),
            None,
            "{}: answered by the filter, not the function: {}",
            request.target,
            response.text()
        );
        assert!(response.header("x-call-id").is_some());
    }
    // The function's answers of the moment: not ready on its health endpoints; the gateway's
    // probe of an ordinary path reaches it too.
    for target in ["/_/health", "/function/env/_/ready"] {
        assert_eq!(envoy.get(target).await.status, 503, "{target}");
    }
    assert_eq!(
        envoy.filter_stat(FUNCTION, "readiness.held").await,
        1,
        "only the ordinary call is held"
    );
    assert_eq!(
        envoy.filter_stat(FUNCTION, "readiness.passed_unheld").await,
        5
    );

    function.set_healthy(true);
    let response = ordinary.await.expect("task").expect("a response");
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(envoy.filter_stat(FUNCTION, "readiness.released").await, 1);
}
