//! The host, behind one interface: [`Host`] is what the adapters (the gate on a worker, the
//! policy on a worker) ask of Envoy. It has two implementations: `abi::Abi`, the proxy-wasm ABI
//! (wasm32 only), and [`fake::Fake`], an in-memory host for native tests (shared data with
//! compare-and-swap shared between "workers", a clock, metrics, dispatched calls, local replies
//! and a log of calls).
//!
//! The adapters are generic over `Host`, so the wasm module has one instantiation and calls the
//! ABI directly: no indirection on the request path.

use proxy_wasm::types::{MapType, MetricType};

#[cfg(target_arch = "wasm32")]
pub mod abi;
#[cfg(target_arch = "wasm32")]
pub use abi::*;

#[cfg(not(target_arch = "wasm32"))]
pub mod fake;

/// One HTTP request through the filter: Envoy's stream callbacks, on any host.
pub mod call;
#[cfg(test)]
mod call_tests;
#[cfg(test)]
mod call_tests_body;
#[cfg(test)]
mod call_tests_ticks;
/// The readiness gate on one worker (the host side of [`crate::gate`]).
pub mod gate;
/// The policy on one worker (the host side of [`crate::policy`]).
pub mod policy;
/// The plugin's root context: configuration, the tick, probe answers; makes the [`call::Call`]s.
pub mod root;
/// Start-up: the configuration, what the node metadata says about the pod, the VM's id.
pub mod startup;
/// The proxy-wasm entry: `proxy_wasm::main!` and the SDK's traits, forwarding to [`root`] and
/// [`call`].
#[cfg(target_arch = "wasm32")]
mod wasm_entry;

/// One of the filter's stats on the host, defined once per VM (the same name on every worker is
/// one stat) and moved through this handle only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stat(Option<u32>);

impl Stat {
    pub fn define<H: Host>(host: &H, kind: MetricType, name: &str) -> Stat {
        Stat(host.define_metric(kind, name).ok())
    }

    /// Moves a counter or a gauge by `by`: atomic in Envoy, so workers' updates commute (setting
    /// a gauge to a value read before another worker's write could leave it stale).
    #[inline]
    pub fn add<H: Host>(self, host: &H, by: i64) {
        if let (Some(id), true) = (self.0, by != 0) {
            let _ = host.increment_metric(id, by);
        }
    }

    /// Sets a gauge or records a histogram sample.
    pub fn record<H: Host>(self, host: &H, value: u64) {
        if let Some(id) = self.0 {
            let _ = host.record_metric(id, value);
        }
    }
}

/// Answers the effective request (`set_effective_context` first from a root callback) with one
/// of the filter's replies, carrying the call id and the internal marker.
pub fn send_reply<H: Host>(
    host: &H,
    reply: &crate::reply::LocalReply,
    function: &str,
    call_id_header: &str,
    call_id: &str,
) {
    let body = reply.body(function, call_id);
    let headers = reply.headers(call_id_header, call_id);
    if let Err(e) = host.send_local_response(reply.status, reply.details, &body, &headers) {
        log::warn!("call {call_id}: local reply failed ({e:?})");
    }
}

/// A non-OK status from the host (the raw ABI value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostError(pub u32);

