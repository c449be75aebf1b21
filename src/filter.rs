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
use crate::header_map;
use crate::host::{self, HostLogger};
use crate::plan::{Plan, PodInfo};
use crate::readiness::{Admission, Gate, HoldState};
use crate::reply::LocalReply;
use crate::rewrite::Route;
use crate::timing;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, MapType};
use std::cell::Cell;
use std::rc::Rc;

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Root { plan: None, gate: None })
    });
}}

struct Root {
    plan: Option<Rc<Plan>>,
    gate: Option<Rc<Gate>>,
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
            context_id,
            call_id: String::new(),
            start_nanos: 0,
            answered_locally: false,
            hold: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

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
    context_id: u32,
    call_id: String,
    start_nanos: u64,
    /// The filter answered this request itself; its reply already carries the call id.
    answered_locally: bool,
    /// Set when the readiness gate held this request.
    hold: Option<Rc<Cell<HoldState>>>,
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
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(plan) = self.plan.clone() else {
            return Action::Continue;
        };
        self.start_nanos = host::now_nanos().unwrap_or(0);
        let headers = host::header_map(MapType::HttpRequestHeaders).unwrap_or_default();
        let names = &plan.headers;

        let mut path: &[u8] = b"";
        let mut incoming_ids = 0u32;
        let mut incoming_id: &[u8] = b"";
        for (name, value) in header_map::pairs(&headers) {
            if name == b":path" {
                path = value;
            } else if name == names.call_id.as_bytes() {
                incoming_ids += 1;
                incoming_id = value;
            }
        }

        let keep_id = names.trust_incoming_call_id
            && incoming_ids == 1
            && call_id::is_safe_token(incoming_id);
        let id_is_new = !keep_id;
        self.call_id = if keep_id {
            String::from_utf8_lossy(incoming_id).into_owned()
        } else {
            let mut entropy = [0u8; 16];
            if let Err(e) = host::random_bytes(&mut entropy) {
                // Never fall back to a guessable id; say so and answer.
                log::error!("no entropy for a call id ({e:?})");
                self.call_id = String::new();
                return self.answer(&plan, UNAVAILABLE);
            }
            call_id::uuid_v4(entropy)
        };

        let route = plan.rewriter.route(path);
        drop(headers);
        match route {
            Route::NotFound(reason) => {
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
                    },
                );
            }
            Route::Rewrite(new_path) => {
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
            self.start_nanos.to_string().as_bytes(),
        );
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
        Action::Continue
    }

    fn on_http_request_body(&mut self, _body_size: usize, _end_of_stream: bool) -> Action {
        // While held, Envoy buffers the body; it reaches the function on release.
        if self.is_held() {
            Action::Pause
        } else {
            Action::Continue
        }
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        if self.is_held() {
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
        // One read of the response headers answers both questions: did the function set its
        // duration, and is this Envoy's 503 for a function that is gone?
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
        drop(headers);
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

const UNAVAILABLE: LocalReply = LocalReply {
    status: 503,
    details: "faas_mesh_filter.no_entropy",
    error: "call id could not be generated",
    retry_after: None,
};

impl Call {
    /// Answers the request from the filter, with the call id and the internal marker.
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
