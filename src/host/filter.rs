//! The proxy-wasm adapter: Envoy's callbacks in, decisions from the pure modules, host calls out.
//!
//! Per request it makes as few host calls as the work allows (see README, "Cost"): one read of
//! the whole request header map, one clock read, one entropy read only when a call id must be
//! made, and writes only for headers that change. The response costs one header read (has the
//! function set its duration?) and at most two writes.
//!
//! The readiness gate adds, once the function is ready, one flag read per request; its probes
//! run from the root context's tick (see `readiness`).

use crate::config::{Config, Keep};
use crate::header_map;
use crate::host::gate::{Arrival, Gate, Hold};
use crate::host::policy::{self as host_policy, Enforcer};
use crate::host::{self, send_reply, Abi, Host, HostLogger, Stat};
use crate::metrics;
use crate::plan::{Plan, PodInfo};
use crate::policy::{PolicyMode, Reason};
use crate::reply::{self, LocalReply};
use crate::request::{self, Incoming, Peer};
use crate::timing;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, MapType, MetricType};
use std::cell::Cell;
use std::rc::Rc;

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Root {
            plan: None,
            gate: None,
            enforcer: None,
            stats: RequestStats::default(),
        })
    });
}}

struct Root {
    plan: Option<Rc<Plan>>,
    gate: Option<Rc<Gate<Abi>>>,
    /// Present when the local function's policy has rules and is not `off`.
    enforcer: Option<Rc<Enforcer<Abi>>>,
    stats: RequestStats,
}

/// Per-request stats of the local function.
#[derive(Debug, Clone, Copy, Default)]
struct RequestStats {
    requests: Stat,
    rewritten: Stat,
    not_found: Stat,
}

impl RequestStats {
    #[inline(never)]
    fn define(function: &str) -> RequestStats {
        let counter = |metric: &str| {
            Stat::define(&Abi, MetricType::Counter, &metrics::name(function, metric))
        };
        RequestStats {
            requests: counter("requests"),
            rewritten: counter("rewritten"),
            not_found: counter("not_found"),
        }
    }
}

