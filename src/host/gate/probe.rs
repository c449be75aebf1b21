//! The probe's lifecycle on one worker: taking the pod's lease, sending the probe, giving up on
//! one the host never answers, and carrying out what [`crate::gate::probe::outcome`] makes of
//! the answer (ready, fall back to `/_/health`, failed, re-arm, the next lease).

use super::Gate;
use crate::gate::probe::{self, Asked, ProbeOutcome};
use crate::gate::{decode_number, LEASE_KEY};
use crate::held::{self, Record};
use crate::host::Host;
use proxy_wasm::types::MapType;

/// A probe in flight from this worker.
#[derive(Debug, Clone, Copy)]
pub(super) struct Probe {
    token: u32,
    /// Our own deadline (ms), a little after the host's timeout.
    give_up: u64,
    /// The pod state's generation when it was sent.
    generation: u64,
    /// Sent while ready, to check a 5xx from the function: a failure re-arms the gate.
    verify: bool,
}

impl<H: Host> Gate<H> {
    /// The path probed now: `readiness.path`, or `/_/health` once the server said it has no
    /// `/_/ready`.
    pub(super) fn probe_path(&self) -> &str {
        match (
            self.fell_back.get(),
            probe::fallback_path(&self.settings.path),
        ) {
            (true, Some(fallback)) => fallback,
            _ => &self.settings.path,
        }
    }

    pub(super) fn expire_probe(&self, now: u64) {
        if let Some(probe) = self.probe.get() {
            if now >= probe.give_up {
                // The host never answered (a call to a cluster with no endpoint can queue
                // without firing its timeout): count it failed and try again.
                self.probe.set(None);
                self.stats.probes_failed.add(&self.host, 1);
            }
        }
    }

    /// The host dropped a probe this worker sent, unanswered and not failed (the native build:
    /// a probe goes out on a stream, and goes with it when the stream ends first). The lease is
    /// given back, so the next tick (of any worker) probes again; nothing is counted, nothing
    /// learned.
    pub fn on_probe_lost(&self, token: u32) {
        match self.probe.get() {
            Some(probe) if probe.token == token => {
                self.probe.set(None);
                if probe.verify {
                    self.verify.set(true);
                }
            }
            _ => return,
        }
        let now = self.host.now_ms();
        let _ = self
            .host
            .set_shared_data(LEASE_KEY, now.to_string().as_bytes(), 0);
        self.retick();
    }

    /// The answer to a probe arrived (root context `on_http_call_response`).
    pub fn on_probe_answer(&self, token: u32) {
        let probe = match self.probe.get() {
            Some(probe) if probe.token == token => probe,
            _ => return,
        };
        self.probe.set(None);
        let status = self
            .host
            .header(MapType::HttpCallResponseHeaders, ":status")
            .ok()
            .flatten();
        let status = probe::status(status.as_deref());
        let now = self.host.now_ms();
        let asked = Asked {
            path: &self.settings.path,
            fell_back: self.fell_back.get(),
            verify: probe.verify,
        };
        let retry = self.settings.retry_interval_ms;
        let lease_ms = match probe::outcome(status, asked, now, retry, || self.held_since()) {
            ProbeOutcome::FallBack(fallback) => {
                log::info!(
                    "readiness: function {:?} answered {} with {status:?}: no such path; probing \
                     {fallback} instead",
                    self.function,
                    self.settings.path
                );
                self.fell_back.set(true);
                let _ = self.host.set_shared_data(LEASE_KEY, b"0", 0);
                self.maybe_probe(now);
                self.retick();
                return;
            }
            ProbeOutcome::Ready { lease_ms } => {
                self.set_lease(lease_ms);
                self.publish_ready();
                self.release_all(now);
                self.retick();
                return;
            }
            ProbeOutcome::Failed { rearm, lease_ms } => {
                self.stats.probes_failed.add(&self.host, 1);
                if rearm {
                    self.rearm(
                        probe.generation,
                        &format!("{} answered {status:?} after a 5xx", self.probe_path()),
                    );
                }
                lease_ms
            }
        };
        log::debug!(
            "readiness: probe {} answered {status:?}; next in {} ms",
            self.probe_path(),
            lease_ms.saturating_sub(now)
        );
        self.set_lease(lease_ms);
        self.retick();
    }

    /// Since when the pod holds requests: its oldest held record entry (this worker's included).
    fn held_since(&self) -> Option<u64> {
        let record = match self.host.shared_data(held::KEY) {
            Ok((value, _)) => Record::decode(value.as_deref()),
            Err(_) => Record::default(),
        };
        record
            .entries
            .iter()
            .filter(|e| e.count > 0)
            .map(|e| e.since)
            .min()
    }

    /// Moves the pod's probe lease (unconditionally: only the probe's sender moves it).
    fn set_lease(&self, lease_ms: u64) {
        let _ = self
            .host
            .set_shared_data(LEASE_KEY, lease_ms.to_string().as_bytes(), 0);
    }

    /// Starts a probe if none is in flight in the pod and the retry interval has passed. Called
    /// from root callbacks only (the tick, the previous probe's answer).
    pub(super) fn maybe_probe(&self, now: u64) {
        if self.probe.get().is_some() {
            return;
        }
        let Ok((value, cas)) = self.host.shared_data(LEASE_KEY) else {
            return;
        };
        if !probe::lease_free(decode_number(value.as_deref()), now) {
            return;
        }
        let s = &self.settings;
        // Hold the lease for the probe's lifetime; the answer moves it.
        let until = probe::lease_while_probing(now, s.probe_timeout_ms, s.retry_interval_ms);
        if self
            .host
            .set_shared_data(LEASE_KEY, until.to_string().as_bytes(), cas)
            != Ok(true)
        {
            return; // another worker took it
        }
        let path = self.probe_path();
        match self
            .host
            .dispatch_get(&s.cluster, &s.authority, path, s.probe_timeout_ms)
        {
            Ok(token) => {
                self.dispatch_failing.set(false);
                let verify = self.is_ready();
                self.probe.set(Some(Probe {
                    token,
                    give_up: probe::give_up_ms(now, s.probe_timeout_ms),
                    generation: self.generation.get(),
                    verify,
                }));
                if verify {
                    self.verify.set(false);
                }
                self.stats.probes_sent.add(&self.host, 1);
            }
            Err(e) => {
                self.stats.probes_failed.add(&self.host, 1);
                if !self.dispatch_failing.replace(true) {
                    log::error!(
                        "readiness: cannot probe {path} on cluster {:?} ({e:?}); is \
                         readiness.cluster a cluster of this Envoy? (the EnvoyFilter's CLUSTER \
                         patch adds faas_function_local)",
                        s.cluster
                    );
                }
                let next = probe::lease_after_dispatch_error(now, s.retry_interval_ms);
                self.set_lease(next);
            }
        }
    }
}
