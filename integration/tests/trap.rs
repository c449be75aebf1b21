//! A Wasm VM that traps must not take the pod down (issue 14, section 4).
//!
//! No trap is known in the filter, so one is injected: a test build (`--features test-trap`, see
//! [`trap_wasm`]) traps on a request carrying `x-faas-mesh-test-trap`, after the policy took that
//! request's in-flight slot. The VM dies holding slots: its own request's and those of the slow
//! requests it was serving. What a caller must see: the trapping request fails closed, traffic
//! comes back on its own within seconds (the shipped `failure_policy: FAIL_RELOAD` starts a new VM;
//! the dead VM's slots expire with it), and `max_inflight` then admits exactly up to its limit,
//! never more.

use faas_mesh_integration::envoy::{filter_wasm, trap_wasm, Envoy, EnvoyOptions};
use faas_mesh_integration::http::{self, Request, Response};
use faas_mesh_integration::ports::ReservedPort;
use faas_mesh_integration::stand_in::StandInFunction;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

const MAX_INFLIGHT: u64 = 3;
const CONFIG: &str = r#"{"policy": {"default": {"max_inflight": 3}}}"#;
const TRAP_HEADER: &str = "x-faas-mesh-test-trap";
/// How long a test waits for something it polls for (a loaded 2-core CI machine is slow).
const PATIENCE: Duration = Duration::from_secs(20);

/// Requests the function keeps for a minute: they hold their slots until the test drops them.
fn hold_open(envoy: &Envoy, tag: &str, count: u64) -> JoinSet<std::io::Result<Response>> {
    let mut held = JoinSet::new();
    for i in 0..count {
        let addr = envoy.addr();
        let request = Request::get(&format!("/function/env/{tag}/{i}"))
            .header("X-Stand-In-Sleep-Ms", "60000");
        held.spawn(async move { http::send(addr, &request).await });
    }
    held
}

/// Polls until `done` holds, or panics after [`PATIENCE`] naming `what`.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not after {PATIENCE:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn assert_inflight_denial(response: &Response) {
    assert_eq!(response.status, 429, "{}", response.text());
    assert_eq!(response.json()["error"], "too many requests in flight");
    assert_eq!(response.header("retry-after"), Some("1"));
}

/// `max_inflight` admits exactly up to its limit: `MAX_INFLIGHT` long requests all reach the
/// function, the next one is refused with the right 429 while they are there, and once they end
/// nothing is left counted.
async fn admits_exactly_the_limit(envoy: &Envoy, function: &StandInFunction, tag: &str) {
    function.reset_max_concurrent();
    let before = function.calls();
    let mut held = hold_open(envoy, tag, MAX_INFLIGHT);
    until("the held requests reaching the function", || {
        function.active() == MAX_INFLIGHT
    })
    .await;
    let extra = envoy.get(&format!("/function/env/{tag}/extra")).await;
    assert_inflight_denial(&extra);
    assert_eq!(function.calls(), before + MAX_INFLIGHT);
    assert_eq!(function.max_concurrent(), MAX_INFLIGHT);
    // The callers give up: their slots come back.
    held.abort_all();
    while held.join_next().await.is_some() {}
    envoy
        .wait_for_filter_stat("env", "policy.inflight", PATIENCE, |v| v == 0)
        .await;
    until("the function seeing its callers go", || {
        function.active() == 0
    })
    .await;
}

