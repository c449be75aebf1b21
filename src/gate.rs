//! The readiness gate's state and decisions, without the host.
//!
//! Envoy runs one VM per worker; what one worker learns about the function must reach the
//! others. The pod-wide truth lives in three shared-data records (process-wide, per VM id):
//! - [`PodState`]: is the function ready, with a generation that grows on every change, so a
//!   worker adopts only news and two workers never flip-flop over an old value;
//! - the probe lease: the earliest time (ms) the next probe may start, so the pod sends at most
//!   one probe at a time, `retry_interval_ms` apart, whichever worker sends it;
//! - what is held across all workers, for `max_pending` and `max_pending_bytes`: one entry per
//!   VM, see [`crate::held`].
//!
//! Each worker keeps its own copy of the state (read on the request path as one flag) and its
//! own list of held requests (a paused request can only be resumed by its own worker).

use std::collections::VecDeque;

/// Shared-data keys (the host scopes them to this VM id).
pub const STATE_KEY: &str = "faas-mesh-filter.readiness.state";
pub const LEASE_KEY: &str = "faas-mesh-filter.readiness.probe-lease";

/// The pod-wide readiness record: `<generation>:<0|1>`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PodState {
    pub generation: u64,
    pub ready: bool,
}

impl PodState {
    /// Absent or unreadable means "never probed": generation 0, not ready.
    pub fn decode(bytes: Option<&[u8]>) -> PodState {
        let text = bytes
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or("");
        match text.split_once(':') {
            Some((generation, ready)) => PodState {
                generation: generation.parse().unwrap_or(0),
                ready: ready == "1",
            },
            None => PodState::default(),
        }
    }

    pub fn encode(self) -> Vec<u8> {
        format!("{}:{}", self.generation, u8::from(self.ready)).into_bytes()
    }

