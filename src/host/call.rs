//! One HTTP request through the filter, on any host: Envoy's stream callbacks in, the pure core's
//! decision, host calls out.
//!
//! Per request it makes as few host calls as the work allows (see README, "Cost"): one read of
//! the whole request header map, one clock read, one entropy read only when a call id must be
//! made, and writes only for headers that change. The response costs one header read (has the
//! function set its duration?) and at most two writes.
//!
//! The readiness gate adds, once the function is ready, one flag read per request; its probes
//! run from the root context's tick (see `host::gate`).

use crate::header_map;
use crate::host::gate::{Arrival, Gate, Hold};
use crate::host::policy::{self as host_policy, Enforcer};
use crate::host::{send_reply, Host, Stat};
use crate::metrics;
use crate::plan::Plan;
use crate::policy::Reason;
use crate::reply::{self, LocalReply};
use crate::request::{self, Decision, Entropy, Incoming, Peer};
use crate::timing;
use proxy_wasm::types::{Action, MapType, MetricType};
use std::rc::Rc;

/// Per-request stats of the local function.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestStats {
    requests: Stat,
    rewritten: Stat,
    not_found: Stat,
}

impl RequestStats {
    #[inline(never)]
    pub fn define<H: Host>(host: &H, function: &str) -> RequestStats {
        let counter = |metric: &str| {
            Stat::define(host, MetricType::Counter, &metrics::name(function, metric))
        };
        RequestStats {
            requests: counter("requests"),
            rewritten: counter("rewritten"),
            not_found: counter("not_found"),
        }
    }
}

/// One HTTP request through the filter.
pub struct Call<H: Host + Clone> {
    host: H,
    plan: Option<Rc<Plan>>,
    gate: Option<Rc<Gate<H>>>,
    enforcer: Option<Rc<Enforcer<H>>>,
    stats: RequestStats,
    context_id: u32,
    call_id: String,
    start_nanos: u64,
    /// The filter answered this request itself; its reply already carries the call id.
    answered_locally: bool,
    /// Set when the readiness gate held this request.
    hold: Option<Hold>,
    /// This request counts against `max_inflight` until it ends.
    inflight: bool,
    /// The body has no `Content-Length` and `max_body_bytes` is set: it is held and counted
    /// until it is complete or too large.
    counting_body: bool,
}

impl<H: Host + Clone> Call<H> {
    #[inline]
    pub(crate) fn new(
        host: H,
        plan: Option<Rc<Plan>>,
        gate: Option<Rc<Gate<H>>>,
        enforcer: Option<Rc<Enforcer<H>>>,
        stats: RequestStats,
        context_id: u32,
    ) -> Call<H> {
        Call {
            host,
            plan,
            gate,
            enforcer,
            stats,
            context_id,
            call_id: String::new(),
            start_nanos: 0,
            answered_locally: false,
            hold: None,
            inflight: false,
            counting_body: false,
        }
    }

    pub fn on_request_headers(&mut self, end_of_stream: bool) -> Action {
        let Some(plan) = self.plan.clone() else {
            return Action::Continue;
        };
        self.stats.requests.add(&self.host, 1);
        // What the request carries, in one read of its header map and one pass over it.
        self.start_nanos = self.host.now_nanos().unwrap_or(0);
        let (headers, pairs);
        let incoming = if H::DIRECT_HEADERS {
            pairs = self.host.header_pairs(MapType::HttpRequestHeaders);
            Incoming::scan_pairs(pairs.iter().copied(), &plan)
        } else {
            headers = (self.host.header_map(MapType::HttpRequestHeaders)).unwrap_or_default();
            Incoming::scan(&headers, &plan)
        };
        // One read of the entropy source for everything random: a new call id, a trace and span.
        let mut random = [0u8; 40];
        let Some(entropy) = self.entropy(&mut random, incoming.entropy_needed(&plan)) else {
            return self.answer(reply::NO_ENTROPY);
        };
        // The connection's identity, only when the policy or the gateway check needs it.
        let identity = (incoming.needs_peer(&plan))
            .then(|| host_policy::peer_of(&self.host, plan.policy.needs_peer()));
        let peer = identity
            .as_ref()
            .map_or(Peer::default(), |(mtls, id)| Peer {
                mtls: *mtls,
                principal: id.as_deref(),
            });
        // The decision: route, call id, headers to write, the policy's header checks.
        let decision = request::decide(&plan, &incoming, entropy, self.start_nanos, peer);
        let unheld = self.passes_unheld(&decision, &incoming);
        self.record(&decision);
        let (reply, allowed) = (decision.reply, decision.denied.is_empty());
        self.call_id = decision.call_id;
        if let Some(reply) = reply {
            return self.answer(reply);
        }
        let absent = (incoming.call_ids == 0, incoming.start_times == 0);
        self.write_request(&plan, decision.write_call_id, &decision.writes, absent);
        // The checks that need the pod's shared counters: rate and in-flight.
        let content_length = incoming.content_length;
        if let Some(action) = self.admit(allowed, content_length, end_of_stream) {
            return action;
        }
        self.test_trap();
        let reads_body = self.reads_body(&plan);
        if let Some(action) = self.through_gate(content_length, reads_body, unheld) {
            return action;
        }
        if reads_body {
            Action::Pause
        } else {
            Action::Continue
        }
    }

