//! [`NativeHost`]: the core's [`Host`] on Envoy's dynamic-modules ABI.
//!
//! One host per worker thread per filter configuration (shared by that worker's root and its
//! calls, as the wasm build's one VM per worker is), plus one on the main thread while the
//! configuration is built, which is the only time Envoy lets a module define metrics.
//!
//! Stream-bound calls (headers, local replies, callouts, resuming) act on the *current* stream:
//! the bridge sets it before every call into the core, as proxy-wasm's effective context.

use crate::abi::{self, ConfigPtr, EnvoyBuffer, FilterPtr, ModuleBuffer, ModuleHeader};
use crate::metrics::{self, Metric, Metrics, Update};
use crate::pod::PodFiles;
use crate::shared;
use faas_mesh_filter::header_map;
use faas_mesh_filter::host::{Host, HostError};
use proxy_wasm::types::{MapType, MetricType};
use std::cell::{Cell, RefCell};
use std::ptr::null_mut;
use std::rc::Rc;
use std::sync::Arc;

/// A host call that has no stream to act on, that Envoy refused or has no callback for, or
/// that names a metric never defined.
const NO_STREAM: HostError = HostError(2);
pub(crate) const REFUSED: HostError = HostError(3);
const NOT_DEFINED: HostError = HostError(4);

/// What every worker of one filter configuration shares (immutable once built).
pub struct Shared {
    /// Envoy's `DynamicModuleHttpFilterConfig*`: valid until the configuration is destroyed,
    /// which Envoy does after the last stream that uses it.
    pub envoy: ConfigPtr,
    /// The filter configuration exactly as Envoy handed it over (the wasm build's plugin
    /// configuration).
    pub raw: Vec<u8>,
    pub pod: PodFiles,
    pub metrics: Metrics,
}

// SAFETY: `envoy` is only passed back to Envoy's config-level metric callbacks, which are safe
// from any thread; the rest is plain immutable data.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

/// Where the host's metric ids come from.
enum MetricSource {
    /// Building the configuration on the main thread: `define_metric` defines.
    Defining {
        envoy: ConfigPtr,
        metrics: RefCell<Metrics>,
    },
    /// On a worker: `define_metric` finds what was defined.
    Defined,
}

/// A callout's answer, readable while the core handles it.
type CalloutAnswer = Vec<(Vec<u8>, Vec<u8>)>;

/// What the core asked of a stream, done once the core has returned (see [`NativeHost::flush`]).
enum Pending {
    Resume(FilterPtr),
    Reply {
        filter: FilterPtr,
        status: u32,
        details: String,
        body: Vec<u8>,
        headers: Vec<u8>,
    },
}

pub struct State {
    /// Absent only while defining (there is nothing to share yet).
    shared: Option<Arc<Shared>>,
    raw: Rc<[u8]>,
    pod: Rc<PodFiles>,
    source: MetricSource,
    /// The stream stream-bound calls act on (null: none).
    current: Cell<FilterPtr>,
    /// The tick period the core asked for (ms; 0: none).
    pub tick_ms: Cell<u32>,
    /// Streams the core may address by context id (`set_effective_context`): those that hold
    /// state needing ticks (held, counted), registered by the bridge.
    streams: RefCell<Vec<(u32, FilterPtr)>>,
    /// The answer of the callout being handled (`HttpCallResponseHeaders`).
    answer: RefCell<Option<CalloutAnswer>>,
    /// Local replies and resumes the core asked for, not done yet.
    pending: RefCell<Vec<Pending>>,
    /// Callouts in flight: (stream, Envoy's id, the core's token).
    callouts: RefCell<Vec<(FilterPtr, u64, u32)>>,
    next_token: Cell<u32>,
}

/// The core's host on one worker (or, while defining, on the main thread). Cheap to clone.
#[derive(Clone)]
pub struct NativeHost(pub Rc<State>);

