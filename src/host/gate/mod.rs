//! The readiness gate on one worker: holds requests while the function is not ready, probes it,
//! and releases or answers what it holds. Decisions come from [`crate::gate`]; this is the part
//! that talks to the host (shared data, the probe call, resuming paused requests, stats), by
//! subject: `holding` (admitting, holding, releasing and answering requests, the body budget),
//! `probe` (the probe's lifecycle and its lease), `pod` (the pod-wide readiness record).
//!
//! The request path, once the function is ready, costs one `Cell` read ([`Gate::is_ready`]).
//!
//! Probes belong to the pod, not to a client: they are only ever dispatched from the root
//! context (its tick, or the answer to the previous probe), so a held client that hangs up cannot
//! take the probe with it. A worker holding requests ticks every [`gate::HOLDING_TICK_MS`], which
//! both sends the probe as soon as the pod-wide lease allows and picks up readiness another worker
//! found.

mod holding;
mod pod;
mod probe;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_calls;

pub use holding::{Arrival, Hold};

use crate::config::ReadinessSection;
use crate::gate::{self, AfterResponse, PodReadiness, Waiting, LEASE_KEY, STATE_KEY};
use crate::held;
use crate::host::{Host, Stat};
use crate::metrics;
use holding::HeldCall;
use probe::Probe;
use proxy_wasm::types::MetricType;
use std::cell::{Cell, RefCell};
use std::rc::Rc;

/// How many compare-and-swap rounds to try on a shared record before giving up.
const CAS_ROUNDS: usize = 16;

/// The gate's stats (names as they appear in Envoy's `/stats`). Every worker defines the same
/// names, so each is one pod-wide stat.
struct GateStats {
    held: Stat,
    released: Stat,
    timed_out: Stat,
    rejected_queue_full: Stat,
    abandoned: Stat,
    probes_sent: Stat,
    probes_failed: Stat,
    /// Requests passed on at once while not ready because they ask whether the function is up
    /// (the gateway's probe, the health and readiness endpoints): never held.
    passed_unheld: Stat,
    ready: Stat,
    pending: Stat,
    held_ms: Stat,
}

impl GateStats {
    fn define<H: Host>(host: &H, function: &str) -> GateStats {
        let define =
            |kind, metric: &str| Stat::define(host, kind, &metrics::name(function, metric));
        let counter = |metric: &str| define(MetricType::Counter, metric);
        GateStats {
            held: counter("readiness.held"),
            released: counter("readiness.released"),
            timed_out: counter("readiness.timed_out"),
            rejected_queue_full: counter("readiness.rejected_queue_full"),
            abandoned: counter("readiness.abandoned"),
            probes_sent: counter("readiness.probes_sent"),
            probes_failed: counter("readiness.probes_failed"),
            passed_unheld: counter("readiness.passed_unheld"),
            ready: define(MetricType::Gauge, "readiness.ready"),
            pending: define(MetricType::Gauge, "readiness.pending"),
            held_ms: define(MetricType::Histogram, "readiness.held_ms"),
        }
    }
}

/// The gate of one worker (one per root context).
pub struct Gate<H: Host> {
    host: H,
    /// This VM in the pod's held record (random per VM: a VM that replaces a dead one is
    /// another owner).
    owner: u64,
    settings: ReadinessSection,
    /// This worker's view of the pod state; the request path reads only `ready`.
    ready: Cell<bool>,
    generation: Cell<u64>,
    waiting: RefCell<Waiting<HeldCall>>,
    /// The probe this worker has in flight.
    probe: Cell<Option<Probe>>,
    /// The function's server said it has no `settings.path` (404, 405, 501): probe its fallback.
    fell_back: Cell<bool>,
    /// A response from the function was a 5xx while ready: probe once, re-arm if that fails.
    verify: Cell<bool>,
    /// The tick period last asked of the host (it is changed only when it changes: setting it
    /// restarts the timer).
    tick: Cell<u64>,
    /// Whether the last dispatch failed (to log a broken cluster once, not every tick).
    dispatch_failing: Cell<bool>,
    stats: GateStats,
    /// For the 503 replies: the local function and the call-id header name.
    function: String,
    call_id_header: String,
}

