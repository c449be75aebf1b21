//! The Envoy callbacks this module calls, declared by hand for exactly what it uses.
//!
//! Each declaration was checked against Envoy 1.40.0: the symbol is in its dynamic symbol table
//! (`nm -D envoy`, see `make native-symbols`) and the signature is abi.h's at ABI `v0.2.0`
//! (`source/extensions/dynamic_modules/abi/abi.h`). Buffers cross the ABI as `{ptr, length}`
//! pairs passed by value; the module owns what it passes, Envoy what it returns, valid until the
//! end of the current event hook.
//!
//! In `cargo test` builds the same list becomes inert stubs (there is no Envoy to link against),
//! so the bridge's pure parts can be tested natively.

use std::ffi::c_void;

/// Envoy's `DynamicModuleHttpFilterConfig*`.
pub type ConfigPtr = *mut c_void;
/// Envoy's `DynamicModuleHttpFilter*`: one per stream, valid until the filter is destroyed.
pub type FilterPtr = *mut c_void;
/// A scheduler Envoy allocated for a filter; the module deletes it.
pub type SchedulerPtr = *mut c_void;

/// `envoy_dynamic_module_type_module_buffer`: bytes the module owns.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ModuleBuffer {
    pub ptr: *const u8,
    pub length: usize,
}

impl ModuleBuffer {
    pub fn of(bytes: &[u8]) -> ModuleBuffer {
        ModuleBuffer {
            ptr: bytes.as_ptr(),
            length: bytes.len(),
        }
    }

    /// A null buffer (for `set_header`: remove).
    pub fn null() -> ModuleBuffer {
        ModuleBuffer {
            ptr: std::ptr::null(),
            length: 0,
        }
    }
}

/// `envoy_dynamic_module_type_envoy_buffer`: bytes Envoy owns.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyBuffer {
    pub ptr: *const u8,
    pub length: usize,
}

impl EnvoyBuffer {
    pub fn null() -> EnvoyBuffer {
        EnvoyBuffer {
            ptr: std::ptr::null(),
            length: 0,
        }
    }

    /// The bytes, borrowed for as long as Envoy keeps them (the current event hook).
    ///
    /// # Safety
    /// `ptr` is null or points to `length` readable bytes for the returned lifetime.
    pub unsafe fn bytes<'a>(self) -> &'a [u8] {
        if self.ptr.is_null() || self.length == 0 {
            &[]
        } else {
            // SAFETY: the caller's contract.
            unsafe { std::slice::from_raw_parts(self.ptr, self.length) }
        }
    }
}

/// `envoy_dynamic_module_type_module_http_header`: a header the module owns.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ModuleHeader {
    pub key_ptr: *const u8,
    pub key_length: usize,
    pub value_ptr: *const u8,
    pub value_length: usize,
}

impl ModuleHeader {
    pub fn of(key: &[u8], value: &[u8]) -> ModuleHeader {
        ModuleHeader {
            key_ptr: key.as_ptr(),
            key_length: key.len(),
            value_ptr: value.as_ptr(),
            value_length: value.len(),
        }
    }
}

/// `envoy_dynamic_module_type_envoy_http_header`: a header Envoy owns.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyHeader {
    pub key_ptr: *const u8,
    pub key_length: usize,
    pub value_ptr: *const u8,
    pub value_length: usize,
}

impl EnvoyHeader {
    pub fn null() -> EnvoyHeader {
        EnvoyHeader {
            key_ptr: std::ptr::null(),
            key_length: 0,
            value_ptr: std::ptr::null(),
            value_length: 0,
        }
    }

    /// (name, value), borrowed.
    ///
    /// # Safety
    /// Both pointers are null or valid for their lengths for the returned lifetime.
    pub unsafe fn pair<'a>(&self) -> (&'a [u8], &'a [u8]) {
        // SAFETY: the caller's contract.
        unsafe {
            (
                EnvoyBuffer {
                    ptr: self.key_ptr,
                    length: self.key_length,
                }
                .bytes(),
                EnvoyBuffer {
                    ptr: self.value_ptr,
                    length: self.value_length,
                }
                .bytes(),
            )
        }
    }
}

/// `envoy_dynamic_module_type_http_header_type`.
pub const REQUEST_HEADER: u32 = 0;
pub const REQUEST_TRAILER: u32 = 1;
pub const RESPONSE_HEADER: u32 = 2;
pub const RESPONSE_TRAILER: u32 = 3;

