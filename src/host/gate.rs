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
    self, decode_number, probe_says_ready, Held, PodState, Waiting, LEASE_KEY, STATE_KEY,
};
use crate::held::{self, Record, Ticket};
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
pub enum Arrived {
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
    /// The entry of the pod's held record its place (and its body bytes) were taken from.
    ticket: Ticket,
    /// Body bytes reserved for it in the pod's budget.
    bytes: Cell<u64>,
}

/// Why a held request's body cannot be held.
pub enum BodyRefused {
    /// Larger than the whole `max_pending_bytes`: 413.
    TooLarge,
    /// The pod holds too many bytes already: 503.
    Full,
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
            .create_shared_data(STATE_KEY, &PodState::default().encode());
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
    #[inline(always)]
    pub fn arrive(&self, context_id: u32, call_id: &str) -> Arrived {
        self.adopt(self.read_state());
        if self.is_ready() {
            return Arrived::Go;
        }
        let now = self.host.now_ms();
        let Some(ticket) = self.reserve_slot(now) else {
            self.stats.rejected_queue_full.add(&self.host, 1);
            log::warn!(
                "call {call_id} for function {:?}: {} requests already held; answered 503",
                self.function,
                self.settings.max_pending
            );
            return Arrived::QueueFull;
        };
        let state = Rc::new(Cell::new(HoldState::Held));
        self.waiting.borrow_mut().hold(
            context_id,
            now,
            self.settings.max_wait_ms,
            HeldCall {
                call_id: call_id.to_string(),
                state: state.clone(),
                ticket,
                bytes: Cell::new(0),
            },
        );
        self.stats.held.add(&self.host, 1);
        // The probe goes out from the root context within a (now fast) tick, never from this
        // request's context.
        self.retick();
        Arrived::Held(state)
    }

    /// The client of a held request went away: forget it.
    pub fn forget(&self, context_id: u32) {
        let removed = self.waiting.borrow_mut().remove(context_id);
        if let Some(held) = removed {
            self.stats.abandoned.add(&self.host, 1);
            self.release(std::slice::from_ref(&held));
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
            self.release(&expired);
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
        let now = self.host.now_ms();
        // Since when the pod holds requests: its oldest entry (this worker's included).
        let record = match self.host.shared_data(held::KEY) {
            Ok((value, _)) => Record::decode(value.as_deref()),
            Err(_) => Record::default(),
        };
        let since = record
            .entries
            .iter()
            .filter(|e| e.count > 0)
            .map(|e| e.since)
            .min();
        match since {
            Some(since) => gate::holding_interval_ms(retry, now.saturating_sub(since)),
            None => retry,
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
                }
                self.adopt(state);
            }
            // Shared data unusable: at least this worker knows.
            None => self.ready.set(true),
        }
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
        self.release(&held);
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

    /// Counts a request into this VM's entry of the pod's held record, unless the pod holds
    /// `max_pending` (what dead VMs held counts until it has been answered).
    fn reserve_slot(&self, now: u64) -> Option<Ticket> {
        let s = &self.settings;
        let until = now
            .saturating_add(s.max_wait_ms)
            .saturating_add(held::MARGIN_MS);
        let owner = self.owner;
        let reserved = self
            .host
            .update_shared_data(held::KEY, CAS_ROUNDS, |value| {
                let mut record = Record::decode(value);
                let dropped = record.expire(now);
                let ticket = record.hold(owner, now, until, s.max_pending);
                let write = (ticket.is_some() || dropped > 0).then(|| record.encode());
                (write, (ticket, dropped))
            });
        match reserved {
            Some((ticket, dropped)) => {
                // The gauge moves by the change, not to the value: workers' updates commute.
                let added = i64::from(ticket.is_some());
                self.stats
                    .pending
                    .add(&self.host, added - i64::try_from(dropped).unwrap_or(0));
                ticket
            }
            // Cannot count: hold rather than refuse.
            None => Some(Ticket::default()),
        }
    }