impl<H: Host> Gate<H> {
    #[inline(never)]
    pub fn new(
        host: H,
        settings: ReadinessSection,
        function: &str,
        call_id_header: &str,
        owner: u64,
    ) -> Rc<Gate<H>> {
        let stats = GateStats::define(&host, function);
        let gate = Gate {
            host,
            owner,
            settings,
            ready: Cell::new(false),
            generation: Cell::new(0),
            waiting: RefCell::new(Waiting::default()),
            probe: Cell::new(None),
            fell_back: Cell::new(false),
            verify: Cell::new(false),
            tick: Cell::new(0),
            dispatch_failing: Cell::new(false),
            stats,
            function: function.to_string(),
            call_id_header: call_id_header.to_string(),
        };
        gate.host
            .create_shared_data(STATE_KEY, &PodReadiness::default().encode());
        gate.host.create_shared_data(LEASE_KEY, b"0");
        // Created before any request counts in it: a write to an absent key is unconditional, so
        // two workers creating it at once could lose one's entry. (";" holds no entry.)
        gate.host.create_shared_data(held::KEY, b";");
        // A reconfigured plugin starts from what the pod already knows.
        gate.adopt(gate.read_state());
        Rc::new(gate)
    }

    /// How often the root context should call [`Gate::on_tick`]: fastest while this worker holds
    /// requests or must check a 5xx; slow while ready (nothing to do but notice another worker's
    /// news); in between while not ready with nothing held.
    pub fn tick_ms(&self) -> u64 {
        if self.verify.get() || !self.waiting.borrow().is_empty() {
            gate::HOLDING_TICK_MS
        } else if self.is_ready() {
            gate::READY_TICK_MS
        } else {
            gate::tick_ms(self.settings.retry_interval_ms)
        }
    }

    /// Asks the host for the tick this worker needs now, if that changed. The timer belongs to
    /// the root context this gate serves (also when called from one of its requests).
    fn retick(&self) {
        let want = self.tick_ms();
        if self.tick.replace(want) != want {
            let _ = self
                .host
                .set_tick_period_ms(u32::try_from(want).unwrap_or(50));
        }
    }

    /// Whether this worker has work that only its tick does: requests held, a probe in flight,
    /// a 5xx to check, or readiness still to learn. A host whose timer needs a live stream (the
    /// native build) keeps one while this holds; proxy-wasm's timer needs nothing.
    pub fn needs_ticks(&self) -> bool {
        !self.is_ready()
            || self.verify.get()
            || self.probe.get().is_some()
            || !self.waiting.borrow().is_empty()
    }

    /// The request path's only question once the function is ready.
    #[inline]
    pub fn is_ready(&self) -> bool {
        self.ready.get()
    }

    /// Whether a request that arrived while not ready goes on at once instead of being held: the
    /// gateway's probe, or a request for the health or readiness endpoints (see
    /// [`gate::never_held`]). Counted when so.
    #[inline(never)]
    pub fn passes_unheld(&self, gateway_probe: bool, path: &[u8]) -> bool {
        let pass = gate::never_held(gateway_probe, path, &self.settings.path);
        if pass {
            self.stats.passed_unheld.add(&self.host, 1);
        }
        pass
    }

    /// The verdict after a response ([`gate::response::after_response`]): `status` is its
    /// `:status`; `response_flags` (Envoy's `response.flags`) is read only for a 503. Envoy's
    /// own 503 for a refused or dropped connection re-arms the gate; any other 5xx sends one
    /// probe; anything else does nothing.
    #[inline]
    pub fn after_response(&self, status: &[u8], response_flags: impl FnOnce() -> u64) {
        let (gone, flags) = match gate::response::after_response(status, response_flags) {
            AfterResponse::Nothing => return,
            AfterResponse::UpstreamGone { flags } => (true, flags),
            AfterResponse::Check { flags } => (false, flags),
        };
        log::debug!("readiness: a 5xx with response flags {flags:#x}");
        if gone {
            self.upstream_gone();
        } else {
            self.check_after_5xx();
        }
    }

    /// The function answered a request with a 5xx while the gate was open: it may be the
    /// function's own error, or its process died behind a watchdog that is still up (of-watchdog
    /// answers 500 when its upstream refuses). The probe decides: one is sent from the next tick.
    pub fn check_after_5xx(&self) {
        // Another worker may know already (this one learns on its slow ready tick otherwise).
        self.adopt(self.read_state());
        if self.is_ready() && !self.verify.replace(true) {
            self.retick();
        }
    }

    /// The function's process is gone (a response said the connection to it failed): hold the
    /// next requests instead of failing them, and probe until it is back.
    pub fn upstream_gone(&self) {
        self.rearm(self.generation.get(), "the connection to it failed");
    }

    /// Root context tick: learn from other workers, answer requests held too long, probe.
    pub fn on_tick(&self) {
        let now = self.host.now_ms();
        self.adopt(self.read_state());
        if self.is_ready() {
            self.release_all(now);
            self.expire_probe(now);
            if self.verify.get() {
                self.maybe_probe(now);
            }
            self.retick();
            return;
        }
        self.answer_expired(now);
        self.expire_probe(now);
        self.maybe_probe(now);
        self.retick();
    }
}