impl NativeHost {
    /// The main thread's host while Envoy builds a configuration: defines metrics.
    pub fn defining(envoy: ConfigPtr, raw: &[u8], pod: PodFiles) -> NativeHost {
        NativeHost(Rc::new(State {
            shared: None,
            raw: Rc::from(raw),
            pod: Rc::new(pod),
            source: MetricSource::Defining {
                envoy,
                metrics: RefCell::new(Metrics::default()),
            },
            current: Cell::new(null_mut()),
            tick_ms: Cell::new(0),
            streams: RefCell::new(Vec::new()),
            answer: RefCell::new(None),
            pending: RefCell::new(Vec::new()),
            callouts: RefCell::new(Vec::new()),
            next_token: Cell::new(0),
        }))
    }

    /// What the defining host learned, to share with the workers.
    pub fn into_shared(self, envoy: ConfigPtr) -> Option<Shared> {
        let state = Rc::try_unwrap(self.0).ok()?;
        let metrics = match state.source {
            MetricSource::Defining { metrics, .. } => metrics.into_inner(),
            MetricSource::Defined => Metrics::default(),
        };
        Some(Shared {
            envoy,
            raw: state.raw.to_vec(),
            pod: Rc::try_unwrap(state.pod).unwrap_or_else(|pod| (*pod).clone()),
            metrics,
        })
    }

    /// A worker's host for a configuration.
    pub fn worker(shared: Arc<Shared>) -> NativeHost {
        NativeHost(Rc::new(State {
            raw: Rc::from(shared.raw.as_slice()),
            pod: Rc::new(shared.pod.clone()),
            shared: Some(shared),
            source: MetricSource::Defined,
            current: Cell::new(null_mut()),
            tick_ms: Cell::new(0),
            streams: RefCell::new(Vec::new()),
            answer: RefCell::new(None),
            pending: RefCell::new(Vec::new()),
            callouts: RefCell::new(Vec::new()),
            next_token: Cell::new(0),
        }))
    }

    #[inline]
    pub fn set_current(&self, filter: FilterPtr) {
        self.0.current.set(filter);
    }

    /// Lets the core address a stream by its context id.
    pub fn track(&self, context_id: u32, filter: FilterPtr) {
        let mut streams = self.0.streams.borrow_mut();
        if !streams.iter().any(|(id, _)| *id == context_id) {
            streams.push((context_id, filter));
        }
    }

    /// Forgets a stream (it is being destroyed).
    pub fn untrack(&self, context_id: u32) {
        self.0
            .streams
            .borrow_mut()
            .retain(|(id, _)| *id != context_id);
    }

    /// Some live stream the core can carry root work on (a callout, a tick), if any.
    pub fn any_tracked(&self) -> Option<FilterPtr> {
        self.0.streams.borrow().first().map(|(_, f)| *f)
    }

    /// Makes a callout's answer readable while `f` runs.
    pub fn with_answer<T>(&self, answer: CalloutAnswer, f: impl FnOnce() -> T) -> T {
        *self.0.answer.borrow_mut() = Some(answer);
        let out = f();
        *self.0.answer.borrow_mut() = None;
        out
    }

    /// Does what the core asked of streams during its last callback: local replies and resumes.
    /// Deferred so that Envoy's synchronous callbacks into this module (a local reply runs the
    /// response path at once) find the core's call state settled, as proxy-wasm's deferred
    /// local replies do.
    #[inline]
    pub fn flush(&self) {
        if self.0.pending.borrow().is_empty() {
            return;
        }
        let pending = std::mem::take(&mut *self.0.pending.borrow_mut());
        for action in pending {
            match action {
                // SAFETY: the stream was current or tracked (alive) when the core asked, and
                // nothing in between destroyed it (destruction happens between event hooks).
                Pending::Resume(filter) => unsafe {
                    abi::envoy_dynamic_module_callback_http_filter_continue_decoding(filter)
                },
                Pending::Reply {
                    filter,
                    status,
                    details,
                    body,
                    headers,
                } => {
                    let mut pairs: Vec<ModuleHeader> = (header_map::pairs(&headers))
                        .map(|(k, v)| ModuleHeader::of(k, v))
                        .collect();
                    // SAFETY: as above; every buffer outlives the call (Envoy copies them).
                    unsafe {
                        abi::envoy_dynamic_module_callback_http_send_response(
                            filter,
                            status,
                            pairs.as_mut_ptr(),
                            pairs.len(),
                            ModuleBuffer::of(&body),
                            ModuleBuffer::of(details.as_bytes()),
                        )
                    };
                }
            }
        }
    }

