//! The host calls the filter makes, declared against the proxy-wasm ABI (0.2.1) directly: the
//! real [`Host`] ([`Abi`]), and the log ([`HostLogger`]).
//!
//! The SDK's own wrappers panic on any status they did not expect and decode header values as
//! UTF-8 with `unwrap`, so a header carrying a byte above 0x7F would trap the VM. These return
//! `Result`, hand back bytes, and read a header map in one call. Compiled for wasm32 only.

use proxy_wasm::types::{BufferType, LogLevel, MapType, MetricType, StreamType};
use std::ptr::{null, null_mut};

use super::Host;
pub use super::HostError;

const OK: u32 = 0;
const NOT_FOUND: u32 = 1;
const CAS_MISMATCH: u32 = 8;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_log(level: LogLevel, message_data: *const u8, message_size: usize) -> u32;
    fn proxy_get_log_level(return_level: *mut u32) -> u32;
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
    fn proxy_get_buffer_bytes(
        buffer_type: BufferType,
        start: usize,
        max_size: usize,
        return_buffer_data: *mut *mut u8,
        return_buffer_size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_pairs(
        map_type: MapType,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_value(
        map_type: MapType,
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map_type: MapType,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_add_header_map_value(
        map_type: MapType,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(
        map_type: MapType,
        key_data: *const u8,
        key_size: usize,
    ) -> u32;
    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_send_local_response(
        status_code: u32,
        status_code_details_data: *const u8,
        status_code_details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_get_shared_data(
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
        return_cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_set_effective_context(context_id: u32) -> u32;
    fn proxy_continue_stream(stream_type: StreamType) -> u32;
    fn proxy_define_metric(
        metric_type: MetricType,
        name_data: *const u8,
        name_size: usize,
        return_id: *mut u32,
    ) -> u32;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
    fn proxy_record_metric(metric_id: u32, value: u64) -> u32;
}

#[link(wasm_import_module = "wasi_snapshot_preview1")]
extern "C" {
    fn random_get(buf: *mut u8, buf_len: usize) -> i32;
}

/// Takes ownership of a buffer the host allocated through the SDK's `proxy_on_memory_allocate`
/// (a boxed slice of exactly `size` bytes).
///
/// # Safety
/// `data` is null or was returned by the host together with `size` for this call.
unsafe fn take_buffer(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() {
        Vec::new()
    } else {
        // SAFETY: the allocator hands out boxed slices of `size` bytes; the host filled them.
        unsafe { Vec::from_raw_parts(data, size, size) }
    }
}

fn status(code: u32) -> Result<(), HostError> {
    if code == OK {
        Ok(())
    } else {
        Err(HostError(code))
    }
}

/// Nanoseconds since the Unix epoch, from the host's clock.
pub fn now_nanos() -> Result<u64, HostError> {
    let mut t = 0u64;
    // SAFETY: `t` outlives the call.
    status(unsafe { proxy_get_current_time_nanoseconds(&mut t) })?;
    Ok(t)
}

/// Fills `buf` from the host's entropy source (WASI `random_get`; Envoy serves it from
/// BoringSSL's RAND_bytes).
pub fn random_bytes(buf: &mut [u8]) -> Result<(), HostError> {
    // SAFETY: `buf` is valid for writes of its length.
    match unsafe { random_get(buf.as_mut_ptr(), buf.len()) } {
        0 => Ok(()),
        errno => Err(HostError(errno.unsigned_abs())),
    }
}

/// The plugin configuration (`None` when the host has none or it is empty).
pub fn plugin_configuration() -> Result<Option<Vec<u8>>, HostError> {
    let (mut data, mut size) = (null_mut(), 0usize);
    // SAFETY: out-pointers outlive the call; the buffer is taken over right after.
    let code = unsafe {
        proxy_get_buffer_bytes(
            BufferType::PluginConfiguration,
            0,
            usize::MAX,
            &mut data,
            &mut size,
        )
    };
    match code {
        OK if data.is_null() || size == 0 => Ok(None),
        OK => Ok(Some(unsafe { take_buffer(data, size) })),
        NOT_FOUND => Ok(None),
        other => Err(HostError(other)),
    }
}

/// A property as raw bytes (`None` when the host has no such property). `path` segments are
/// joined by NUL, as the ABI wants: `b"xds\0node\0metadata\0NAMESPACE"`.
pub fn property(path: &[u8]) -> Result<Option<Vec<u8>>, HostError> {
    let (mut data, mut size) = (null_mut(), 0usize);
    // SAFETY: as above.
    let code = unsafe { proxy_get_property(path.as_ptr(), path.len(), &mut data, &mut size) };
    match code {
        OK if data.is_null() => Ok(None),
        OK => Ok(Some(unsafe { take_buffer(data, size) })),
        NOT_FOUND => Ok(None),
        other => Err(HostError(other)),
    }
}

/// The whole header map in its serialized form; read it with [`crate::header_map::pairs`].
#[inline]
pub fn header_map(map: MapType) -> Result<Vec<u8>, HostError> {
    let (mut data, mut size) = (null_mut(), 0usize);
    // SAFETY: as above.
    status(unsafe { proxy_get_header_map_pairs(map, &mut data, &mut size) })?;
    Ok(unsafe { take_buffer(data, size) })
}

#[inline]
pub fn header(map: MapType, name: &str) -> Result<Option<Vec<u8>>, HostError> {
    let (mut data, mut size) = (null_mut(), 0usize);
    // SAFETY: as above.
    let code =
        unsafe { proxy_get_header_map_value(map, name.as_ptr(), name.len(), &mut data, &mut size) };
    match code {
        OK => Ok(Some(unsafe { take_buffer(data, size) })),
        NOT_FOUND => Ok(None),
        other => Err(HostError(other)),
    }
}

/// Sets a header, replacing any value it had (Envoy adds it when absent).
pub fn set_header(map: MapType, name: &str, value: &[u8]) -> Result<(), HostError> {
    // SAFETY: both slices are valid for the call.
    status(unsafe {
        proxy_replace_header_map_value(map, name.as_ptr(), name.len(), value.as_ptr(), value.len())
    })
}

/// Appends a header without looking for an existing one (cheaper than a replace).
pub fn add_header(map: MapType, name: &str, value: &[u8]) -> Result<(), HostError> {
    // SAFETY: both slices are valid for the call.
    status(unsafe {
        proxy_add_header_map_value(map, name.as_ptr(), name.len(), value.as_ptr(), value.len())
    })
}

/// Removes every value of a header.
pub fn remove_header(map: MapType, name: &str) -> Result<(), HostError> {
    // SAFETY: `name` is valid for the call.
    status(unsafe { proxy_remove_header_map_value(map, name.as_ptr(), name.len()) })
}

/// Answers the request from the filter. `headers` is a serialized header map
/// ([`crate::header_map::serialize`]); `details` shows in Envoy's `%RESPONSE_CODE_DETAILS%`.
pub fn send_local_response(
    status_code: u32,
    details: &str,
    body: &[u8],
    headers: &[u8],
) -> Result<(), HostError> {
    // SAFETY: all slices are valid for the call.
    status(unsafe {
        proxy_send_local_response(
            status_code,
            details.as_ptr(),
            details.len(),
            if body.is_empty() {
                null()
            } else {
                body.as_ptr()
            },
            body.len(),
            headers.as_ptr(),
            headers.len(),
            -1,
        )
    })
}

/// A shared-data record (process-wide, scoped to the VM id) and its compare-and-swap token.
pub fn shared_data(key: &str) -> Result<(Option<Vec<u8>>, u32), HostError> {
    let (mut data, mut size, mut cas) = (null_mut(), 0usize, 0u32);
    // SAFETY: out-pointers outlive the call; the buffer is taken over right after.
    let code =
        unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) };
    match code {
        OK if data.is_null() => Ok((None, cas)),
        OK => Ok((Some(unsafe { take_buffer(data, size) }), cas)),
        NOT_FOUND => Ok((None, 0)),
        other => Err(HostError(other)),
    }
}

/// Writes a shared-data record if nobody wrote it since `cas` was read (`cas` 0: always).
/// `Ok(false)`: somebody did; read it again.
pub fn set_shared_data(key: &str, value: &[u8], cas: u32) -> Result<bool, HostError> {
    // SAFETY: both slices are valid for the call.
    let code =
        unsafe { proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas) };
    match code {
        OK => Ok(true),
        CAS_MISMATCH => Ok(false),
        other => Err(HostError(other)),
    }
}

/// Calls the root context's `on_tick` every `period_ms` (0 stops it).
pub fn set_tick_period_ms(period_ms: u32) -> Result<(), HostError> {
    // SAFETY: no pointers.
    status(unsafe { proxy_set_tick_period_milliseconds(period_ms) })
}

/// Makes a request's context the target of the following stream calls (from a root callback).
pub fn set_effective_context(context_id: u32) -> Result<(), HostError> {
    // SAFETY: no pointers.
    status(unsafe { proxy_set_effective_context(context_id) })
}

/// Continues a request paused in its request headers (on the effective context).
pub fn resume_request() -> Result<(), HostError> {
    // SAFETY: no pointers.
    status(unsafe { proxy_continue_stream(StreamType::HttpRequest) })
}

/// Defines (or finds: the same name on every worker is one stat) a metric.
pub fn define_metric(kind: MetricType, name: &str) -> Result<u32, HostError> {
    let mut id = 0u32;
    // SAFETY: `name` and `id` outlive the call.
    status(unsafe { proxy_define_metric(kind, name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

pub fn increment_metric(id: u32, by: i64) -> Result<(), HostError> {
    // SAFETY: no pointers.
    status(unsafe { proxy_increment_metric(id, by) })
}

/// Sets a gauge or records a histogram value.
pub fn record_metric(id: u32, value: u64) -> Result<(), HostError> {
    // SAFETY: no pointers.
    status(unsafe { proxy_record_metric(id, value) })
}

/// Sends `GET path` to an Envoy cluster; the answer arrives in the root context's
/// `on_http_call_response` with the returned token. Goes through the SDK, whose dispatcher must
/// know the token to route the answer back.
pub fn dispatch_get(
    cluster: &str,
    authority: &str,
    path: &str,
    timeout_ms: u64,
) -> Result<u32, HostError> {
    proxy_wasm::hostcalls::dispatch_http_call(
        cluster,
        vec![
            (":method", "GET"),
            (":path", path),
            (":authority", authority),
            ("user-agent", "faas-mesh-filter"),
        ],
        None,
        vec![],
        std::time::Duration::from_millis(timeout_ms),
    )
    .map_err(|s| HostError(s as u32))
}

/// Routes the `log` crate to Envoy's log (the `wasm` component), at the level Envoy runs with.
pub struct HostLogger;

static LOGGER: HostLogger = HostLogger;

impl HostLogger {
    /// Installs the logger once per VM and sets the level from the host, so debug lines cost
    /// nothing unless Envoy's wasm log level is debug.
    pub fn init() {
        // A second call (a reconfigured plugin in the same VM) keeps the installed logger.
        let _ = log::set_logger(&LOGGER);
        let mut level = 2u32;
        // SAFETY: `level` outlives the call.
        let filter = match unsafe { proxy_get_log_level(&mut level) } {
            OK => match level {
                0 => log::LevelFilter::Trace,
                1 => log::LevelFilter::Debug,
                2 => log::LevelFilter::Info,
                3 => log::LevelFilter::Warn,
                4 => log::LevelFilter::Error,
                _ => log::LevelFilter::Off,
            },
            _ => log::LevelFilter::Info,
        };
        log::set_max_level(filter);
    }
}

impl log::Log for HostLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            log::Level::Trace => LogLevel::Trace,
            log::Level::Debug => LogLevel::Debug,
            log::Level::Info => LogLevel::Info,
            log::Level::Warn => LogLevel::Warn,
            log::Level::Error => LogLevel::Error,
        };
        let message = record.args().to_string();
        // SAFETY: `message` outlives the call. A failed log has nowhere to be reported.
        let _ = unsafe { proxy_log(level, message.as_ptr(), message.len()) };
    }

    fn flush(&self) {}
}

/// The proxy-wasm host Envoy provides (a unit type: every call goes straight to the ABI).
#[derive(Debug, Clone, Copy, Default)]
pub struct Abi;

impl Host for Abi {
    fn now_nanos(&self) -> Result<u64, HostError> {
        now_nanos()
    }
    fn random_bytes(&self, buf: &mut [u8]) -> Result<(), HostError> {
        random_bytes(buf)
    }
    fn property(&self, path: &[u8]) -> Result<Option<Vec<u8>>, HostError> {
        property(path)
    }
    fn header(&self, map: MapType, name: &str) -> Result<Option<Vec<u8>>, HostError> {
        header(map, name)
    }
    fn plugin_configuration(&self) -> Result<Option<Vec<u8>>, HostError> {
        plugin_configuration()
    }
    #[inline]
    fn header_map(&self, map: MapType) -> Result<Vec<u8>, HostError> {
        header_map(map)
    }
    fn set_header(&self, map: MapType, name: &str, value: &[u8]) -> Result<(), HostError> {
        set_header(map, name, value)
    }
    fn add_header(&self, map: MapType, name: &str, value: &[u8]) -> Result<(), HostError> {
        add_header(map, name, value)
    }
    fn remove_header(&self, map: MapType, name: &str) -> Result<(), HostError> {
        remove_header(map, name)
    }
    fn shared_data(&self, key: &str) -> Result<(Option<Vec<u8>>, u32), HostError> {
        shared_data(key)
    }
    fn set_shared_data(&self, key: &str, value: &[u8], cas: u32) -> Result<bool, HostError> {
        set_shared_data(key, value, cas)
    }
    fn define_metric(&self, kind: MetricType, name: &str) -> Result<u32, HostError> {
        define_metric(kind, name)
    }
    fn increment_metric(&self, id: u32, by: i64) -> Result<(), HostError> {
        increment_metric(id, by)
    }
    fn record_metric(&self, id: u32, value: u64) -> Result<(), HostError> {
        record_metric(id, value)
    }
    fn set_tick_period_ms(&self, period_ms: u32) -> Result<(), HostError> {
        set_tick_period_ms(period_ms)
    }
    fn set_effective_context(&self, context_id: u32) -> Result<(), HostError> {
        set_effective_context(context_id)
    }
    fn resume_request(&self) -> Result<(), HostError> {
        resume_request()
    }
    fn send_local_response(
        &self,
        status_code: u32,
        details: &str,
        body: &[u8],
        headers: &[u8],
    ) -> Result<(), HostError> {
        send_local_response(status_code, details, body, headers)
    }
    fn dispatch_get(
        &self,
        cluster: &str,
        authority: &str,
        path: &str,
        timeout_ms: u64,
    ) -> Result<u32, HostError> {
        dispatch_get(cluster, authority, path, timeout_ms)
    }
}
