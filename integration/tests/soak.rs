//! A bounded soak: mixed traffic at two Envoy workers for SOAK_SECONDS (10 by default; `make soak`
//! runs longer). No unexpected status, nothing left held or in flight, memory flat.

use faas_mesh_integration::envoy::{Envoy, EnvoyOptions};
use faas_mesh_integration::http::{self, Request};
use faas_mesh_integration::stand_in::StandInFunction;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mixed_traffic_leaves_nothing_behind() {
    let seconds: u64 = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let function = StandInFunction::start().await.expect("function");
    let envoy = Arc::new(
        Envoy::start(EnvoyOptions::for_function(function.port()).config(
            r#"{"policy": {"default": {"methods": ["GET", "POST"], "max_body_bytes": 4096,
                                       "max_inflight": 64,
                                       "rate_limit": {"requests_per_second": 100000, "burst": 100000}}}}"#,
        ))
        .await
        .expect("Envoy"),
    );
    // (request, the status it must get)
    let mix: Vec<(Request, u16)> = vec![
        (Request::get("/function/env/a/b?x=1"), 200),
        (
            Request::new("POST", "/function/env/post").body("x".repeat(1000)),
            200,
        ),
        (Request::get("/plain/path"), 200),
        (Request::get("/function/other/"), 404),
        (Request::new("DELETE", "/function/env/x"), 405),
        (
            Request::new("POST", "/function/env/big").body("x".repeat(5000)),
            413,
        ),
        (
            Request::get("/function/env/t")
                .header(
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                )
                .header("X-Call-Id", "soak-caller"),
            200,
        ),
    ];
    let mix = Arc::new(mix);
    let run_for = |duration: Duration| {
        let (mix, addr) = (mix.clone(), envoy.addr());
        async move {
            let mut clients = tokio::task::JoinSet::new();
            for c in 0..8usize {
                let mix = mix.clone();
                clients.spawn(async move {
                    let end = Instant::now() + duration;
                    let (mut sent, mut unexpected) = (0u64, Vec::new());
                    let mut i = c;
                    while Instant::now() < end {
                        let (request, want) = &mix[i % mix.len()];
                        match http::send(addr, request).await {
                            Ok(r) if r.status == *want => {}
                            Ok(r) => unexpected.push(format!(
                                "{} {} -> {}",
                                request.method, request.target, r.status
                            )),
                            Err(e) => unexpected
                                .push(format!("{} {} -> {e}", request.method, request.target)),
                        }
                        sent += 1;
                        i += 1;
                    }
                    (sent, unexpected)
                });
            }
            let mut sent = 0;
            let mut unexpected = Vec::new();
            while let Some(done) = clients.join_next().await {
                let (s, u) = done.expect("client");
                sent += s;
                unexpected.extend(u);
            }
            (sent, unexpected)
        }
    };

    // Warm up, then measure memory across the soak.
    let (_, unexpected) = run_for(Duration::from_secs(2)).await;
    assert!(unexpected.is_empty(), "{unexpected:?}");
    let rss_start = envoy.rss_kib();
    let (sent, unexpected) = run_for(Duration::from_secs(seconds)).await;
    let rss_end = envoy.rss_kib();
    eprintln!(
        "soak: {sent} requests in {seconds}s, {} unexpected; Envoy RSS {rss_start} KiB -> {rss_end} KiB",
        unexpected.len()
    );
    assert!(
        unexpected.is_empty(),
        "unexpected statuses: {:?}",
        &unexpected[..unexpected.len().min(20)]
    );
    assert_eq!(envoy.filter_stat("env", "readiness.pending").await, 0);
    envoy
        .wait_for_filter_stat("env", "policy.inflight", Duration::from_secs(5), |v| v == 0)
        .await;
    // Flat: allocator and stats settle in the warm-up; allow 20% + 8 MiB of noise.
    assert!(
        rss_end <= rss_start + rss_start / 5 + 8 * 1024,
        "Envoy grew from {rss_start} KiB to {rss_end} KiB"
    );
}
