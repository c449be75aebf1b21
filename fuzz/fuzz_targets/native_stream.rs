//! The native module's stream path through its real exported hooks, on a fake Envoy
//! (fuzz/fake_envoy.rs): under one of three accepted configurations (the defaults with the
//! readiness gate; an enforcing policy with a body limit, an in-flight cap and a rate limit; an
//! auditing policy with the filter owning traces), a fuzzed sequence of stream events on up to
//! four concurrent streams: request headers (fuzzed pairs, invalid UTF-8, huge values), body
//! chunks, trailers, response headers, scheduled ticks, readiness-probe answers, stream ends.
//!
//! Never a crash, and the fake Envoy's checks hold: every callback names a live stream,
//! configuration and scheduler; a stream's scheduler is deleted when it is destroyed; a
//! request is resumed only while stopped, never after its local reply; one local reply per
//! stream, with a status in 200..=599; no gauge goes below zero; with inputs Envoy's codecs could
//! deliver (the first byte's low bit), every header the module writes is valid.
#![no_main]
#[path = "../fake_envoy.rs"]
mod fake_envoy;

use fake_envoy::{self as envoy, Input};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

const CONFIGS: [&str; 3] = [
    r#"{"readiness":{"max_wait_ms":1000,"retry_interval_ms":10}}"#,
    r#"{"function":{"name":"env"},"policy":{"default":{"mode":"enforce","methods":["GET","POST"],
        "principals":["spiffe://cluster.local/ns/openfaas/sa/*"],"max_body_bytes":1000,
        "max_inflight":2,"rate_limit":{"requests_per_second":1000,"burst":50}}}}"#,
    r#"{"tracing":{"owner":"filter"},"headers":{"trust_incoming_call_id":false},
        "policy":{"default":{"mode":"audit","methods":["GET"],"require_mtls":true,
        "max_body_bytes":10,"max_inflight":1}},"readiness":{"enabled":false}}"#,
];

/// The module's configurations, built once (as Envoy builds a listener's filter once); a
/// static, so LeakSanitizer sees them held at exit.
static MODULES: OnceLock<Vec<usize>> = OnceLock::new();

fn modules() -> &'static [usize] {
    MODULES.get_or_init(|| {
        let mut m = Vec::new();
        {
            let dir = envoy::pod_dir();
            std::fs::write(dir.join("labels"), "faas_function=\"env\"\napp=\"env\"\n")
                .expect("labels");
            std::fs::write(
                dir.join("annotations"),
                "com.openfaas.mesh.policy=\"{\\\"max_inflight\\\": 3}\"\n",
            )
            .expect("annotations");
            std::fs::write(dir.join("namespace"), "openfaas-fn\n").expect("namespace");
            for config in CONFIGS {
                let (_, module) = envoy::config_new(b"faas-mesh-filter", config.as_bytes())
                    .unwrap_or_else(|| panic!("refused {config}: {:?}", envoy::take_logs()));
                m.push(module);
            }
        }
        m
    })
}

fuzz_target!(|data: &[u8]| {
    let modules = modules();
    let mut input = Input(data);
    let flags = input.byte();
    let strict = flags & 1 == 0;
    let module = modules
        .get(usize::from(flags >> 1) % modules.len())
        .copied()
        .unwrap_or(0);
    envoy::set_strict(strict);
    envoy::ENVOY.with(|e| e.borrow_mut().streams.clear());
    // Envoy's stream slots: up to 4 at once.
    let mut live: Vec<usize> = Vec::new();
    // Per stream: request headers sent, request ended.
    let mut phase: std::collections::HashMap<usize, (bool, bool)> = Default::default();
    let mut steps = 0;
    while !input.is_empty() && steps < 64 {
        steps += 1;
        let op = input.byte();
        let pick = usize::from(input.byte());
        let target = live.get(pick % live.len().max(1)).copied();
        match op % 9 {
            0 | 1 => {
                if live.len() < 4 {
                    if let Some(s) = envoy::stream_new(module) {
                        live.push(s);
                    }
                }
            }
            2 => {
                let Some(s) = target else { continue };
                let (sent, _) = phase.get(&s).copied().unwrap_or_default();
                if sent {
                    continue;
                }
                let end = input.byte() & 1 == 1;
                let headers = envoy::headers(&mut input, strict, true);
                phase.insert(s, (true, end));
                envoy::request_headers(s, headers, end);
            }
            3 => {
                let Some(s) = target else { continue };
                let (sent, ended) = phase.get(&s).copied().unwrap_or_default();
                let replied = envoy::stream(s, |st| st.reply.is_some()).unwrap_or(true);
                if !sent || ended || replied {
                    continue;
                }
                let b = input.byte();
                let end = b & 1 == 1;
                let size = usize::from(input.byte()) << (b >> 4);
                phase.insert(s, (true, end));
                envoy::request_body(s, size, end);
            }
            4 => {
                let Some(s) = target else { continue };
                let (sent, ended) = phase.get(&s).copied().unwrap_or_default();
                let replied = envoy::stream(s, |st| st.reply.is_some()).unwrap_or(true);
                if !sent || ended || replied {
                    continue;
                }
                let trailers = envoy::headers(&mut input, strict, false);
                phase.insert(s, (true, true));
                envoy::request_trailers(s, trailers);
            }
            5 => {
                // The upstream's answer: only to a request that went upstream.
                let Some(s) = target else { continue };
                let ready = envoy::stream(s, |st| {
                    st.continued && st.reply.is_none() && st.maps[2].is_none()
                })
                .unwrap_or(false);
                if !ready {
                    continue;
                }
                let status = [200u16, 404, 500, 502, 503, 429][usize::from(input.byte()) % 6];
                let end = input.byte() & 1 == 1;
                let mut headers = vec![(b":status".to_vec(), status.to_string().into_bytes())];
                headers.extend(envoy::headers(&mut input, strict, false));
                envoy::response_headers(s, headers, end);
            }
            6 => {
                let Some(s) = target else { continue };
                envoy::stream_end(s);
                live.retain(|l| *l != s);
            }
            7 => {
                let event = if input.byte() & 3 == 0 {
                    u64::from(input.byte())
                } else {
                    1
                };
                envoy::run_scheduled(Some((pick, event)));
            }
            _ => {
                // A readiness probe's answer (or failure) for some stream's callout.
                let Some(s) = target else { continue };
                let result = u32::from(input.byte() % 4 == 0);
                let status = [200u16, 503, 404, 500][usize::from(input.byte()) % 4];
                let mut headers = vec![(b":status".to_vec(), status.to_string().into_bytes())];
                if input.byte() & 1 == 1 {
                    headers.extend(envoy::headers(&mut input, strict, false));
                }
                envoy::callout_done(s, pick, result, &headers);
            }
        }
    }
    for s in live {
        envoy::stream_end(s);
    }
    let logs = envoy::take_logs();
    if envoy::tracing() {
        envoy::ENVOY.with(|e| {
            for (i, s) in e.borrow().streams.iter().enumerate() {
                eprintln!(
                    "stream {i}: continued {} resumes {} reply {:?} request {:?} response {:?}",
                    s.continued,
                    s.resumes,
                    s.reply.as_ref().map(|r| r.status),
                    s.maps[0],
                    s.maps[2]
                );
            }
        });
        eprintln!("logs: {logs:?}");
    }
});