    /// The core's token for Envoy's callout `id` on stream `filter` (forgotten now).
    pub fn callout_token(&self, filter: FilterPtr, id: u64) -> Option<u32> {
        let mut callouts = self.0.callouts.borrow_mut();
        let at = callouts
            .iter()
            .position(|(f, i, _)| *f == filter && *i == id)?;
        Some(callouts.swap_remove(at).2)
    }

    /// The core's tokens of the callouts of a stream that is going away (Envoy drops them with
    /// it), forgotten now.
    pub fn take_callouts(&self, filter: FilterPtr) -> Vec<u32> {
        let mut callouts = self.0.callouts.borrow_mut();
        let tokens = (callouts.iter())
            .filter(|(f, _, _)| *f == filter)
            .map(|(_, _, token)| *token)
            .collect();
        callouts.retain(|(f, _, _)| *f != filter);
        tokens
    }

    /// Whether a callout went out on this stream and is unanswered.
    pub fn has_callout(&self, filter: FilterPtr) -> bool {
        self.0
            .callouts
            .borrow()
            .iter()
            .any(|(f, _, _)| *f == filter)
    }

    fn filter(&self) -> Result<FilterPtr, HostError> {
        let f = self.0.current.get();
        if f.is_null() {
            Err(NO_STREAM)
        } else {
            Ok(f)
        }
    }

    fn config_ptr(&self) -> Option<ConfigPtr> {
        match (&self.0.source, &self.0.shared) {
            (MetricSource::Defining { envoy, .. }, _) => Some(*envoy),
            (MetricSource::Defined, Some(shared)) => Some(shared.envoy),
            _ => None,
        }
    }

    fn metric(&self, id: u32) -> Option<Metric> {
        match (&self.0.source, &self.0.shared) {
            (MetricSource::Defining { metrics, .. }, _) => metrics.borrow().get(id),
            (MetricSource::Defined, Some(shared)) => shared.metrics.get(id),
            _ => None,
        }
    }

    fn update_metric(&self, id: u32, update: Update) -> Result<(), HostError> {
        let metric = self.metric(id).ok_or(NOT_DEFINED)?;
        let config = self.config_ptr().ok_or(NOT_DEFINED)?;
        // SAFETY: the configuration outlives every stream and worker that uses it, and the
        // metric is one of its own.
        unsafe { metrics::update(config, metric, update) }
    }

    /// Reads one header's first value of the current stream (borrowed from Envoy).
    pub fn header_bytes<'a>(&self, header_type: u32, name: &[u8]) -> Option<&'a [u8]> {
        let filter = self.filter().ok()?;
        let mut value = EnvoyBuffer::null();
        // SAFETY: `filter` is the live current stream; `value` outlives the call.
        let found = unsafe {
            abi::envoy_dynamic_module_callback_http_get_header(
                filter,
                header_type,
                ModuleBuffer::of(name),
                &mut value,
                0,
                null_mut(),
            )
        };
        // SAFETY: Envoy keeps the value until the current event hook ends.
        (found && !value.ptr.is_null()).then(|| unsafe { value.bytes() })
    }

