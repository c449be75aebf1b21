//! The readiness gate on one worker: holds requests while the function is not ready, probes it,
//! and releases or answers what it holds. Decisions come from [`crate::gate`]; this is the part
//! that talks to the host (shared data, the probe call, resuming paused requests, stats).
//!
//! The request path, once the function is ready, costs one `Cell` read ([`Gate::is_ready`]).
//!
//! Probes belong to the pod, not to a client: they are only ever dispatched from the root
//! context (its tick, or the answer to the previous probe), so a held client that hangs up cannot
//! take the probe with it. A worker holding requests ticks every [`gate::HOLDING_TICK_MS`], which
//! both sends the probe as soon as the pod-wide lease allows and picks up readiness another worker
//! found.

use crate::config::ReadinessSection;
use crate::gate::{
    self, decode_number, probe_says_ready, Held, PodState, Waiting, LEASE_KEY, PENDING_KEY,
    STATE_KEY,
};
use crate::host::{send_reply, Host, Stat};
use crate::metrics;
use crate::reply::{self, LocalReply};
use proxy_wasm::types::{MapType, MetricType};
use std::cell::{Cell, RefCell};
use std::rc::Rc;

/// Where a held request stands; shared between the gate and the request's own context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldState {
    Held,
    /// Held, and the request's own context is still reading its body (a body of unknown length
    /// under `max_body_bytes`): a release must not resume it; the context goes on when the body
    /// is complete (or answers 413).
    HeldReadingBody,
    Released,
    /// The gate answered it (503); the request's context must not stamp that reply again.
    Answered,
}

/// What the gate decided for a request that arrived while the worker believed "not ready".
pub enum Arrival {
    /// The function is ready after all (another worker learned it): go on.
    Go,
    /// Paused; the request's context keeps the state to know when it is released.
    Held(Rc<Cell<HoldState>>),
    /// `max_pending` requests are already held across the pod: answer 503 now.
    QueueFull,
}

/// What the gate needs to answer a held request itself.
struct HeldCall {
    call_id: String,
    state: Rc<Cell<HoldState>>,
}

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

/// A probe in flight from this worker.
#[derive(Debug, Clone, Copy)]
struct Probe {
    token: u32,
    /// Our own deadline (ms), a little after the host's timeout.
    give_up: u64,
    /// The pod state's generation when it was sent.
    generation: u64,
    /// Sent while ready, to check a 5xx from the function: a failure re-arms the gate.
    verify: bool,
}

