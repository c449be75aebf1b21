//! The names of the headers this module reads and writes.

pub const TRACEPARENT: &str = "traceparent";
pub const B3: &str = "b3";
pub const B3_TRACE_ID: &str = "x-b3-traceid";
pub const B3_SPAN_ID: &str = "x-b3-spanid";
pub const B3_PARENT_SPAN_ID: &str = "x-b3-parentspanid";
pub const B3_SAMPLED: &str = "x-b3-sampled";
pub const B3_FLAGS: &str = "x-b3-flags";