    /// A held request's body has grown to `body_bytes` (Envoy buffers it while the gate holds
    /// the request): reserves the growth in the pod's budget, or says why it cannot be held.
    /// Nothing to do for a request this gate does not hold (any more).
    #[inline(always)]
    pub fn reserve_body(&self, context_id: u32, body_bytes: u64) -> Result<(), BodyRefused> {
        let waiting = self.waiting.borrow();
        let Some(held) = waiting.find(context_id) else {
            return Ok(());
        };
        let call = &held.payload;
        let (reserved, ticket) = (call.bytes.get(), call.ticket);
        let max = self.settings.max_pending_bytes;
        let now = self.host.now_ms();
        let verdict = self
            .host
            .update_shared_data(held::KEY, CAS_ROUNDS, |value| {
                let mut record = Record::decode(value);
                record.expire(now);
                match crate::body_budget::verdict(body_bytes, reserved, record.bytes(), max) {
                    crate::body_budget::Verdict::Hold { extra: 0, .. } => (None, Ok(0)),
                    crate::body_budget::Verdict::Hold { extra, .. } => {
                        if record.reserve_bytes(ticket, now, extra, max) {
                            (Some(record.encode()), Ok(extra))
                        } else {
                            (None, Err(BodyRefused::Full))
                        }
                    }
                    crate::body_budget::Verdict::TooLarge => (None, Err(BodyRefused::TooLarge)),
                    crate::body_budget::Verdict::Full => (None, Err(BodyRefused::Full)),
                }
            });
        match verdict {
            Some(Ok(extra)) => {
                call.bytes.set(reserved + extra);
                Ok(())
            }
            Some(Err(refused)) => Err(refused),
            // Shared data unusable: hold rather than refuse (Envoy's buffer limit still bounds it).
            None => Ok(()),
        }
    }

    /// Gives back the places and body bytes of requests this gate no longer holds, each to the
    /// entry it was taken from.
    fn release(&self, calls: &[Held<HeldCall>]) {
        let mut by_ticket: Vec<(Ticket, u64, u64)> = Vec::new();
        for h in calls {
            let call = &h.payload;
            match by_ticket.iter_mut().find(|(t, _, _)| *t == call.ticket) {
                Some((_, count, bytes)) => {
                    *count += 1;
                    *bytes += call.bytes.get();
                }
                None => by_ticket.push((call.ticket, 1, call.bytes.get())),
            }
        }
        for (ticket, count, bytes) in by_ticket {
            let released = self
                .host
                .update_shared_data(held::KEY, CAS_ROUNDS, |value| {
                    let mut record = Record::decode(value);
                    let before = record.count();
                    record.release(ticket, count, bytes);
                    let released = before - record.count();
                    (Some(record.encode()), released)
                });
            if let Some(released) = released {
                self.stats
                    .pending
                    .add(&self.host, -i64::try_from(released).unwrap_or(0));
            }
        }
    }
}

// core: interim, replaced by the gate branch
/// A held request's handle, kept by its Call (wraps the shared hold state).
pub struct Hold(Rc<Cell<HoldState>>);

/// What the gate decided for a request that arrived while the worker believed "not ready".
pub enum Arrival {
    Go,
    Held(Hold),
    Refused(LocalReply),
}

// core: interim, replaced by the gate branch
impl Hold {
    /// Held or HeldReadingBody.
    pub fn is_held(&self) -> bool {
        matches!(self.0.get(), HoldState::Held | HoldState::HeldReadingBody)
    }

    /// The gate answered it (503).
    pub fn answered_by_gate(&self) -> bool {
        self.0.get() == HoldState::Answered
    }

    /// HeldReadingBody -> Held: the body is complete.
    pub fn body_read(&self) {
        if self.0.get() == HoldState::HeldReadingBody {
            self.0.set(HoldState::Held);
        }
    }
}

