//! Request bodies against the limits that guard the function and the sidecar, through a real
//! Envoy built from the shipped EnvoyFilter (which lets the filter hold headers while it reads a
//! body):
//! - `max_body_bytes`: a body whose length is not known up front (chunked HTTP/1.1, HTTP/2 without
//!   `content-length`, HTTP/2 with trailers) is read to the end before the function sees anything;
//!   over the limit the function is never called;
//! - `readiness.max_pending_bytes`: the bodies held while the function is not ready are bounded
//!   per pod, and what does not fit is answered at once.

use faas_mesh_integration::envoy::{policy_stat_name, Envoy, EnvoyOptions};
use faas_mesh_integration::http::{self, Request, Response};
use faas_mesh_integration::ports::ReservedPort;
use faas_mesh_integration::stand_in::StandInFunction;
use std::time::Duration;

const LIMIT: usize = 1000;

fn policy(mode: &str) -> String {
    format!(r#"{{"policy": {{"default": {{"mode": "{mode}", "max_body_bytes": {LIMIT}}}}}}}"#)
}

async fn pod(plugin_config: &str) -> (StandInFunction, Envoy) {
    let function = StandInFunction::start().await.expect("function");
    let envoy =
        Envoy::start_accepted(EnvoyOptions::for_function(function.port()).config(plugin_config))
            .await;
    (function, envoy)
}

/// POSTs `len` bytes over HTTP/2 in frames of 300 bytes without a length, then trailers if asked.
async fn h2_unsized(envoy: &Envoy, len: usize, with_trailers: bool) -> Response {
    let body: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
    let trailers = with_trailers.then(|| {
        let mut t = hyper::HeaderMap::new();
        t.insert("x-checksum", "abc".parse().expect("value"));
        t
    });
    let request = Request::new("POST", "/function/env/upload").body(body);
    http::send_h2_frames(envoy.addr(), &request, 300, trailers)
        .await
        .expect("an answer in time")
}

fn chunked(len: usize) -> Request {
    let body: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
    Request::new("POST", "/function/env/upload")
        .header("Transfer-Encoding", "chunked")
        .body(body)
}

fn assert_413(response: &Response, what: &str) {
    assert_eq!(response.status, 413, "{what}: {}", response.text());
    assert_eq!(
        response.header("x-openfaas-internal"),
        Some("faas-mesh-filter"),
        "{what}"
    );
    let call_id = response.header("x-call-id").expect("call id").to_string();
    assert_eq!(response.json()["call_id"], call_id.as_str(), "{what}");
}

/// Over the limit, whatever the framing, the function is never called: it cannot answer before
/// the body is checked. Within the limit the whole body arrives intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_of_unknown_length_over_the_limit_never_reaches_the_function() {
    let (function, envoy) = pod(&policy("enforce")).await;
    for len in [LIMIT + 1, 3 * LIMIT, 64 * 1024] {
        let response = envoy.send(&chunked(len)).await.expect("response");
        assert_413(&response, &format!("chunked {len}"));
        for trailers in [false, true] {
            let response = h2_unsized(&envoy, len, trailers).await;
            assert_413(&response, &format!("h2 {len} trailers={trailers}"));
        }
    }
    assert_eq!(
        function.calls(),
        0,
        "the function was called for a body over the limit"
    );

    for len in [0, 1, LIMIT - 1, LIMIT] {
        let response = envoy.send(&chunked(len)).await.expect("response");
        assert_eq!(response.status, 200, "chunked {len}");
        assert_eq!(response.json()["body"].as_str().map(str::len), Some(len));
        for trailers in [false, true] {
            let response = h2_unsized(&envoy, len, trailers).await;
            assert_eq!(response.status, 200, "h2 {len} trailers={trailers}");
            assert_eq!(response.json()["body"].as_str().map(str::len), Some(len));
        }
    }
    assert_eq!(function.calls(), 12);
}

/// In audit mode nothing is held back: the call goes through and the would-be denial is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_audit_mode_an_unsized_body_over_the_limit_passes_and_is_counted() {
    let (function, envoy) = pod(&policy("audit")).await;
    let response = envoy.send(&chunked(3 * LIMIT)).await.expect("response");
    assert_eq!(response.status, 200);
    assert_eq!(function.calls(), 1);
    let audited = envoy
        .wait_for_stat(
            &policy_stat_name("env", "body_size", "audited"),
            Duration::from_secs(10),
            |v| v >= 1,
        )
        .await;
    assert_eq!(audited, 1);
}