/// `envoy_dynamic_module_type_http_body_type`.
pub const RECEIVED_REQUEST_BODY: u32 = 0;
pub const BUFFERED_REQUEST_BODY: u32 = 1;

/// `envoy_dynamic_module_type_log_level` (Trace 0 .. Critical 5, Off 6).
pub const LOG_TRACE: u32 = 0;
pub const LOG_DEBUG: u32 = 1;
pub const LOG_INFO: u32 = 2;
pub const LOG_WARN: u32 = 3;
pub const LOG_ERROR: u32 = 4;

/// `envoy_dynamic_module_type_attribute_id` values used (abi.h's enum order).
pub const ATTR_RESPONSE_FLAGS: u32 = 17;
pub const ATTR_CONNECTION_MTLS: u32 = 29;
pub const ATTR_CONNECTION_URI_SAN_PEER_CERTIFICATE: u32 = 37;

/// `envoy_dynamic_module_type_metrics_result_Success`.
pub const METRICS_SUCCESS: u32 = 0;
/// `envoy_dynamic_module_type_http_callout_init_result_Success`.
pub const CALLOUT_SUCCESS: u32 = 0;
/// `envoy_dynamic_module_type_http_callout_result_Success`.
pub const CALLOUT_RESULT_SUCCESS: u32 = 0;

/// A value a test stub returns.
#[cfg(test)]
pub trait Stub {
    fn stub() -> Self;
}

#[cfg(test)]
impl Stub for () {
    fn stub() {}
}

#[cfg(test)]
impl Stub for bool {
    fn stub() -> bool {
        false
    }
}

#[cfg(test)]
impl Stub for u32 {
    fn stub() -> u32 {
        // Every status type's failure is non-zero.
        1
    }
}

#[cfg(test)]
impl Stub for usize {
    fn stub() -> usize {
        0
    }
}

#[cfg(test)]
impl Stub for *mut c_void {
    fn stub() -> *mut c_void {
        std::ptr::null_mut()
    }
}

