//! A fake Envoy for the native module's fuzz targets: it defines every
//! `envoy_dynamic_module_callback_*` symbol the module imports (exactly the signatures of
//! native/src/abi.rs) and drives the module's real exported `envoy_dynamic_module_on_*` hooks.
//!
//! - header maps are stored here and served to the module (reads borrow them until the next
//!   write, as Envoy's do: a replaced value is freed, so a stale read is a use-after-free that
//!   AddressSanitizer reports);
//! - writes, local replies, resumes, callouts and metric updates are recorded;
//! - a local reply runs the module's response-headers hook at once, as Envoy's does;
//! - schedulers are accepted; a commit (from any thread, the module's ticker) is queued and
//!   delivered when the fuzz input says so.
//!
//! What the fake checks, as a panic (a fuzz crash): every call names a live stream,
//! configuration and scheduler; `continue_decoding` only resumes a stopped request; a gauge never
//! goes below zero; in `strict` mode (inputs Envoy's codecs could deliver) every header the module
//! writes is a valid lowercase name with a value free of CR, LF and NUL.
#![allow(clippy::missing_safety_doc, dead_code)]

use faas_mesh_filter_native as native;
use native::abi::{
    ConfigPtr, EnvoyBuffer, EnvoyHeader, FilterPtr, ModuleBuffer, ModuleHeader, SchedulerPtr,
};
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

extern "C" {
    // The module's private stubs module exports it; reached by its symbol, as Envoy does.
    fn envoy_dynamic_module_on_http_filter_local_reply(
        filter: FilterPtr,
        stream: *const c_void,
        response_code: u32,
        details: EnvoyBuffer,
        reset_imminent: bool,
    ) -> u32;
}

/// Stream tokens are handed to the module as `FilterPtr`s; never dereferenced.
const STREAM_BASE: usize = 0x5000_0000;
const CONFIG_BASE: usize = 0x6000_0000;

pub type Headers = Vec<(Vec<u8>, Vec<u8>)>;

#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u32,
    pub headers: Headers,
    pub body: Vec<u8>,
}

#[derive(Default)]
pub struct Stream {
    pub live: bool,
    /// The module's stream pointer (`on_http_filter_new`'s answer).
    pub module: usize,
    /// Request headers, request trailers, response headers, response trailers.
    pub maps: [Option<Headers>; 4],
    pub received: usize,
    pub buffered: usize,
    /// The module stopped the request and has not resumed it.
    pub stopped: bool,
    /// The request went upstream (headers continued or resumed).
    pub continued: bool,
    pub resumes: u32,
    pub reply: Option<Reply>,
    pub callouts: Vec<u64>,
    pub next_callout: u64,
    /// Inside one of this stream's request-path hooks (headers, body, trailers).
    pub in_hook: bool,
    /// Resumed during the current request-path hook.
    pub resumed_in_hook: bool,
    /// The module stopped the response in its headers and has not resumed it.
    pub response_stopped: bool,
    pub response_resumes: u32,
}

#[derive(Default)]
pub struct Envoy {
    pub streams: Vec<Stream>,
    pub strict: bool,
}

thread_local! {
    pub static ENVOY: RefCell<Envoy> = RefCell::new(Envoy::default());
}

/// Process-wide (the ticker thread commits schedulers; anyone logs).
#[derive(Default)]
pub struct Global {
    /// Live configurations: index → frozen (no more metric definitions). Indices are never
    /// reused, so a destroyed configuration's pointer stays recognisably dead.
    pub configs: HashMap<usize, bool>,
    pub next_config: usize,
    /// Per configuration, its metric slots: (kind, name); values by name (Envoy's store: one
    /// stat per name, shared by every configuration that defines it).
    pub metrics: HashMap<usize, Vec<(u8, Vec<u8>)>>,
    pub values: HashMap<Vec<u8>, i128>,
    /// Live schedulers: token → stream index.
    pub schedulers: HashMap<usize, usize>,
    pub next_scheduler: usize,
    /// Committed events: (stream index, event id).
    pub committed: Vec<(usize, u64)>,
    pub logs: Vec<(u32, String)>,
}

pub fn global() -> MutexGuard<'static, Global> {
    static GLOBAL: std::sync::OnceLock<Mutex<Global>> = std::sync::OnceLock::new();
    let g = GLOBAL.get_or_init(|| Mutex::new(Global::default()));
    g.lock().unwrap_or_else(|p| p.into_inner())
}

static STRICT: AtomicBool = AtomicBool::new(true);

