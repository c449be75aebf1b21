//! The readiness gate's state and decisions, without the host.
//!
//! Envoy runs one VM per worker; what one worker learns about the function must reach the
//! others. The pod-wide truth lives in three shared-data records (process-wide, per VM id):
//! - [`PodReadiness`]: is the function ready, with a generation that grows on every change, so a
//!   worker adopts only news and two workers never flip-flop over an old value;
//! - the probe lease: the earliest time (ms) the next probe may start, so the pod sends at most
//!   one probe at a time, `retry_interval_ms` apart, whichever worker sends it;
//! - what is held across all workers, for `max_pending` and `max_pending_bytes`: one entry per
//!   VM, see [`crate::held`].
//!
//! Each worker keeps its own copy of the state (read on the request path as one flag) and its
//! own list of held requests ([`waiting`]: a paused request can only be resumed by its own
//! worker). What a probe's answer means is [`probe`]; what a response means, [`response`].

pub mod probe;
pub mod response;
pub mod waiting;

pub use probe::{
    fallback_path, holding_interval_ms, path_missing, probe_says_ready, ProbeOutcome,
    FAST_PROBE_MS, HEALTH_PATH, READY_PATH,
};
pub use response::{upstream_gone, worth_a_probe, AfterResponse, UPSTREAM_GONE_FLAGS};
pub use waiting::{Waiter, Waiting};

/// Shared-data keys (the host scopes them to this VM id).
pub const STATE_KEY: &str = "faas-mesh-filter.readiness.state";
pub const LEASE_KEY: &str = "faas-mesh-filter.readiness.probe-lease";

/// The pod-wide readiness record: `<generation>:<0|1>`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PodReadiness {
    pub generation: u64,
    pub ready: bool,
}

impl PodReadiness {
    /// Absent or unreadable means "never probed": generation 0, not ready.
    pub fn decode(bytes: Option<&[u8]>) -> PodReadiness {
        let text = bytes
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or("");
        match text.split_once(':') {
            Some((generation, ready)) => PodReadiness {
                generation: generation.parse().unwrap_or(0),
                ready: ready == "1",
            },
            None => PodReadiness::default(),
        }
    }

    pub fn encode(self) -> Vec<u8> {
        format!("{}:{}", self.generation, u8::from(self.ready)).into_bytes()
    }

    /// The record that announces `ready` after this one.
    pub fn next(self, ready: bool) -> PodReadiness {
        PodReadiness {
            generation: self.generation.saturating_add(1),
            ready,
        }
    }
}

/// Decodes a number kept in shared data (the lease); absent is 0.
pub fn decode_number(bytes: Option<&[u8]>) -> u64 {
    bytes
        .and_then(|b| std::str::from_utf8(b).ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// How often a worker that holds requests (or must verify a suspicious 5xx) wakes up: to send the
/// probe as soon as the lease allows and to learn promptly that another worker found the function
/// ready. Each tick is one shared-data read.
pub const HOLDING_TICK_MS: u64 = 5;

/// The OpenFaaS gateway's own probe (`probe_functions`) says who it is in its `User-Agent`; it
/// tries 10 times, 50 ms apart, with no timeout of its own. The gate never holds it (see
/// [`never_held`]): it reaches the function at once and gets the truth.
pub const GATEWAY_PROBE_AGENT: &[u8] = b"com.openfaas.gateway/probe";

/// Whether a request is one the gate must never hold, because it asks whether the function is up:
/// the gateway's probe (any path), or a request for the health or readiness endpoints themselves
/// (`/_/health`, `/_/ready`, or the gate's own readiness path), by its path after the rewrite and
/// without its query. Holding one would make its caller wait for the answer to its own question
/// (the gateway's probe was held up to `max_wait_ms` a try); passed on at once, it gets the
/// function's (or Envoy's) answer of the moment.
pub fn never_held(gateway_probe: bool, path: &[u8], readiness_path: &str) -> bool {
    if gateway_probe {
        return true;
    }
    let path = path.split(|&c| c == b'?').next().unwrap_or_default();
    path == HEALTH_PATH.as_bytes()
        || path == READY_PATH.as_bytes()
        || path == readiness_path.as_bytes()
}

/// How often a worker wakes up while the function is not ready (to learn from other workers,
/// expire held requests and probe): often enough that a request is released within a quarter of
/// the retry interval of the probe that found the function ready, every 10 to 50 ms.
pub fn tick_ms(retry_interval_ms: u64) -> u64 {
    (retry_interval_ms / 4).clamp(10, 50)
}

/// How often a worker wakes up while the function is ready: only to learn that another worker
/// saw it go away (each worker also learns that from its own responses), so once a second.
pub const READY_TICK_MS: u64 = 1000;

/// `Retry-After` (whole seconds, at least 1) for a 503 of the gate.
pub fn retry_after_seconds(retry_interval_ms: u64) -> u64 {
    retry_interval_ms.div_ceil(1000).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_readiness_round_trips_and_defaults_to_not_ready() {
        let s = PodReadiness {
            generation: 41,
            ready: true,
        };
        assert_eq!(PodReadiness::decode(Some(&s.encode())), s);
        assert_eq!(s.encode(), b"41:1");
        assert_eq!(PodReadiness::decode(None), PodReadiness::default());
        assert_eq!(
            PodReadiness::decode(Some(b"garbage")),
            PodReadiness::default()
        );
        assert_eq!(
            s.next(false),
            PodReadiness {
                generation: 42,
                ready: false
            }
        );
    }

    #[test]
    fn health_and_readiness_requests_and_the_gateways_probe_are_never_held() {
        for path in [&b"/_/health"[..], b"/_/ready", b"/_/ready?x=1", b"/healthz"] {
            assert!(never_held(false, path, "/healthz"), "{path:?}");
        }
        for path in [&b"/"[..], b"/_/healthy", b"/x/_/health", b"/ready", b""] {
            assert!(!never_held(false, path, "/healthz"), "{path:?}");
        }
        // The gateway's probe asks whatever path the function declares.
        assert!(never_held(true, b"/anything", "/_/ready"));
    }

    #[test]
    fn timings() {
        assert_eq!(tick_ms(100), 25);
        assert_eq!(tick_ms(10), 10);
        assert_eq!(tick_ms(10_000), 50);
        assert!(READY_TICK_MS > tick_ms(10_000));
        assert_eq!(retry_after_seconds(100), 1);
        assert_eq!(retry_after_seconds(2500), 3);
        assert_eq!(decode_number(Some(b"17")), 17);
        assert_eq!(decode_number(None), 0);
    }
}
