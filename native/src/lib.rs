//! faas-mesh-filter as an Envoy dynamic module: the same pure core as the wasm build
//! (`faas_mesh_filter`), on a second host.
//!
//! - [`abi`]: the Envoy callbacks used, declared by hand and checked against Envoy 1.40.0;
//! - [`host`]: [`host::NativeHost`], the core's `Host` trait on those callbacks;
//! - [`metrics`]: the filter's metrics on Envoy's metric callbacks (defined once per
//!   configuration, updated from any worker);
//! - [`bridge`]: Envoy's event hooks onto the core's `Root` (one per worker per filter
//!   configuration) and `Call` (one per stream);
//! - [`ticker`]: the root's tick, posted to a live stream of the worker;
//! - [`shared`]: process-wide shared data with compare-and-swap;
//! - [`pod`]: the pod's labels, annotations and namespace from Istio's downward-API files;
//! - `hooks` (below) and `stubs`: the exported `envoy_dynamic_module_on_*` symbols.
//!
//! Only `envoy_dynamic_module_on_*` are exported (`exports.map`, linked by build.rs). A panic
//! aborts the process (`panic = "abort"` in the workspace's release profile), so none unwinds
//! across the ABI; the module's code has no unwrap/expect/panic/indexing (clippy denies them).
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod abi;
pub mod bridge;
pub mod host;
mod logger;
pub mod metrics;
pub mod pod;
pub mod shared;
mod stubs;
pub mod ticker;

use abi::{ConfigPtr, EnvoyBuffer, EnvoyHeader, FilterPtr};
use std::ffi::{c_char, c_void};

/// The ABI version this module was written against: Envoy 1.40's (`abi.h`'s
/// `ENVOY_DYNAMIC_MODULES_ABI_VERSION`). Envoy logs a mismatch as a deprecation warning.
pub const ABI_VERSION: &str = "v0.2.0";
static ABI_VERSION_C: &[u8] = b"v0.2.0\0";

/// `envoy_dynamic_module_on_program_init`: the ABI version (NUL-terminated, static).
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    logger::init();
    ABI_VERSION_C.as_ptr().cast()
}

/// `on_http_filter_config_new(config_envoy_ptr, envoy_buffer name, envoy_buffer config)`:
/// null refuses the configuration (the core has logged why).
///
/// # Safety
/// Envoy's buffers are valid for the call.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    config_envoy: ConfigPtr,
    _name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> *const c_void {
    // SAFETY: Envoy's contract.
    let raw = unsafe { config.bytes() };
    match bridge::config_new(config_envoy, raw) {
        Some(config) => Box::into_raw(config) as *const c_void,
        None => std::ptr::null(),
    }
}

/// # Safety
/// `config` came from `on_http_filter_config_new`.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(config: *const c_void) {
    if !config.is_null() {
        // SAFETY: made by Box::into_raw in config_new, destroyed once.
        bridge::config_destroy(*unsafe { Box::from_raw(config as *mut bridge::FilterConfig) });
    }
}

/// # Safety
/// `config` came from `on_http_filter_config_new`; `filter` is Envoy's new stream.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: *const c_void,
    filter: FilterPtr,
) -> *const c_void {
    // SAFETY: Envoy's contract: the configuration outlives its streams.
    let Some(config) = (unsafe { (config as *const bridge::FilterConfig).as_ref() }) else {
        return std::ptr::null();
    };
    match bridge::filter_new(config, filter) {
        Some(stream) => Box::into_raw(stream) as *const c_void,
        None => std::ptr::null(),
    }
}

/// # Safety
/// `stream` came from `on_http_filter_new`.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_destroy(stream: *const c_void) {
    if !stream.is_null() {
        // SAFETY: made by Box::into_raw in filter_new, destroyed once.
        drop(unsafe { Box::from_raw(stream as *mut bridge::Stream) });
    }
}

/// # Safety
/// Envoy's stream pointers.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    filter: FilterPtr,
    stream: *const c_void,
    end_of_stream: bool,
) -> u32 {
    // SAFETY: Envoy's contract.
    unsafe { bridge::request_headers(stream, filter, end_of_stream) }
}

/// # Safety
/// Envoy's stream pointers.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    filter: FilterPtr,
    stream: *const c_void,
    end_of_stream: bool,
) -> u32 {
    // SAFETY: Envoy's contract.
    unsafe { bridge::request_body(stream, filter, end_of_stream) }
}

/// # Safety
/// Envoy's stream pointers.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    filter: FilterPtr,
    stream: *const c_void,
) -> u32 {
    // SAFETY: Envoy's contract.
    unsafe { bridge::request_trailers(stream, filter) }
}

/// # Safety
/// Envoy's stream pointers.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    filter: FilterPtr,
    stream: *const c_void,
    end_of_stream: bool,
) -> u32 {
    // SAFETY: Envoy's contract.
    unsafe { bridge::response_headers(stream, filter, end_of_stream) }
}

/// # Safety
/// Envoy's stream pointers.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    filter: FilterPtr,
    stream: *const c_void,
) {
    // SAFETY: Envoy's contract.
    unsafe { bridge::stream_complete(stream, filter) }
}

/// # Safety
/// Envoy's stream pointers.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
    filter: FilterPtr,
    stream: *const c_void,
    event_id: u64,
) {
    // SAFETY: Envoy's contract.
    unsafe { bridge::scheduled(stream, filter, event_id) }
}

/// `on_http_filter_http_callout_done(filter, stream, callout_id, result, envoy_http_header*
/// headers, headers_size, envoy_buffer* body_chunks, body_chunks_size)`.
///
/// # Safety
/// Envoy's stream pointers; `headers` holds `headers_size` headers (or is null).
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    filter: FilterPtr,
    stream: *const c_void,
    callout_id: u64,
    _result: u32,
    headers: *const EnvoyHeader,
    headers_size: usize,
    _body_chunks: *const EnvoyBuffer,
    _body_chunks_size: usize,
) {
    let headers = if headers.is_null() || headers_size == 0 {
        &[][..]
    } else {
        // SAFETY: Envoy's contract.
        unsafe { std::slice::from_raw_parts(headers, headers_size) }
    };
    // SAFETY: Envoy's contract.
    unsafe { bridge::callout_done(stream, filter, callout_id, headers) }
}