async fn a_trap_holding_slots_heals_on_its_own(concurrency: u32) {
    let function = StandInFunction::start().await.expect("function");
    let mut options = EnvoyOptions::for_function(function.port()).config(CONFIG);
    options.concurrency = concurrency;
    options.module = Some(trap_wasm().expect("the test-trap module"));
    let envoy = Envoy::start_accepted(options).await;
    admits_exactly_the_limit(&envoy, &function, "before").await;

    // Slow requests hold all slots but one; the trapping request takes the last one and traps
    // with it. (With two workers the slow ones are spread over both VMs; one of them dies.)
    let mut orphans = hold_open(&envoy, "slow", MAX_INFLIGHT - 1);
    until("the slow requests reaching the function", || {
        function.active() == MAX_INFLIGHT - 1
    })
    .await;
    let calls = function.calls();
    let trapped = envoy
        .send(&Request::get("/function/env/trap").header(TRAP_HEADER, "1"))
        .await
        .expect("an answer to the trapping request, not a reset");
    assert!(
        trapped.status >= 500,
        "the trapping request must fail closed, got {}: {}",
        trapped.status,
        trapped.text()
    );
    assert_eq!(
        function.calls(),
        calls,
        "the trapping request reached the function"
    );
    let log = envoy
        .log_when(|log| log.contains("proxy_on_request_headers failed"))
        .await;
    assert!(
        log.contains("proxy_on_request_headers failed"),
        "no trap in the log:\n{log}"
    );

    // Traffic recovers by itself: no configuration push, no restart. Until then a caller gets
    // Envoy's fail-closed 503 (the dead VM) or the filter's 429 (slots of the dead VM not yet
    // expired), never anything else.
    let trap_at = Instant::now();
    let mut seen = Vec::new();
    loop {
        let response = envoy.get("/function/env/after").await;
        if response.status == 200 {
            break;
        }
        if response.status == 429 {
            assert_inflight_denial(&response);
        } else {
            assert_eq!(response.status, 503, "{}", response.text());
        }
        seen.push(response.status);
        assert!(
            trap_at.elapsed() < PATIENCE,
            "no recovery {PATIENCE:?} after the trap: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let recovered = trap_at.elapsed();
    let fail_closed = seen.iter().filter(|s| **s == 503).count();
    let denied = seen.iter().filter(|s| **s == 429).count();
    eprintln!(
        "concurrency {concurrency}: served again {recovered:?} after the trap \
         ({fail_closed} fail-closed 503s, {denied} 429s before)"
    );
    let stats = envoy.stats().await.expect("stats");
    let reloaded: u64 = stats
        .iter()
        .filter(|(n, _)| n.starts_with("wasm.") && n.ends_with("vm_reload_success"))
        .map(|(_, v)| *v)
        .sum();
    eprintln!("vm_reload_success: {reloaded}");

    // The slow requests of the dead VM are dropped by their callers; then the limit is exactly
    // the limit again: the dead VM's slots did not outlive it, and none was counted twice.
    orphans.abort_all();
    while orphans.join_next().await.is_some() {}
    until("the function seeing the slow callers go", || {
        function.active() == 0
    })
    .await;
    envoy
        .wait_for_filter_stat("env", "policy.inflight", PATIENCE, |v| v == 0)
        .await;
    admits_exactly_the_limit(&envoy, &function, "after").await;
    // And again: nothing drifted.
    admits_exactly_the_limit(&envoy, &function, "again").await;
}

/// Issue 23, part 2: requests held by the readiness gate when their VM traps. Nothing in the pod
/// can resume them (a paused request belongs to its VM), so the sidecar's `request_timeout`
/// (the manifest's, `max_wait_ms` plus 10 s) answers them, Envoy's 503 through the failed VM;
/// before, nobody did and the callers waited until they gave up. And the places they took in
/// the pod's `max_pending` come back once they are answered, so new calls are held again rather
/// than refused.
async fn held_calls_of_a_vm_that_traps_are_answered(concurrency: u32) {
    let port = ReservedPort::new().expect("port");
    let mut options = EnvoyOptions::for_function(port.port())
        .config(r#"{"readiness": {"max_wait_ms": 2000, "max_pending": 2}}"#);
    options.concurrency = concurrency;
    options.module = Some(trap_wasm().expect("the test-trap module"));
    let envoy = Envoy::start_accepted(options).await;
    let addr = envoy.addr();
    let mut held = JoinSet::new();
    for i in 0..2 {
        let request = Request::get(&format!("/function/env/held/{i}"));
        held.spawn(async move { http::send(addr, &request).await });
    }
    envoy
        .wait_for_filter_stat("env", "readiness.pending", PATIENCE, |v| v == 2)
        .await;
    // With two workers the trap may hit the other VM: then the held calls' own VM answers
    // them at max_wait_ms, which is fine too; the single-worker case is the one that bites.
    let trapped = envoy
        .send(&Request::get("/function/env/trap").header(TRAP_HEADER, "1"))
        .await
        .expect("an answer to the trapping request, not a reset");
    assert!(trapped.status >= 500, "{}", trapped.text());
    while let Some(done) = tokio::time::timeout(PATIENCE, held.join_next())
        .await
        .expect("every held call answered, though its VM died")
    {
        let response = done.expect("task").expect("an answer, not a reset");
        assert_eq!(response.status, 503, "{}", response.text());
    }
    // The dead VM's places: a new call is held (it does not come back while the function is
    // down) rather than refused at once as "too many requests waiting".
    let deadline = Instant::now() + PATIENCE;
    let mut call = loop {
        let mut call =
            tokio::spawn(
                async move { http::send(addr, &Request::get("/function/env/after")).await },
            );
        match tokio::time::timeout(Duration::from_secs(1), &mut call).await {
            Err(_) => break call,
            Ok(answered) => {
                let response = answered.expect("task").expect("an answer");
                // Envoy's fail-closed 503 until the VM is replaced, or the gate's queue-full.
                assert_eq!(response.status, 503, "{}", response.text());
                assert!(
                    Instant::now() < deadline,
                    "still refused {PATIENCE:?} after the held calls were answered: {}",
                    response.text()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let function = StandInFunction::start_on(port.port())
        .await
        .expect("function");
    let response = tokio::time::timeout(PATIENCE, &mut call)
        .await
        .expect("released when the function came up")
        .expect("task")
        .expect("an answer");
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(function.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_calls_of_a_vm_that_traps_are_answered_one_worker() {
    held_calls_of_a_vm_that_traps_are_answered(1).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_calls_of_a_vm_that_traps_are_answered_two_workers() {
    held_calls_of_a_vm_that_traps_are_answered(2).await
}

macro_rules! with_workers {
    ($($module:ident: $workers:expr),*) => {$(
        mod $module {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_trap_holding_slots_heals_on_its_own() {
                super::a_trap_holding_slots_heals_on_its_own($workers).await
            }
        }
    )*};
}

with_workers!(one_worker: 1, two_workers: 2);

/// The trap exists only in the test build: the shipped module has no trace of it and serves a
/// request asking for it like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_module_carries_no_trap() {
    let shipped = std::fs::read(filter_wasm().expect("release module")).expect("read");
    let test_build = std::fs::read(trap_wasm().expect("test-trap module")).expect("read");
    let has = |module: &[u8]| {
        module
            .windows(TRAP_HEADER.len())
            .any(|w| w == TRAP_HEADER.as_bytes())
    };
    assert!(has(&test_build), "the test build lost its trap");
    assert!(!has(&shipped), "the release module contains the test trap");

    let function = StandInFunction::start().await.expect("function");
    let envoy = Envoy::start(EnvoyOptions::for_function(function.port()).config(CONFIG))
        .await
        .expect("Envoy");
    for _ in 0..3 {
        let response = envoy
            .send(&Request::get("/function/env/x").header(TRAP_HEADER, "1"))
            .await
            .expect("send");
        assert_eq!(response.status, 200, "{}", response.text());
    }
    assert!(!envoy.log().contains("proxy_on_request_headers failed"));
}
