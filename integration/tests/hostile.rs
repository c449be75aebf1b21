//! Hostile requests through a real Envoy: each gets a defined outcome (passed clean, rewritten, or
//! a clear 4xx), never a crash, a 5xx or a way around the policy.

use faas_mesh_integration::envoy::{Envoy, EnvoyOptions};
use faas_mesh_integration::http::{self, Request, Response};
use faas_mesh_integration::stand_in::StandInFunction;

/// The function allows GET and POST, bodies up to 1000 bytes.
const POLICY: &str =
    r#"{"policy": {"default": {"methods": ["GET", "POST"], "max_body_bytes": 1000}}}"#;

async fn pod() -> (StandInFunction, Envoy) {
    let function = StandInFunction::start().await.expect("function");
    let envoy =
        Envoy::start_accepted(EnvoyOptions::for_function(function.port()).config(POLICY)).await;
    (function, envoy)
}

fn assert_defined(response: &Response, what: &str) {
    assert!(
        response.status < 500,
        "{what}: {} {}",
        response.status,
        response.text()
    );
}

fn raw(request_line_and_headers: &[u8]) -> Vec<u8> {
    let mut wire = request_line_and_headers.to_vec();
    wire.extend_from_slice(b"Host: x\r\nConnection: close\r\n\r\n");
    wire
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_in_call_id_and_trace_headers_never_reach_the_function() {
    let (function, envoy) = pod().await;
    for (header, value) in [
        ("X-Call-Id", &b"abc\0def"[..]),
        ("X-Call-Id", b"abc\rdef"),
        (
            "traceparent",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\0",
        ),
        ("X-B3-TraceId", b"80f198ee56343ba8\r"),
    ] {
        let mut head = b"GET /function/env/x HTTP/1.1\r\n".to_vec();
        head.extend_from_slice(header.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value);
        head.extend_from_slice(b"\r\n");
        let response = http::send_raw(envoy.addr(), &raw(&head))
            .await
            .expect("response");
        match response.status {
            // Refused by Envoy's codec.
            400 => {}
            // Or accepted by the codec: then the filter replaced the value; nothing with a
            // control character reaches the function.
            200 => {
                let echo = response.json();
                let call_id = echo["headers"]["x-call-id"][0].as_str().unwrap_or_default();
                // Envoy's codec may drop a bare CR itself ("abc\rdef" arrives as "abcdef");
                // whatever arrives as the call id is a safe token.
                assert!(
                    !call_id.is_empty()
                        && call_id.len() <= 128
                        && call_id.bytes().all(|b| b.is_ascii_graphic()),
                    "{header}: call id {call_id:?}"
                );
                let forwarded = echo["headers"].to_string();
                assert!(
                    !forwarded.contains("\\r") && !forwarded.contains("\\u0000"),
                    "{header}: a control character reached the function: {forwarded}"
                );
            }
            other => panic!("{header}: {value:?} gave {other}"),
        }
    }
    let _ = function.calls();

    // Bytes above 0x7f are legal in a header value but not in a call id: replaced.
    let head = "GET /function/env/x HTTP/1.1\r\nX-Call-Id: caf\u{e9}-42\r\n"
        .as_bytes()
        .to_vec();
    let response = http::send_raw(envoy.addr(), &raw(&head))
        .await
        .expect("response");
    assert_eq!(response.status, 200);
    let id = response.header("x-call-id").expect("call id");
    assert_eq!(id.len(), 36, "a fresh UUID, not {id:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoded_slashes_and_dots_around_the_prefix_have_defined_outcomes() {
    let (function, envoy) = pod().await;
    let targets = [
        "/function%2Fenv/x",
        "/function/env%2F..%2Fother/x",
        "/%2e%2e/function/env/x",
        "/function/%2e%2e/env/x",
        "/function/env/%2e%2e/%2e%2e/etc/passwd",
        "/function/env/..%2F..%2Fx",
        "/function/env/%252e%252e/x",
        "/function/env/%C0%AE%C0%AE/x",
        "/function/env/a\\..\\b",
        "/FUNCTION/env/x",
        "//function//env//x",
    ];
    for target in targets {
        let response = envoy.send(&Request::get(target)).await.expect("response");
        assert_defined(&response, target);
        if response.status == 200 {
            let path = response.json()["path"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            assert!(
                !path.contains("/../"),
                "{target} reached the function as {path}"
            );
        }
        // Whatever the path, the policy holds: DELETE never reaches the function.
        let before = function.calls();
        let response = envoy
            .send(&Request::new("DELETE", target))
            .await
            .expect("response");
        assert_defined(&response, target);
        assert_ne!(response.status, 200, "DELETE {target} got through");
        assert_eq!(
            function.calls(),
            before,
            "DELETE {target} reached the function"
        );
    }
    // Raw bytes that are not UTF-8 (an overlong '.') in the request line.
    let response = http::send_raw(
        envoy.addr(),
        &raw(b"GET /function/env/\xc0\xae\xc0\xae/x HTTP/1.1\r\n"),
    )
    .await
    .expect("response");
    assert_defined(&response, "raw overlong dots");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_numerous_headers_are_refused_by_envoy_with_431() {
    let (function, envoy) = pod().await;
    let big = Request::get("/function/env/").header("X-Call-Id", &"x".repeat(100 * 1024));
    assert_eq!(envoy.send(&big).await.expect("response").status, 431);
    let mut many = Request::get("/function/env/");
    for i in 0..2000 {
        many = many.header(&format!("x-h-{i}"), "v");
    }
    assert_eq!(envoy.send(&many).await.expect("response").status, 431);
    assert_eq!(function.calls(), 0);
    // Within Envoy's limits (100 headers by default) all is well.
    let mut fine = Request::get("/function/env/");
    for i in 0..90 {
        fine = fine.header(&format!("x-h-{i}"), "v");
    }
    let response = envoy.send(&fine).await.expect("response");
    assert_eq!(response.status, 200);
    assert!(response.header("x-call-id").is_some());
}

async fn h2_post_with_trailers(envoy: &Envoy, len: usize) -> u16 {
    let mut trailers = hyper::HeaderMap::new();
    trailers.insert("x-checksum", "abc".parse().expect("value"));
    let request = Request::new("POST", "/function/env/upload").body(vec![b'b'; len]);
    http::send_h2_frames(envoy.addr(), &request, len, Some(trailers))
        .await
        .expect("response")
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_bodies_with_trailers_are_counted_too() {
    let (function, envoy) = pod().await;
    assert_eq!(h2_post_with_trailers(&envoy, 900).await, 200);
    assert_eq!(h2_post_with_trailers(&envoy, 1500).await, 413);
    assert!(
        function
            .received()
            .iter()
            .all(|echo| echo["body"].as_str().map_or(0, str::len) <= 1000),
        "an oversized body reached the function"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_override_headers_cannot_reach_a_forbidden_method() {
    let (function, envoy) = pod().await;
    for header in [
        "X-HTTP-Method-Override",
        "X-HTTP-Method",
        "X-Method-Override",
    ] {
        let response = envoy
            .send(
                &Request::new("POST", "/function/env/")
                    .header(header, "DELETE")
                    .body("x"),
            )
            .await
            .expect("response");
        assert_eq!(response.status, 405, "{header}");
    }
    assert_eq!(function.calls(), 0);
}

/// Istio's `pathNormalization: NONE` leaves dot segments to the filter: in any spelling, over
/// HTTP/1.1 and HTTP/2, a rewritten path with one is answered 400 (with the call id) and never
/// reaches the function; without the prefix the path is not the filter's to change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_envoys_normalization_dot_segments_never_reach_the_function() {
    let function = StandInFunction::start().await.expect("stand-in function");
    let mut options = EnvoyOptions::for_function(function.port());
    options.normalize_path = false;
    let envoy = Envoy::start(options).await.expect("envoy");
    let targets = [
        "/function/env/../x",
        "/function/env/./x",
        "/function/env/..",
        "/function/env/a/../../x",
        "/function/env/%2e%2e/x",
        "/function/env/%2E%2e/x",
        "/function/env/.%2e/x?y=1",
        "/function/env/..%2Fx",
        "/function/env/a%2f..%2fb",
        "/function/env/..%5Cx",
        "/function/env.openfaas-fn/../x",
    ];
    let check = |target: &str, response: &Response| {
        assert_eq!(response.status, 400, "{target}: {}", response.text());
        assert_eq!(
            response.header("x-openfaas-internal"),
            Some("faas-mesh-filter"),
            "{target}"
        );
        let call_id = response.header("x-call-id").expect("call id on a 400");
        assert_eq!(response.json()["call_id"], call_id, "{target}");
        assert_eq!(response.json()["error"], "dot segment in path", "{target}");
    };
    for target in targets {
        let response = envoy.send(&Request::get(target)).await.expect("response");
        check(target, &response);
        let response = envoy
            .send(&Request::new("POST", target).body("ok"))
            .await
            .expect("response");
        check(target, &response);
    }
    let requests: Vec<Request> = targets.iter().map(|t| Request::get(t)).collect();
    let responses = http::send_h2(envoy.addr(), &requests)
        .await
        .expect("h2 responses");
    for (target, response) in targets.iter().zip(&responses) {
        check(target, response);
    }
    assert_eq!(function.calls(), 0, "a dot segment reached the function");
    // A plain path and a prefixed one without dot segments still go through.
    let seen = envoy.get("/function/env/a/.../b?x=../y").await;
    assert_eq!(seen.status, 200);
    assert_eq!(seen.json()["path"], "/a/.../b?x=../y");
}