    /// Every (name, value) of a header map of the current stream, borrowed from Envoy until
    /// the current event hook ends or the map is written to; empty when the map is not there.
    pub fn pairs<'a>(&self, header_type: u32) -> Vec<(&'a [u8], &'a [u8])> {
        let Ok(filter) = self.filter() else {
            return Vec::new();
        };
        // SAFETY: `filter` is the live current stream.
        let size = unsafe {
            abi::envoy_dynamic_module_callback_http_get_headers_size(filter, header_type)
        };
        if size == 0 {
            return Vec::new();
        }
        let mut headers: Vec<abi::EnvoyHeader> = Vec::with_capacity(size);
        // SAFETY: room for `size` headers, as Envoy requires; it fills every one when it says
        // so, and only then are they counted in.
        let ok = unsafe {
            abi::envoy_dynamic_module_callback_http_get_headers(
                filter,
                header_type,
                headers.as_mut_ptr(),
            )
        };
        if !ok {
            return Vec::new();
        }
        // SAFETY: Envoy wrote `size` headers.
        unsafe { headers.set_len(size) };
        // The pairs are laid out as two buffers each, the same as (&[u8], &[u8]); converted in
        // place, one allocation for the request.
        (headers.into_iter())
            // SAFETY: Envoy's pairs live until the hook ends or the map is written to.
            .map(|h| unsafe { h.pair() })
            .collect()
    }

    /// The total request body Envoy holds for the current stream: buffered so far plus the
    /// chunk being delivered (what proxy-wasm reports as the body size while paused).
    pub fn request_body_size(&self) -> usize {
        let Ok(filter) = self.filter() else {
            return 0;
        };
        // SAFETY: `filter` is the live current stream.
        unsafe {
            let buffered = abi::envoy_dynamic_module_callback_http_get_body_size(
                filter,
                abi::BUFFERED_REQUEST_BODY,
            );
            let received = abi::envoy_dynamic_module_callback_http_get_body_size(
                filter,
                abi::RECEIVED_REQUEST_BODY,
            );
            buffered.saturating_add(received)
        }
    }
}

fn header_type(map: MapType) -> Option<u32> {
    match map {
        MapType::HttpRequestHeaders => Some(abi::REQUEST_HEADER),
        MapType::HttpRequestTrailers => Some(abi::REQUEST_TRAILER),
        MapType::HttpResponseHeaders => Some(abi::RESPONSE_HEADER),
        MapType::HttpResponseTrailers => Some(abi::RESPONSE_TRAILER),
        _ => None,
    }
}