fn count(stat: Stat) {
    stat.add(&Abi, 1);
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _num_headers: usize,
        _body_size: usize,
        _num_trailers: usize,
    ) {
        if let Some(gate) = &self.gate {
            gate.on_probe_answer(token_id);
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        HostLogger::init();
        match configure() {
            Ok(plan) => {
                for notice in &plan.notices {
                    log::info!("{notice}");
                }
                report_annotations(&plan);
                log::info!(
                    "configured for function {:?} in namespace {:?}",
                    plan.function_or_empty(),
                    plan.namespace.as_deref().unwrap_or("")
                );
                self.gate = plan.readiness.as_ref().map(|settings| {
                    Gate::new(
                        Abi,
                        settings.clone(),
                        plan.function_or_empty(),
                        &plan.headers.call_id,
                        vm_id(),
                    )
                });
                self.enforcer = plan.policy.is_active().then(|| {
                    Rc::new(Enforcer::new(
                        Abi,
                        host_policy::vm_owner(),
                        &plan.policy,
                        plan.function_or_empty(),
                    ))
                });
                self.stats = RequestStats::define(plan.function_or_empty());
                count(Stat::define(
                    &Abi,
                    MetricType::Counter,
                    metrics::CONFIG_LOADED,
                ));
                // The gate's tick (at most 1 s) also serves the enforcer's heartbeat.
                let tick = (self.gate.as_ref().map(|g| g.tick_ms()))
                    .or(self.enforcer.as_ref().map(|e| e.tick_ms()))
                    .unwrap_or(0);
                if let Err(e) = host::set_tick_period_ms(u32::try_from(tick).unwrap_or(50)) {
                    log::warn!(
                        "readiness: no timer from the host ({e:?}); held requests wait for probes"
                    );
                }
                self.plan = Some(Rc::new(plan));
                true
            }
            Err(problem) => {
                // Envoy rejects the plugin; the sidecar keeps its last good configuration.
                log::error!("invalid configuration: {problem}");
                count(Stat::define(
                    &Abi,
                    MetricType::Counter,
                    metrics::CONFIG_REJECTED,
                ));
                false
            }
        }
    }

    fn on_tick(&mut self) {
        if let Some(gate) = &self.gate {
            gate.on_tick();
        }
        if let Some(enforcer) = &self.enforcer {
            enforcer.on_tick();
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Call {
            plan: self.plan.clone(),
            gate: self.gate.clone(),
            enforcer: self.enforcer.clone(),
            stats: self.stats,
            context_id,
            call_id: String::new(),
            start_nanos: 0,
            answered_locally: false,
            hold: None,
            inflight: false,
            counting_body: false,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// This VM's id in the pod's held record: random, picked once per VM (a VM that replaces one
/// that trapped starts with fresh memory, so it is another owner).
fn vm_id() -> u64 {
    thread_local! {
        static VM_ID: Cell<u64> = const { Cell::new(0) };
    }
    VM_ID.with(|id| {
        if id.get() == 0 {
            let mut bytes = [0u8; 8];
            let random = host::random_bytes(&mut bytes).map(|()| u64::from_le_bytes(bytes));
            let fresh = random.unwrap_or_else(|_| host::now_nanos().unwrap_or(1));
            id.set(fresh.max(1));
        }
        id.get()
    })
}

/// One log line per `com.openfaas.mesh.*` annotation, applied or refused (the operator's rule
/// stands), and two gauges: how many are applied and refused now (every VM configures, so a
/// counter would count each annotation once per worker).
fn report_annotations(plan: &Plan) {
    if plan.annotations.is_empty() {
        return;
    }
    let function = plan.function_or_empty();
    let mut refused = 0u64;
    for outcome in &plan.annotations {
        match outcome.refused {
            None => log::info!(
                "function {function:?}: annotation {} applied",
                outcome.annotation
            ),
            Some(why) => {
                refused += 1;
                log::warn!(
                    "function {function:?}: annotation {} refused ({why}); the operator's rule stands",
                    outcome.annotation
                );
            }
        }
    }
    let applied = plan.annotations.len() as u64 - refused;
    for (what, n) in [
        ("annotations.applied", applied),
        ("annotations.refused", refused),
    ] {
        Stat::define(&Abi, MetricType::Gauge, &metrics::name(function, what)).record(&Abi, n);
    }
}

#[inline(never)]
fn configure() -> Result<Plan, String> {
    let raw = host::plugin_configuration()
        .map_err(|e| format!("configuration: the host did not hand it over ({e:?})"))?;
    // The pod label is read once the `function` section is known; only the local function's
    // policy entry is kept (every entry is still checked).
    let mut pod = PodInfo::default();
    let config = Config::parse_with(&raw, |function| {
        pod = pod_info(&function.name_label);
        Keep::Only(Plan::local_function(function, &pod))
    })
    .map_err(|e| e.to_string())?;
    Plan::compile(&config, &pod).map_err(|e| e.to_string())
}

/// Reads what Istio put in the node metadata: the function's pod label and the namespace.
fn pod_info(label: &str) -> PodInfo {
    let text = |path: &[u8]| -> Option<String> {
        let bytes = host::property(path).ok()??;
        String::from_utf8(bytes).ok().filter(|s| !s.is_empty())
    };
    let mut label_path = b"xds\0node\0metadata\0LABELS\0".to_vec();
    label_path.extend_from_slice(label.as_bytes());
    PodInfo {
        label_value: text(&label_path),
        namespace: text(b"xds\0node\0metadata\0NAMESPACE"),
        annotations: pod_annotations(),
    }
}

/// The pod's annotations from the node metadata. Envoy hands a metadata map over as a
/// serialized pair list (the header-map format); only the filter's own prefix and OpenFaaS's
/// readiness path are kept.
fn pod_annotations() -> Vec<(String, String)> {
    let Ok(Some(bytes)) = host::property(b"xds\0node\0metadata\0ANNOTATIONS") else {
        return Vec::new();
    };
    header_map::pairs(&bytes)
        .filter(|(name, _)| {
            name.starts_with(crate::annotations::PREFIX.as_bytes())
                || *name == crate::annotations::READY_PATH.as_bytes()
        })
        .map(|(name, value)| {
            (
                String::from_utf8_lossy(name).into_owned(),
                String::from_utf8_lossy(value).into_owned(),
            )
        })
        .collect()
}

/// One HTTP request through the filter.
struct Call {
    plan: Option<Rc<Plan>>,
    gate: Option<Rc<Gate<Abi>>>,
    enforcer: Option<Rc<Enforcer<Abi>>>,
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

impl Call {
    fn is_held(&self) -> bool {
        self.hold.as_ref().is_some_and(Hold::is_held)
    }
}

impl Context for Call {
    // Probes go out from the root context only (the pod's, not a client's), so their answers
    // arrive there, never here.
    fn on_done(&mut self) -> bool {
        if self.inflight {
            self.inflight = false;
            if let Some(enforcer) = &self.enforcer {
                enforcer.release_inflight();
            }
        }
        // A client that hangs up while held leaves the wait list.
        if self.is_held() {
            if let Some(gate) = &self.gate {
                gate.forget(self.context_id);
            }
        }
        true
    }
}

impl HttpContext for Call {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(plan) = self.plan.clone() else {
            return Action::Continue;
        };
        count(self.stats.requests);
        // What the request carries, in one read of its header map and one pass over it.
        self.start_nanos = host::now_nanos().unwrap_or(0);
        let headers = host::header_map(MapType::HttpRequestHeaders).unwrap_or_default();
        let incoming = Incoming::scan(&headers, &plan);
        // One read of the entropy source for everything random: a new call id, a trace and span.
        let mut random = [0u8; 40];
        let entropy = random
            .get_mut(..incoming.entropy_needed(&plan).len())
            .unwrap_or_default();
        if !entropy.is_empty() {
            if let Err(e) = host::random_bytes(entropy) {
                // Never fall back to guessable ids; say so and answer.
                log::error!("no entropy for a call id or trace id ({e:?})");
                return self.answer(&plan, reply::NO_ENTROPY);
            }
        }
        // The connection's identity, only when the policy or the gateway check needs it.
        let identity = incoming
            .needs_peer(&plan)
            .then(|| host_policy::peer_of(&Abi, plan.policy.needs_peer()));
        let peer = identity
            .as_ref()
            .map_or(Peer::default(), |(mtls, principal)| Peer {
                mtls: *mtls,
                principal: principal.as_deref(),
            });
        // The decision: route, call id, headers to write, the policy's header checks.
        let decision = request::decide(&plan, &incoming, entropy, self.start_nanos, peer);
        let content_length = incoming.content_length;
        // Requests that ask whether the function is up are never held (looked at only while the
        // gate is closed): the path the function will see, after the rewrite.
        let unheld = match &self.gate {
            Some(gate) if !gate.is_ready() && decision.reply.is_none() => {
                let path = decision
                    .writes
                    .iter()
                    .find(|(name, _)| *name == ":path")
                    .and_then(|(_, value)| value.as_deref())
                    .unwrap_or(incoming.path);
                gate.passes_unheld(incoming.gateway_probe, path)
            }
            _ => false,
        };
        drop(incoming);
        drop(headers);
        self.call_id = decision.call_id;
        if decision.rewritten {
            count(self.stats.rewritten);
        }
        if decision.not_found {
            count(self.stats.not_found);
        }
        if let Some(enforcer) = &self.enforcer {
            for reason in &decision.denied {
                enforcer.deny(*reason, &self.call_id, 0);
            }
        }
        if let Some(reply) = decision.reply {
            return self.answer(&plan, reply);
        }
        if decision.write_call_id {
            let _ = host::set_header(
                MapType::HttpRequestHeaders,
                &plan.headers.call_id,
                self.call_id.as_bytes(),
            );
        }
        for (name, value) in &decision.writes {
            let _ = match value {
                Some(value) => host::set_header(MapType::HttpRequestHeaders, name, value),
                None => host::remove_header(MapType::HttpRequestHeaders, name),
            };
        }
        // The checks that need the pod's shared counters: rate and in-flight.
        if let Some(enforcer) = self.enforcer.clone() {
            if let Some(reply) = self.admit(&enforcer, decision.denied.is_empty()) {
                return self.answer(&plan, reply);
            }
            self.counting_body = enforcer.policy().counts_body(content_length) && !end_of_stream;
        }
        // Test builds only (`--features test-trap`, never the shipped module): a request asking
        // for it traps the VM here, holding its in-flight slot, as a bug would.
        #[cfg(feature = "test-trap")]
        if let Ok(Some(_)) = host::header(MapType::HttpRequestHeaders, "x-faas-mesh-test-trap") {
            core::arch::wasm32::unreachable();
        }
        if let Some(gate) = self.gate.clone() {
            if !gate.is_ready() && !unheld {
                // Released or not, the headers of such a request wait for the whole body.
                let reads_body = self.counting_body && plan.hold_unsized_bodies && self.enforcing();
                match gate.admit(self.context_id, &self.call_id, content_length, reads_body) {
                    Arrival::Go => {}
                    Arrival::Held(hold) => {
                        self.hold = Some(hold);
                        return Action::Pause;
                    }
                    Arrival::Refused(reply) => return self.answer(&plan, reply),
                }
            }
        }
        // A body of unknown length under an enforced `max_body_bytes`: the function sees nothing
        // of the request until the body is complete and within the limit. This needs the host to
        // keep calling the body callbacks while the headers wait (`allow_on_headers_stop_iteration`,
        // set by the shipped EnvoyFilter); without it the headers go on and the body is counted
        // and held back on its own.
        if self.counting_body && plan.hold_unsized_bodies && self.enforcing() {
            return Action::Pause;
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.answered_locally {
            return Action::Pause;
        }
        // While paused, Envoy buffers the body and reports its whole size so far.
        let size = body_size as u64;
        if self.counting_body {
            let over = self
                .enforcer
                .as_ref()
                .is_some_and(|e| e.policy().body_over(size));
            if over {
                self.counting_body = false;
                if let Some(reply) = self.deny(Reason::BodySize, 0) {
                    return self.answer_now(reply);
                }
            } else if end_of_stream {
                self.counting_body = false;
            }
        }
        if !self.counting_body {
            self.body_read();
        }
        // While the gate holds the request, its buffered body counts against the pod's budget;
        // it reaches the function on release.
        if self.is_held() {
            if let Some(reply) = self.hold_body(size) {
                return self.answer_now(reply);
            }
            return Action::Pause;
        }
        if self.counting_body {
            Action::Pause
        } else {
            Action::Continue
        }
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        // Trailers end the body (HTTP/2 bodies with trailers never see end_of_stream there).
        self.counting_body = false;
        self.body_read();
        if self.is_held() || self.answered_locally {
            Action::Pause
        } else {
            Action::Continue
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(plan) = self.plan.as_ref() else {
            return Action::Continue;
        };
        let answered_by_gate = self.hold.as_ref().is_some_and(Hold::answered_by_gate);
        if self.answered_locally || answered_by_gate || self.call_id.is_empty() {
            return Action::Continue;
        }
        let names = &plan.headers;
        // With the readiness gate, one read of the response headers answers both questions: did
        // the function set its duration, and is this Envoy's 503 for a function that is gone?
        // Without it, only the first; asking for one header that is absent costs far less.
        let has_duration = if let Some(gate) = &self.gate {
            let headers = host::header_map(MapType::HttpResponseHeaders).unwrap_or_default();
            let mut has_duration = false;
            let mut status: &[u8] = b"";
            for (name, value) in header_map::pairs(&headers) {
                if name == b":status" {
                    status = value;
                } else if name == names.duration.as_bytes() {
                    has_duration = true;
                }
            }
            // A 5xx re-arms the gate or sends one probe; Envoy's response flags are read only
            // for a 503 (a refused or dropped connection: the process is gone).
            gate.after_response(status, || {
                host::property(b"response\0flags")
                    .ok()
                    .flatten()
                    .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
                    .map_or(0, u64::from_le_bytes)
            });
            has_duration
        } else {
            let duration = host::header(MapType::HttpResponseHeaders, &names.duration);
            matches!(duration, Ok(Some(_)))
        };
        let _ = host::set_header(
            MapType::HttpResponseHeaders,
            &names.call_id,
            self.call_id.as_bytes(),
        );
        if !has_duration {
            let now = host::now_nanos().unwrap_or(self.start_nanos);
            let seconds = timing::duration_seconds(now.saturating_sub(self.start_nanos));
            let _ = host::add_header(
                MapType::HttpResponseHeaders,
                &names.duration,
                seconds.as_bytes(),
            );
        }
        Action::Continue
    }
}

impl Call {
    /// Takes a rate-limit token and an in-flight slot from the pod's shared counters: the reply
    /// to send when one is refused in enforce mode (audit mode counts and logs, and the request
    /// goes on). `allowed_so_far`: no header check denied it (for the `allowed` stat).
    #[inline(never)]
    fn admit(&mut self, enforcer: &Enforcer<Abi>, allowed_so_far: bool) -> Option<LocalReply> {
        let policy = enforcer.policy();
        let mut denied = !allowed_so_far;
        if policy.rate_limit.is_some() || policy.max_inflight.is_some() {
            let admission = enforcer.admit(Abi.now_ms());
            if admission.slot == Some(true) {
                self.inflight = true;
            }
            if let Err(ms) = admission.rate {
                denied = true;
                let retry_after = ms.div_ceil(1000);
                if let Some(reply) = enforcer.deny(Reason::RateLimit, &self.call_id, retry_after) {
                    return Some(reply);
                }
            }
            if admission.slot == Some(false) {
                denied = true;
                if let Some(reply) = enforcer.deny(Reason::Inflight, &self.call_id, 1) {
                    return Some(reply);
                }
            }
        }
        if !denied {
            enforcer.count_allowed();
        }
        None
    }

    /// A denial found after the headers (the body size).
    fn deny(&self, reason: Reason, retry_after: u64) -> Option<LocalReply> {
        self.enforcer
            .as_ref()
            .and_then(|e| e.deny(reason, &self.call_id, retry_after))
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
        self.enforcer
            .as_ref()
            .is_some_and(|e| e.policy().mode == PolicyMode::Enforce)
    }

    /// A held request's body has grown to `body_bytes`: the gate reserves the growth in the
    /// pod's budget, or this is the reply when it does not fit.
    fn hold_body(&self, body_bytes: u64) -> Option<LocalReply> {
        let gate = self.gate.as_ref()?;
        gate.hold_body(self.context_id, body_bytes, &self.call_id)
    }

    /// Answers from a body or trailers callback.
    fn answer_now(&mut self, reply: LocalReply) -> Action {
        match self.plan.clone() {
            Some(plan) => self.answer(&plan, reply),
            None => Action::Pause,
        }
    }

    /// Answers the request from the filter, with the call id and the internal marker.
    #[cold]
    #[inline(never)]
    fn answer(&mut self, plan: &Plan, reply: LocalReply) -> Action {
        // A request the gate holds leaves its wait list (and gives back its place and bytes).
        if self.is_held() {
            if let Some(gate) = &self.gate {
                gate.forget(self.context_id);
            }
            self.hold = None;
        }
        send_reply(
            &Abi,
            &reply,
            plan.function_or_empty(),
            &plan.headers.call_id,
            &self.call_id,
        );
        self.answered_locally = true;
        Action::Pause
    }
}