// core: interim, replaced by the gate branch
impl<H: Host> Gate<H> {
    /// While not ready: too large for the pod's budget (413 now), queue full (503 now), held,
    /// or go. `reads_body`: the headers must wait for the whole body (hold_unsized_bodies).
    #[inline(never)]
    pub fn admit(
        &self,
        context_id: u32,
        call_id: &str,
        content_length: Option<u64>,
        reads_body: bool,
    ) -> Arrival {
        // A body the pod could never hold is answered now, not after `max_wait_ms`.
        if content_length.is_some_and(|len| len > self.settings.max_pending_bytes) {
            return Arrival::Refused(reply::TOO_LARGE_TO_HOLD);
        }
        match self.arrive(context_id, call_id) {
            Arrived::Go => Arrival::Go,
            Arrived::Held(state) => {
                if reads_body {
                    // Released or not, the headers wait for the whole body.
                    state.set(HoldState::HeldReadingBody);
                }
                Arrival::Held(Hold(state))
            }
            Arrived::QueueFull => Arrival::Refused(self.queue_full_reply()),
        }
    }

    /// A held request's body grew to `body_bytes`: None, or the reply when it does not fit
    /// (413 larger than the whole budget, 503 pod full; logged with the call id).
    #[inline(never)]
    pub fn hold_body(&self, context_id: u32, body_bytes: u64, call_id: &str) -> Option<LocalReply> {
        match self.reserve_body(context_id, body_bytes) {
            Ok(()) => None,
            Err(BodyRefused::TooLarge) => Some(reply::TOO_LARGE_TO_HOLD),
            Err(BodyRefused::Full) => {
                log::warn!(
                    "call {call_id}: the pod already holds its max_pending_bytes of request \
                     bodies; answered 503"
                );
                Some(reply::BYTES_FULL)
            }
        }
    }