/// Declares the callbacks: an `extern "C"` block in the module, inert stubs under `cargo test`.
macro_rules! callbacks {
    ($( $(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)?; )*) => {
        #[cfg(not(test))]
        extern "C" {
            $( $(#[$doc])* pub fn $name($($arg: $ty),*) $(-> $ret)?; )*
        }
        $(
            #[cfg(test)]
            #[allow(unused_variables, clippy::missing_safety_doc)]
            pub unsafe fn $name($($arg: $ty),*) $(-> $ret)? {
                Stub::stub()
            }
        )*
    };
}

callbacks! {
    /// `void envoy_dynamic_module_callback_log(log_level, module_buffer message)`.
    fn envoy_dynamic_module_callback_log(level: u32, message: ModuleBuffer);
    /// `bool envoy_dynamic_module_callback_log_enabled(log_level)`.
    fn envoy_dynamic_module_callback_log_enabled(level: u32) -> bool;

    /// `bool ..._http_get_header(filter, header_type, key, envoy_buffer* result, size_t index,
    /// size_t* optional_size)`.
    fn envoy_dynamic_module_callback_http_get_header(
        filter: FilterPtr,
        header_type: u32,
        key: ModuleBuffer,
        result: *mut EnvoyBuffer,
        index: usize,
        optional_size: *mut usize,
    ) -> bool;
    /// `size_t ..._http_get_headers_size(filter, header_type)`.
    fn envoy_dynamic_module_callback_http_get_headers_size(filter: FilterPtr, header_type: u32) -> usize;
    /// `bool ..._http_get_headers(filter, header_type, envoy_http_header* result_headers)`.
    fn envoy_dynamic_module_callback_http_get_headers(
        filter: FilterPtr,
        header_type: u32,
        result: *mut EnvoyHeader,
    ) -> bool;
    /// `bool ..._http_set_header(filter, header_type, key, value)`: a null value removes.
    fn envoy_dynamic_module_callback_http_set_header(
        filter: FilterPtr,
        header_type: u32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    /// `bool ..._http_add_header(filter, header_type, key, value)`.
    fn envoy_dynamic_module_callback_http_add_header(
        filter: FilterPtr,
        header_type: u32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    /// `void ..._http_send_response(filter, uint32_t status, module_http_header* headers,
    /// size_t headers_size, module_buffer body, module_buffer details)`.
    fn envoy_dynamic_module_callback_http_send_response(
        filter: FilterPtr,
        status_code: u32,
        headers: *mut ModuleHeader,
        headers_size: usize,
        body: ModuleBuffer,
        details: ModuleBuffer,
    );
    /// `size_t ..._http_get_body_size(filter, body_type)`.
    fn envoy_dynamic_module_callback_http_get_body_size(filter: FilterPtr, body_type: u32) -> usize;

    /// `bool ..._http_filter_get_attribute_string(filter, attribute_id, envoy_buffer* result)`.
    fn envoy_dynamic_module_callback_http_filter_get_attribute_string(
        filter: FilterPtr,
        attribute_id: u32,
        result: *mut EnvoyBuffer,
    ) -> bool;
    /// `bool ..._http_filter_get_attribute_int(filter, attribute_id, uint64_t* result)`.
    fn envoy_dynamic_module_callback_http_filter_get_attribute_int(
        filter: FilterPtr,
        attribute_id: u32,
        result: *mut u64,
    ) -> bool;
    /// `bool ..._http_filter_get_attribute_bool(filter, attribute_id, bool* result)`.
    fn envoy_dynamic_module_callback_http_filter_get_attribute_bool(
        filter: FilterPtr,
        attribute_id: u32,
        result: *mut bool,
    ) -> bool;

    /// `void ..._http_filter_continue_decoding(filter)`.
    fn envoy_dynamic_module_callback_http_filter_continue_decoding(filter: FilterPtr);
    /// `void ..._http_filter_continue_encoding(filter)`.
    fn envoy_dynamic_module_callback_http_filter_continue_encoding(filter: FilterPtr);

    /// `http_callout_init_result ..._http_filter_http_callout(filter, uint64_t* callout_id_out,
    /// module_buffer cluster, module_http_header* headers, size_t headers_size,
    /// module_buffer body, uint64_t timeout_ms)`.
    fn envoy_dynamic_module_callback_http_filter_http_callout(
        filter: FilterPtr,
        callout_id_out: *mut u64,
        cluster: ModuleBuffer,
        headers: *mut ModuleHeader,
        headers_size: usize,
        body: ModuleBuffer,
        timeout_ms: u64,
    ) -> u32;

    /// `scheduler_module_ptr ..._http_filter_scheduler_new(filter)`.
    fn envoy_dynamic_module_callback_http_filter_scheduler_new(filter: FilterPtr) -> SchedulerPtr;
    /// `void ..._http_filter_scheduler_commit(scheduler, uint64_t event_id)`: any thread; a
    /// no-op once the filter is gone.
    fn envoy_dynamic_module_callback_http_filter_scheduler_commit(scheduler: SchedulerPtr, event_id: u64);
    /// `void ..._http_filter_scheduler_delete(scheduler)`.
    fn envoy_dynamic_module_callback_http_filter_scheduler_delete(scheduler: SchedulerPtr);

    /// `metrics_result ..._http_filter_config_define_{counter,gauge,histogram}(config,
    /// module_buffer name, module_buffer* label_names, size_t label_names_length,
    /// size_t* id_out)`: only while the configuration is being built.
    fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        config: ConfigPtr,
        name: ModuleBuffer,
        label_names: *mut ModuleBuffer,
        label_names_length: usize,
        id_out: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_define_gauge(
        config: ConfigPtr,
        name: ModuleBuffer,
        label_names: *mut ModuleBuffer,
        label_names_length: usize,
        id_out: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_define_histogram(
        config: ConfigPtr,
        name: ModuleBuffer,
        label_names: *mut ModuleBuffer,
        label_names_length: usize,
        id_out: *mut usize,
    ) -> u32;
    /// `metrics_result ..._http_filter_config_{increment_counter,increment_gauge,
    /// decrement_gauge,set_gauge,record_histogram_value}(config, size_t id,
    /// module_buffer* label_values, size_t label_values_length, uint64_t value)`: from any
    /// worker, no stream needed.
    fn envoy_dynamic_module_callback_http_filter_config_increment_counter(
        config: ConfigPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_increment_gauge(
        config: ConfigPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_decrement_gauge(
        config: ConfigPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_set_gauge(
        config: ConfigPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_record_histogram_value(
        config: ConfigPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
}
