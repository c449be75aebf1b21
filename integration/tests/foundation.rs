//! The foundation through a real Envoy: path rewrite, call-id and timing headers, the local
//! function's name, and what Envoy does with good and bad plugin configurations.
//!
//! Each test starts its own stand-in function and Envoy on free loopback ports and stops them
//! when it ends, so tests run in parallel.

use faas_mesh_integration::envoy::{ConfigOutcome, Envoy, EnvoyOptions};
use faas_mesh_integration::envoy_process::EnvoyProcess;
use faas_mesh_integration::http::{self, Request, Response};
use faas_mesh_integration::stand_in::StandInFunction;
use serde_json::Value;
use std::collections::HashSet;
use std::time::{SystemTime, UNIX_EPOCH};

/// A stand-in function `env` behind an Envoy sidecar with the given plugin configuration.
async fn pod(plugin_config: &str) -> (StandInFunction, Envoy) {
    pod_with(|o| o.config(plugin_config)).await
}

async fn pod_with(adjust: impl FnOnce(EnvoyOptions) -> EnvoyOptions) -> (StandInFunction, Envoy) {
    let function = StandInFunction::start().await.expect("stand-in function");
    let envoy = Envoy::start(adjust(EnvoyOptions::for_function(function.port())))
        .await
        .expect("Envoy");
    (function, envoy)
}

async fn accepted(plugin_config: &str) -> (StandInFunction, Envoy) {
    let (function, envoy) = pod(plugin_config).await;
    assert_eq!(
        envoy.initial_config(),
        ConfigOutcome::Accepted,
        "configuration {plugin_config} was refused:\n{}",
        envoy.log()
    );
    (function, envoy)
}

/// The function's echo in a 200 response.
fn echo(response: &Response) -> Value {
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()
}

