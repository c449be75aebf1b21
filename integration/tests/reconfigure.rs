//! Live reconfiguration under a steady request stream: a new policy applies, an invalid one is
//! refused with the key named while the old keeps serving, and a new module version takes over,
//! with no request of the stream failing at any push.

use faas_mesh_integration::envoy::{ConfigOutcome, Envoy, EnvoyOptions};
use faas_mesh_integration::filter_build::FilterBuild;
use faas_mesh_integration::http::{self, Request};
use faas_mesh_integration::stand_in::StandInFunction;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The module of the build under test, as a new release would be: the same code, a different
/// file and hash.
fn next_version(module: &[u8]) -> Vec<u8> {
    match FilterBuild::current() {
        FilterBuild::Wasm => next_wasm_version(module),
        // Bytes after the end of an ELF file: the loader maps only what its headers name.
        FilterBuild::Native => [module, b"faas-mesh-filter.test-version 2".as_slice()].concat(),
    }
}

/// A Wasm module with a custom section appended.
fn next_wasm_version(wasm: &[u8]) -> Vec<u8> {
    let name = b"faas-mesh-filter.test-version";
    let payload = b"2";
    let mut section = vec![name.len() as u8];
    section.extend_from_slice(name);
    section.extend_from_slice(payload);
    let mut out = wasm.to_vec();
    out.push(0); // custom section
    out.push(section.len() as u8); // LEB128, < 128
    out.extend_from_slice(&section);
    out
}

async fn delete_status(envoy: &Envoy) -> u16 {
    envoy
        .send(&Request::new("DELETE", "/function/env/x"))
        .await
        .expect("send")
        .status
}

/// The status a DELETE gets once every worker has the pushed configuration: Envoy counts a push
/// accepted before each worker has swapped it in, so the test polls (bounded) instead of
/// sleeping a fixed time that a loaded machine may overrun.
async fn settled_delete_status(envoy: &Envoy, want: u16) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = delete_status(envoy).await;
        if status == want || Instant::now() > deadline {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (bounded) until the stream has had `more` answers since `since`: each push is followed
/// by traffic whatever the time the push took (a native module loads in milliseconds, a Wasm
/// module is compiled by V8 on every worker).
async fn stream_goes_on(answered: &AtomicUsize, since: usize, more: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = answered.load(Ordering::SeqCst);
        if now >= since + more {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "the stream stalled: {} answers in 60 s",
            now - since
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pushes_under_load_lose_no_request() {
    let function = StandInFunction::start().await.expect("function");
    let mut envoy = Envoy::start(EnvoyOptions::for_function(function.port()))
        .await
        .expect("Envoy");
    assert_eq!(envoy.get("/function/env/warm").await.status, 200);

    // The stream: four clients, one request at a time each, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..4 {
        let (stop, answered, addr) = (stop.clone(), answered.clone(), envoy.addr());
        clients.spawn(async move {
            let mut statuses = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let request = if i % 2 == 0 {
                    Request::get(&format!("/function/env/c{c}/{i}"))
                } else {
                    Request::new("POST", &format!("/function/env/c{c}/{i}")).body("payload")
                };
                let status = match http::send(addr, &request).await {
                    Ok(response) => response.status,
                    Err(_) => 0, // a reset or no answer counts as a failure
                };
                statuses.push(status);
                answered.fetch_add(1, Ordering::SeqCst);
                i += 1;
            }
            statuses
        });
    }
    assert_eq!(delete_status(&envoy).await, 200, "no policy yet");
    let mut seen = stream_goes_on(&answered, 0, 25).await;

    // (a) A new valid policy applies.
    let policy = r#"{"policy": {"default": {"methods": ["GET", "POST"]}}}"#;
    assert_eq!(
        envoy.push_config(policy).await.expect("push"),
        ConfigOutcome::Accepted
    );
    assert_eq!(settled_delete_status(&envoy, 405).await, 405);
    seen = stream_goes_on(&answered, seen, 25).await;

    // (b) An invalid one is refused, named, and the valid one keeps serving.
    let invalid = r#"{"policy": {"default": {"methods": "GET"}}}"#;
    assert_eq!(
        envoy.push_config(invalid).await.expect("push"),
        ConfigOutcome::Rejected
    );
    let message =
        "invalid configuration: policy.default.methods: expected a list of strings, got \"GET\"";
    let log = envoy.log_when(|log| log.contains(message)).await;
    assert!(log.contains(message), "{log}");
    assert_eq!(delete_status(&envoy).await, 405);
    seen = stream_goes_on(&answered, seen, 25).await;

    // (c) A new module version takes over.
    let dir = tempfile::tempdir().expect("tempdir");
    let build = FilterBuild::current();
    let current = build.module().expect("module");
    let next = dir.path().join(format!(
        "next-{}",
        current
            .file_name()
            .and_then(|n| n.to_str())
            .expect("a module file name")
    ));
    let current = std::fs::read(current).expect("module");
    std::fs::write(&next, next_version(&current)).expect("write");
    assert_eq!(
        envoy.push(policy, &next).await.expect("push"),
        ConfigOutcome::Accepted
    );
    assert_eq!(settled_delete_status(&envoy, 405).await, 405);
    stream_goes_on(&answered, seen, 25).await;

    stop.store(true, Ordering::SeqCst);
    let mut total = 0;
    while let Some(done) = clients.join_next().await {
        let statuses = done.expect("client");
        total += statuses.len();
        let failed: Vec<&u16> = statuses.iter().filter(|s| **s != 200).collect();
        assert!(
            failed.is_empty(),
            "requests failed during the pushes: {failed:?}"
        );
    }
    eprintln!("{total} requests across three pushes, none failed");
    assert!(
        total > 100,
        "the stream was too thin to show anything ({total})"
    );
}

/// What a reviewer reads is what the sidecar enforces: a configuration that reads one way and
/// would parse another (a duplicate key), that would write a framing header, that smuggles a
/// CR/LF into the probe, or whose numbers Envoy cannot honour is refused with the key named,
/// and the rule that was serving stays in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misleading_configurations_are_refused_and_the_serving_rule_stays() {
    let function = StandInFunction::start().await.expect("function");
    let enforce = r#"{"policy": {"default": {"methods": ["GET"]}}}"#;
    let mut envoy =
        Envoy::start_accepted(EnvoyOptions::for_function(function.port()).config(enforce)).await;
    assert_eq!(delete_status(&envoy).await, 405);
    let refused = [
        (
            r#"{"policy": {"default": {"methods": ["GET"], "mode": "enforce", "mode": "off"}}}"#,
            "policy.default.mode: duplicate key",
        ),
        (
            r#"{"policy": {"functions": {"env": {"mode": "enforce"}, "env": {"mode": "off"}}}}"#,
            "policy.functions.env: duplicate key",
        ),
        (
            r#"{"policy": {"default": {"mode": "off"}}, "policy": {}}"#,
            "policy: duplicate key",
        ),
        (
            r#"{"headers": {"start_time": "content-length"}}"#,
            "headers.start_time: \"content-length\" is a header",
        ),
        (
            r#"{"headers": {"call_id": "transfer-encoding"}}"#,
            "headers.call_id: \"transfer-encoding\" is a header",
        ),
        (
            r#"{"readiness": {"authority": "127.0.0.1:8080\r\nx-a: b"}}"#,
            "readiness.authority: expected visible ASCII",
        ),
        (
            r#"{"readiness": {"probe_timeout_ms": 3000000000}}"#,
            "readiness.probe_timeout_ms: expected at most 60000, got 3000000000",
        ),
    ];
    for (config, message) in refused {
        let outcome = envoy.push_config(config).await.expect("push");
        assert_eq!(outcome, ConfigOutcome::Rejected, "{config}");
        let log = envoy.log_when(|log| log.contains(message)).await;
        assert!(log.contains(message), "{config}: no log line {message:?}");
        // The enforce rule still serves.
        assert_eq!(delete_status(&envoy).await, 405, "after {config}");
        assert_eq!(envoy.get("/function/env/x").await.status, 200);
    }
}