/// A pod that is not ready holds at most `max_pending_bytes` of bodies: a body larger than that
/// is answered 413 at once (by its length, or as it grows), and bodies that would take the pod
/// over it are answered 503 at once; those that fit are released intact when the function comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_bodies_are_bounded_per_pod_and_what_does_not_fit_is_answered_at_once() {
    const BUDGET: usize = 64 * 1024;
    const EACH: usize = 20 * 1024;
    let port = ReservedPort::new().expect("port");
    let config = format!(r#"{{"readiness": {{"max_pending_bytes": {BUDGET}}}}}"#);
    let envoy = Envoy::start_accepted(EnvoyOptions::for_function(port.port()).config(config)).await;

    // Larger than the whole budget: 413 at once, by Content-Length and by counting.
    let too_large = Request::new("POST", "/function/env/big").body(vec![b'x'; BUDGET + 1]);
    assert_413(
        &envoy.send(&too_large).await.expect("response"),
        "Content-Length over the budget",
    );
    assert_413(
        &envoy.send(&chunked(BUDGET + 1)).await.expect("response"),
        "chunked over the budget",
    );

    // Eight bodies of 20 KiB against 64 KiB: three fit, the others are answered 503 while the
    // function is still down.
    let addr = envoy.addr();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..8usize {
        let body = format!("{i:02}").repeat(EACH / 2);
        let request = if i % 2 == 0 {
            Request::new("POST", &format!("/function/env/held/{i}")).body(body.clone())
        } else {
            chunked(0).body(body.clone())
        };
        calls.spawn(async move { (body, http::send(addr, &request).await) });
    }
    let mut refused = Vec::new();
    let held_fits = BUDGET / EACH;
    while refused.len() < 8 - held_fits {
        let (_, response) = calls.join_next().await.expect("a call").expect("task");
        refused.push(response.expect("an answer while the function is down"));
    }
    for response in &refused {
        assert_eq!(response.status, 503, "{}", response.text());
        assert_eq!(response.header("retry-after"), Some("1"));
        let call_id = response.header("x-call-id").expect("call id").to_string();
        let body = response.json();
        assert_eq!(
            body["error"],
            "too many request bytes waiting for the function to become ready"
        );
        assert_eq!(body["call_id"], call_id.as_str());
    }
    let pending = envoy
        .wait_for_filter_stat("env", "readiness.pending", Duration::from_secs(10), |v| {
            v == held_fits as u64
        })
        .await;
    assert_eq!(pending, held_fits as u64);

    // The function comes up: the held ones arrive whole.
    let function = StandInFunction::start_on(port.port())
        .await
        .expect("function");
    while let Some(joined) = calls.join_next().await {
        let (sent, response) = joined.expect("task");
        let response = response.expect("response");
        assert_eq!(response.status, 200, "{}", response.text());
        assert_eq!(response.json()["body"].as_str(), Some(sent.as_str()));
    }
    assert_eq!(function.calls(), held_fits as u64);
}

/// The gate releasing a held request does not let its body past the check: a chunked body still
/// arriving when the function comes up is read to its end first, and over the limit it is
/// answered 413 with the function never called.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_by_the_gate_waits_for_the_body_check() {
    // Over the limit once the rest arrives: 413, the function never called; within it: served.
    release_while_the_body_arrives(900, 200, 413).await;
    release_while_the_body_arrives(400, 500, 200).await;
}

