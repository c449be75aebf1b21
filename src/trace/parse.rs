//! The caller's trace headers read strictly: W3C `traceparent`, B3's multi-header form and the
//! single `b3` header. A value that does not parse is `None`, never partly used.

use super::hex::{decode_hex, is_lower_hex};
use super::TraceHeaders;

pub(super) struct Parent {
    pub(super) trace_id: [u8; 16],
    pub(super) span_id: [u8; 8],
    pub(super) sampled: bool,
}

/// W3C Trace Context level 1: `version-traceid-parentid-flags`, lowercase hex, ids not zero.
/// Versions above 00 are read by their first four fields, as the spec asks; `ff` is invalid.
pub(super) fn parse_traceparent(value: &[u8]) -> Option<Parent> {
    let head = value.get(..55)?;
    let rest = value.get(55..).unwrap_or_default();
    let version = head.get(0..2)?;
    if !is_lower_hex(version) || version == b"ff" {
        return None;
    }
    if version == b"00" && !rest.is_empty() {
        return None;
    }
    if version != b"00" && !rest.is_empty() && rest.first() != Some(&b'-') {
        return None;
    }
    if head.get(2) != Some(&b'-') || head.get(35) != Some(&b'-') || head.get(52) != Some(&b'-') {
        return None;
    }
    let trace_id: [u8; 16] = decode_hex(head.get(3..35)?)?;
    let span_id: [u8; 8] = decode_hex(head.get(36..52)?)?;
    let flags: [u8; 1] = decode_hex(head.get(53..55)?)?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(Parent {
        trace_id,
        span_id,
        sampled: flags.first().is_some_and(|f| f & 1 == 1),
    })
}

pub(super) struct B3 {
    pub(super) trace_id: [u8; 16],
    pub(super) short: bool,
    pub(super) span_id: [u8; 8],
    pub(super) sampled: Option<bool>,
    pub(super) debug: bool,
}

/// What a B3 header (multi or single form) carries.
pub(super) enum B3Header {
    Context(B3),
    /// Only a sampling decision (`x-b3-sampled`, `b3: 0`): for a trace that starts here.
    DecisionOnly {
        sampled: Option<bool>,
        debug: bool,
    },
}

/// A B3 trace id: 16 or 32 lowercase hex digits, not zero.
fn parse_b3_trace_id(value: &[u8]) -> Option<([u8; 16], bool)> {
    let (id, short) = match value.len() {
        16 => {
            // Padded with zeros on the left to 128 bits (no slice copy: it carries a panic site).
            let [a, b, c, d, e, f, g, h] = decode_hex(value)?;
            ([0, 0, 0, 0, 0, 0, 0, 0, a, b, c, d, e, f, g, h], true)
        }
        32 => (decode_hex(value)?, false),
        _ => return None,
    };
    (id != [0; 16]).then_some((id, short))
}

fn parse_span_id(value: &[u8]) -> Option<[u8; 8]> {
    let id: [u8; 8] = decode_hex(value)?;
    (id != [0; 8]).then_some(id)
}

/// `x-b3-sampled`: `1`/`0` (and the legacy `true`/`false`).
fn parse_sampled(value: &[u8]) -> Option<bool> {
    match value {
        b"1" | b"true" => Some(true),
        b"0" | b"false" => Some(false),
        _ => None,
    }
}

pub(super) fn parse_b3_multi(incoming: &TraceHeaders) -> Option<B3Header> {
    let debug = incoming.b3_flags == Some(b"1");
    let sampled = match incoming.b3_sampled {
        None => None,
        Some(v) => Some(parse_sampled(v)?),
    };
    if let Some(flags) = incoming.b3_flags {
        if flags != b"1" && flags != b"0" {
            return None;
        }
    }
    match (incoming.b3_trace_id, incoming.b3_span_id) {
        (Some(trace), Some(span)) => {
            let (trace_id, short) = parse_b3_trace_id(trace)?;
            let span_id = parse_span_id(span)?;
            if let Some(parent) = incoming.b3_parent_span_id {
                parse_span_id(parent)?;
            }
            Some(B3Header::Context(B3 {
                trace_id,
                short,
                span_id,
                sampled,
                debug,
            }))
        }
        (None, None) if incoming.b3_parent_span_id.is_none() => {
            (sampled.is_some() || debug).then_some(B3Header::DecisionOnly { sampled, debug })
        }
        _ => None,
    }
}

/// `b3: {TraceId}-{SpanId}[-{SamplingState}[-{ParentSpanId}]]`, or only `{SamplingState}`.
pub(super) fn parse_b3_single(value: &[u8]) -> Option<B3Header> {
    let decision = |s: &[u8]| match s {
        b"1" => Some((Some(true), false)),
        b"0" => Some((Some(false), false)),
        b"d" => Some((None, true)),
        _ => None,
    };
    let mut parts = value.split(|b| *b == b'-');
    let first = parts.next()?;
    let Some(second) = parts.next() else {
        let (sampled, debug) = decision(first)?;
        return Some(B3Header::DecisionOnly { sampled, debug });
    };
    let (trace_id, short) = parse_b3_trace_id(first)?;
    let span_id = parse_span_id(second)?;
    let (sampled, debug) = match parts.next() {
        None => (None, false),
        Some(s) => decision(s)?,
    };
    if let Some(parent) = parts.next() {
        parse_span_id(parent)?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(B3Header::Context(B3 {
        trace_id,
        short,
        span_id,
        sampled,
        debug,
    }))
}
