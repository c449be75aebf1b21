//! The proxy-wasm adapter: Envoy's callbacks in, decisions from the pure modules, host calls out.
//!
//! Per request it makes as few host calls as the work allows (see README, "Cost"): one read of
//! the whole request header map, one clock read, one entropy read only when a call id must be
//! made, and writes only for headers that change. The response costs one header read (has the
//! function set its duration?) and at most two writes.
//!
//! The readiness gate adds, once the function is ready, one flag read per request; its probes
//! run from the root context's tick (see `readiness`).

use crate::call_id;
use crate::config::Config;
use crate::enforcement::Enforcer;
use crate::header_map;
use crate::host::{self, HostLogger};
use crate::metrics;
use crate::plan::{Plan, PodInfo};
use crate::policy::{parse_content_length, Reason, METHOD_OVERRIDE_HEADERS};
use crate::readiness::{Admission, Gate, HoldState};
use crate::reply::LocalReply;
use crate::rewrite::Route;
use crate::timing;
use crate::trace;
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
            counters: Counters::default(),
        })
    });
}}

struct Root {
    plan: Option<Rc<Plan>>,
    gate: Option<Rc<Gate>>,
    /// Present when the local function's policy has rules and is not `off`.
    enforcer: Option<Rc<Enforcer>>,
    counters: Counters,
}

/// Per-request stats of the local function (metric ids).
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    requests: Option<u32>,
    rewritten: Option<u32>,
    not_found: Option<u32>,
}

impl Counters {
    #[inline(never)]
    fn define(function: &str) -> Counters {
        let counter = |metric: &str| {
            host::define_metric(MetricType::Counter, &metrics::name(function, metric)).ok()
        };
        Counters {
            requests: counter("requests"),
            rewritten: counter("rewritten"),
            not_found: counter("not_found"),
        }
    }
}

