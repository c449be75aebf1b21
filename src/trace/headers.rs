//! The request headers tracing reads, as they arrived (one pass over the header map fills them).

use super::names;

/// The request headers tracing reads, as they arrived. `Some(b"")` stands for "present but
/// unusable" (for example sent twice).
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceHeaders<'a> {
    pub traceparent: Option<&'a [u8]>,
    pub b3_trace_id: Option<&'a [u8]>,
    pub b3_span_id: Option<&'a [u8]>,
    pub b3_parent_span_id: Option<&'a [u8]>,
    pub b3_sampled: Option<&'a [u8]>,
    pub b3_flags: Option<&'a [u8]>,
    pub b3_single: Option<&'a [u8]>,
}

impl TraceHeaders<'_> {
    /// Whether the request carried the header `name` (one of [`names`]).
    pub fn has(&self, name: &str) -> bool {
        match name {
            names::TRACEPARENT => self.traceparent.is_some(),
            names::B3 => self.b3_single.is_some(),
            names::B3_TRACE_ID => self.b3_trace_id.is_some(),
            names::B3_SPAN_ID => self.b3_span_id.is_some(),
            names::B3_PARENT_SPAN_ID => self.b3_parent_span_id.is_some(),
            names::B3_SAMPLED => self.b3_sampled.is_some(),
            names::B3_FLAGS => self.b3_flags.is_some(),
            _ => false,
        }
    }

    /// Whether the caller used B3's multi-header form (then the filter rewrites it too).
    pub fn has_b3_multi(&self) -> bool {
        self.b3_trace_id.is_some()
            || self.b3_span_id.is_some()
            || self.b3_parent_span_id.is_some()
            || self.b3_sampled.is_some()
            || self.b3_flags.is_some()
    }
}
