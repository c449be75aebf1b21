//! Trace context: read what the caller sent (W3C `traceparent`, B3 multi-header `x-b3-*`, or
//! the single `b3` header), make this hop a child span, and write both formats consistently.
//! Nothing here calls the host.
//!
//! Precedence: a valid `traceparent`, else valid `x-b3-*` headers, else a valid `b3` header. A
//! malformed value is never forwarded: the format it was in is rewritten from the context the
//! filter settled on (a new trace if nothing valid arrived). `tracestate` is never touched.
//!
//! The files, by subject ([`TraceOwner`], here, picks `context.rs` or `bridge.rs`):
//! - `headers.rs`: what the request carried ([`TraceHeaders`]); `names.rs`: the headers' names;
//! - `parse.rs`: W3C `traceparent` and B3 (multi-header and single) read strictly;
//! - `context.rs`: the filter owns the trace: [`child()`] settles the [`Context`] and writes it;
//! - `bridge.rs`: Envoy's tracer owns it: [`bridge()`] names Envoy's trace in the other formats;
//! - `hex.rs`: lowercase hex, read and written.

mod bridge;
mod context;
mod headers;
mod hex;
pub mod names;
mod parse;

pub use bridge::bridge;
pub use context::{child, Context, Source};
pub use headers::TraceHeaders;
pub use hex::hex;

/// `tracing.owner`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceOwner {
    /// Envoy's tracer owns the trace: it reads the caller's context before any HTTP filter runs
    /// and writes its own span into the request at the router, after them. The filter creates
    /// no ids; it only makes the formats Envoy does not write name Envoy's trace (or removes
    /// them).
    Envoy,
    /// No tracer in the sidecar: the filter continues the caller's trace with a span of its own,
    /// or starts one.
    Filter,
}