fn count(metric: Option<u32>) {
    if let Some(id) = metric {
        let _ = host::increment_metric(id, 1);
    }
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
                log::info!(
                    "configured for function {:?} in namespace {:?}",
                    plan.function_or_empty(),
                    plan.namespace.as_deref().unwrap_or("")
                );
                self.gate = plan.readiness.as_ref().map(|settings| {
                    Gate::new(
                        settings.clone(),
                        plan.function_or_empty(),
                        &plan.headers.call_id,
                    )
                });
                self.enforcer = plan
                    .policy
                    .is_active()
                    .then(|| Rc::new(Enforcer::new(&plan.policy, plan.function_or_empty())));
                self.counters = Counters::define(plan.function_or_empty());
                count(host::define_metric(MetricType::Counter, metrics::CONFIG_LOADED).ok());
                let tick = self.gate.as_ref().map_or(0, |g| g.tick_ms());
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
                count(host::define_metric(MetricType::Counter, metrics::CONFIG_REJECTED).ok());
                false
            }
        }
    }

    fn on_tick(&mut self) {
        if let Some(gate) = &self.gate {
            gate.on_tick();
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Call {
            plan: self.plan.clone(),
            gate: self.gate.clone(),
            enforcer: self.enforcer.clone(),
            counters: self.counters,
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

#[inline(never)]
fn configure() -> Result<Plan, String> {
    let raw = host::plugin_configuration()
        .map_err(|e| format!("configuration: the host did not hand it over ({e:?})"))?;
    let config = Config::parse(&raw).map_err(|e| e.to_string())?;
    let pod = pod_info(&config.function.name_label);
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
    }
}

/// One HTTP request through the filter.
struct Call {
    plan: Option<Rc<Plan>>,
    gate: Option<Rc<Gate>>,
    enforcer: Option<Rc<Enforcer>>,
    counters: Counters,
    context_id: u32,
    call_id: String,
    start_nanos: u64,
    /// The filter answered this request itself; its reply already carries the call id.
    answered_locally: bool,
    /// Set when the readiness gate held this request.
    hold: Option<Rc<Cell<HoldState>>>,
    /// This request counts against `max_inflight` until it ends.
    inflight: bool,
    /// The body has no `Content-Length` and `max_body_bytes` is set: it is held and counted
    /// until it is complete or too large.
    counting_body: bool,
}

impl Call {
    fn is_held(&self) -> bool {
        self.hold
            .as_ref()
            .is_some_and(|h| h.get() == HoldState::Held)
    }
}

impl Context for Call {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _num_headers: usize,
        _body_size: usize,
        _num_trailers: usize,
    ) {
        // A probe started while admitting this request answers here (the host routes a call's
        // answer to the context that made it).
        if let Some(gate) = &self.gate {
            gate.on_probe_answer(token_id);
        }
    }

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
        count(self.counters.requests);
        self.start_nanos = host::now_nanos().unwrap_or(0);
        let headers = host::header_map(MapType::HttpRequestHeaders).unwrap_or_default();
        let names = &plan.headers;

        let mut path: &[u8] = b"";
        let mut incoming_ids = 0u32;
        let mut incoming_id: &[u8] = b"";
        let enforcer = self.enforcer.clone();
        let mut method: &[u8] = b"";
        let mut content_length = None;
        let mut overrides: Vec<&[u8]> = Vec::new();
        let tracing = plan.tracing.b3 || plan.tracing.w3c;
        let mut trace_in = trace::Incoming::default();
        for (name, value) in header_map::pairs(&headers) {
            if name == b":path" {
                path = value;
            } else if name == names.call_id.as_bytes() {
                incoming_ids += 1;
                incoming_id = value;
            } else if tracing && trace_header(&mut trace_in, name, value) {
                // recorded
            } else if enforcer.is_some() {
                if name == b":method" {
                    method = value;
                } else if name == b"content-length" {
                    content_length = parse_content_length(value);
                } else if METHOD_OVERRIDE_HEADERS.contains(&name) {
                    overrides.push(value);
                }
            }
        }
        // The checks that need only the headers, made before the header map goes.
        let header_checks = enforcer.as_ref().map(|e| {
            (
                e.policy().check_method(method, &overrides),
                e.policy().check_length(content_length),
            )
        });

        let keep_id = names.trust_incoming_call_id
            && incoming_ids == 1
            && call_id::is_safe_token(incoming_id);
        let id_is_new = !keep_id;
        // One read of the entropy source for everything random in this request: the call id
        // (when it is new), and a trace id and span id (when tracing is on).
        let mut entropy = [0u8; 40];
        let needed = match (id_is_new, tracing) {
            (true, true) => &mut entropy[..],
            (true, false) => &mut entropy[..16],
            (false, true) => &mut entropy[16..],
            (false, false) => &mut entropy[..0],
        };
        if !needed.is_empty() {
            if let Err(e) = host::random_bytes(needed) {
                // Never fall back to guessable ids; say so and answer.
                log::error!("no entropy for a call id or trace id ({e:?})");
                self.call_id = String::new();
                return self.answer(&plan, UNAVAILABLE);
            }
        }
        let (id_bytes, rest) = entropy.split_at(16);
        let (trace_bytes, span_bytes) = rest.split_at(16);
        self.call_id = if keep_id {
            String::from_utf8_lossy(incoming_id).into_owned()
        } else {
            call_id::uuid_v4(id_bytes.try_into().unwrap_or([0; 16]))
        };
        let trace_headers = tracing.then(|| {
            let (context, _) = trace::child(
                &trace_in,
                trace_bytes.try_into().unwrap_or([0; 16]),
                span_bytes.try_into().unwrap_or([0; 8]),
            );
            let mut writes =
                context.headers(plan.tracing.w3c, plan.tracing.b3, trace_in.has_b3_multi());
            // Removing a header the request does not have is a wasted host call.
            writes.retain(|(name, value)| value.is_some() || trace_in.has(name));
            writes
        });

        let route = plan.rewriter.route(path);
        drop(headers);
        match route {
            Route::NotFound(reason) => {
                count(self.counters.not_found);
                log::debug!(
                    "call {} for function {:?}: 404 {}",
                    self.call_id,
                    plan.function_or_empty(),
                    reason.message()
                );
                return self.answer(
                    &plan,
                    LocalReply {
                        status: 404,
                        details: "faas_mesh_filter.function_not_found",
                        error: reason.message(),
                        retry_after: None,
                        allow: None,
                    },
                );
            }
            Route::Rewrite(new_path) => {
                count(self.counters.rewritten);
                let _ = host::set_header(MapType::HttpRequestHeaders, ":path", &new_path);
            }
            Route::Unprefixed => {}
        }
        if id_is_new {
            let _ = host::set_header(
                MapType::HttpRequestHeaders,
                &names.call_id,
                self.call_id.as_bytes(),
            );
        }
        let _ = host::set_header(
            MapType::HttpRequestHeaders,
            &names.start_time,
            timing::decimal(self.start_nanos).as_bytes(),
        );
        for (name, value) in trace_headers.unwrap_or_default() {
            let _ = match value {
                Some(value) => {
                    host::set_header(MapType::HttpRequestHeaders, name, value.as_bytes())
                }
                None => host::remove_header(MapType::HttpRequestHeaders, name),
            };
        }
        if let (Some(enforcer), Some((method_check, length_check))) = (enforcer, header_checks) {
            if let Some(reply) = self.enforce(&enforcer, method_check, length_check) {
                return self.answer(&plan, reply);
            }
            self.counting_body = enforcer.policy().counts_body(content_length) && !end_of_stream;
        }
        if let Some(gate) = self.gate.clone() {
            if !gate.is_ready() {
                match gate.admit(self.context_id, &self.call_id) {
                    Admission::Go => {}
                    Admission::Held(state) => {
                        self.hold = Some(state);
                        return Action::Pause;
                    }
                    Admission::QueueFull => return self.answer(&plan, gate.queue_full_reply()),
                }
            }
        }
        // A body being counted is held back in `on_http_request_body`. The headers go on: a
        // paused header phase would stop the body callbacks too (the host turns a header pause
        // into "stop all iteration"), and the body could not be counted.
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.answered_locally {
            return Action::Pause;
        }
        if self.counting_body {
            // While paused, Envoy buffers the body and reports its whole size so far.
            let over = self
                .enforcer
                .as_ref()
                .is_some_and(|e| e.policy().body_over(body_size as u64));
            if over {
                self.counting_body = false;
                if let Some(reply) = self.deny(Reason::BodySize, 0) {
                    if let Some(plan) = self.plan.clone() {
                        return self.answer(&plan, reply);
                    }
                }
            } else if end_of_stream {
                self.counting_body = false;
            } else {
                return Action::Pause;
            }
        }
        // While held, Envoy buffers the body; it reaches the function on release.
        if self.is_held() {
            Action::Pause
        } else {
            Action::Continue
        }
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        // Trailers end the body (HTTP/2 bodies with trailers never see end_of_stream there).
        self.counting_body = false;
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
        let answered_by_gate = self
            .hold
            .as_ref()
            .is_some_and(|h| h.get() == HoldState::Answered);
        if self.answered_locally || answered_by_gate || self.call_id.is_empty() {
            return Action::Continue;
        }
        let names = &plan.headers;
        // With the readiness gate, one read of the response headers answers both questions: did
        // the function set its duration, and is this Envoy's 503 for a function that is gone?
        // Without it, only the first; asking for one header that is absent costs far less.
        let (has_duration, unavailable) = if self.gate.is_some() {
            let headers = host::header_map(MapType::HttpResponseHeaders).unwrap_or_default();
            let mut has_duration = false;
            let mut unavailable = false;
            for (name, value) in header_map::pairs(&headers) {
                if name == b":status" {
                    unavailable = value == b"503";
                } else if name == names.duration.as_bytes() {
                    has_duration = true;
                }
            }
            (has_duration, unavailable)
        } else {
            let duration = host::header(MapType::HttpResponseHeaders, &names.duration);
            (matches!(duration, Ok(Some(_))), false)
        };
        if unavailable {
            if let Some(gate) = &self.gate {
                let flags = host::property(b"response\0flags")
                    .ok()
                    .flatten()
                    .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
                    .map_or(0, u64::from_le_bytes);
                log::debug!("call {}: 503 with response flags {flags:#x}", self.call_id);
                if crate::gate::upstream_gone(flags) {
                    gate.upstream_gone();
                }
            }
        }
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

/// Records a trace header of the request in `incoming`; false if `name` is none. A header sent
/// twice is recorded as unusable (empty).
fn trace_header<'a>(incoming: &mut trace::Incoming<'a>, name: &[u8], value: &'a [u8]) -> bool {
    let slot = match name {
        b"traceparent" => &mut incoming.traceparent,
        b"b3" => &mut incoming.b3_single,
        b"x-b3-traceid" => &mut incoming.b3_trace_id,
        b"x-b3-spanid" => &mut incoming.b3_span_id,
        b"x-b3-parentspanid" => &mut incoming.b3_parent_span_id,
        b"x-b3-sampled" => &mut incoming.b3_sampled,
        b"x-b3-flags" => &mut incoming.b3_flags,
        _ => return false,
    };
    *slot = if slot.is_some() {
        Some(b"")
    } else {
        Some(value)
    };
    true
}

const UNAVAILABLE: LocalReply = LocalReply {
    status: 503,
    details: "faas_mesh_filter.no_entropy",
    error: "call id could not be generated",
    retry_after: None,
    allow: None,
};

impl Call {
    /// Runs the policy on a request's headers: the reply to send when a check denies it in
    /// enforce mode. In audit mode denials are counted and logged and the request goes on.
    #[inline(never)]
    fn enforce(
        &mut self,
        enforcer: &Enforcer,
        method_check: Result<(), Reason>,
        length_check: Result<(), Reason>,
    ) -> Option<LocalReply> {
        let policy = enforcer.policy();
        let mut denied = false;
        let mut outcome = |check: Result<(), Reason>, retry_after: u64| -> Option<LocalReply> {
            let reason = check.err()?;
            denied = true;
            enforcer.deny(reason, &self.call_id, retry_after)
        };
        if policy.needs_peer() {
            let (mtls, peer) = Enforcer::peer();
            if let Some(reply) = outcome(policy.check_peer(mtls, peer.as_deref()), 0) {
                return Some(reply);
            }
        }
        if let Some(reply) = outcome(method_check, 0) {
            return Some(reply.with_allow(&policy.allow));
        }
        if let Some(reply) = outcome(length_check, 0) {
            return Some(reply);
        }
        if policy.rate_limit.is_some() || policy.max_inflight.is_some() {
            let now = host::now_nanos().unwrap_or(0) / 1_000_000;
            let admission = enforcer.admit(now);
            if admission.slot == Some(true) {
                self.inflight = true;
            }
            let retry_after = admission.rate.err().map_or(1, |ms| ms.div_ceil(1000));
            if let Some(reply) = outcome(admission.rate.map_err(|_| Reason::RateLimit), retry_after)
            {
                return Some(reply);
            }
            if admission.slot == Some(false) {
                if let Some(reply) = outcome(Err(Reason::Inflight), 1) {
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

    /// Answers the request from the filter, with the call id and the internal marker.
    #[cold]
    #[inline(never)]
    fn answer(&mut self, plan: &Plan, reply: LocalReply) -> Action {
        let names = &plan.headers;
        let body = reply.body(plan.function_or_empty(), &self.call_id);
        let headers = reply.headers(&names.call_id, &self.call_id);
        if let Err(e) = host::send_local_response(reply.status, reply.details, &body, &headers) {
            log::warn!("call {}: local reply failed ({e:?})", self.call_id);
        }
        self.answered_locally = true;
        Action::Pause
    }
}
