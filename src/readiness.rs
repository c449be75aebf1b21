//! The readiness gate on one worker: holds requests while the function is not ready, probes it,
//! and releases or answers what it holds. Decisions come from [`crate::gate`]; this is the part
//! that talks to the host (shared data, the probe call, resuming paused requests, stats).
//!
//! The request path, once the function is ready, costs one `Cell` read ([`Gate::is_ready`]).

use crate::config::ReadinessSection;
use crate::gate::{
    self, decode_number, probe_says_ready, Held, PodState, Waiting, LEASE_KEY, PENDING_KEY,
    STATE_KEY,
};
use crate::host;
use crate::metrics;
use crate::reply::LocalReply;
use proxy_wasm::types::{MapType, MetricType};
use std::cell::{Cell, RefCell};
use std::rc::Rc;

/// Where a held request stands; shared between the gate and the request's own context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldState {
    Held,
    Released,
    /// The gate answered it (503); the request's context must not stamp that reply again.
    Answered,
}

/// What the gate decided for a request that arrived while the worker believed "not ready".
pub enum Admission {
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
struct Metrics {
    held: Option<u32>,
    released: Option<u32>,
    timed_out: Option<u32>,
    rejected_queue_full: Option<u32>,
    abandoned: Option<u32>,
    probes_sent: Option<u32>,
    probes_failed: Option<u32>,
    ready: Option<u32>,
    pending: Option<u32>,
    held_ms: Option<u32>,
}

impl Metrics {
    fn define(function: &str) -> Metrics {
        let define =
            |kind, metric: &str| host::define_metric(kind, &metrics::name(function, metric)).ok();
        let counter = |metric: &str| define(MetricType::Counter, metric);
        Metrics {
            held: counter("readiness.held"),
            released: counter("readiness.released"),
            timed_out: counter("readiness.timed_out"),
            rejected_queue_full: counter("readiness.rejected_queue_full"),
            abandoned: counter("readiness.abandoned"),
            probes_sent: counter("readiness.probes_sent"),
            probes_failed: counter("readiness.probes_failed"),
            ready: define(MetricType::Gauge, "readiness.ready"),
            pending: define(MetricType::Gauge, "readiness.pending"),
            held_ms: define(MetricType::Histogram, "readiness.held_ms"),
        }
    }
}

fn add(metric: Option<u32>, by: usize) {
    if let (Some(id), Ok(by)) = (metric, i64::try_from(by)) {
        if by != 0 {
            let _ = host::increment_metric(id, by);
        }
    }
}

/// Moves a gauge by `delta` (atomic in Envoy, so concurrent workers cannot leave it stale).
fn adjust(metric: Option<u32>, delta: i64) {
    if let Some(id) = metric {
        if delta != 0 {
            let _ = host::increment_metric(id, delta);
        }
    }
}

fn record(metric: Option<u32>, value: u64) {
    if let Some(id) = metric {
        let _ = host::record_metric(id, value);
    }
}

/// The gate of one worker (one per root context).
pub struct Gate {
    settings: ReadinessSection,
    /// This worker's view of the pod state; the request path reads only `ready`.
    ready: Cell<bool>,
    generation: Cell<u64>,
    waiting: RefCell<Waiting<HeldCall>>,
    /// The probe this worker has in flight: (token, give-up time in ms).
    probe: Cell<Option<(u32, u64)>>,
    /// Whether the last dispatch failed (to log a broken cluster once, not every tick).
    dispatch_failing: Cell<bool>,
    metrics: Metrics,
    /// For the 503 replies: the local function and the call-id header name.
    function: String,
    call_id_header: String,
}

pub fn now_ms() -> u64 {
    host::now_nanos().unwrap_or(0) / 1_000_000
}

impl Gate {
    #[inline(never)]
    pub fn new(settings: ReadinessSection, function: &str, call_id_header: &str) -> Rc<Gate> {
        let gate = Gate {
            settings,
            ready: Cell::new(false),
            generation: Cell::new(0),
            waiting: RefCell::new(Waiting::default()),
            probe: Cell::new(None),
            dispatch_failing: Cell::new(false),
            metrics: Metrics::define(function),
            function: function.to_string(),
            call_id_header: call_id_header.to_string(),
        };
        host::create_shared_data(STATE_KEY, &PodState::default().encode());
        host::create_shared_data(LEASE_KEY, b"0");
        host::create_shared_data(PENDING_KEY, b"0");
        // A reconfigured plugin starts from what the pod already knows.
        gate.adopt(gate.read_state());
        Rc::new(gate)
    }