    /// `body_size`: the whole body buffered so far (as proxy-wasm reports it while paused).
    pub fn on_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.answered_locally {
            return Action::Pause;
        }
        let size = body_size as u64;
        if self.counting_body {
            if let Some(reply) = self.count_body(size, end_of_stream) {
                return self.answer(reply);
            }
        }
        if !self.counting_body {
            self.body_read();
        }
        // While the gate holds the request, its buffered body counts against the pod's budget;
        // it reaches the function on release.
        if self.is_held() {
            let refused = (self.gate.as_ref())
                .and_then(|gate| gate.hold_body(self.context_id, size, &self.call_id));
            return match refused {
                Some(reply) => self.answer(reply),
                None => Action::Pause,
            };
        }
        if self.counting_body {
            Action::Pause
        } else {
            Action::Continue
        }
    }

    pub fn on_request_trailers(&mut self) -> Action {
        // Trailers end the body (HTTP/2 bodies with trailers never see end_of_stream there).
        self.counting_body = false;
        self.body_read();
        if self.is_held() || self.answered_locally {
            Action::Pause
        } else {
            Action::Continue
        }
    }

    pub fn on_response_headers(&mut self, _end_of_stream: bool) -> Action {
        let answered_by_gate = self.hold.as_ref().is_some_and(Hold::answered_by_gate);
        if self.answered_locally || answered_by_gate || self.call_id.is_empty() {
            return Action::Continue;
        }
        let Some(plan) = self.plan.as_ref() else {
            return Action::Continue;
        };
        let names = &plan.headers;
        let map = MapType::HttpResponseHeaders;
        if H::DIRECT_HEADERS {
            return self.response_direct(&names.duration, &names.call_id);
        }
        // With the readiness gate, one read of the response headers answers both questions: did
        // the function set its duration, and is this a 5xx the gate must look into? Without it,
        // only the first; asking for one header that is absent costs far less.
        let has_duration = match &self.gate {
            Some(gate) => self.response_verdict(gate, &names.duration),
            None => matches!(self.host.header(map, &names.duration), Ok(Some(_))),
        };
        let _ = self
            .host
            .set_header(map, &names.call_id, self.call_id.as_bytes());
        if !has_duration {
            let now = self.host.now_nanos().unwrap_or(self.start_nanos);
            let seconds = timing::duration_seconds(now.saturating_sub(self.start_nanos));
            let _ = self
                .host
                .add_header(map, &names.duration, seconds.as_bytes());
        }
        Action::Continue
    }

    pub fn on_done(&mut self) {
        if self.inflight {
            self.inflight = false;
            if let Some(enforcer) = &self.enforcer {
                enforcer.release_inflight();
            }
        }
        // A client that hangs up while held leaves the wait list.
        self.leave_gate();
    }

    /// Whether this request holds state that the root's tick must look after while it lasts:
    /// held by the gate, an in-flight slot (renewed by the tick's heartbeat), or a gate with work
    /// of its own (probing, a 5xx to check). Hosts whose timer needs a live stream (the native
    /// build) keep this one as a carrier while this holds; the wasm build never asks.
    pub fn needs_ticks(&self) -> bool {
        self.is_held() || self.inflight || self.gate.as_ref().is_some_and(|g| g.needs_ticks())
    }

    /// Reads the random bytes the request needs into `random`; `None` (logged) when the host has
    /// none: the request is answered, never given guessable ids.
    #[inline(always)]
    fn entropy<'r>(&self, random: &'r mut [u8; 40], need: Entropy) -> Option<&'r [u8]> {
        let entropy = random.get_mut(..need.len()).unwrap_or_default();
        if !entropy.is_empty() {
            if let Err(e) = self.host.random_bytes(entropy) {
                log::error!("no entropy for a call id or trace id ({e:?})");
                return None;
            }
        }
        Some(entropy)
    }

    /// The policy's checks on the pod's shared counters (rate, in-flight): what to tell the host
    /// when the request is answered; and whether its body must be counted.
    #[inline(always)]
    fn admit(&mut self, allowed: bool, content_length: Option<u64>, end: bool) -> Option<Action> {
        let enforcer = self.enforcer.clone()?;
        if let Some(reply) = enforcer.admit_call(&self.call_id, allowed, &mut self.inflight) {
            return Some(self.answer(reply));
        }
        self.counting_body = enforcer.policy().counts_body(content_length) && !end;
        None
    }

    /// Test builds only (`--features test-trap`, never the shipped module): a request asking for
    /// it traps the VM here, holding its in-flight slot, as a bug would.
    #[inline(always)]
    fn test_trap(&self) {
        #[cfg(all(feature = "test-trap", target_arch = "wasm32"))]
        if let Ok(Some(_)) =
            (self.host).header(MapType::HttpRequestHeaders, "x-faas-mesh-test-trap")
        {
            core::arch::wasm32::unreachable();
        }
    }

    /// A body of unknown length under an enforced `max_body_bytes`: the function sees nothing of
    /// the request until the body is complete and within the limit. This needs the host to keep
    /// calling the body callbacks while the headers wait (`allow_on_headers_stop_iteration`, set
    /// by the shipped EnvoyFilter); without it the headers go on and the body is counted and held
    /// back on its own.
    fn reads_body(&self, plan: &Plan) -> bool {
        self.counting_body && plan.hold_unsized_bodies && self.enforcing()
    }

    /// Requests that ask whether the function is up are never held (looked at only while the
    /// gate is closed): the path the function will see, after the rewrite.
    #[inline(always)]
    fn passes_unheld(&self, decision: &Decision, incoming: &Incoming) -> bool {
        match &self.gate {
            Some(gate) if !gate.is_ready() && decision.reply.is_none() => {
                let path = (decision.writes.iter())
                    .find(|(name, _)| *name == ":path")
                    .and_then(|(_, value)| value.as_deref())
                    .unwrap_or(incoming.path);
                gate.passes_unheld(incoming.gateway_probe, path)
            }
            _ => false,
        }
    }

    /// The decision's stats, and its header checks' denials counted and logged per mode (the
    /// reply of an enforced one is the decision's).
    #[inline(always)]
    fn record(&self, decision: &Decision) {
        let call_id = &decision.call_id;
        if decision.rewritten {
            self.stats.rewritten.add(&self.host, 1);
        }
        if decision.not_found {
            self.stats.not_found.add(&self.host, 1);
        }
        if let Some(enforcer) = &self.enforcer {
            for reason in &decision.denied {
                enforcer.record(*reason, call_id);
            }
        }
    }

    /// Writes the headers the decision names on the request (the call id when it is new).
    /// `absent`: the request carried no call id, no start time (a host with
    /// [`Host::DIRECT_HEADERS`] appends those instead of replacing them).
    #[inline(always)]
    fn write_request(
        &self,
        plan: &Plan,
        write_call_id: bool,
        writes: &[(&str, Option<Vec<u8>>)],
        absent: (bool, bool),
    ) {
        let map = MapType::HttpRequestHeaders;
        let names = &plan.headers;
        if write_call_id {
            let value = self.call_id.as_bytes();
            let _ = if H::DIRECT_HEADERS && absent.0 {
                self.host.add_header(map, &names.call_id, value)
            } else {
                self.host.set_header(map, &names.call_id, value)
            };
        }
        for (name, value) in writes {
            let _ = match value {
                Some(value) if H::DIRECT_HEADERS && absent.1 && *name == names.start_time => {
                    self.host.add_header(map, name, value)
                }
                Some(value) => self.host.set_header(map, name, value),
                None => self.host.remove_header(map, name),
            };
        }
    }

    /// The readiness gate, while it is closed and the request is one it holds: `None` to go on,
    /// or what to tell the host (held: pause; refused: answered).
    #[inline(always)]
    fn through_gate(
        &mut self,
        content_length: Option<u64>,
        reads_body: bool,
        unheld: bool,
    ) -> Option<Action> {
        let gate = self.gate.as_ref()?;
        if gate.is_ready() || unheld {
            return None;
        }
        match gate.admit(self.context_id, &self.call_id, content_length, reads_body) {
            Arrival::Go => None,
            Arrival::Held(hold) => {
                self.hold = Some(hold);
                Some(Action::Pause)
            }
            Arrival::Refused(reply) => Some(self.answer(reply)),
        }
    }

    /// Counts a body of unknown length against `max_body_bytes`: the reply when it is over in
    /// enforce mode (audit mode counts and logs it, and the body goes on).
    #[inline(always)]
    fn count_body(&mut self, size: u64, end_of_stream: bool) -> Option<LocalReply> {
        let enforcer = self.enforcer.as_ref()?;
        if enforcer.policy().body_over(size) {
            self.counting_body = false;
            return enforcer.deny(Reason::BodySize, &self.call_id, 0);
        }
        if end_of_stream {
            self.counting_body = false;
        }
        None
    }

    /// The response on a host with [`Host::DIRECT_HEADERS`]: one read of its pairs answers
    /// whether the function set its duration or a call id, and the gate's question (is this a
    /// 5xx to look into); the call id and duration are appended when absent.
    #[inline(never)]
    fn response_direct(&self, duration: &str, call_id: &str) -> Action {
        let map = MapType::HttpResponseHeaders;
        let (mut has_duration, mut has_call_id) = (false, false);
        // The pairs stay valid until the first write below.
        let mut status: &[u8] = b"";
        for (name, value) in self.host.header_pairs(map) {
            if name == b":status" {
                status = value;
            } else if name == duration.as_bytes() {
                has_duration = true;
            } else if name == call_id.as_bytes() {
                has_call_id = true;
            }
        }
        if let Some(gate) = &self.gate {
            gate.after_response(status, || self.response_flags());
        }
        let value = self.call_id.as_bytes();
        let _ = if has_call_id {
            self.host.set_header(map, call_id, value)
        } else {
            self.host.add_header(map, call_id, value)
        };
        if !has_duration {
            let now = self.host.now_nanos().unwrap_or(self.start_nanos);
            let seconds = timing::duration_seconds(now.saturating_sub(self.start_nanos));
            let _ = self.host.add_header(map, duration, seconds.as_bytes());
        }
        Action::Continue
    }

    /// Reads the response's headers once: whether the function set its duration, and the gate's
    /// verdict on its status (a 5xx re-arms the gate or sends a probe).
    fn response_verdict(&self, gate: &Gate<H>, duration: &str) -> bool {
        let headers = (self.host.header_map(MapType::HttpResponseHeaders)).unwrap_or_default();
        let mut has_duration = false;
        let mut status: &[u8] = b"";
        for (name, value) in header_map::pairs(&headers) {
            if name == b":status" {
                status = value;
            } else if name == duration.as_bytes() {
                has_duration = true;
            }
        }
        gate.after_response(status, || self.response_flags());
        has_duration
    }

    /// Envoy's response flags (`response.flags`, a little-endian u64; 0 when absent).
    #[inline(always)]
    fn response_flags(&self) -> u64 {
        (self.host.property(b"response\0flags").ok().flatten())
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map_or(0, u64::from_le_bytes)
    }

    fn is_held(&self) -> bool {
        self.hold.as_ref().is_some_and(Hold::is_held)
    }

    /// The body is read to its end: a request the gate still holds waits for the gate as any
    /// other; one it released meanwhile goes on now (the caller's `Continue`).
    fn body_read(&self) {
        if let Some(hold) = &self.hold {
            hold.body_read();
        }
    }

    /// Whether the policy answers denials (not audit, not off).
    fn enforcing(&self) -> bool {
        self.enforcer.as_ref().is_some_and(|e| e.enforcing())
    }

    /// A request the gate holds leaves its wait list (and gives back its place and bytes).
    fn leave_gate(&mut self) {
        if self.is_held() {
            if let Some(gate) = &self.gate {
                gate.forget(self.context_id);
            }
            self.hold = None;
        }
    }

    /// Answers the request from the filter, with the call id and the internal marker.
    #[cold]
    #[inline(never)]
    fn answer(&mut self, reply: LocalReply) -> Action {
        self.leave_gate();
        if let Some(plan) = &self.plan {
            let (function, header) = (plan.function_or_empty(), &plan.headers.call_id);
            send_reply(&self.host, &reply, function, header, &self.call_id);
        }
        self.answered_locally = true;
        Action::Pause
    }
}