fn violation(what: String) -> ! {
    panic!("fake Envoy: {what}");
}

// ------------------------------------------------------------------------------------------
// Helpers for the targets.

pub fn stream_ptr(index: usize) -> FilterPtr {
    (STREAM_BASE + index * 16) as FilterPtr
}

fn stream_index(filter: FilterPtr, what: &str) -> usize {
    let addr = filter as usize;
    let index = addr.wrapping_sub(STREAM_BASE) / 16;
    let ok = addr >= STREAM_BASE
        && (addr - STREAM_BASE) % 16 == 0
        && ENVOY.with(|e| e.borrow().streams.get(index).is_some_and(|s| s.live));
    if !ok {
        violation(format!("{what} on a stream that is not live ({addr:#x})"));
    }
    index
}

pub fn config_ptr(index: usize) -> ConfigPtr {
    (CONFIG_BASE + index * 16) as ConfigPtr
}

fn config_index(config: ConfigPtr, what: &str) -> usize {
    let addr = config as usize;
    let index = addr.wrapping_sub(CONFIG_BASE) / 16;
    let ok = addr >= CONFIG_BASE
        && (addr - CONFIG_BASE) % 16 == 0
        && global().configs.contains_key(&index);
    if !ok {
        violation(format!(
            "{what} on a configuration that is not live ({addr:#x})"
        ));
    }
    index
}

pub fn set_strict(strict: bool) {
    STRICT.store(strict, Ordering::Relaxed);
}

/// The logs since the last call.
pub fn take_logs() -> Vec<(u32, String)> {
    std::mem::take(&mut global().logs)
}

/// Envoy's side of `on_http_filter_config_new`: a fresh configuration pointer, the hook, then
/// metric definitions frozen. `None`: refused.
pub fn config_new(name: &[u8], raw: &[u8]) -> Option<(usize, usize)> {
    let index = {
        let mut g = global();
        let index = g.next_config;
        g.next_config += 1;
        g.configs.insert(index, false);
        index
    };
    let module = unsafe {
        native::envoy_dynamic_module_on_http_filter_config_new(
            config_ptr(index),
            EnvoyBuffer {
                ptr: name.as_ptr(),
                length: name.len(),
            },
            EnvoyBuffer {
                ptr: raw.as_ptr(),
                length: raw.len(),
            },
        )
    };
    let mut g = global();
    if let Some(frozen) = g.configs.get_mut(&index) {
        *frozen = true;
    }
    if module.is_null() {
        g.configs.remove(&index);
        g.metrics.remove(&index);
        return None;
    }
    Some((index, module as usize))
}

pub fn config_destroy(index: usize, module: usize) {
    unsafe { native::envoy_dynamic_module_on_http_filter_config_destroy(module as *const c_void) };
    let mut g = global();
    g.configs.remove(&index);
    g.metrics.remove(&index);
}

/// A new stream on the configuration; `None` when the module refused it.
pub fn stream_new(config_module: usize) -> Option<usize> {
    let index = ENVOY.with(|e| {
        let mut e = e.borrow_mut();
        e.streams.push(Stream {
            live: true,
            ..Stream::default()
        });
        e.streams.len() - 1
    });
    let module = unsafe {
        native::envoy_dynamic_module_on_http_filter_new(
            config_module as *const c_void,
            stream_ptr(index),
        )
    };
    ENVOY.with(|e| {
        let mut e = e.borrow_mut();
        let s = e.streams.get_mut(index)?;
        if module.is_null() {
            s.live = false;
            return None;
        }
        s.module = module as usize;
        Some(index)
    })
}

/// Forgets this thread's streams once none is live (their indices are then reused), so a
/// target or test that runs many inputs in one process holds only what live streams need.
pub fn forget_dead() {
    ENVOY.with(|e| {
        let mut e = e.borrow_mut();
        if e.streams.iter().all(|s| !s.live) {
            e.streams.clear();
        }
    });
}

fn with_stream<T>(index: usize, f: impl FnOnce(&mut Stream) -> T) -> Option<T> {
    ENVOY.with(|e| e.borrow_mut().streams.get_mut(index).map(f))
}

pub fn stream<T>(index: usize, f: impl FnOnce(&Stream) -> T) -> Option<T> {
    ENVOY.with(|e| e.borrow().streams.get(index).map(f))
}

fn module_of(index: usize) -> *const c_void {
    stream(index, |s| s.module).unwrap_or(0) as *const c_void
}