    /// How often the root context should call [`Gate::on_tick`].
    /// Slow while ready (nothing to do but notice another worker's news), fast while not.
    pub fn tick_ms(&self) -> u64 {
        if self.is_ready() {
            gate::READY_TICK_MS
        } else {
            gate::tick_ms(self.settings.retry_interval_ms)
        }
    }

    /// The request path's only question once the function is ready.
    #[inline]
    pub fn is_ready(&self) -> bool {
        self.ready.get()
    }

    /// A request arrived while this worker believed the function not ready.
    #[inline(never)]
    pub fn admit(&self, context_id: u32, call_id: &str) -> Admission {
        self.adopt(self.read_state());
        if self.is_ready() {
            return Admission::Go;
        }
        if !self.reserve_slot() {
            add(self.metrics.rejected_queue_full, 1);
            log::warn!(
                "call {call_id} for function {:?}: {} requests already held; answered 503",
                self.function,
                self.settings.max_pending
            );
            return Admission::QueueFull;
        }
        let state = Rc::new(Cell::new(HoldState::Held));
        self.waiting.borrow_mut().hold(
            context_id,
            now_ms(),
            HeldCall {
                call_id: call_id.to_string(),
                state: state.clone(),
            },
        );
        add(self.metrics.held, 1);
        // No need to wait for the next tick to ask the function.
        self.maybe_probe(now_ms());
        Admission::Held(state)
    }

    /// The client of a held request went away: forget it.
    pub fn forget(&self, context_id: u32) {
        let removed = self.waiting.borrow_mut().remove(context_id);
        if removed.is_some() {
            add(self.metrics.abandoned, 1);
            self.release_slots(1);
        }
    }

    /// The function's process is gone (a response said the connection to it failed): hold the
    /// next requests instead of failing them, and probe until it is back.
    pub fn upstream_gone(&self) {
        let known = self.generation.get();
        let outcome = host::update_shared_data(STATE_KEY, CAS_ROUNDS, |value| {
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
                    "readiness: the connection to function {:?} failed; holding requests until {} answers",
                    self.function,
                    self.settings.path
                );
            }
            self.adopt(state);
        }
    }

    /// Root context tick: learn from other workers, answer requests held too long, probe.
    pub fn on_tick(&self) {
        let now = now_ms();
        self.adopt(self.read_state());
        if self.is_ready() {
            self.release_all(now);
            return;
        }
        let expired = self
            .waiting
            .borrow_mut()
            .expired(now, self.settings.max_wait_ms);
        if !expired.is_empty() {
            for held in &expired {
                self.answer_not_ready(held, now);
            }
            add(self.metrics.timed_out, expired.len());
            self.release_slots(expired.len());
        }
        if let Some((_, give_up)) = self.probe.get() {
            if now >= give_up {
                // The host never answered (a call to a cluster with no endpoint can queue
                // without firing its timeout): count it failed and try again.
                self.probe.set(None);
                add(self.metrics.probes_failed, 1);
            }
        }
        self.maybe_probe(now);
    }

    /// The answer to a probe arrived (root context `on_http_call_response`).
    pub fn on_probe_answer(&self, token: u32) {
        match self.probe.get() {
            Some((mine, _)) if mine == token => self.probe.set(None),
            _ => return,
        }
        let status = host::header(MapType::HttpCallResponseHeaders, ":status")
            .ok()
            .flatten()
            .and_then(|s| std::str::from_utf8(&s).ok()?.parse::<u16>().ok());
        let now = now_ms();
        if probe_says_ready(status) {
            self.publish_ready();
            self.release_all(now);
        } else {
            add(self.metrics.probes_failed, 1);
            log::debug!(
                "readiness: probe {} answered {:?}; next in {} ms",
                self.settings.path,
                status,
                self.settings.retry_interval_ms
            );
            let next = now.saturating_add(self.settings.retry_interval_ms);
            let _ = host::set_shared_data(LEASE_KEY, next.to_string().as_bytes(), 0);
        }
    }