/// What the adapters ask of the host. Every call returns a `Result`: nothing here panics.
pub trait Host {
    /// Nanoseconds since the Unix epoch, from the host's clock.
    fn now_nanos(&self) -> Result<u64, HostError>;
    /// Fills `buf` from the host's entropy source.
    fn random_bytes(&self, buf: &mut [u8]) -> Result<(), HostError>;
    /// A property as raw bytes (`None` when the host has none); path segments joined by NUL.
    fn property(&self, path: &[u8]) -> Result<Option<Vec<u8>>, HostError>;
    /// One header of a header map (`None` when absent).
    fn header(&self, map: MapType, name: &str) -> Result<Option<Vec<u8>>, HostError>;
    /// The plugin configuration as the host handed it over (`None`: empty).
    fn plugin_configuration(&self) -> Result<Option<Vec<u8>>, HostError>;
    /// A whole header map, serialized in the proxy-wasm pair format read by
    /// [`crate::header_map`].
    fn header_map(&self, map: MapType) -> Result<Vec<u8>, HostError>;
    /// Sets a header, replacing any value it had (added when absent).
    fn set_header(&self, map: MapType, name: &str, value: &[u8]) -> Result<(), HostError>;
    /// Appends a header without looking for an existing one (cheaper than a replace).
    fn add_header(&self, map: MapType, name: &str, value: &[u8]) -> Result<(), HostError>;
    /// Removes every value of a header.
    fn remove_header(&self, map: MapType, name: &str) -> Result<(), HostError>;
    /// A shared-data record (process-wide) and its compare-and-swap token.
    fn shared_data(&self, key: &str) -> Result<(Option<Vec<u8>>, u32), HostError>;
    /// Writes a record if nobody wrote it since `cas` was read (`cas` 0: always).
    /// `Ok(false)`: somebody did; read it again.
    fn set_shared_data(&self, key: &str, value: &[u8], cas: u32) -> Result<bool, HostError>;
    /// Defines (or finds: the same name on every worker is one stat) a metric.
    fn define_metric(&self, kind: MetricType, name: &str) -> Result<u32, HostError>;
    fn increment_metric(&self, id: u32, by: i64) -> Result<(), HostError>;
    /// Sets a gauge or records a histogram value.
    fn record_metric(&self, id: u32, value: u64) -> Result<(), HostError>;
    /// Calls the root context's `on_tick` every `period_ms` (0 stops it).
    fn set_tick_period_ms(&self, period_ms: u32) -> Result<(), HostError>;
    /// Makes a request's context the target of the following stream calls.
    fn set_effective_context(&self, context_id: u32) -> Result<(), HostError>;
    /// Continues a request paused in its headers (on the effective context).
    fn resume_request(&self) -> Result<(), HostError>;
    /// Answers the effective request from the filter; `headers` is a serialized header map.
    fn send_local_response(
        &self,
        status_code: u32,
        details: &str,
        body: &[u8],
        headers: &[u8],
    ) -> Result<(), HostError>;
    /// Sends `GET path` to an Envoy cluster; the answer arrives with the returned token.
    fn dispatch_get(
        &self,
        cluster: &str,
        authority: &str,
        path: &str,
        timeout_ms: u64,
    ) -> Result<u32, HostError>;

    /// Whether [`Host::header_pairs`] hands a header map over as pairs without serializing it
    /// (the native build). The adapters then read those pairs directly, and append a header they
    /// know is absent instead of replacing it (a replace looks the header up first). A constant,
    /// so a host without it (the wasm build) compiles to the same code as before it existed.
    const DIRECT_HEADERS: bool = false;

    /// A header map's (name, value) pairs, borrowed from the host until the next write to that
    /// map. Called only when [`Host::DIRECT_HEADERS`].
    fn header_pairs(&self, _map: MapType) -> Vec<(&[u8], &[u8])> {
        Vec::new()
    }

    /// Milliseconds since the Unix epoch (0 if the host has no clock): the one clock the adapters
    /// use.
    fn now_ms(&self) -> u64 {
        self.now_nanos().unwrap_or(0) / 1_000_000
    }

    /// Updates a shared-data record by compare-and-swap: `change` sees the current value and
    /// returns what to write (`None`: leave it) and what to report; on a conflicting write by
    /// another worker it runs again with the new value, up to `rounds` times. `None` when the host
    /// failed or the rounds ran out (nothing was written by this call then).
    fn update_shared_data<T>(
        &self,
        key: &str,
        rounds: usize,
        mut change: impl FnMut(Option<&[u8]>) -> (Option<Vec<u8>>, T),
    ) -> Option<T> {
        for _ in 0..rounds {
            let (value, cas) = self.shared_data(key).ok()?;
            let (next, outcome) = change(value.as_deref());
            let Some(next) = next else {
                return Some(outcome);
            };
            if self.set_shared_data(key, &next, cas).ok()? {
                return Some(outcome);
            }
        }
        None
    }

    /// Creates a shared-data record with `initial` unless it exists. Envoy has no atomic
    /// create-if-absent (a write with CAS 0 is unconditional, so two workers that both read
    /// "absent" would both write and one update could be lost): records are created at configure
    /// time, before any request counts in them, and every later write is a compare-and-swap.
    fn create_shared_data(&self, key: &str, initial: &[u8]) {
        if let Ok((None, _)) = self.shared_data(key) {
            let _ = self.set_shared_data(key, initial, 0);
        }
    }
}