/// Runs one of the stream's hooks.
fn hook(index: usize, call: impl FnOnce(FilterPtr, *const c_void) -> u32) -> u32 {
    call(stream_ptr(index), module_of(index))
}

/// A request-path hook: Continue (0) lets the request on; a stop holds it unless the module
/// resumed it during the hook itself.
fn request_hook(index: usize, call: impl FnOnce(FilterPtr, *const c_void) -> u32) -> u32 {
    let before = with_stream(index, |s| {
        s.in_hook = true;
        s.resumes
    })
    .unwrap_or(0);
    let status = hook(index, call);
    with_stream(index, |s| {
        s.in_hook = false;
        s.resumed_in_hook = false;
        if s.reply.is_some() {
            s.stopped = false;
        } else if status == 0 {
            s.stopped = false;
            s.continued = true;
        } else if s.resumes == before {
            s.stopped = true;
        }
    });
    status
}

pub fn request_headers(index: usize, headers: Headers, end_of_stream: bool) -> u32 {
    with_stream(index, |s| s.maps[0] = Some(headers));
    request_hook(index, |f, m| unsafe {
        native::envoy_dynamic_module_on_http_filter_request_headers(f, m, end_of_stream)
    })
}

pub fn request_body(index: usize, size: usize, end_of_stream: bool) -> u32 {
    with_stream(index, |s| s.received = size);
    let status = request_hook(index, |f, m| unsafe {
        native::envoy_dynamic_module_on_http_filter_request_body(f, m, end_of_stream)
    });
    with_stream(index, |s| {
        if status != 0 {
            s.buffered = s.buffered.saturating_add(s.received);
        }
        s.received = 0;
    });
    status
}

pub fn request_trailers(index: usize, trailers: Headers) -> u32 {
    with_stream(index, |s| s.maps[1] = Some(trailers));
    request_hook(index, |f, m| unsafe {
        native::envoy_dynamic_module_on_http_filter_request_trailers(f, m)
    })
}

pub fn response_headers(index: usize, headers: Headers, end_of_stream: bool) -> u32 {
    with_stream(index, |s| s.maps[2] = Some(headers));
    let status = hook(index, |f, m| unsafe {
        native::envoy_dynamic_module_on_http_filter_response_headers(f, m, end_of_stream)
    });
    with_stream(index, |s| s.response_stopped = status != 0);
    status
}

/// Envoy's end of a stream: complete, then destroy; every scheduler it made must be deleted.
pub fn stream_end(index: usize) {
    if !stream(index, |s| s.live).unwrap_or(false) {
        return;
    }
    hook(index, |f, m| {
        unsafe { native::envoy_dynamic_module_on_http_filter_stream_complete(f, m) };
        0
    });
    unsafe { native::envoy_dynamic_module_on_http_filter_destroy(module_of(index)) };
    with_stream(index, |s| s.live = false);
    let mut g = global();
    if g.schedulers.values().any(|s| *s == index) {
        violation(format!(
            "stream {index} destroyed with its scheduler not deleted"
        ));
    }
    g.committed.retain(|(s, _)| *s != index);
}

/// One `GET <path>` through a new stream of the configuration `config_module`: its request,
/// a 200 from the function if the module let the request through without a reply of its own, and
/// the stream's end. False when the module refused the stream.
pub fn one_get(config_module: usize, path: &[u8]) -> bool {
    let Some(index) = stream_new(config_module) else {
        return false;
    };
    let headers = vec![
        (b":method".to_vec(), b"GET".to_vec()),
        (b":path".to_vec(), path.to_vec()),
        (b":authority".to_vec(), b"env.openfaas-fn:8080".to_vec()),
    ];
    request_headers(index, headers, true);
    if stream(index, |s| s.continued && s.reply.is_none()).unwrap_or(false) {
        response_headers(index, vec![(b":status".to_vec(), b"200".to_vec())], true);
    }
    stream_end(index);
    true
}