async fn release_while_the_body_arrives(first: usize, rest: usize, want: u16) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let port = ReservedPort::new().expect("port");
    let envoy =
        Envoy::start_accepted(EnvoyOptions::for_function(port.port()).config(policy("enforce")))
            .await;
    let mut stream = tokio::net::TcpStream::connect(envoy.addr())
        .await
        .expect("connect");
    let chunk = |n: usize| format!("{n:x}\r\n{}\r\n", "b".repeat(n));
    let head = "POST /function/env/slow HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\
                Connection: close\r\n\r\n";
    stream
        .write_all(format!("{head}{}", chunk(first)).as_bytes())
        .await
        .expect("write");
    // Held: the function is down. Then it comes up and the gate releases the request while its
    // body is still arriving.
    envoy
        .wait_for_filter_stat("env", "readiness.pending", Duration::from_secs(10), |v| {
            v >= 1
        })
        .await;
    let function = StandInFunction::start_on(port.port())
        .await
        .expect("function");
    let released = envoy
        .wait_for_filter_stat("env", "readiness.released", Duration::from_secs(10), |v| {
            v >= 1
        })
        .await;
    assert_eq!(released, 1);
    assert_eq!(function.calls(), 0, "released before its body was read");
    stream
        .write_all(format!("{}0\r\n\r\n", chunk(rest)).as_bytes())
        .await
        .expect("write");
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(http::EXCHANGE_TIMEOUT, stream.read_to_end(&mut raw)).await;
    let text = String::from_utf8_lossy(&raw);
    assert!(
        text.starts_with(&format!("HTTP/1.1 {want}")),
        "{first}+{rest}: {text}"
    );
    assert_eq!(function.calls(), u64::from(want == 200), "{first}+{rest}");
}

/// Issue 23, part 1: the held-body budget holds across a re-arm. Three 20 kB bodies are held
/// against 64 KiB and released when the function is ready; they run for seconds, and meanwhile
/// the function fails (a 500, then its readiness path), the gate re-arms and holds three new
/// ones. When the first three finish, nothing of theirs may come off the new holds' count: three
/// more bodies are refused at once, as the budget says. Before, the first three subtracted their
/// bytes from the new count and three more were held (120,000 bytes against 65,536).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_body_budget_holds_across_a_rearm() {
    const EACH: usize = 20_000;
    let function = StandInFunction::start().await.expect("function");
    function.set_healthy(false);
    let mut options = EnvoyOptions::for_function(function.port())
        .config(r#"{"readiness": {"max_pending_bytes": 65536, "max_wait_ms": 20000}}"#);
    // One worker: a second one learns of the re-arm on its next slow tick and would send the
    // second wave on meanwhile (the native tests in src/host/gate.rs cover two workers).
    options.concurrency = 1;
    let envoy = Envoy::start_accepted(options).await;
    let addr = envoy.addr();
    let patience = Duration::from_secs(20);
    let post = |tag: &str, i: usize, sleep_ms: u64| {
        Request::new("POST", &format!("/function/env/{tag}/{i}"))
            .header("X-Stand-In-Sleep-Ms", &sleep_ms.to_string())
            .body(vec![b'a' + i as u8; EACH])
    };

    let mut first = tokio::task::JoinSet::new();
    for i in 0..3 {
        let request = post("first", i, 4000);
        first.spawn(async move { http::send(addr, &request).await });
    }
    envoy
        .wait_for_filter_stat("env", "readiness.pending", patience, |v| v == 3)
        .await;
    function.set_healthy(true);
    envoy
        .wait_for_filter_stat("env", "readiness.released", patience, |v| v == 3)
        .await;
    // They run; the function fails meanwhile: the gate re-arms.
    function.set_healthy(false);
    let failed = envoy
        .send(&Request::get("/function/env/fail").header("X-Stand-In-Status", "500"))
        .await
        .expect("response");
    assert_eq!(failed.status, 500);
    envoy
        .wait_for_filter_stat("env", "readiness.ready", patience, |v| v == 0)
        .await;

    let mut second = tokio::task::JoinSet::new();
    for i in 0..3 {
        let request = post("second", i, 0);
        second.spawn(async move { http::send(addr, &request).await });
    }
    envoy
        .wait_for_filter_stat("env", "readiness.pending", patience, |v| v == 3)
        .await;
    while let Some(done) = first.join_next().await {
        let response = done.expect("task").expect("response");
        assert_eq!(response.status, 200, "{}", response.text());
    }
    // 60,000 bytes are held: none of three more fits.
    for i in 0..3 {
        let response = envoy.send(&post("third", i, 0)).await.expect("response");
        assert_eq!(response.status, 503, "{}", response.text());
        assert_eq!(
            response.json()["error"],
            "too many request bytes waiting for the function to become ready",
            "the third wave was held: the budget was exceeded"
        );
    }
    function.set_healthy(true);
    while let Some(done) = second.join_next().await {
        let response = done.expect("task").expect("response");
        assert_eq!(response.status, 200, "{}", response.text());
    }
}
