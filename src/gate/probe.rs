//! What a probe's answer means and when the next probe may go, without the host: the host side
//! (`host::gate`) sends the probe, reads its `:status` and carries the [`ProbeOutcome`] out.
//!
//! The probe lease is a number in shared data: the earliest time (ms) the next probe may start.
//! Whichever worker takes it sends the probe, so the pod has at most one in flight.

/// The probe path that may be missing, and what to probe instead: of-watchdog's `/_/ready` (which
/// follows the function's own `ready_path`) is the default; a server without it (a custom
/// container that serves only `/_/health`) answers 404, 405 or 501, and the gate then probes
/// `/_/health`, which both watchdogs serve.
pub const READY_PATH: &str = "/_/ready";
pub const HEALTH_PATH: &str = "/_/health";

/// The probe answer's `:status` as a number; `None` when absent or not a number (the call failed
/// or timed out: Envoy's answer to a failed call has no status).
#[inline]
pub fn status(value: Option<&[u8]>) -> Option<u16> {
    std::str::from_utf8(value?).ok()?.parse().ok()
}

/// A probe answer means ready when it is 2xx, or 429: of-watchdog's `/_/ready` says 429 when the
/// function is alive but at its `max_inflight`, and a request held for it may as well queue
/// there. No status (the call failed or timed out) is not ready.
pub fn probe_says_ready(status: Option<u16>) -> bool {
    matches!(status, Some(200..=299) | Some(429))
}

/// Whether a probe answer means "this server has no such path" (fall back to [`HEALTH_PATH`]).
pub fn path_missing(status: Option<u16>) -> bool {
    matches!(status, Some(404) | Some(405) | Some(501))
}

/// The path to fall back to when `path` is missing on the function's server, if any.
pub fn fallback_path(path: &str) -> Option<&'static str> {
    (path == READY_PATH).then_some(HEALTH_PATH)
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

/// The probe that was answered, as the worker that sent it knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asked<'a> {
    /// `readiness.path`, as configured.
    pub path: &'a str,
    /// The server already said it has no `path`: this probe asked its fallback.
    pub fell_back: bool,
    /// Sent while ready, to check a 5xx from the function.
    pub verify: bool,
}

/// What a probe's answer means: the host side carries it out and decides nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// The server has no such path: probe this one from now on, at once (the lease is freed).
    FallBack(&'static str),
    /// The function is ready: publish it to the pod and release every held request; the lease
    /// becomes `lease_ms` (0: free, so a function that dies and comes back is probed at once;
    /// after a 5xx check that found it well, one retry interval passes before the next check).
    Ready { lease_ms: u64 },
    /// Not ready (or no answer): count the probe failed; `rearm`: it checked a 5xx, so the gate
    /// holds again (unless the pod state moved on since the probe was sent). The next probe
    /// goes at `lease_ms`.
    Failed { rearm: bool, lease_ms: u64 },
}

/// Decides what the answer `status` to the probe `asked` means at `now_ms`. `held_since_ms` is
/// since when the pod holds requests (its oldest held record entry), asked only after a failure:
/// while requests wait the next probe comes sooner ([`holding_interval_ms`]).
#[inline]
pub fn outcome(
    status: Option<u16>,
    asked: Asked,
    now_ms: u64,
    retry_interval_ms: u64,
    held_since_ms: impl FnOnce() -> Option<u64>,
) -> ProbeOutcome {
    if path_missing(status) && !asked.fell_back {
        if let Some(fallback) = fallback_path(asked.path) {
            return ProbeOutcome::FallBack(fallback);
        }
    }
    if probe_says_ready(status) {
        let lease_ms = if asked.verify {
            now_ms.saturating_add(retry_interval_ms)
        } else {
            0
        };
        return ProbeOutcome::Ready { lease_ms };
    }
    let interval = match held_since_ms() {
        Some(since) => holding_interval_ms(retry_interval_ms, now_ms.saturating_sub(since)),
        None => retry_interval_ms,
    };
    ProbeOutcome::Failed {
        rearm: asked.verify,
        lease_ms: now_ms.saturating_add(interval),
    }
}

/// Whether the lease (the time read from shared data) lets a probe start at `now_ms`.
pub fn lease_free(lease_ms: u64, now_ms: u64) -> bool {
    now_ms >= lease_ms
}

/// The lease a worker takes to send a probe: held for the probe's lifetime and one retry
/// interval more (the answer moves it).
pub fn lease_while_probing(now_ms: u64, probe_timeout_ms: u64, retry_interval_ms: u64) -> u64 {
    now_ms
        .saturating_add(probe_timeout_ms)
        .saturating_add(retry_interval_ms)
}

/// When the sender stops waiting for a probe's answer: a little after the host's timeout (a call
/// to a cluster with no endpoint can queue without firing it).
pub fn give_up_ms(now_ms: u64, probe_timeout_ms: u64) -> u64 {
    now_ms.saturating_add(probe_timeout_ms.saturating_add(100))
}

/// The lease after a probe that could not even be sent (no such cluster): one retry interval.
pub fn lease_after_dispatch_error(now_ms: u64, retry_interval_ms: u64) -> u64 {
    now_ms.saturating_add(retry_interval_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_answers() {
        for ready in [200, 204, 299, 429] {
            assert!(probe_says_ready(Some(ready)), "{ready}");
        }
        for not_ready in [100, 301, 404, 500, 503] {
            assert!(!probe_says_ready(Some(not_ready)), "{not_ready}");
        }
        assert!(!probe_says_ready(None));
        assert_eq!(status(Some(b"204")), Some(204));
        assert_eq!(status(Some(b"x")), None);
        assert_eq!(status(None), None);
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
        const { assert!(super::super::HOLDING_TICK_MS < FAST_PROBE_MS) };
    }

    #[test]
    fn the_held_record_is_read_only_after_a_failure() {
        let asked = Asked {
            path: READY_PATH,
            fell_back: false,
            verify: false,
        };
        let never = || -> Option<u64> { panic!("read the held record on a ready answer") };
        assert_eq!(
            outcome(Some(200), asked, 5, 100, never),
            ProbeOutcome::Ready { lease_ms: 0 }
        );
        assert_eq!(
            outcome(Some(404), asked, 5, 100, never),
            ProbeOutcome::FallBack(HEALTH_PATH)
        );
    }

    #[test]
    fn the_lease_spans_the_probe_and_one_retry_interval() {
        assert!(lease_free(100, 100) && !lease_free(101, 100));
        assert_eq!(lease_while_probing(1000, 1000, 100), 2100);
        assert_eq!(give_up_ms(1000, 1000), 2100);
        assert_eq!(lease_after_dispatch_error(1000, 100), 1100);
        assert_eq!(lease_while_probing(u64::MAX, 1, 1), u64::MAX);
    }
}