impl Host for NativeHost {
    fn now_nanos(&self) -> Result<u64, HostError> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        now.map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .map_err(|_| REFUSED)
    }

    fn random_bytes(&self, buf: &mut [u8]) -> Result<(), HostError> {
        getrandom::getrandom(buf).map_err(|e| HostError(e.code().get()))
    }

    fn property(&self, path: &[u8]) -> Result<Option<Vec<u8>>, HostError> {
        const LABELS: &[u8] = b"xds\0node\0metadata\0LABELS\0";
        match path {
            b"response\0flags" => {
                let filter = self.filter()?;
                let mut flags = 0u64;
                // SAFETY: live stream; `flags` outlives the call.
                let ok = unsafe {
                    abi::envoy_dynamic_module_callback_http_filter_get_attribute_int(
                        filter,
                        abi::ATTR_RESPONSE_FLAGS,
                        &mut flags,
                    )
                };
                Ok(ok.then(|| flags.to_le_bytes().to_vec()))
            }
            b"connection\0mtls" => {
                let filter = self.filter()?;
                let mut mtls = false;
                // SAFETY: live stream; `mtls` outlives the call.
                let ok = unsafe {
                    abi::envoy_dynamic_module_callback_http_filter_get_attribute_bool(
                        filter,
                        abi::ATTR_CONNECTION_MTLS,
                        &mut mtls,
                    )
                };
                Ok(ok.then(|| vec![u8::from(mtls)]))
            }
            b"connection\0uri_san_peer_certificate" => {
                let filter = self.filter()?;
                let mut value = EnvoyBuffer::null();
                // SAFETY: live stream; `value` outlives the call.
                let ok = unsafe {
                    abi::envoy_dynamic_module_callback_http_filter_get_attribute_string(
                        filter,
                        abi::ATTR_CONNECTION_URI_SAN_PEER_CERTIFICATE,
                        &mut value,
                    )
                };
                // SAFETY: Envoy keeps the value until the current event hook ends.
                Ok(ok.then(|| unsafe { value.bytes() }.to_vec()))
            }
            b"xds\0node\0metadata\0NAMESPACE" => {
                Ok(self.0.pod.namespace.clone().map(String::into_bytes))
            }
            b"xds\0node\0metadata\0ANNOTATIONS" => {
                let pairs: Vec<(&str, &str)> = (self.0.pod.annotations.iter())
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                Ok(Some(header_map::serialize(&pairs)))
            }
            _ => match path.strip_prefix(LABELS) {
                Some(label) => Ok(self.0.pod.label(label).map(|v| v.as_bytes().to_vec())),
                None => Ok(None),
            },
        }
    }

    fn header(&self, map: MapType, name: &str) -> Result<Option<Vec<u8>>, HostError> {
        if let MapType::HttpCallResponseHeaders = map {
            let answer = self.0.answer.borrow();
            return Ok((answer.iter().flatten())
                .find(|(k, _)| k == name.as_bytes())
                .map(|(_, v)| v.clone()));
        }
        let header_type = header_type(map).ok_or(REFUSED)?;
        Ok(self
            .header_bytes(header_type, name.as_bytes())
            .map(<[u8]>::to_vec))
    }

    fn plugin_configuration(&self) -> Result<Option<Vec<u8>>, HostError> {
        Ok((!self.0.raw.is_empty()).then(|| self.0.raw.to_vec()))
    }

    fn header_map(&self, map: MapType) -> Result<Vec<u8>, HostError> {
        let header_type = header_type(map).ok_or(REFUSED)?;
        Ok(header_map::serialize(&self.pairs(header_type)))
    }

    const DIRECT_HEADERS: bool = true;

    fn header_pairs(&self, map: MapType) -> Vec<(&[u8], &[u8])> {
        match header_type(map) {
            Some(header_type) => self.pairs(header_type),
            None => Vec::new(),
        }
    }

    fn set_header(&self, map: MapType, name: &str, value: &[u8]) -> Result<(), HostError> {
        let filter = self.filter()?;
        let header_type = header_type(map).ok_or(REFUSED)?;
        // SAFETY: live stream; the buffers outlive the call (Envoy copies them).
        let ok = unsafe {
            abi::envoy_dynamic_module_callback_http_set_header(
                filter,
                header_type,
                ModuleBuffer::of(name.as_bytes()),
                ModuleBuffer::of(value),
            )
        };
        ok.then_some(()).ok_or(REFUSED)
    }

    fn add_header(&self, map: MapType, name: &str, value: &[u8]) -> Result<(), HostError> {
        let filter = self.filter()?;
        let header_type = header_type(map).ok_or(REFUSED)?;
        // SAFETY: as `set_header`.
        let ok = unsafe {
            abi::envoy_dynamic_module_callback_http_add_header(
                filter,
                header_type,
                ModuleBuffer::of(name.as_bytes()),
                ModuleBuffer::of(value),
            )
        };
        ok.then_some(()).ok_or(REFUSED)
    }

    fn remove_header(&self, map: MapType, name: &str) -> Result<(), HostError> {
        let filter = self.filter()?;
        let header_type = header_type(map).ok_or(REFUSED)?;
        // SAFETY: as `set_header`; a null value removes every value of the header.
        let ok = unsafe {
            abi::envoy_dynamic_module_callback_http_set_header(
                filter,
                header_type,
                ModuleBuffer::of(name.as_bytes()),
                ModuleBuffer::null(),
            )
        };
        ok.then_some(()).ok_or(REFUSED)
    }

    fn shared_data(&self, key: &str) -> Result<(Option<Vec<u8>>, u32), HostError> {
        Ok(shared::lock().get(key))
    }

    fn set_shared_data(&self, key: &str, value: &[u8], cas: u32) -> Result<bool, HostError> {
        Ok(shared::lock().set(key, value, cas))
    }

    fn define_metric(&self, kind: MetricType, name: &str) -> Result<u32, HostError> {
        match &self.0.source {
            MetricSource::Defined => (self.0.shared.as_ref())
                .and_then(|shared| shared.metrics.find(name))
                .ok_or(NOT_DEFINED),
            MetricSource::Defining { envoy, metrics } => {
                let mut metrics = metrics.try_borrow_mut().map_err(|_| REFUSED)?;
                // SAFETY: a defining host exists only while `bridge::config_new` builds the
                // configuration `envoy`, inside Envoy's `on_http_filter_config_new`.
                unsafe { metrics.define(*envoy, kind, name) }
            }
        }
    }

    fn increment_metric(&self, id: u32, by: i64) -> Result<(), HostError> {
        self.update_metric(id, Update::By(by))
    }

    fn record_metric(&self, id: u32, value: u64) -> Result<(), HostError> {
        self.update_metric(id, Update::Set(value))
    }

    fn set_tick_period_ms(&self, period_ms: u32) -> Result<(), HostError> {
        self.0.tick_ms.set(period_ms);
        Ok(())
    }

    fn set_effective_context(&self, context_id: u32) -> Result<(), HostError> {
        let streams = self.0.streams.borrow();
        let (_, filter) = (streams.iter())
            .find(|(id, _)| *id == context_id)
            .ok_or(NO_STREAM)?;
        self.0.current.set(*filter);
        Ok(())
    }

    fn resume_request(&self) -> Result<(), HostError> {
        let filter = self.filter()?;
        self.0.pending.borrow_mut().push(Pending::Resume(filter));
        Ok(())
    }

    fn send_local_response(
        &self,
        status_code: u32,
        details: &str,
        body: &[u8],
        headers: &[u8],
    ) -> Result<(), HostError> {
        let filter = self.filter()?;
        self.0.pending.borrow_mut().push(Pending::Reply {
            filter,
            status: status_code,
            details: details.to_string(),
            body: body.to_vec(),
            headers: headers.to_vec(),
        });
        Ok(())
    }

    fn dispatch_get(
        &self,
        cluster: &str,
        authority: &str,
        path: &str,
        timeout_ms: u64,
    ) -> Result<u32, HostError> {
        let filter = self.filter()?;
        let mut headers = [
            ModuleHeader::of(b":method", b"GET"),
            ModuleHeader::of(b":path", path.as_bytes()),
            // Envoy makes `host` the request's authority (also naming `:authority` would send
            // the value twice).
            ModuleHeader::of(b"host", authority.as_bytes()),
        ];
        let mut id = 0u64;
        // SAFETY: live stream; every buffer outlives the call; `id` too.
        let status = unsafe {
            abi::envoy_dynamic_module_callback_http_filter_http_callout(
                filter,
                &mut id,
                ModuleBuffer::of(cluster.as_bytes()),
                headers.as_mut_ptr(),
                headers.len(),
                ModuleBuffer::of(b""),
                timeout_ms,
            )
        };
        if status != abi::CALLOUT_SUCCESS {
            return Err(HostError(status));
        }
        // Envoy numbers callouts per stream; the core's token is unique on this worker.
        let token = self.0.next_token.get().wrapping_add(1).max(1);
        self.0.next_token.set(token);
        self.0.callouts.borrow_mut().push((filter, id, token));
        Ok(token)
    }
}