/// The gate of one worker (one per root context).
pub struct Gate<H: Host> {
    host: H,
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
    ) -> Rc<Gate<H>> {
        let stats = GateStats::define(&host, function);
        let gate = Gate {
            host,
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
            .create_shared_data(STATE_KEY, &PodState::default().encode());
        gate.host.create_shared_data(LEASE_KEY, b"0");
        gate.host.create_shared_data(PENDING_KEY, b"0");
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

    /// The path probed now: `readiness.path`, or `/_/health` once the server said it has no
    /// `/_/ready`.
    fn probe_path(&self) -> &str {
        match (
            self.fell_back.get(),
            gate::fallback_path(&self.settings.path),
        ) {
            (true, Some(fallback)) => fallback,
            _ => &self.settings.path,
        }
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

    /// A request arrived while this worker believed the function not ready.
    #[inline(never)]
    pub fn admit(&self, context_id: u32, call_id: &str) -> Arrival {
        self.adopt(self.read_state());
        if self.is_ready() {
            return Arrival::Go;
        }
        if !self.reserve_slot() {
            self.stats.rejected_queue_full.add(&self.host, 1);
            log::warn!(
                "call {call_id} for function {:?}: {} requests already held; answered 503",
                self.function,
                self.settings.max_pending
            );
            return Arrival::QueueFull;
        }
        let state = Rc::new(Cell::new(HoldState::Held));
        self.waiting.borrow_mut().hold(
            context_id,
            self.host.now_ms(),
            self.settings.max_wait_ms,
            HeldCall {
                call_id: call_id.to_string(),
                state: state.clone(),
            },
        );
        self.stats.held.add(&self.host, 1);
        // The probe goes out from the root context within a (now fast) tick, never from this
        // request's context.
        self.retick();
        Arrival::Held(state)
    }

    /// The client of a held request went away: forget it.
    pub fn forget(&self, context_id: u32) {
        let removed = self.waiting.borrow_mut().remove(context_id);
        if removed.is_some() {
            self.stats.abandoned.add(&self.host, 1);
            self.release_slots(1);
            self.retick();
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

    /// Puts the gate back to holding, unless the pod state moved on since generation `known`.
    fn rearm(&self, known: u64, why: &str) {
        let outcome = self
            .host
            .update_shared_data(STATE_KEY, CAS_ROUNDS, |value| {
                let current = PodState::decode(value);
                if current.generation != known || !current.ready {
                    // Somebody already said so, or the function came back since.
                    (None, (current, false))
                } else {
                    let next = current.next(false);
                    (Some(next.encode()), (next, true))
                }
            });
        if let Some((state, wrote)) = outcome {
            if wrote {
                log::info!(
                    "readiness: function {:?}: {why}; holding requests until {} answers",
                    self.function,
                    self.probe_path()
                );
            }
            self.adopt(state);
        }
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
        let expired = self.waiting.borrow_mut().expired(now);
        if !expired.is_empty() {
            for held in &expired {
                self.answer_not_ready(held, now);
            }
            self.stats.timed_out.add(&self.host, expired.len() as i64);
            self.release_slots(expired.len());
        }
        self.expire_probe(now);
        self.maybe_probe(now);
        self.retick();
    }

    fn expire_probe(&self, now: u64) {
        if let Some(probe) = self.probe.get() {
            if now >= probe.give_up {
                // The host never answered (a call to a cluster with no endpoint can queue
                // without firing its timeout): count it failed and try again.
                self.probe.set(None);
                self.stats.probes_failed.add(&self.host, 1);
            }
        }
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
            .flatten()
            .and_then(|s| std::str::from_utf8(&s).ok()?.parse::<u16>().ok());
        let now = self.host.now_ms();
        if gate::path_missing(status) && !self.fell_back.get() {
            if let Some(fallback) = gate::fallback_path(&self.settings.path) {
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
        }
        let s = &self.settings;
        if probe_says_ready(status) {
            // The lease is released: a function that dies and comes back is probed at once. After
            // a check that found a ready function well (its 5xx was its own), one retry interval
            // passes before the next check.
            let next = if probe.verify {
                now.saturating_add(s.retry_interval_ms)
            } else {
                0
            };
            let _ = self
                .host
                .set_shared_data(LEASE_KEY, next.to_string().as_bytes(), 0);
            self.publish_ready();
            self.release_all(now);
        } else {
            self.stats.probes_failed.add(&self.host, 1);
            if probe.verify {
                self.rearm(
                    probe.generation,
                    &format!("{} answered {status:?} after a 5xx", self.probe_path()),
                );
            }
            let interval = self.interval_ms();
            log::debug!(
                "readiness: probe {} answered {status:?}; next in {interval} ms",
                self.probe_path()
            );
            let next = now.saturating_add(interval);
            let _ = self
                .host
                .set_shared_data(LEASE_KEY, next.to_string().as_bytes(), 0);
        }
        self.retick();
    }

    /// The time to the next probe after a failed one: shorter while requests are held anywhere
    /// in the pod (they wait for it), `retry_interval_ms` otherwise.
    fn interval_ms(&self) -> u64 {
        let retry = self.settings.retry_interval_ms;
        let pending = match self.host.shared_data(PENDING_KEY) {
            Ok((value, _)) => decode_number(value.as_deref()),
            Err(_) => self.waiting.borrow().len() as u64,
        };
        if pending > 0 || !self.waiting.borrow().is_empty() {
            gate::holding_interval_ms(retry)
        } else {
            retry
        }
    }

    fn read_state(&self) -> PodState {
        match self.host.shared_data(STATE_KEY) {
            Ok((value, _)) => PodState::decode(value.as_deref()),
            // Keep what we knew.
            Err(_) => PodState {
                generation: self.generation.get(),
                ready: self.ready.get(),
            },
        }
    }

    /// Takes a pod state if it is news.
    fn adopt(&self, state: PodState) {
        if state.generation < self.generation.get()
            || (state.generation == self.generation.get() && state.ready == self.ready.get())
        {
            return;
        }
        self.generation.set(state.generation);
        self.ready.set(state.ready);
        self.stats.ready.record(&self.host, u64::from(state.ready));
        if !state.ready {
            // Nothing to check any more: the gate holds again.
            self.verify.set(false);
        }
        self.retick();
    }

    fn publish_ready(&self) {
        let outcome = self
            .host
            .update_shared_data(STATE_KEY, CAS_ROUNDS, |value| {
                let current = PodState::decode(value);
                if current.ready {
                    (None, (current, false))
                } else {
                    let next = current.next(true);
                    (Some(next.encode()), (next, true))
                }
            });
        match outcome {
            Some((state, wrote)) => {
                if wrote {
                    log::info!(
                        "readiness: function {:?} answered {}; requests flow",
                        self.function,
                        self.probe_path()
                    );
                    self.clear_held_records();
                }
                self.adopt(state);
            }
            // Shared data unusable: at least this worker knows.
            None => self.ready.set(true),
        }
    }

    /// The function is ready: nothing is held in the pod any more (every worker releases what it
    /// holds on its next tick), so the pod's held count and held bytes start again from zero.
    /// Whatever a VM that died (a trap) still had counted there is dropped with them; the live
    /// workers' releases that follow take away nothing more (the records never go below zero).
    fn clear_held_records(&self) {
        let dropped = self
            .host
            .update_shared_data(PENDING_KEY, CAS_ROUNDS, |value| {
                (Some(b"0".to_vec()), decode_number(value))
            });
        if let Some(dropped) = dropped {
            self.stats
                .pending
                .add(&self.host, -i64::try_from(dropped).unwrap_or(0));
        }
        let _ = self.host.set_shared_data(crate::body_budget::KEY, b"0", 0);
    }

    /// Starts a probe if none is in flight in the pod and the retry interval has passed. Called
    /// from root callbacks only (the tick, the previous probe's answer).
    fn maybe_probe(&self, now: u64) {
        if self.probe.get().is_some() {
            return;
        }
        let Ok((value, cas)) = self.host.shared_data(LEASE_KEY) else {
            return;
        };
        if now < decode_number(value.as_deref()) {
            return;
        }
        let s = &self.settings;
        // Hold the lease for the probe's lifetime; the answer moves it to `retry_interval_ms`.
        let until = now
            .saturating_add(s.probe_timeout_ms)
            .saturating_add(s.retry_interval_ms);
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
                    give_up: now.saturating_add(s.probe_timeout_ms + 100),
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
                let next = now.saturating_add(s.retry_interval_ms);
                let _ = self
                    .host
                    .set_shared_data(LEASE_KEY, next.to_string().as_bytes(), 0);
            }
        }
    }

    /// Resumes every request this worker holds (called from root callbacks only: it switches
    /// the effective context).
    fn release_all(&self, now: u64) {
        let held = self.waiting.borrow_mut().take_all();
        if held.is_empty() {
            return;
        }
        for h in &held {
            let reading_body = h.payload.state.get() == HoldState::HeldReadingBody;
            h.payload.state.set(HoldState::Released);
            self.stats
                .held_ms
                .record(&self.host, now.saturating_sub(h.since_ms));
            if !reading_body && self.host.set_effective_context(h.context_id).is_ok() {
                let _ = self.host.resume_request();
            }
        }
        self.stats.released.add(&self.host, held.len() as i64);
        self.release_slots(held.len());
    }

    fn answer_not_ready(&self, held: &Held<HeldCall>, now: u64) {
        held.payload.state.set(HoldState::Answered);
        log::warn!(
            "call {} for function {:?}: not ready after {} ms; answered 503",
            held.payload.call_id,
            self.function,
            now.saturating_sub(held.since_ms)
        );
        self.stats
            .held_ms
            .record(&self.host, now.saturating_sub(held.since_ms));
        let reply = reply::not_ready(gate::retry_after_seconds(self.settings.retry_interval_ms));
        self.send(held.context_id, &reply, &held.payload.call_id);
    }

    /// The 503 for a request that finds `max_pending` requests already held.
    pub fn queue_full_reply(&self) -> LocalReply {
        reply::pending_full(gate::retry_after_seconds(self.settings.retry_interval_ms))
    }

    fn send(&self, context_id: u32, reply: &LocalReply, call_id: &str) {
        if self.host.set_effective_context(context_id).is_ok() {
            send_reply(
                &self.host,
                reply,
                &self.function,
                &self.call_id_header,
                call_id,
            );
        }
    }

    /// Counts a request into the pod-wide held total, unless it is at `max_pending`.
    fn reserve_slot(&self) -> bool {
        let max = self.settings.max_pending;
        let reserved = self
            .host
            .update_shared_data(PENDING_KEY, CAS_ROUNDS, |value| {
                let pending = decode_number(value);
                if pending >= max {
                    (None, false)
                } else {
                    (
                        Some(pending.saturating_add(1).to_string().into_bytes()),
                        true,
                    )
                }
            });
        match reserved {
            Some(true) => {
                // The gauge moves by the change, not to the value: workers' updates commute.
                self.stats.pending.add(&self.host, 1);
                true
            }
            Some(false) => false,
            // Cannot count: hold rather than refuse.
            None => true,
        }
    }

    fn release_slots(&self, n: usize) {
        let n = n as u64;
        let released = self
            .host
            .update_shared_data(PENDING_KEY, CAS_ROUNDS, |value| {
                let current = decode_number(value);
                let next = current.saturating_sub(n);
                (Some(next.to_string().into_bytes()), current - next)
            });
        if let Some(released) = released {
            self.stats
                .pending
                .add(&self.host, -i64::try_from(released).unwrap_or(0));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::host::fake::{Fake, Pod};

    const CLUSTER: &str = "faas_function_local";

    fn settings(json: &str) -> ReadinessSection {
        Config::parse(json.as_bytes()).unwrap().readiness
    }

    /// One worker: its VM and its gate.
    type Worker = (Fake, Rc<Gate<Fake>>);

    /// A pod with two workers' gates.
    fn pod(json: &str) -> (Pod, [Worker; 2]) {
        let pod = Pod::new();
        pod.add_cluster(CLUSTER);
        let worker = || {
            let vm = pod.worker();
            let gate = Gate::new(vm.clone(), settings(json), "env", "x-call-id");
            (vm, gate)
        };
        let workers = [worker(), worker()];
        (pod, workers)
    }

    fn held(admission: Arrival) -> Rc<Cell<HoldState>> {
        match admission {
            Arrival::Held(state) => state,
            _ => panic!("expected the request to be held"),
        }
    }

    /// Answers every probe `vm` has in flight with `status`.
    fn answer(vm: &Fake, gate: &Gate<Fake>, status: &str) {
        vm.answer_with(&[(":status", status)]);
        for (token, _) in vm.dispatched() {
            gate.on_probe_answer(token);
        }
    }

    #[test]
    fn one_probe_per_pod_and_readiness_reaches_the_other_worker() {
        let (pod, [(a, ga), (b, gb)]) = pod("{}");
        let held_a = held(ga.admit(1, "id-a"));
        let held_b = held(gb.admit(7, "id-b"));
        // No probe from a request's context: the root contexts' ticks send it.
        assert!(a.dispatched().is_empty() && b.dispatched().is_empty());
        ga.on_tick();
        gb.on_tick();
        let probes = a.dispatched().len() + b.dispatched().len();
        assert_eq!(probes, 1, "one probe in flight in the pod (the lease)");
        let (prober, gate, other, other_gate) = if a.dispatched().is_empty() {
            (&b, &gb, &a, &ga)
        } else {
            (&a, &ga, &b, &gb)
        };
        assert_eq!(prober.dispatched()[0].1, "/_/ready");
        answer(prober, gate, "200");
        assert!(gate.is_ready());
        // The other worker learns it from shared data on its next tick and releases its own.
        pod.advance_ms(5);
        other_gate.on_tick();
        assert!(other_gate.is_ready());
        assert_eq!(a.resumed(), [1]);
        assert_eq!(b.resumed(), [7]);
        assert_eq!(held_a.get(), HoldState::Released);
        assert_eq!(held_b.get(), HoldState::Released);
        assert!(other.sent().is_empty() && prober.sent().is_empty());
        assert_eq!(
            pod.metric("faas_mesh_filter.function.env.readiness.pending"),
            0
        );
        // Once ready, a request is not held.
        assert!(matches!(ga.admit(2, "id"), Arrival::Go));
    }

    #[test]
    fn max_pending_holds_across_workers() {
        let (pod, [(_, ga), (_, gb)]) = pod(r#"{"readiness":{"max_pending":3}}"#);
        held(ga.admit(1, "1"));
        held(gb.admit(2, "2"));
        held(ga.admit(3, "3"));
        assert!(matches!(gb.admit(4, "4"), Arrival::QueueFull));
        assert!(matches!(ga.admit(5, "5"), Arrival::QueueFull));
        // A client that hangs up gives its place back.
        gb.forget(2);
        held(gb.admit(6, "6"));
        assert_eq!(
            pod.metric("faas_mesh_filter.function.env.readiness.pending"),
            3
        );
    }

    #[test]
    fn a_request_held_too_long_gets_503_with_its_call_id() {
        let (pod, [(a, ga), _]) = pod(r#"{"readiness":{"max_wait_ms":1000}}"#);
        let state = held(ga.admit(9, "call-9"));
        pod.advance_ms(1001);
        ga.on_tick();
        assert_eq!(state.get(), HoldState::Answered);
        let sent = a.sent();
        assert_eq!(sent.len(), 1);
        assert_eq!((sent[0].context_id, sent[0].status), (9, 503));
        assert!(sent[0]
            .headers
            .contains(&("x-call-id".to_string(), "call-9".to_string())));
        assert!(String::from_utf8_lossy(&sent[0].body).contains("function not ready"));
        assert_eq!(
            pod.metric("faas_mesh_filter.function.env.readiness.pending"),
            0
        );
    }

    #[test]
    fn the_probe_belongs_to_the_pod_not_to_a_client_that_hangs_up() {
        let (pod, [(a, ga), _]) = pod("{}");
        held(ga.admit(1, "1"));
        held(ga.admit(2, "2"));
        ga.on_tick();
        let token = a.dispatched()[0].0;
        ga.forget(1); // the client whose arrival started the probing hangs up
        a.answer_with(&[(":status", "200")]);
        ga.on_probe_answer(token);
        assert!(ga.is_ready());
        assert_eq!(a.resumed(), [2]);
        assert_eq!(
            pod.metric("faas_mesh_filter.function.env.readiness.abandoned"),
            1
        );
    }

    #[test]
    fn a_failed_probe_is_retried_and_a_server_without_ready_is_probed_on_health() {
        let (pod, [(a, ga), _]) = pod("{}");
        held(ga.admit(1, "1"));
        ga.on_tick();
        answer(&a, &ga, "404"); // no /_/ready here: the classic watchdog, a custom server
        assert!(!ga.is_ready());
        let paths: Vec<String> = a.dispatched().into_iter().map(|(_, p)| p).collect();
        assert_eq!(paths.last().map(String::as_str), Some("/_/health"));
        let (token, _) = a.dispatched().pop().unwrap();
        a.answer_with(&[(":status", "503")]);
        ga.on_probe_answer(token);
        assert!(!ga.is_ready());
        let sent_before = a.dispatched().len();
        ga.on_tick();
        assert_eq!(
            a.dispatched().len(),
            sent_before,
            "not before the retry interval"
        );
        pod.advance_ms(200);
        ga.on_tick();
        assert_eq!(a.dispatched().len(), sent_before + 1);
        let (token, path) = a.dispatched().pop().unwrap();
        assert_eq!(path, "/_/health");
        a.answer_with(&[(":status", "200")]);
        ga.on_probe_answer(token);
        assert!(ga.is_ready());
        assert_eq!(a.resumed(), [1]);
    }

    #[test]
    fn a_lost_connection_rearms_every_worker() {
        let (pod, [(a, ga), (_, gb)]) = pod("{}");
        ga.on_tick();
        answer(&a, &ga, "200");
        pod.advance_ms(5);
        gb.on_tick();
        assert!(ga.is_ready() && gb.is_ready());
        gb.upstream_gone();
        assert!(!gb.is_ready());
        pod.advance_ms(5);
        ga.on_tick();
        assert!(!ga.is_ready(), "the other worker holds again too");
        held(ga.admit(3, "3"));
    }

    #[test]
    fn what_a_dead_worker_held_is_cleared_when_the_function_is_ready() {
        let (pod, [(a, ga), (_, gb)]) = pod(r#"{"readiness":{"max_pending":3}}"#);
        held(gb.admit(1, "1"));
        held(gb.admit(2, "2"));
        drop(gb); // this worker's VM traps: it never releases what it counted
        held(ga.admit(3, "3"));
        assert!(matches!(ga.admit(4, "4"), Arrival::QueueFull));
        pod.worker()
            .set_shared_data(crate::body_budget::KEY, b"4096", 0)
            .unwrap();
        ga.on_tick();
        answer(&a, &ga, "200");
        assert_eq!(a.resumed(), [3]);
        assert_eq!(
            pod.metric("faas_mesh_filter.function.env.readiness.pending"),
            0
        );
        assert_eq!(pod.shared(PENDING_KEY).as_deref(), Some(&b"0"[..]));
        assert_eq!(
            pod.shared(crate::body_budget::KEY).as_deref(),
            Some(&b"0"[..])
        );
        // The function goes away again: the whole max_pending is there for the next start.
        ga.upstream_gone();
        for ctx in 10..13 {
            held(ga.admit(ctx, "x"));
        }
    }
}