    /// The record that announces `ready` after this one.
    pub fn next(self, ready: bool) -> PodState {
        PodState {
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

/// A probe answer means ready when it is 2xx, or 429: of-watchdog's `/_/ready` says 429 when the
/// function is alive but at its `max_inflight`, and a request held for it may as well queue
/// there. No status (the call failed or timed out) is not ready.
pub fn probe_says_ready(status: Option<u16>) -> bool {
    matches!(status, Some(200..=299) | Some(429))
}

/// The probe path that may be missing, and what to probe instead: of-watchdog's `/_/ready` (which
/// follows the function's own `ready_path`) is the default; a server without it (a custom
/// container that serves only `/_/health`) answers 404, 405 or 501, and the gate then probes
/// `/_/health`, which both watchdogs serve.
pub const READY_PATH: &str = "/_/ready";
pub const HEALTH_PATH: &str = "/_/health";

/// Whether a probe answer means "this server has no such path" (fall back to [`HEALTH_PATH`]).
pub fn path_missing(status: Option<u16>) -> bool {
    matches!(status, Some(404) | Some(405) | Some(501))
}

/// The path to fall back to when `path` is missing on the function's server, if any.
pub fn fallback_path(path: &str) -> Option<&'static str> {
    (path == READY_PATH).then_some(HEALTH_PATH)
}

/// Whether a response from the function (not from the filter or Envoy) says it may be gone: any
/// 5xx. The gate does not trust it either way; it sends one probe and re-arms if that fails.
pub fn worth_a_probe(status: &[u8]) -> bool {
    status.len() == 3 && status.first() == Some(&b'5')
}

/// The fastest probe cadence: while requests have been held in the pod for up to 2 s, a probe
/// every 10 ms, so a held call waits at most that (plus a worker tick) after the function can
/// answer.
pub const FAST_PROBE_MS: u64 = 10;

/// Time between probes while requests have been held somewhere in the pod for `held_for_ms`:
/// [`FAST_PROBE_MS`] for the first 2 s (most cold starts), then backing off by 5 ms a second to
/// half the retry interval (50 ms, 20 probes a second, with the default 100 ms; reached after
/// 10 s), so a function that never starts costs at most 100 probes a second for 2 s and 20 a
/// second from 10 s on. With nothing held, probes go out every `retry_interval_ms`.
pub fn holding_interval_ms(retry_interval_ms: u64, held_for_ms: u64) -> u64 {
    let slowest = (retry_interval_ms / 2).max(1);
    (held_for_ms / 200).clamp(FAST_PROBE_MS.min(slowest), slowest)
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

/// Envoy's response flags (`response.flags`) that mean the function's process is gone:
/// UpstreamConnectionFailure (UF, 0x20) and UpstreamConnectionTermination (UC, 0x40).
pub const UPSTREAM_GONE_FLAGS: u64 = 0x20 | 0x40;

/// Whether a response with these flags should send the gate back to probing.
pub fn upstream_gone(flags: u64) -> bool {
    flags & UPSTREAM_GONE_FLAGS != 0
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

/// One request this worker holds, with what the adapter needs to answer or release it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held<T> {
    pub context_id: u32,
    pub since_ms: u64,
    /// How long it may be held (`max_wait_ms`, less for the gateway's probe).
    pub wait_ms: u64,
    pub payload: T,
}

/// The requests one worker holds, oldest first.
#[derive(Debug)]
pub struct Waiting<T> {
    held: VecDeque<Held<T>>,
}

impl<T> Default for Waiting<T> {
    fn default() -> Self {
        Waiting {
            held: VecDeque::new(),
        }
    }
}

impl<T> Waiting<T> {
    pub fn hold(&mut self, context_id: u32, now_ms: u64, wait_ms: u64, payload: T) {
        self.held.push_back(Held {
            context_id,
            since_ms: now_ms,
            wait_ms,
            payload,
        });
    }

    /// The requests held, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Held<T>> {
        self.held.iter()
    }

    /// The request held with this context id, if any.
    pub fn find(&self, context_id: u32) -> Option<&Held<T>> {
        self.held.iter().find(|h| h.context_id == context_id)
    }

    /// Forgets a request (its client went away); `None` if it was not held.
    pub fn remove(&mut self, context_id: u32) -> Option<Held<T>> {
        let index = self.held.iter().position(|h| h.context_id == context_id)?;
        self.held.remove(index)
    }

    /// Takes every request held for its `wait_ms` or longer, oldest first.
    pub fn expired(&mut self, now_ms: u64) -> Vec<Held<T>> {
        let mut out = Vec::new();
        let mut kept = VecDeque::with_capacity(self.held.len());
        for h in self.held.drain(..) {
            if now_ms.saturating_sub(h.since_ms) >= h.wait_ms {
                out.push(h);
            } else {
                kept.push_back(h);
            }
        }
        self.held = kept;
        out
    }

    /// Takes every held request (to release them all).
    pub fn take_all(&mut self) -> Vec<Held<T>> {
        self.held.drain(..).collect()
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_state_round_trips_and_defaults_to_not_ready() {
        let s = PodState {
            generation: 41,
            ready: true,
        };
        assert_eq!(PodState::decode(Some(&s.encode())), s);
        assert_eq!(s.encode(), b"41:1");
        assert_eq!(PodState::decode(None), PodState::default());
        assert_eq!(PodState::decode(Some(b"garbage")), PodState::default());
        assert_eq!(
            s.next(false),
            PodState {
                generation: 42,
                ready: false
            }
        );
    }

    #[test]
    fn probe_answers() {
        for ready in [200, 204, 299, 429] {
            assert!(probe_says_ready(Some(ready)), "{ready}");
        }
        for not_ready in [100, 301, 404, 500, 503] {
            assert!(!probe_says_ready(Some(not_ready)), "{not_ready}");
        }
        assert!(!probe_says_ready(None));
    }

    #[test]
    fn only_connection_failures_send_the_gate_back() {
        assert!(upstream_gone(0x20));
        assert!(upstream_gone(0x40 | 0x1000));
        assert!(!upstream_gone(0));
        assert!(!upstream_gone(0x10), "a reset stream is not a dead process");
        assert!(
            !upstream_gone(0x4),
            "a timeout is a slow function, not a dead one"
        );
    }

    #[test]
    fn waiting_expires_the_oldest_and_forgets_the_gone() {
        let mut w = Waiting::default();
        w.hold(1, 100, 1000, "a");
        w.hold(2, 150, 1000, "b");
        w.hold(3, 400, 1000, "c");
        // A shorter wait expires before older requests.
        w.hold(4, 500, 100, "short");
        assert_eq!(
            w.remove(2).map(|h| (h.since_ms, h.payload)),
            Some((150, "b"))
        );
        assert_eq!(w.remove(2), None);
        let expired: Vec<u32> = w.expired(600).iter().map(|h| h.context_id).collect();
        assert_eq!(expired, vec![4]);
        let expired: Vec<u32> = w.expired(1100).iter().map(|h| h.context_id).collect();
        assert_eq!(expired, vec![1]);
        assert_eq!(w.len(), 1);
        assert_eq!(w.take_all().len(), 1);
        assert!(w.is_empty());
    }

    #[test]
    fn ready_path_falls_back_to_health_only_when_missing() {
        assert_eq!(fallback_path("/_/ready"), Some("/_/health"));
        assert_eq!(fallback_path("/_/health"), None);
        assert_eq!(fallback_path("/healthz"), None);
        for missing in [404, 405, 501] {
            assert!(path_missing(Some(missing)));
        }
        // of-watchdog's /_/ready: 503 before the lock file, 500 while the function's own server
        // refuses (ready_path): not ready, but the path exists.
        for present in [200, 429, 500, 503] {
            assert!(!path_missing(Some(present)));
        }
        assert!(!path_missing(None));
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
    fn only_5xx_answers_are_worth_a_probe() {
        for status in [&b"500"[..], b"502", b"503", b"504"] {
            assert!(worth_a_probe(status));
        }
        for status in [&b"200"[..], b"404", b"429", b"5", b"5000", b""] {
            assert!(!worth_a_probe(status));
        }
    }

    #[test]
    fn held_requests_are_probed_fast_then_back_off_to_twenty_a_second() {
        assert_eq!(holding_interval_ms(100, 0), 10);
        assert_eq!(holding_interval_ms(100, 2000), 10);
        assert_eq!(holding_interval_ms(100, 4000), 20);
        assert_eq!(holding_interval_ms(100, 10_000), 50);
        assert_eq!(holding_interval_ms(100, u64::MAX), 50);
        assert_eq!(1000 / holding_interval_ms(100, 60_000), 20);
        // Never faster than half a short retry interval, never slower than half a long one.
        assert_eq!(holding_interval_ms(10, 0), 5);
        assert_eq!(holding_interval_ms(10, 60_000), 5);
        assert_eq!(holding_interval_ms(1000, 60_000), 300);
        assert_eq!(holding_interval_ms(1000, 0), 10);
        const { assert!(HOLDING_TICK_MS < FAST_PROBE_MS) };
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