/// A policy for a whole cluster (about 1 MiB, tens of thousands of functions) loads, the
/// sidecar keeps only its own function's rules, and Envoy's memory grows by a bounded amount
/// (wasm memory is never given back; the bound holds for the native build too); one byte more
/// than the limit is refused, naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_sized_policy_costs_the_sidecar_only_its_own_function() {
    let function = StandInFunction::start().await.expect("function");
    let mut envoy = Envoy::start(EnvoyOptions::for_function(function.port()))
        .await
        .expect("Envoy");
    assert_eq!(envoy.get("/function/env/warm").await.status, 200);
    let limit = faas_mesh_filter::config::MAX_CONFIG_BYTES;
    let document = |n: usize| {
        let mut entries: Vec<String> = (0..n)
            .map(|i| {
                format!(
                    r#""fn-{i}":{{"methods":["GET","POST"],"max_inflight":{}}}"#,
                    i % 50 + 1
                )
            })
            .collect();
        entries.push(r#""env":{"methods":["GET"]}"#.to_string());
        format!(r#"{{"policy":{{"functions":{{{}}}}}}}"#, entries.join(","))
    };
    let mut n = limit / 60;
    while document(n + 100).len() <= limit {
        n += 100;
    }
    let fits = document(n);
    assert!(fits.len() <= limit && fits.len() > limit - 10_000);
    let before = envoy.rss_kib();
    assert_eq!(
        envoy.push_config(&fits).await.expect("push"),
        ConfigOutcome::Accepted
    );
    // The local function's entry applies.
    assert_eq!(delete_status(&envoy).await, 405);
    let grown_kib = envoy.rss_kib().saturating_sub(before);
    eprintln!("a {} byte policy grew Envoy by {grown_kib} KiB", fits.len());
    // Three VMs (main thread and two workers) each read the 1 MiB text once; keeping every entry
    // as a JSON tree cost over 40 MiB before (422 MiB for 5 MB).
    assert!(
        grown_kib < 24 * 1024,
        "Envoy grew by {grown_kib} KiB for a {} byte policy",
        fits.len()
    );
    let mut over = document(n + 100);
    while over.len() <= limit {
        over = document(n + 200);
    }
    assert_eq!(
        envoy.push_config(&over).await.expect("push"),
        ConfigOutcome::Rejected
    );
    let said = format!("more than the {limit} a sidecar accepts");
    let log = envoy.log_when(|log| log.contains(&said)).await;
    assert!(log.contains(&said), "no log line {said:?}");
    assert_eq!(delete_status(&envoy).await, 405);
}
