//! The proxy-wasm adapter: Envoy's callbacks in, decisions from the pure modules, host calls out.
//!
//! Per request it makes as few host calls as the work allows (see README, "Cost"): one read of
//! the whole request header map, one clock read, one entropy read only when a call id must be
//! made, and writes only for headers that change. The response costs one header read (has the
//! function set its duration?) and at most two writes.

use crate::call_id;
use crate::config::Config;
use crate::header_map;
use crate::host::{self, HostLogger};
use crate::plan::{Plan, PodInfo};
use crate::reply::LocalReply;
use crate::rewrite::Route;
use crate::timing;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, MapType};
use std::rc::Rc;

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { plan: None }) });
}}

struct Root {
    plan: Option<Rc<Plan>>,
}

impl Context for Root {}

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

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Call {
            plan: self.plan.clone(),
            call_id: String::new(),
            start_nanos: 0,
            answered_locally: false,
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
    call_id: String,
    start_nanos: u64,
    /// The filter answered this request itself; its reply already carries the call id.
    answered_locally: bool,
}

impl Context for Call {}

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
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(plan) = self.plan.as_ref() else {
            return Action::Continue;
        };
        if self.answered_locally || self.call_id.is_empty() {
            return Action::Continue;
        }
        let names = &plan.headers;
        let _ = host::set_header(
            MapType::HttpResponseHeaders,
            &names.call_id,
            self.call_id.as_bytes(),
        );
        if let Ok(None) = host::header(MapType::HttpResponseHeaders, &names.duration) {
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
};

impl Call {
    /// Answers the request from the filter, with the call id and the internal marker.
    fn answer(&mut self, plan: &Plan, reply: LocalReply) -> Action {
        let names = &plan.headers;
        let body = reply.body(plan.function_or_empty(), &self.call_id);
        let headers = header_map::serialize(&reply.headers(&names.call_id, &self.call_id));
        if let Err(e) = host::send_local_response(reply.status, reply.details, &body, &headers) {
            log::warn!("call {}: local reply failed ({e:?})", self.call_id);
        }
        self.answered_locally = true;
        Action::Pause
    }
}