    fn read_state(&self) -> PodState {
        match host::shared_data(STATE_KEY) {
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
        let changed = self.ready.get() != state.ready;
        self.generation.set(state.generation);
        self.ready.set(state.ready);
        record(self.metrics.ready, u64::from(state.ready));
        if changed {
            // The timer belongs to the root context this gate serves (also when called from one
            // of its requests).
            let _ = host::set_tick_period_ms(u32::try_from(self.tick_ms()).unwrap_or(50));
        }
    }

    fn publish_ready(&self) {
        let outcome = host::update_shared_data(STATE_KEY, CAS_ROUNDS, |value| {
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
                        self.settings.path
                    );
                }
                self.adopt(state);
            }
            // Shared data unusable: at least this worker knows.
            None => self.ready.set(true),
        }
    }

    /// Starts a probe if none is in flight in the pod and the retry interval has passed.
    fn maybe_probe(&self, now: u64) {
        if self.probe.get().is_some() {
            return;
        }
        let Ok((value, cas)) = host::shared_data(LEASE_KEY) else {
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
        if host::set_shared_data(LEASE_KEY, until.to_string().as_bytes(), cas) != Ok(true) {
            return; // another worker took it
        }
        match host::dispatch_get(&s.cluster, &s.authority, &s.path, s.probe_timeout_ms) {
            Ok(token) => {
                self.dispatch_failing.set(false);
                // Our own deadline, a little after the host's timeout.
                self.probe
                    .set(Some((token, now.saturating_add(s.probe_timeout_ms + 100))));
                add(self.metrics.probes_sent, 1);
            }
            Err(e) => {
                add(self.metrics.probes_failed, 1);
                if !self.dispatch_failing.replace(true) {
                    log::error!(
                        "readiness: cannot probe {} on cluster {:?} ({e:?}); is \
                         readiness.cluster a cluster of this Envoy? (the EnvoyFilter's CLUSTER \
                         patch adds faas_function_local)",
                        s.path,
                        s.cluster
                    );
                }
                let next = now.saturating_add(s.retry_interval_ms);
                let _ = host::set_shared_data(LEASE_KEY, next.to_string().as_bytes(), 0);
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
            h.payload.state.set(HoldState::Released);
            record(self.metrics.held_ms, now.saturating_sub(h.since_ms));
            if host::set_effective_context(h.context_id).is_ok() {
                let _ = host::resume_request();
            }
        }
        add(self.metrics.released, held.len());
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
        record(self.metrics.held_ms, now.saturating_sub(held.since_ms));
        let reply = LocalReply {
            status: 503,
            details: "faas_mesh_filter.not_ready",
            error: "function not ready",
            retry_after: Some(gate::retry_after_seconds(self.settings.retry_interval_ms)),
            allow: None,
        };
        self.send(held.context_id, &reply, &held.payload.call_id);
    }

    /// The 503 for a request that finds `max_pending` requests already held.
    pub fn queue_full_reply(&self) -> LocalReply {
        LocalReply {
            status: 503,
            details: "faas_mesh_filter.pending_full",
            error: "too many requests waiting for the function to become ready",
            retry_after: Some(gate::retry_after_seconds(self.settings.retry_interval_ms)),
            allow: None,
        }
    }

    fn send(&self, context_id: u32, reply: &LocalReply, call_id: &str) {
        if host::set_effective_context(context_id).is_err() {
            return;
        }
        let body = reply.body(&self.function, call_id);
        let headers = reply.headers(&self.call_id_header, call_id);
        if let Err(e) = host::send_local_response(reply.status, reply.details, &body, &headers) {
            log::warn!("call {call_id}: local reply failed ({e:?})");
        }
    }

    /// Counts a request into the pod-wide held total, unless it is at `max_pending`.
    fn reserve_slot(&self) -> bool {
        let max = self.settings.max_pending;
        let reserved = host::update_shared_data(PENDING_KEY, CAS_ROUNDS, |value| {
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
                adjust(self.metrics.pending, 1);
                true
            }
            Some(false) => false,
            // Cannot count: hold rather than refuse.
            None => true,
        }
    }

    fn release_slots(&self, n: usize) {
        let n = n as u64;
        let released = host::update_shared_data(PENDING_KEY, CAS_ROUNDS, |value| {
            let current = decode_number(value);
            let next = current.saturating_sub(n);
            (Some(next.to_string().into_bytes()), current - next)
        });
        if let Some(released) = released {
            adjust(self.metrics.pending, -i64::try_from(released).unwrap_or(0));
        }
    }
}