/// Every value of a request header as the function received it.
fn received(echo: &Value, name: &str) -> Vec<String> {
    echo["headers"][name]
        .as_array()
        .map(|values| {
            values
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn only(values: Vec<String>, what: &str) -> String {
    assert_eq!(
        values.len(),
        1,
        "{what}: expected one value, got {values:?}"
    );
    values.into_iter().next().unwrap_or_default()
}

fn assert_uuid_v4(id: &str) {
    let bytes = id.as_bytes();
    let shape_ok = id.len() == 36
        && id.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit() && !c.is_ascii_uppercase(),
        });
    assert!(shape_ok, "not a lowercase UUID: {id:?}");
    assert_eq!(bytes[14], b'4', "not version 4: {id}");
    assert!(
        matches!(bytes[19], b'8' | b'9' | b'a' | b'b'),
        "not the RFC 4122 variant: {id}"
    );
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// `%f` as Go and the watchdog print it: digits, a point, six digits.
fn assert_seconds(value: &str) -> f64 {
    let (whole, frac) = value
        .split_once('.')
        .unwrap_or_else(|| panic!("duration {value:?} has no decimal point"));
    assert!(
        !whole.is_empty()
            && whole.bytes().all(|b| b.is_ascii_digit())
            && frac.len() == 6
            && frac.bytes().all(|b| b.is_ascii_digit()),
        "duration {value:?} is not %f"
    );
    value.parse().unwrap_or(f64::NAN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_to_the_local_function_is_rewritten_and_stamped() {
    let (function, envoy) = accepted("{}").await;
    let before = now_nanos();
    let response = envoy.get("/function/env/a/b?x=1").await;
    let after = now_nanos();

    let seen = echo(&response);
    assert_eq!(seen["path"], "/a/b?x=1");
    let call_id = only(received(&seen, "x-call-id"), "x-call-id at the function");
    assert_uuid_v4(&call_id);
    let start: u128 = only(
        received(&seen, "x-start-time"),
        "x-start-time at the function",
    )
    .parse()
    .expect("x-start-time is an integer");
    assert!(
        before <= start && start <= after,
        "start time {start} is not between {before} and {after}"
    );

    assert_eq!(response.header_all("x-call-id"), vec![call_id.as_str()]);
    let duration = assert_seconds(response.header("x-duration-seconds").expect("duration"));
    let elapsed = (after - before) as f64 / 1e9;
    assert!(
        (0.0..=elapsed).contains(&duration),
        "duration {duration} outside 0..{elapsed}"
    );
    assert_eq!(function.calls(), 1);

    // A body and a method pass through untouched.
    let response = envoy
        .send(&Request::new("POST", "/function/env").body("hello"))
        .await
        .expect("POST");
    let seen = echo(&response);
    assert_eq!(
        (
            seen["method"].as_str(),
            seen["path"].as_str(),
            seen["body"].as_str()
        ),
        (Some("POST"), Some("/"), Some("hello"))
    );
}

/// The rewrite vectors of the unit tests, sent through Envoy. Istio's inbound settings
/// (normalize_path, merge_slashes off, escaped slashes kept) run before the filter; where they
/// change a path, the vector says what the function gets through Envoy (`envoy`).
/// The bootstrap text other tools (the benchmark) take from the harness is the one the tests run:
/// Envoy started on it alone accepts the plugin configuration and rewrites a call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rendered_bootstrap_runs_on_its_own() {
    let function = StandInFunction::start().await.expect("stand-in function");
    let dir = tempfile::tempdir().expect("folder");
    let yaml = EnvoyOptions::for_function(function.port())
        .bootstrap_yaml(dir.path())
        .expect("bootstrap");
    let bootstrap: Value = serde_yaml::from_str(&yaml).expect("YAML");
    let patches = faas_mesh_integration::manifest::Patches::from_repository().expect("manifest");
    let mut envoy = EnvoyProcess::start(dir, &bootstrap, 2)
        .await
        .expect("Envoy");
    let port = envoy
        .wait_for_listener("its listener", |listeners| {
            listeners["listener_statuses"][0]["local_address"]["socket_address"]["port_value"]
                .as_u64()
                .filter(|port| *port != 0)
        })
        .await
        .expect("listener");
    assert_eq!(
        envoy
            .wait_for_config_outcome(&patches.filter_name(), (0, 0))
            .await
            .expect("an outcome"),
        ConfigOutcome::Accepted,
        "{}",
        envoy.log()
    );
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port as u16));
    let response = http::send(addr, &Request::get("/function/env/a/b?x=1"))
        .await
        .expect("response");
    assert_eq!(echo(&response)["path"], "/a/b?x=1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rewrite_vector_holds_through_envoy() {
    let vectors: Value = serde_json::from_str(
        &std::fs::read_to_string(faas_mesh_integration::repo_root().join("testdata/rewrite.json"))
            .expect("testdata/rewrite.json"),
    )
    .expect("rewrite.json is JSON");
    let (function, envoy) = accepted("{}").await;
    let mut checked = 0;
    let mut failures = Vec::new();
    for case in vectors["cases"].as_array().expect("cases") {
        // Only the cases of the default pod (env in openfaas-fn, default rewrite settings).
        if ["local", "namespace", "other_function", "prefix"]
            .iter()
            .any(|k| case.get(*k).is_some())
        {
            continue;
        }
        let path = case["path"].as_str().expect("path");
        let Some(expect) = case
            .get("envoy")
            .or_else(|| case.get("expect"))
            .and_then(Value::as_str)
        else {
            continue;
        };
        let calls_before = function.calls();
        let response = envoy
            .send(&Request::get(path))
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let got = match response.status {
            200 => {
                let seen = response.json();
                let seen_path = seen["path"].as_str().unwrap_or_default().to_string();
                if seen_path == path {
                    "unprefixed".to_string()
                } else {
                    seen_path
                }
            }
            status if response.header("x-openfaas-internal") == Some("faas-mesh-filter") => {
                assert_eq!(
                    function.calls(),
                    calls_before,
                    "{path}: a {status} reached the function"
                );
                format!("{status} {}", reason_code(&response.json()["error"]))
            }
            // Refused by Envoy itself, before the filter.
            status => status.to_string(),
        };
        if got != expect {
            failures.push(format!("{path}: expected {expect}, got {got}"));
        }
        checked += 1;
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(checked >= 30, "only {checked} vectors checked");
}

fn reason_code(message: &Value) -> &'static str {
    match message.as_str() {
        Some("missing function name") => "missing_name",
        Some("invalid function name") => "invalid_name",
        Some("function not served by this pod") => "other_function",
        Some("dot segment in path") => "dot_segment",
        _ => "unknown",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_functions_name_is_answered_404_by_the_filter() {
    let (function, envoy) = accepted("{}").await;
    let response = envoy.get("/function/figlet/a?x=1").await;
    assert_eq!(response.status, 404);
    assert_eq!(
        response.header("x-openfaas-internal"),
        Some("faas-mesh-filter")
    );
    assert_eq!(response.header("content-type"), Some("application/json"));
    let call_id = response
        .header("x-call-id")
        .expect("call id on a 404")
        .to_string();
    assert_uuid_v4(&call_id);
    let body = response.json();
    assert_eq!(body["error"], "function not served by this pod");
    assert_eq!(body["function"], "env");
    assert_eq!(body["call_id"], call_id.as_str());
    assert!(response.header("x-duration-seconds").is_none());

    // A caller's call id is the one the 404 names.
    let response = envoy
        .send(&Request::get("/function/figlet").header("X-Call-Id", "caller-7"))
        .await
        .expect("GET");
    assert_eq!(response.status, 404);
    assert_eq!(response.header_all("x-call-id"), vec!["caller-7"]);
    assert_eq!(response.json()["call_id"], "caller-7");
    assert_eq!(
        function.calls(),
        0,
        "the function saw a request meant for another"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_function_pass_rewrites_any_name() {
    let (_function, envoy) = accepted(r#"{"rewrite": {"other_function": "pass"}}"#).await;
    let seen = echo(&envoy.get("/function/figlet.openfaas-fn/x?y=1").await);
    assert_eq!(seen["path"], "/x?y=1");
    let seen = echo(&envoy.get("/function/env/z").await);
    assert_eq!(seen["path"], "/z");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_safe_call_id_is_kept_and_others_are_replaced() {
    let (_function, envoy) = accepted("{}").await;
    let kept = "4fb1a1b2-5a0e-4d3c-9f8a-0c1d2e3f4a5b";
    let response = envoy
        .send(&Request::get("/function/env/").header("X-Call-Id", kept))
        .await
        .expect("GET");
    assert_eq!(received(&echo(&response), "x-call-id"), vec![kept]);
    assert_eq!(response.header_all("x-call-id"), vec![kept]);

    let too_long = "x".repeat(129);
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("longer than 128 characters", vec![too_long.as_str()]),
        ("not visible ASCII", vec!["a b"]),
        ("sent twice", vec!["one", "two"]),
        ("empty", vec![""]),
    ];
    for (why, values) in cases {
        let mut request = Request::get("/function/env/");
        for v in &values {
            request = request.header("X-Call-Id", v);
        }
        let response = envoy.send(&request).await.expect("GET");
        let id = only(received(&echo(&response), "x-call-id"), why);
        assert_uuid_v4(&id);
        assert_eq!(response.header_all("x-call-id"), vec![id.as_str()], "{why}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_call_id_is_always_replaced() {
    let (_function, envoy) = accepted(r#"{"headers": {"trust_incoming_call_id": false}}"#).await;
    let response = envoy
        .send(&Request::get("/function/env/").header("X-Call-Id", "caller-chosen"))
        .await
        .expect("GET");
    let id = only(received(&echo(&response), "x-call-id"), "x-call-id");
    assert_uuid_v4(&id);
    assert_eq!(response.header("x-call-id"), Some(id.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_start_time_is_replaced_and_the_functions_duration_kept() {
    let (_function, envoy) = accepted("{}").await;
    let before = now_nanos();
    let response = envoy
        .send(
            &Request::get("/function/env/")
                .header("X-Start-Time", "1")
                .header("X-Start-Time", "2")
                .header("X-Stand-In-Duration", "9.5"),
        )
        .await
        .expect("GET");
    let start: u128 = only(received(&echo(&response), "x-start-time"), "x-start-time")
        .parse()
        .expect("integer");
    assert!(start >= before, "caller's start time was kept: {start}");
    assert_eq!(response.header_all("x-duration-seconds"), vec!["9.5"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_names_are_configurable() {
    let (_function, envoy) = accepted(
        r#"{"headers": {"call_id": "X-Request-Id", "start_time": "X-Begin", "duration": "X-Took"}}"#,
    )
    .await;
    let response = envoy
        .send(&Request::get("/function/env/").header("X-Request-Id", "r-1"))
        .await
        .expect("GET");
    let seen = echo(&response);
    assert_eq!(received(&seen, "x-request-id"), vec!["r-1"]);
    assert_eq!(received(&seen, "x-begin").len(), 1);
    assert!(received(&seen, "x-call-id").is_empty());
    assert!(received(&seen, "x-start-time").is_empty());
    assert_eq!(response.header("x-request-id"), Some("r-1"));
    assert_seconds(response.header("x-took").expect("x-took"));
    assert!(response.header("x-duration-seconds").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_function_name_comes_from_the_label_or_the_override() {
    // The label of this pod says figlet.
    let (_f, envoy) = pod_with(|o| o.labels(&[("faas_function", "figlet")])).await;
    assert_eq!(echo(&envoy.get("/function/figlet/x").await)["path"], "/x");
    assert_eq!(envoy.get("/function/env/x").await.status, 404);
    drop(envoy);

    // An explicit name wins over the label.
    let (_f, envoy) = pod(r#"{"function": {"name": "nodeinfo"}}"#).await;
    assert_eq!(echo(&envoy.get("/function/nodeinfo/x").await)["path"], "/x");
    assert_eq!(envoy.get("/function/env/x").await.status, 404);
    drop(envoy);

    // Another label key.
    let (_f, envoy) = pod_with(|o| {
        o.labels(&[("app", "shasum")])
            .config(r#"{"function": {"name_label": "app"}}"#)
    })
    .await;
    assert_eq!(echo(&envoy.get("/function/shasum").await)["path"], "/");
    drop(envoy);

    // No label and no name: the filter starts (call ids still work), prefixed paths are 404.
    let (_f, envoy) = pod_with(|o| o.labels(&[])).await;
    assert_eq!(envoy.initial_config(), ConfigOutcome::Accepted);
    let response = envoy.get("/function/env/x").await;
    assert_eq!(response.status, 404);
    assert_eq!(response.json()["function"], "");
    let seen = echo(&envoy.get("/plain").await);
    assert_eq!(seen["path"], "/plain");
    assert_uuid_v4(&only(received(&seen, "x-call-id"), "x-call-id"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_configuration_at_start_is_refused_and_names_the_key() {
    for (config, message) in [
        (
            r#"{"rewrite": {"prefx": "/fn/"}}"#,
            "rewrite.prefx: unknown key (expected one of: prefix, other_function, gateway_principal)",
        ),
        (
            r#"{"headers": {"trust_incoming_call_id": "yes"}}"#,
            "headers.trust_incoming_call_id: expected a boolean, got \"yes\"",
        ),
    ] {
        let (function, envoy) = pod(config).await;
        assert_eq!(envoy.initial_config(), ConfigOutcome::Rejected, "{config}");
        let log = envoy.log_when(|log| log.contains(message)).await;
        assert!(
            log.lines().any(|l| l.contains("[error]")
                && l.contains(&format!("invalid configuration: {message}"))),
            "{config}: the log does not name the key:\n{log}"
        );
        assert!(
            envoy
                .stat(&envoy.ecds_stat("config_fail"))
                .await
                .expect("stats")
                >= 1
        );
        assert_eq!(
            envoy
                .stat(&envoy.ecds_stat("update_success"))
                .await
                .expect("stats"),
            0
        );
        // No configuration was ever good: the plugin fails closed. Envoy answers every request
        // 500 itself (not the filter, which never ran) and the function sees nothing; no
        // request slips past a policy that could not load.
        let response = envoy.get("/function/env/a").await;
        assert_eq!(
            response.status, 500,
            "an unconfigured filter let a request through"
        );
        assert_eq!(function.calls(), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_configuration_pushed_later_leaves_the_last_good_one_serving() {
    let (_function, mut envoy) = accepted(r#"{"rewrite": {"other_function": "pass"}}"#).await;
    assert_eq!(echo(&envoy.get("/function/figlet/x").await)["path"], "/x");

    let outcome = envoy
        .push_config(r#"{"rewrite": {"other_function": "allow"}}"#)
        .await
        .expect("push");
    assert_eq!(outcome, ConfigOutcome::Rejected);
    let message = "invalid configuration: rewrite.other_function: expected one of \"reject\", \"pass\", got \"allow\"";
    let log = envoy.log_when(|log| log.contains(message)).await;
    assert!(log.contains(message), "{log}");
    // Still the last good configuration.
    for _ in 0..10 {
        assert_eq!(echo(&envoy.get("/function/figlet/x").await)["path"], "/x");
    }

    // A good configuration replaces it: back to the defaults (reject).
    assert_eq!(
        envoy.push_config("{}").await.expect("push"),
        ConfigOutcome::Accepted
    );
    let mut statuses = HashSet::new();
    for _ in 0..10 {
        statuses.insert(envoy.get("/function/figlet/x").await.status);
    }
    assert_eq!(statuses, HashSet::from([404]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_each_get_their_own_call_id() {
    let (function, envoy) = accepted("{}").await;
    let addr = envoy.addr();
    let mut ids = HashSet::new();
    for _batch in 0..10 {
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..20 {
            tasks.spawn(async move {
                http::send(addr, &Request::get(&format!("/function/env/n/{i}"))).await
            });
        }
        while let Some(done) = tasks.join_next().await {
            let response = done.expect("task").expect("request");
            let seen = echo(&response);
            let id = only(received(&seen, "x-call-id"), "x-call-id");
            assert_eq!(response.header("x-call-id"), Some(id.as_str()));
            assert!(seen["path"].as_str().unwrap_or_default().starts_with("/n/"));
            ids.insert(id);
        }
    }
    assert_eq!(ids.len(), 200, "call ids repeated");
    assert_eq!(function.calls(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_with_prior_knowledge_is_handled_the_same() {
    let (_function, envoy) = accepted("{}").await;
    let requests = vec![
        Request::get("/function/env/h2?x=1"),
        Request::get("/function/env.openfaas-fn/").header("x-call-id", "h2-caller"),
        Request::get("/function/other/"),
    ];
    let responses = http::send_h2(envoy.addr(), &requests).await.expect("h2");
    let first = echo(&responses[0]);
    assert_eq!(first["path"], "/h2?x=1");
    assert_uuid_v4(&only(received(&first, "x-call-id"), "x-call-id"));
    assert!(responses[0].header("x-duration-seconds").is_some());
    assert_eq!(
        received(&echo(&responses[1]), "x-call-id"),
        vec!["h2-caller"]
    );
    assert_eq!(responses[1].header("x-call-id"), Some("h2-caller"));
    assert_eq!(responses[2].status, 404);
    assert_eq!(
        responses[2].header("x-openfaas-internal"),
        Some("faas-mesh-filter")
    );
}