    /// The verdict after a response: `status` is the `:status` value; `response_flags` is read
    /// only when needed (503). A 5xx re-arms or probes, anything else does nothing.
    pub fn after_response(&self, status: &[u8], response_flags: impl FnOnce() -> u64) {
        if !gate::worth_a_probe(status) {
            return;
        }
        // Envoy's own 503 for a refused or dropped connection: the process is gone. Any other
        // 5xx (of-watchdog's 500 when the function's server refuses it, or the function's own
        // error): one probe decides.
        let flags = if status == b"503" {
            response_flags()
        } else {
            0
        };
        log::debug!("5xx with response flags {flags:#x}");
        if gate::upstream_gone(flags) {
            self.upstream_gone();
        } else {
            self.check_after_5xx();
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
        let workers = [worker(&pod, json, 1), worker(&pod, json, 2)];
        (pod, workers)
    }

    /// One more worker's VM in `pod` (a new one after a trap has another owner id).
    fn worker(pod: &Pod, json: &str, owner: u64) -> Worker {
        let vm = pod.worker();
        let gate = Gate::new(vm.clone(), settings(json), "env", "x-call-id", owner);
        (vm, gate)
    }

    /// What a gate holds: (context id, body bytes reserved).
    fn held_ids(gate: &Gate<Fake>) -> Vec<(u32, u64)> {
        let waiting = gate.waiting.borrow();
        waiting
            .iter()
            .map(|h| (h.context_id, h.payload.bytes.get()))
            .collect()
    }

    fn record(pod: &Pod) -> Record {
        Record::decode(pod.shared(held::KEY).as_deref())
    }

    fn held(admission: Arrived) -> Rc<Cell<HoldState>> {
        match admission {
            Arrived::Held(state) => state,
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
        let held_a = held(ga.arrive(1, "id-a"));
        let held_b = held(gb.arrive(7, "id-b"));
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
        assert!(matches!(ga.arrive(2, "id"), Arrived::Go));
    }

    #[test]
    fn max_pending_holds_across_workers() {
        let (pod, [(_, ga), (_, gb)]) = pod(r#"{"readiness":{"max_pending":3}}"#);
        held(ga.arrive(1, "1"));
        held(gb.arrive(2, "2"));
        held(ga.arrive(3, "3"));
        assert!(matches!(gb.arrive(4, "4"), Arrived::QueueFull));
        assert!(matches!(ga.arrive(5, "5"), Arrived::QueueFull));
        // A client that hangs up gives its place back.
        gb.forget(2);
        held(gb.arrive(6, "6"));
        assert_eq!(
            pod.metric("faas_mesh_filter.function.env.readiness.pending"),
            3
        );
    }

    #[test]
    fn a_request_held_too_long_gets_503_with_its_call_id() {
        let (pod, [(a, ga), _]) = pod(r#"{"readiness":{"max_wait_ms":1000}}"#);
        let state = held(ga.arrive(9, "call-9"));
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
        held(ga.arrive(1, "1"));
        held(ga.arrive(2, "2"));
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
        held(ga.arrive(1, "1"));
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
        held(ga.arrive(3, "3"));
    }

    #[test]
    fn a_dead_workers_places_come_back_once_its_held_calls_have_been_answered() {
        let json = r#"{"readiness":{"max_pending":3,"max_wait_ms":1000}}"#;
        let (pod, [(a, ga), (_, gb)]) = pod(json);
        held(gb.arrive(1, "1"));
        pod.advance_ms(100);
        held(gb.arrive(2, "2"));
        drop(gb); // this worker's VM traps: it never releases what it counted
        held(ga.arrive(3, "3"));
        assert!(matches!(ga.arrive(4, "4"), Arrived::QueueFull));
        // Envoy answers the dead VM's held calls by max_wait_ms + the margin (request_timeout):
        // until the last of them is answered its places stay taken, then they come back.
        pod.advance_ms(1000 + held::MARGIN_MS - 1);
        ga.on_tick(); // answers ga's own call 3 (503): its place comes back at once
        assert!(held(ga.arrive(5, "5")).get() == HoldState::Held);
        assert!(matches!(ga.arrive(6, "6"), Arrived::QueueFull));
        pod.advance_ms(1);
        held(ga.arrive(7, "7"));
        held(ga.arrive(8, "8"));
        assert!(matches!(ga.arrive(9, "9"), Arrived::QueueFull));
        assert_eq!(record(&pod).count(), 3);
        assert_eq!(
            pod.metric("faas_mesh_filter.function.env.readiness.pending"),
            3
        );
        // A VM started after the trap is another owner; the function comes up: all released.
        let (c, gc) = worker(&pod, json, 3);
        answer(&a, &ga, "200");
        pod.advance_ms(5);
        gc.on_tick();
        assert!(gc.is_ready() && c.sent().is_empty());
        assert_eq!(a.resumed(), [5, 7, 8]);
        assert_eq!(record(&pod), Record::default());
        assert_eq!(
            pod.metric("faas_mesh_filter.function.env.readiness.pending"),
            0
        );
    }

    /// Issue 23, part 1: three 20 kB bodies held, released when the function is ready, still
    /// running when the gate re-arms and holds three more. The first three's bytes went back
    /// when they were released, to the entry they came from: the budget holds.
    #[test]
    fn the_body_budget_holds_across_a_rearm() {
        let json = r#"{"readiness":{"max_pending_bytes":65536}}"#;
        let (pod, [(a, ga), (b, gb)]) = pod(json);
        // Made at configure time, before any request counts in it (a write to an absent key
        // is unconditional: two workers creating it at once would lose an entry).
        assert_eq!(pod.shared(held::KEY).as_deref(), Some(&b";"[..]));
        for (ctx, gate) in [(1, &ga), (2, &gb), (3, &ga)] {
            held(gate.arrive(ctx, "first"));
            assert!(gate.reserve_body(ctx, 20_000).is_ok());
        }
        assert_eq!(record(&pod).bytes(), 60_000);
        ga.on_tick();
        gb.on_tick();
        let (prober, gate) = if a.dispatched().is_empty() {
            (&b, &gb)
        } else {
            (&a, &ga)
        };
        answer(prober, gate, "200");
        pod.advance_ms(5);
        ga.on_tick();
        gb.on_tick();
        assert_eq!(a.resumed(), [1, 3]);
        assert_eq!(b.resumed(), [2]);
        assert_eq!(record(&pod), Record::default());
        // They run for seconds; the function fails meanwhile and the gate re-arms.
        ga.upstream_gone();
        pod.advance_ms(5);
        gb.on_tick();
        for (ctx, gate) in [(11, &ga), (12, &gb), (13, &gb)] {
            held(gate.arrive(ctx, "second"));
            assert!(gate.reserve_body(ctx, 20_000).is_ok());
        }
        // The first three finish now: nothing of theirs is left to give back, so the fourth
        // body of the second wave does not fit.
        held(ga.arrive(14, "fourth"));
        assert!(matches!(
            ga.reserve_body(14, 20_000),
            Err(BodyRefused::Full)
        ));
        ga.forget(14); // answered 503
        assert_eq!(record(&pod).bytes(), 60_000);
        assert!(matches!(
            gb.reserve_body(12, 65_537),
            Err(BodyRefused::TooLarge)
        ));
    }

    /// Every interleaving of hold, body growth, release on readiness, re-arm, answer, abort,
    /// and a VM dying and being replaced, over two workers: after each step each live VM's
    /// entry in the pod's record is exactly what it holds, the pod never holds more than its
    /// budgets, and a dead VM's entry is gone once its calls have been answered.
    #[test]
    fn the_held_record_is_exact_at_any_interleaving() {
        let json =
            r#"{"readiness":{"max_pending":6,"max_pending_bytes":50000,"max_wait_ms":1000}}"#;
        for seed in 1..=300u64 {
            let pod = Pod::new();
            pod.add_cluster(CLUSTER);
            let mut next_owner = 3;
            let mut workers = vec![worker(&pod, json, 1), worker(&pod, json, 2)];
            let mut dead: Vec<(u64, u64)> = Vec::new(); // (owner, died at ms)
            let mut rng = seed;
            let mut roll = |n: u64| {
                rng = rng
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (rng >> 33) % n
            };
            let mut ctx = 100;
            for _step in 0..200 {
                let w = roll(2) as usize;
                let (vm, gate) = (&workers[w].0, &workers[w].1);
                match roll(9) {
                    0 | 1 => {
                        ctx += 1;
                        let _ = gate.arrive(ctx, "c");
                    }
                    2 | 3 => {
                        let ids = held_ids(gate);
                        if let Some(&(id, bytes)) = ids.get(roll(ids.len().max(1) as u64) as usize)
                        {
                            if gate.reserve_body(id, bytes + roll(20_000)).is_err() {
                                gate.forget(id);
                            }
                        }
                    }
                    4 => {
                        if let Some(&(id, _)) = held_ids(gate).first() {
                            gate.forget(id);
                        }
                    }
                    5 => {
                        gate.on_tick();
                        let status = if roll(2) == 0 { "200" } else { "503" };
                        answer(vm, gate, status);
                    }
                    6 => gate.upstream_gone(),
                    7 => {
                        pod.advance_ms(roll(400));
                        for (_, g) in &workers {
                            g.on_tick();
                        }
                    }
                    _ => {
                        if roll(4) == 0 {
                            let now = workers[w].0.now_ms();
                            dead.push((workers[w].1.owner, now));
                            workers[w] = worker(&pod, json, next_owner);
                            next_owner += 1;
                        }
                    }
                }
                let now = workers[0].0.now_ms();
                let r = record(&pod);
                assert!(r.count() <= 6 && r.bytes() <= 50_000, "seed {seed}: {r:?}");
                for (_, g) in &workers {
                    let (count, bytes) = held_ids(g)
                        .into_iter()
                        .fold((0, 0), |(c, b), (_, bytes)| (c + 1, b + bytes));
                    let mine = r.entries.iter().filter(|e| e.owner == g.owner);
                    let (rc, rb) = mine.fold((0, 0), |(c, b), e| (c + e.count, b + e.bytes));
                    assert_eq!((rc, rb), (count, bytes), "seed {seed}: {r:?}");
                }
                for (owner, died) in &dead {
                    if now > died + 1000 + held::MARGIN_MS {
                        // Gone at the latest when the next request is held anywhere.
                        let mut r = r.clone();
                        r.expire(now);
                        assert!(r.entries.iter().all(|e| e.owner != *owner));
                    }
                }
            }
        }
    }
}
