//! The filter owns the trace (`tracing.owner: "filter"`): the context this hop forwards, a child
//! span of the caller's or a new trace, and how it is written in each format.

use super::hex::{hex, push_hex};
use super::names;
use super::parse::{parse_b3_multi, parse_b3_single, parse_traceparent, B3Header, B3};
use super::TraceHeaders;

/// The context this hop forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    pub trace_id: [u8; 16],
    /// The trace id arrived as a 64-bit B3 id: B3 keeps writing it with 16 hex digits; W3C pads
    /// it with zeros on the left to 128 bits.
    pub short_trace_id: bool,
    /// This hop's span (new).
    pub span_id: [u8; 8],
    /// The caller's span, if the trace came from the caller.
    pub parent_span_id: Option<[u8; 8]>,
    /// The caller's sampling decision, if it made one.
    pub sampled: Option<bool>,
    /// B3 debug (`x-b3-flags: 1`, `b3: d`): sampled, and said so loudly.
    pub debug: bool,
}

/// Where the context came from (for logs and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    W3c,
    B3Multi,
    B3Single,
    New,
}

/// Settles the context: the caller's (child span `fresh_span`) or a new trace (`fresh_trace`).
/// `fresh_trace` and `fresh_span` are random bytes from the host; zero ids are made non-zero.
pub fn child(
    incoming: &TraceHeaders,
    fresh_trace: [u8; 16],
    fresh_span: [u8; 8],
) -> (Context, Source) {
    let span_id = non_zero_span(fresh_span);
    let context = |trace_id, short, parent, sampled, debug| Context {
        trace_id,
        short_trace_id: short,
        span_id,
        parent_span_id: parent,
        sampled,
        debug,
    };
    if let Some(parent) = incoming.traceparent.and_then(parse_traceparent) {
        return (
            context(
                parent.trace_id,
                false,
                Some(parent.span_id),
                Some(parent.sampled),
                false,
            ),
            Source::W3c,
        );
    }
    let from_b3 = |b3: &B3| {
        context(
            b3.trace_id,
            b3.short,
            Some(b3.span_id),
            b3.sampled,
            b3.debug,
        )
    };
    let multi = parse_b3_multi(incoming);
    if let Some(B3Header::Context(b3)) = &multi {
        return (from_b3(b3), Source::B3Multi);
    }
    let single = incoming.b3_single.and_then(parse_b3_single);
    if let Some(B3Header::Context(b3)) = &single {
        return (from_b3(b3), Source::B3Single);
    }
    // No usable context: a new trace, keeping a bare sampling decision if the caller sent one.
    let (sampled, debug) = match (multi, single) {
        (Some(B3Header::DecisionOnly { sampled, debug }), _)
        | (_, Some(B3Header::DecisionOnly { sampled, debug })) => (sampled, debug),
        _ => (None, false),
    };
    (
        context(non_zero_trace(fresh_trace), false, None, sampled, debug),
        Source::New,
    )
}

impl Context {
    fn sampled_now(&self) -> bool {
        self.debug || self.sampled == Some(true)
    }

    /// `00-<trace>-<span>-<flags>`. Built by hand: `format!` costs more than the header write.
    pub fn traceparent(&self) -> String {
        let mut out = String::with_capacity(55);
        out.push_str("00-");
        push_hex(&mut out, &self.trace_id);
        out.push('-');
        push_hex(&mut out, &self.span_id);
        out.push_str(if self.sampled_now() { "-01" } else { "-00" });
        out
    }

    fn b3_trace_id(&self) -> String {
        hex(self.b3_trace_id_bytes())
    }

    /// The trace id as B3 carries it: 64 bits when the caller sent 64, else 128.
    fn b3_trace_id_bytes(&self) -> &[u8] {
        if self.short_trace_id {
            self.trace_id.get(8..).unwrap_or_default()
        } else {
            &self.trace_id
        }
    }

    /// `<trace>-<span>[-<sampling>[-<parent>]]` (the parent needs a sampling field before it).
    pub fn b3_single(&self) -> String {
        let mut out = String::with_capacity(68);
        push_hex(&mut out, self.b3_trace_id_bytes());
        out.push('-');
        push_hex(&mut out, &self.span_id);
        let sampling = if self.debug {
            Some("d")
        } else {
            self.sampled.map(|s| if s { "1" } else { "0" })
        };
        if let Some(sampling) = sampling {
            out.push('-');
            out.push_str(sampling);
            if let Some(parent) = &self.parent_span_id {
                out.push('-');
                push_hex(&mut out, parent);
            }
        }
        out
    }

    /// The headers to write: `(name, Some(value))` sets, `(name, None)` removes. W3C and the
    /// single `b3` header always (when their format is on); B3's multi-header form only when the
    /// caller used it, so it is never left stale.
    pub fn headers(
        &self,
        w3c: bool,
        b3: bool,
        caller_used_b3_multi: bool,
    ) -> Vec<(&'static str, Option<String>)> {
        let mut out = Vec::new();
        if w3c {
            out.push((names::TRACEPARENT, Some(self.traceparent())));
        }
        if b3 {
            out.push((names::B3, Some(self.b3_single())));
            if caller_used_b3_multi {
                out.push((names::B3_TRACE_ID, Some(self.b3_trace_id())));
                out.push((names::B3_SPAN_ID, Some(hex(&self.span_id))));
                out.push((
                    names::B3_PARENT_SPAN_ID,
                    self.parent_span_id.map(|p| hex(&p)),
                ));
                if self.debug {
                    out.push((names::B3_FLAGS, Some("1".to_string())));
                    out.push((names::B3_SAMPLED, None));
                } else {
                    out.push((names::B3_FLAGS, None));
                    out.push((
                        names::B3_SAMPLED,
                        self.sampled.map(|s| if s { "1" } else { "0" }.to_string()),
                    ));
                }
            }
        }
        out
    }
}

fn non_zero_trace(mut id: [u8; 16]) -> [u8; 16] {
    if id == [0; 16] {
        if let Some(last) = id.last_mut() {
            *last = 1;
        }
    }
    id
}

fn non_zero_span(mut id: [u8; 8]) -> [u8; 8] {
    if id == [0; 8] {
        if let Some(last) = id.last_mut() {
            *last = 1;
        }
    }
    id
}
