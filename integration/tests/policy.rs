//! Per-function policy through a real Envoy: caller identity from mTLS, methods, body size,
//! concurrency and rate limits, in enforce and audit mode, and the stats they leave.

use faas_mesh_integration::envoy::{Envoy, EnvoyOptions};
use faas_mesh_integration::http::{self, Request, Response};
use faas_mesh_integration::stand_in::StandInFunction;
use faas_mesh_integration::tls::Pki;
use std::time::{Duration, Instant};

const GATEWAY: &str = "spiffe://cluster.local/ns/openfaas/sa/gateway";
const QUEUE_WORKER: &str = "spiffe://cluster.local/ns/openfaas/sa/queue-worker";
const OTHER: &str = "spiffe://cluster.local/ns/openfaas-fn/sa/default";

async fn pod(options: impl FnOnce(EnvoyOptions) -> EnvoyOptions) -> (StandInFunction, Envoy) {
    let function = StandInFunction::start().await.expect("function");
    let envoy = Envoy::start_accepted(options(EnvoyOptions::for_function(function.port()))).await;
    (function, envoy)
}

async fn plain_pod(config: &str) -> (StandInFunction, Envoy) {
    pod(|o| o.config(config)).await
}

fn assert_denied(response: &Response, status: u16, error: &str) {
    assert_eq!(response.status, status, "{}", response.text());
    assert_eq!(
        response.header("x-openfaas-internal"),
        Some("faas-mesh-filter")
    );
    let body = response.json();
    assert_eq!(body["error"], error);
    assert_eq!(body["function"], "env");
    assert_eq!(
        body["call_id"].as_str(),
        response.header("x-call-id"),
        "the reply names its call id"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_are_told_apart_by_their_mtls_identity_not_by_headers() {
    let pki = Pki::new().expect("pki");
    let config = r#"{"policy": {"functions": {"env": {"principals": ["spiffe://cluster.local/ns/openfaas/sa/*"]}}}}"#;
    let (function, envoy) = pod(|mut o| {
        o.tls = Some(pki.server());
        o.config(config)
    })
    .await;
    let gateway = pki.identity(GATEWAY).expect("cert");
    let queue_worker = pki.identity(QUEUE_WORKER).expect("cert");
    let other = pki.identity(OTHER).expect("cert");
    let get = Request::get("/function/env/x");

    for id in [&gateway, &queue_worker] {
        let response = pki.send(envoy.addr(), Some(id), &get).await.expect("send");
        assert_eq!(response.status, 200, "{}", response.text());
    }
    let response = pki
        .send(envoy.addr(), Some(&other), &get)
        .await
        .expect("send");
    assert_denied(&response, 403, "caller not allowed");

    let response = pki.send(envoy.addr(), None, &get).await.expect("send");
    assert_denied(&response, 403, "mutual TLS required");
    // A forged client-certificate header naming an allowed identity changes nothing.
    let forged = Request::get("/function/env/x").header(
        "X-Forwarded-Client-Cert",
        &format!("By=spiffe://cluster.local/ns/openfaas-fn/sa/env;URI={GATEWAY}"),
    );
    let response = pki.send(envoy.addr(), None, &forged).await.expect("send");
    assert_denied(&response, 403, "mutual TLS required");
    let response = pki
        .send(envoy.addr(), Some(&other), &forged)
        .await
        .expect("send");
    assert_denied(&response, 403, "caller not allowed");

    assert_eq!(function.calls(), 2);
    assert_eq!(envoy.filter_stat("env", "policy.allowed").await, 2);
    assert_eq!(envoy.policy_stat("env", "principal", "denied").await, 2);
    assert_eq!(envoy.policy_stat("env", "mtls", "denied").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_mtls_wants_a_certificate_and_audit_mode_lets_through() {
    let pki = Pki::new().expect("pki");
    let (_f, envoy) = pod(|mut o| {
        o.tls = Some(pki.server());
        o.config(r#"{"policy": {"default": {"require_mtls": true}}}"#)
    })
    .await;
    let other = pki.identity(OTHER).expect("cert");
    let get = Request::get("/function/env/");
    assert_eq!(
        pki.send(envoy.addr(), Some(&other), &get)
            .await
            .expect("send")
            .status,
        200
    );
    assert_denied(
        &pki.send(envoy.addr(), None, &get).await.expect("send"),
        403,
        "mutual TLS required",
    );
    drop(envoy);

    // The same principals rule in audit mode: everyone passes, denials are counted and logged.
    let (function, envoy) = pod(|mut o| {
        o.tls = Some(pki.server());
        o.config(
            r#"{"policy": {"default": {"mode": "audit", "principals": ["spiffe://cluster.local/ns/openfaas/sa/*"]}}}"#,
        )
    })
    .await;
    for id in [Some(&other), None] {
        assert_eq!(
            pki.send(envoy.addr(), id, &get).await.expect("send").status,
            200
        );
    }
    assert_eq!(function.calls(), 2);
    assert_eq!(envoy.policy_stat("env", "principal", "audited").await, 1);
    assert_eq!(envoy.policy_stat("env", "mtls", "audited").await, 1);
    assert_eq!(envoy.policy_stat("env", "principal", "denied").await, 0);
    assert_eq!(envoy.filter_stat("env", "policy.allowed").await, 0);
    let log = envoy
        .log_when(|log| log.contains("would be denied (principal)"))
        .await;
    assert!(
        log.contains("would be denied (principal); let through"),
        "no audit line:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_are_enforced_including_override_headers() {
    let (function, envoy) =
        plain_pod(r#"{"policy": {"default": {"methods": ["GET", "POST"]}}}"#).await;
    assert_eq!(envoy.get("/function/env/").await.status, 200);
    let response = envoy
        .send(&Request::new("DELETE", "/function/env/item/1"))
        .await
        .expect("send");
    assert_denied(&response, 405, "method not allowed");
    assert_eq!(response.header("allow"), Some("GET, POST"));
    let response = envoy
        .send(
            &Request::new("POST", "/function/env/item/1")
                .header("X-HTTP-Method-Override", "DELETE")
                .body("x"),
        )
        .await
        .expect("send");
    assert_denied(&response, 405, "method not allowed");
    // Paths do not choose the rule: an unprefixed or oddly written path meets the same policy.
    for target in ["/item/1", "//function/env/x", "/function/env.openfaas-fn/x"] {
        let response = envoy
            .send(&Request::new("DELETE", target))
            .await
            .expect("send");
        assert_eq!(response.status, 405, "{target}");
    }
    // Methods are case-sensitive: `get` is not `GET` (Envoy may refuse it first).
    let response = envoy
        .send(&Request::new("get", "/function/env/"))
        .await
        .expect("send");
    assert!(matches!(response.status, 400 | 405), "{}", response.status);
    assert_eq!(function.calls(), 1);
    assert_eq!(envoy.policy_stat("env", "method", "denied").await, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_functions_entry_overrides_the_default_rule_by_rule() {
    let config = r#"{"policy": {
        "default": {"methods": ["GET"], "max_body_bytes": 16},
        "functions": {"env": {"methods": ["GET", "PUT"]}, "figlet": {"mode": "off"}}}}"#;
    let (_f, envoy) = plain_pod(config).await;
    let put = |body: &str| Request::new("PUT", "/function/env/").body(body.to_string());
    assert_eq!(envoy.send(&put("small")).await.expect("send").status, 200);
    assert_denied(
        &envoy.send(&put(&"x".repeat(17))).await.expect("send"),
        413,
        "request body too large",
    );
    drop(envoy);

    // figlet's entry turns the policy off; shasum has no entry and gets the default.
    let (_f, envoy) = pod(|o| o.labels(&[("faas_function", "figlet")]).config(config)).await;
    let response = envoy
        .send(&Request::new("PUT", "/function/figlet/").body("x".repeat(100)))
        .await
        .expect("send");
    assert_eq!(response.status, 200);
    drop(envoy);
    let (_f, envoy) = pod(|o| o.labels(&[("faas_function", "shasum")]).config(config)).await;
    let response = envoy
        .send(&Request::new("PUT", "/function/shasum/"))
        .await
        .expect("send");
    assert_eq!(response.status, 405);
    assert_eq!(response.header("allow"), Some("GET"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_refused_with_and_without_content_length() {
    let (function, envoy) = plain_pod(r#"{"policy": {"default": {"max_body_bytes": 1000}}}"#).await;
    let post = |len: usize, chunked: bool| {
        let request = Request::new("POST", "/function/env/upload").body("b".repeat(len));
        if chunked {
            request.header("Transfer-Encoding", "chunked")
        } else {
            request
        }
    };
    for chunked in [false, true] {
        let response = envoy.send(&post(1000, chunked)).await.expect("send");
        assert_eq!(
            response.status,
            200,
            "chunked {chunked}: {}",
            response.text()
        );
        assert_eq!(response.json()["body"].as_str().map(str::len), Some(1000));
        let before = function.calls();
        let response = envoy.send(&post(1001, chunked)).await.expect("send");
        assert_denied(&response, 413, "request body too large");
        if !chunked {
            // By Content-Length: refused before a byte goes to the function.
            assert_eq!(function.calls(), before, "the function saw the request");
        }
    }
    // Counted bodies: the function may see the headers of the refused request, never its body.
    assert!(
        function
            .received()
            .iter()
            .all(|echo| echo["body"].as_str().map_or(0, str::len) <= 1000),
        "an oversized body reached the function"
    );
    // A GET without a body is not held for counting.
    assert_eq!(envoy.get("/function/env/").await.status, 200);
    assert_eq!(envoy.policy_stat("env", "body_size", "denied").await, 2);
    drop(envoy);

    let (function, envoy) =
        plain_pod(r#"{"policy": {"default": {"mode": "audit", "max_body_bytes": 10}}}"#).await;
    for chunked in [false, true] {
        assert_eq!(
            envoy.send(&post(50, chunked)).await.expect("send").status,
            200
        );
    }
    assert_eq!(function.calls(), 2);
    assert_eq!(envoy.policy_stat("env", "body_size", "audited").await, 2);
}

/// Polls until `done` holds (a bounded wait: a loaded CI machine is slow, never wrong).
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within 60 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `max` requests the function keeps for a minute reach it together, the next one gets the
/// filter's 429 while they are there, and when their callers give up their slots come back. The
/// limit is reached exactly, whatever the timing. Returns the 429s it caused (one).
async fn admits_exactly(envoy: &Envoy, function: &StandInFunction, max: u64) -> u64 {
    function.reset_max_concurrent();
    let mut held = tokio::task::JoinSet::new();
    for i in 0..max {
        let (addr, request) = (
            envoy.addr(),
            Request::get(&format!("/function/env/held/{i}")).header("X-Stand-In-Sleep-Ms", "60000"),
        );
        held.spawn(async move { http::send(addr, &request).await });
    }
    until("the held requests reaching the function", || {
        function.active() == max
    })
    .await;
    let response = envoy.get("/function/env/one-more").await;
    assert_denied(&response, 429, "too many requests in flight");
    assert_eq!(response.header("retry-after"), Some("1"));
    assert_eq!(function.max_concurrent(), max);
    held.abort_all();
    while held.join_next().await.is_some() {}
    envoy
        .wait_for_filter_stat("env", "policy.inflight", Duration::from_secs(60), |v| {
            v == 0
        })
        .await;
    until("the function seeing its callers go", || {
        function.active() == 0
    })
    .await;
    1
}

/// Bursts of 20 slow requests against `max_inflight: 4`, over two Envoy workers. What holds
/// whatever the machine's load (a slot freed during a burst may rightly admit a fifth call, so
/// the split of 200s and 429s is not fixed): the function never has more than 4 at once, every
/// refusal is the filter's 429, at least 4 get through (a 429 means 4 were in flight, and those
/// end in 200), and nothing drifts: the gauge returns to 0 and the limit is still exactly 4.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_inflight_holds_across_workers_and_never_drifts() {
    const MAX: u64 = 4;
    let (function, envoy) = plain_pod(r#"{"policy": {"default": {"max_inflight": 4}}}"#).await;
    let burst = |envoy_addr| async move {
        let mut calls = tokio::task::JoinSet::new();
        for i in 0..20 {
            calls.spawn(async move {
                let request = Request::get(&format!("/function/env/slow/{i}"))
                    .header("X-Stand-In-Sleep-Ms", "400");
                http::send(envoy_addr, &request).await.expect("send")
            });
        }
        let mut statuses = Vec::new();
        while let Some(done) = calls.join_next().await {
            let response = done.expect("task");
            if response.status != 200 {
                assert_denied(&response, 429, "too many requests in flight");
                assert_eq!(response.header("retry-after"), Some("1"));
            }
            statuses.push(response.status);
        }
        statuses
    };
    let mut denied = admits_exactly(&envoy, &function, MAX).await;
    let mut check_burst = |round: &str, statuses: Vec<u16>| {
        let ok = statuses.iter().filter(|s| **s == 200).count() as u64;
        let limited = statuses.iter().filter(|s| **s == 429).count() as u64;
        assert_eq!(ok + limited, 20, "{round}: {statuses:?}");
        assert!(ok >= MAX, "{round}: only {ok} admitted: {statuses:?}");
        assert!(
            function.max_concurrent() <= MAX,
            "{round}: {} at the function at once",
            function.max_concurrent()
        );
        denied += limited;
    };
    for round in ["first burst", "second burst"] {
        function.reset_max_concurrent();
        check_burst(round, burst(envoy.addr()).await);
        envoy
            .wait_for_filter_stat("env", "policy.inflight", Duration::from_secs(60), |v| {
                v == 0
            })
            .await;
    }

    // Clients that give up mid-request release their slots too.
    let mut aborted = tokio::task::JoinSet::new();
    for i in 0..4 {
        let addr = envoy.addr();
        aborted.spawn(async move {
            let request = Request::get(&format!("/function/env/abort/{i}"))
                .header("X-Stand-In-Sleep-Ms", "5000");
            let _ =
                tokio::time::timeout(Duration::from_millis(300), http::send(addr, &request)).await;
        });
    }
    while aborted.join_next().await.is_some() {}
    envoy
        .wait_for_filter_stat("env", "policy.inflight", Duration::from_secs(60), |v| {
            v == 0
        })
        .await;
    function.reset_max_concurrent();
    check_burst("after aborts", burst(envoy.addr()).await);
    envoy
        .wait_for_filter_stat("env", "policy.inflight", Duration::from_secs(60), |v| {
            v == 0
        })
        .await;
    denied += admits_exactly(&envoy, &function, MAX).await;
    // Every 429 a caller saw was counted, and nothing else was.
    assert_eq!(envoy.policy_stat("env", "inflight", "denied").await, denied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_is_a_token_bucket_per_pod() {
    let (_f, envoy) = plain_pod(
        r#"{"policy": {"default": {"rate_limit": {"requests_per_second": 5, "burst": 10}}}}"#,
    )
    .await;
    let started = Instant::now();
    let mut ok = 0u64;
    let mut limited = 0u64;
    for i in 0..40 {
        let response = envoy.get(&format!("/function/env/{i}")).await;
        match response.status {
            200 => ok += 1,
            429 => {
                assert_denied(&response, 429, "rate limit exceeded");
                let retry: u64 = response
                    .header("retry-after")
                    .and_then(|v| v.parse().ok())
                    .expect("Retry-After");
                assert!((1..=1).contains(&retry), "Retry-After {retry}");
                limited += 1;
            }
            other => panic!("status {other}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // The burst of 10, plus what refilled at 5/s while the 40 requests were sent (one more for
    // a refill landing between two requests). Across both workers: one bucket per pod.
    let most = 10 + (elapsed * 5.0).ceil() as u64 + 1;
    assert!(
        (10..=most).contains(&ok),
        "{ok} allowed in {elapsed:.2}s (expected 10..={most})"
    );
    assert_eq!(ok + limited, 40);
    assert_eq!(
        envoy.policy_stat("env", "rate_limit", "denied").await,
        limited
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_are_prometheus_metrics_labelled_by_function_and_reason() {
    let (_f, envoy) = plain_pod(r#"{"policy": {"default": {"methods": ["GET"]}}}"#).await;
    assert_eq!(envoy.get("/function/env/").await.status, 200);
    assert_eq!(
        envoy
            .send(&Request::new("DELETE", "/function/env/"))
            .await
            .expect("send")
            .status,
        405
    );
    let text = http::send(envoy.admin_addr(), &Request::get("/stats/prometheus"))
        .await
        .expect("prometheus")
        .text();
    let line = |prefix: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in:\n{}", grep(&text, "faas_mesh")))
            .to_string()
    };
    assert!(line("faas_mesh_filter_policy_allowed{function=\"env\"}").ends_with(" 1"));
    assert!(
        line("faas_mesh_filter_policy_denied{function=\"env\",reason=\"method\"}").ends_with(" 1")
    );
}

fn grep(text: &str, needle: &str) -> String {
    text.lines()
        .filter(|l| l.contains(needle))
        .collect::<Vec<_>>()
        .join("\n")
}