/// Delivers what schedulers committed to live streams, then `extra` (stream, event) pairs to
/// streams that hold a scheduler.
pub fn run_scheduled(extra: Option<(usize, u64)>) {
    let mut events = std::mem::take(&mut global().committed);
    if let Some((pick, event)) = extra {
        let holders: Vec<usize> = {
            let g = global();
            let mut v: Vec<usize> = g.schedulers.values().copied().collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        if let Some(&s) = holders.get(pick % holders.len().max(1)) {
            events.push((s, event));
        }
    }
    for (index, event) in events {
        if !stream(index, |s| s.live).unwrap_or(false) {
            continue;
        }
        hook(index, |f, m| {
            unsafe { native::envoy_dynamic_module_on_http_filter_scheduled(f, m, event) };
            0
        });
    }
}

/// Answers one of the stream's callouts in flight (Envoy's answer headers, `:status` first).
pub fn callout_done(index: usize, pick: usize, result: u32, headers: &Headers) -> bool {
    let id = with_stream(index, |s| {
        if s.callouts.is_empty() {
            return None;
        }
        let at = pick % s.callouts.len();
        Some(s.callouts.swap_remove(at))
    })
    .flatten();
    let Some(id) = id else {
        return false;
    };
    // A failed callout (reset, no cluster, ...) comes with no headers, as Envoy's does.
    let answered: &[(Vec<u8>, Vec<u8>)] = if result == 0 { headers } else { &[] };
    let pairs: Vec<EnvoyHeader> = answered
        .iter()
        .map(|(k, v)| EnvoyHeader {
            key_ptr: k.as_ptr(),
            key_length: k.len(),
            value_ptr: v.as_ptr(),
            value_length: v.len(),
        })
        .collect();
    hook(index, |f, m| {
        unsafe {
            native::envoy_dynamic_module_on_http_filter_http_callout_done(
                f,
                m,
                id,
                result,
                if pairs.is_empty() {
                    std::ptr::null()
                } else {
                    pairs.as_ptr()
                },
                pairs.len(),
                std::ptr::null(),
                0,
            )
        };
        0
    });
    true
}

/// A gauge's or counter's value by name.
pub fn metric(name: &str) -> i128 {
    global().values.get(name.as_bytes()).copied().unwrap_or(0)
}

// ------------------------------------------------------------------------------------------
// Validity of what the module writes.

fn valid_name(name: &[u8]) -> bool {
    let body = name.strip_prefix(b":").unwrap_or(name);
    !body.is_empty()
        && body
            .iter()
            .all(|c| c.is_ascii_graphic() && !c.is_ascii_uppercase() && *c != b':')
}

fn valid_value(value: &[u8]) -> bool {
    !value.iter().any(|c| matches!(c, b'\r' | b'\n' | 0))
}

fn check_write(what: &str, name: &[u8], value: &[u8]) {
    if STRICT.load(Ordering::Relaxed) && !(valid_name(name) && valid_value(value)) {
        violation(format!(
            "{what} wrote an invalid header {:?}: {:?}",
            String::from_utf8_lossy(name),
            String::from_utf8_lossy(value)
        ));
    }
}

// ------------------------------------------------------------------------------------------
// The callbacks (native/src/abi.rs).

unsafe fn module_bytes<'a>(b: ModuleBuffer) -> &'a [u8] {
    if b.ptr.is_null() || b.length == 0 {
        &[]
    } else {
        unsafe { std::slice::from_raw_parts(b.ptr, b.length) }
    }
}

fn map_slot(header_type: u32) -> usize {
    match header_type {
        0..=3 => header_type as usize,
        other => violation(format!("unknown header type {other}")),
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_callback_log(level: u32, message: ModuleBuffer) {
    let text = String::from_utf8_lossy(unsafe { module_bytes(message) }).into_owned();
    let mut g = global();
    if g.logs.len() < 256 {
        g.logs.push((level, text));
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_callback_log_enabled(_level: u32) -> bool {
    true
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_callback_http_get_header(
    filter: FilterPtr,
    header_type: u32,
    key: ModuleBuffer,
    result: *mut EnvoyBuffer,
    index: usize,
    optional_size: *mut usize,
) -> bool {
    let s = stream_index(filter, "get_header");
    let slot = map_slot(header_type);
    let key = unsafe { module_bytes(key) };
    ENVOY.with(|e| {
        let e = e.borrow();
        let Some(map) = e.streams.get(s).and_then(|s| s.maps[slot].as_ref()) else {
            return false;
        };
        let values: Vec<&Vec<u8>> = map
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
            .collect();
        if !optional_size.is_null() {
            unsafe { *optional_size = values.len() };
        }
        match values.get(index) {
            Some(v) => {
                unsafe {
                    *result = EnvoyBuffer {
                        ptr: v.as_ptr(),
                        length: v.len(),
                    }
                };
                true
            }
            None => {
                unsafe { *result = EnvoyBuffer::null() };
                false
            }
        }
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_callback_http_get_headers_size(
    filter: FilterPtr,
    header_type: u32,
) -> usize {
    let s = stream_index(filter, "get_headers_size");
    let slot = map_slot(header_type);
    ENVOY.with(|e| {
        (e.borrow().streams.get(s))
            .and_then(|s| s.maps[slot].as_ref())
            .map_or(0, Vec::len)
    })
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_callback_http_get_headers(
    filter: FilterPtr,
    header_type: u32,
    result: *mut EnvoyHeader,
) -> bool {
    let s = stream_index(filter, "get_headers");
    let slot = map_slot(header_type);
    ENVOY.with(|e| {
        let e = e.borrow();
        let Some(map) = e.streams.get(s).and_then(|s| s.maps[slot].as_ref()) else {
            return false;
        };
        for (i, (k, v)) in map.iter().enumerate() {
            // The module sized `result` with get_headers_size.
            unsafe {
                *result.add(i) = EnvoyHeader {
                    key_ptr: k.as_ptr(),
                    key_length: k.len(),
                    value_ptr: v.as_ptr(),
                    value_length: v.len(),
                }
            };
        }
        true
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_callback_http_set_header(
    filter: FilterPtr,
    header_type: u32,
    key: ModuleBuffer,
    value: ModuleBuffer,
) -> bool {
    let s = stream_index(filter, "set_header");
    let slot = map_slot(header_type);
    let key = unsafe { module_bytes(key) }.to_ascii_lowercase();
    let remove = value.ptr.is_null();
    let value = unsafe { module_bytes(value) }.to_vec();
    if !remove {
        check_write("set_header", &key, &value);
    }
    ENVOY.with(|e| {
        let mut e = e.borrow_mut();
        let Some(map) = e.streams.get_mut(s).and_then(|s| s.maps[slot].as_mut()) else {
            return false;
        };
        // Envoy's setCopy: the old values are freed.
        map.retain(|(k, _)| *k != key);
        if !remove {
            map.push((key, value));
        }
        true
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_callback_http_add_header(
    filter: FilterPtr,
    header_type: u32,
    key: ModuleBuffer,
    value: ModuleBuffer,
) -> bool {
    let s = stream_index(filter, "add_header");
    let slot = map_slot(header_type);
    let key = unsafe { module_bytes(key) }.to_ascii_lowercase();
    let value = unsafe { module_bytes(value) }.to_vec();
    check_write("add_header", &key, &value);
    ENVOY.with(|e| {
        let mut e = e.borrow_mut();
        let Some(map) = e.streams.get_mut(s).and_then(|s| s.maps[slot].as_mut()) else {
            return false;
        };
        map.push((key, value));
        true
    })
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_callback_http_send_response(
    filter: FilterPtr,
    status_code: u32,
    headers: *mut ModuleHeader,
    headers_size: usize,
    body: ModuleBuffer,
    _details: ModuleBuffer,
) {
    let s = stream_index(filter, "send_response");
    if !(200..=599).contains(&status_code) {
        violation(format!("local reply with status {status_code}"));
    }
    let mut pairs: Headers = vec![(b":status".to_vec(), status_code.to_string().into_bytes())];
    if !headers.is_null() {
        for h in unsafe { std::slice::from_raw_parts(headers, headers_size) } {
            let k = unsafe {
                module_bytes(ModuleBuffer {
                    ptr: h.key_ptr,
                    length: h.key_length,
                })
            };
            let v = unsafe {
                module_bytes(ModuleBuffer {
                    ptr: h.value_ptr,
                    length: h.value_length,
                })
            };
            check_write("send_response", k, v);
            pairs.push((k.to_vec(), v.to_vec()));
        }
    }
    let body = unsafe { module_bytes(body) }.to_vec();
    let already = with_stream(s, |st| {
        let already = st.reply.is_some();
        st.reply = Some(Reply {
            status: status_code,
            headers: pairs.clone(),
            body: body.clone(),
        });
        st.stopped = false;
        already
    })
    .unwrap_or(false);
    if already {
        violation(format!("a second local reply on stream {s}"));
    }
    // Envoy: the local-reply hook, then the reply's headers through the filter chain, this
    // filter included, at once.
    let module = module_of(s);
    unsafe {
        envoy_dynamic_module_on_http_filter_local_reply(
            filter,
            module,
            status_code,
            EnvoyBuffer::null(),
            false,
        )
    };
    with_stream(s, |st| st.maps[2] = Some(pairs));
    let status = unsafe {
        native::envoy_dynamic_module_on_http_filter_response_headers(
            filter,
            module,
            body.is_empty(),
        )
    };
    with_stream(s, |st| st.response_stopped = status != 0);
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_callback_http_get_body_size(
    filter: FilterPtr,
    body_type: u32,
) -> usize {
    let s = stream_index(filter, "get_body_size");
    stream(s, |st| match body_type {
        0 => st.received,
        1 => st.buffered,
        _ => 0,
    })
    .unwrap_or(0)
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_callback_http_filter_get_attribute_string(
    filter: FilterPtr,
    attribute_id: u32,
    result: *mut EnvoyBuffer,
) -> bool {
    stream_index(filter, "get_attribute_string");
    static SAN: &[u8] = b"spiffe://cluster.local/ns/openfaas/sa/openfaas-controller";
    if attribute_id == native::abi::ATTR_CONNECTION_URI_SAN_PEER_CERTIFICATE {
        unsafe {
            *result = EnvoyBuffer {
                ptr: SAN.as_ptr(),
                length: SAN.len(),
            }
        };
        return true;
    }
    false
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_callback_http_filter_get_attribute_int(
    filter: FilterPtr,
    attribute_id: u32,
    result: *mut u64,
) -> bool {
    stream_index(filter, "get_attribute_int");
    if attribute_id == native::abi::ATTR_RESPONSE_FLAGS {
        unsafe { *result = 0 };
        return true;
    }
    false
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_callback_http_filter_get_attribute_bool(
    filter: FilterPtr,
    attribute_id: u32,
    result: *mut bool,
) -> bool {
    let s = stream_index(filter, "get_attribute_bool");
    if attribute_id == native::abi::ATTR_CONNECTION_MTLS {
        // Odd streams come over mTLS.
        unsafe { *result = s % 2 == 1 };
        return true;
    }
    false
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_callback_http_filter_continue_decoding(filter: FilterPtr) {
    let s = stream_index(filter, "continue_decoding");
    with_stream(s, |st| {
        if st.reply.is_some() {
            violation(format!(
                "continue_decoding on stream {s} after its local reply"
            ));
        }
        // Within its own request-path hook (before it returned its status) a stream may be
        // resumed once; otherwise only a stopped request may be.
        let ok = if st.in_hook {
            !st.resumed_in_hook
        } else {
            st.stopped
        };
        if !ok {
            violation(format!(
                "continue_decoding on stream {s}, which is not stopped"
            ));
        }
        st.resumed_in_hook = st.in_hook;
        st.resumes += 1;
        st.stopped = false;
        st.continued = true;
    });
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_callback_http_filter_continue_encoding(filter: FilterPtr) {
    let s = stream_index(filter, "continue_encoding");
    with_stream(s, |st| {
        if !st.response_stopped {
            violation(format!(
                "continue_encoding on stream {s}, whose response is not stopped"
            ));
        }
        st.response_stopped = false;
        st.response_resumes += 1;
    });
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_callback_http_filter_http_callout(
    filter: FilterPtr,
    callout_id_out: *mut u64,
    cluster: ModuleBuffer,
    headers: *mut ModuleHeader,
    headers_size: usize,
    _body: ModuleBuffer,
    _timeout_ms: u64,
) -> u32 {
    let s = stream_index(filter, "http_callout");
    if unsafe { module_bytes(cluster) }.is_empty() || headers.is_null() || headers_size == 0 {
        violation("a callout without cluster or headers".into());
    }
    for h in unsafe { std::slice::from_raw_parts(headers, headers_size) } {
        let k = unsafe {
            module_bytes(ModuleBuffer {
                ptr: h.key_ptr,
                length: h.key_length,
            })
        };
        let v = unsafe {
            module_bytes(ModuleBuffer {
                ptr: h.value_ptr,
                length: h.value_length,
            })
        };
        check_write("http_callout", k, v);
    }
    with_stream(s, |st| {
        st.next_callout += 1;
        let id = st.next_callout;
        st.callouts.push(id);
        unsafe { *callout_id_out = id };
    });
    native::abi::CALLOUT_SUCCESS
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_callback_http_filter_scheduler_new(
    filter: FilterPtr,
) -> SchedulerPtr {
    let s = stream_index(filter, "scheduler_new");
    let mut g = global();
    g.next_scheduler += 1;
    let token = 0x7000_0000 + g.next_scheduler * 16;
    g.schedulers.insert(token, s);
    token as SchedulerPtr
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_callback_http_filter_scheduler_commit(
    scheduler: SchedulerPtr,
    event_id: u64,
) {
    let mut g = global();
    let Some(&s) = g.schedulers.get(&(scheduler as usize)) else {
        drop(g);
        violation(format!(
            "commit on a deleted scheduler {:#x}",
            scheduler as usize
        ));
    };
    if g.committed.len() < 64 {
        g.committed.push((s, event_id));
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_callback_http_filter_scheduler_delete(
    scheduler: SchedulerPtr,
) {
    let mut g = global();
    if g.schedulers.remove(&(scheduler as usize)).is_none() {
        drop(g);
        violation(format!(
            "delete of an unknown scheduler {:#x}",
            scheduler as usize
        ));
    }
}

const METRICS_SUCCESS: u32 = 0;
const METRICS_NOT_FOUND: u32 = 1;
const METRICS_INVALID_LABELS: u32 = 2;
const METRICS_FROZEN: u32 = 3;

fn define(
    kind: u8,
    config: ConfigPtr,
    name: ModuleBuffer,
    labels: usize,
    id_out: *mut usize,
) -> u32 {
    let c = config_index(config, "define metric");
    let name = unsafe { module_bytes(name) }.to_vec();
    if name.is_empty() {
        violation("a metric without a name".into());
    }
    if labels != 0 {
        return METRICS_INVALID_LABELS;
    }
    let mut g = global();
    if g.configs.get(&c).copied().unwrap_or(true) {
        return METRICS_FROZEN;
    }
    let slots = g.metrics.entry(c).or_default();
    slots.push((kind, name));
    unsafe { *id_out = slots.len() - 1 };
    METRICS_SUCCESS
}

fn update(
    kind: u8,
    config: ConfigPtr,
    id: usize,
    labels: usize,
    f: impl FnOnce(i128) -> i128,
) -> u32 {
    let c = config_index(config, "update metric");
    if labels != 0 {
        return METRICS_INVALID_LABELS;
    }
    let mut g = global();
    let Some((k, name)) = g.metrics.get(&c).and_then(|m| m.get(id)).cloned() else {
        return METRICS_NOT_FOUND;
    };
    if k != kind {
        return METRICS_NOT_FOUND;
    }
    let value = g.values.entry(name.clone()).or_insert(0);
    *value = f(*value);
    if kind == GAUGE && *value < 0 {
        let v = *value;
        drop(g);
        violation(format!(
            "gauge {:?} went below zero ({v})",
            String::from_utf8_lossy(&name)
        ));
    }
    METRICS_SUCCESS
}

const COUNTER: u8 = 0;
const GAUGE: u8 = 1;
const HISTOGRAM: u8 = 2;

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_callback_http_filter_config_define_counter(
    config: ConfigPtr,
    name: ModuleBuffer,
    _label_names: *mut ModuleBuffer,
    label_names_length: usize,
    id_out: *mut usize,
) -> u32 {
    define(COUNTER, config, name, label_names_length, id_out)
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_callback_http_filter_config_define_gauge(
    config: ConfigPtr,
    name: ModuleBuffer,
    _label_names: *mut ModuleBuffer,
    label_names_length: usize,
    id_out: *mut usize,
) -> u32 {
    define(GAUGE, config, name, label_names_length, id_out)
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_callback_http_filter_config_define_histogram(
    config: ConfigPtr,
    name: ModuleBuffer,
    _label_names: *mut ModuleBuffer,
    label_names_length: usize,
    id_out: *mut usize,
) -> u32 {
    define(HISTOGRAM, config, name, label_names_length, id_out)
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_callback_http_filter_config_increment_counter(
    config: ConfigPtr,
    id: usize,
    _label_values: *mut ModuleBuffer,
    label_values_length: usize,
    value: u64,
) -> u32 {
    update(COUNTER, config, id, label_values_length, |v| {
        v + i128::from(value)
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_callback_http_filter_config_increment_gauge(
    config: ConfigPtr,
    id: usize,
    _label_values: *mut ModuleBuffer,
    label_values_length: usize,
    value: u64,
) -> u32 {
    update(GAUGE, config, id, label_values_length, |v| {
        v + i128::from(value)
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_callback_http_filter_config_decrement_gauge(
    config: ConfigPtr,
    id: usize,
    _label_values: *mut ModuleBuffer,
    label_values_length: usize,
    value: u64,
) -> u32 {
    update(GAUGE, config, id, label_values_length, |v| {
        v - i128::from(value)
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_callback_http_filter_config_set_gauge(
    config: ConfigPtr,
    id: usize,
    _label_values: *mut ModuleBuffer,
    label_values_length: usize,
    value: u64,
) -> u32 {
    update(GAUGE, config, id, label_values_length, |_| {
        i128::from(value)
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_callback_http_filter_config_record_histogram_value(
    config: ConfigPtr,
    id: usize,
    _label_values: *mut ModuleBuffer,
    label_values_length: usize,
    _value: u64,
) -> u32 {
    update(HISTOGRAM, config, id, label_values_length, |v| v + 1)
}

// ------------------------------------------------------------------------------------------
// Reading the fuzzer's input.

/// A cursor over the fuzz input; runs dry as zeros.
pub struct Input<'a>(pub &'a [u8]);

impl<'a> Input<'a> {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }

    /// A length-prefixed byte string (one length byte; 0xff: a huge run of the next byte).
    pub fn bytes(&mut self) -> Vec<u8> {
        let n = self.byte();
        if n == 0xff {
            let k = usize::from(self.byte()) + 1;
            let b = self.byte();
            return vec![b; k * 1024];
        }
        self.take(usize::from(n)).to_vec()
    }
}

/// Names the fuzzer picks from (plus arbitrary ones): what the module reads.
pub const NAMES: &[&str] = &[
    ":path",
    ":method",
    ":authority",
    ":scheme",
    "host",
    "x-call-id",
    "x-start-time",
    "x-duration-seconds",
    "traceparent",
    "tracestate",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-sampled",
    "x-b3-parentspanid",
    "b3",
    "x-request-id",
    "content-length",
    "transfer-encoding",
    "x-forwarded-client-cert",
    "x-envoy-original-path",
    "x-openfaas-eula",
    ":status",
];

/// A header list: each pair a name (from [`NAMES`] or arbitrary) and a value. In strict mode
/// the bytes are what Envoy's codecs deliver: lowercase token names, values without CR/LF/NUL.
pub fn headers(input: &mut Input<'_>, strict: bool, with_request_line: bool) -> Headers {
    let mut out: Headers = Vec::new();
    if with_request_line {
        let path = input.bytes();
        let method = match input.byte() % 4 {
            0 => b"GET".to_vec(),
            1 => b"POST".to_vec(),
            2 => b"DELETE".to_vec(),
            _ => input.bytes(),
        };
        out.push((b":method".to_vec(), method));
        out.push((b":path".to_vec(), path));
        out.push((b":authority".to_vec(), b"env.openfaas-fn:8080".to_vec()));
    }
    let n = input.byte() % 24;
    for _ in 0..n {
        if input.is_empty() {
            break;
        }
        let pick = input.byte();
        let name = match NAMES.get(usize::from(pick) % (NAMES.len() + 4)) {
            Some(n) => n.as_bytes().to_vec(),
            None => input.bytes(),
        };
        let value = input.bytes();
        out.push((name, value));
    }
    if strict {
        for (k, v) in &mut out {
            k.make_ascii_lowercase();
            let pseudo = k.first() == Some(&b':');
            k.retain(|c| c.is_ascii_graphic() && *c != b':');
            if pseudo {
                k.insert(0, b':');
            }
            if k.is_empty() || k == b":" {
                *k = b"x-empty".to_vec();
            }
            for c in v.iter_mut() {
                if matches!(*c, b'\r' | b'\n' | 0) {
                    *c = b' ';
                }
            }
        }
    }
    out
}

/// Makes the pod folder and points the module at it (once per process).
pub fn pod_dir() -> std::path::PathBuf {
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        // One folder per fuzzing process; those of processes that are gone are removed.
        const PREFIX: &str = "faas-mesh-fuzz-pod-";
        if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Some(pid) = name.strip_prefix(PREFIX) {
                    if !std::path::Path::new("/proc").join(pid).exists() {
                        let _ = std::fs::remove_dir_all(entry.path());
                    }
                }
            }
        }
        let dir = std::env::temp_dir().join(format!("{PREFIX}{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        std::env::set_var(native::pod::DIR_ENV, &dir);
        std::env::remove_var("POD_NAMESPACE");
        native::envoy_dynamic_module_on_program_init();
        dir
    })
    .clone()
}

/// Counts for the targets' statistics.
pub static REPLIES: AtomicUsize = AtomicUsize::new(0);

/// `FAKE_ENVOY_TRACE=1`: the targets print what each input did (to check a seed).
pub fn tracing() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("FAKE_ENVOY_TRACE").is_some())
}
