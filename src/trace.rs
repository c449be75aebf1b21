//! Trace context: read what the caller sent (W3C `traceparent`, B3 multi-header `x-b3-*`, or
//! the single `b3` header), make this hop a child span, and write both formats consistently.
//! Nothing here calls the host.
//!
//! Precedence: a valid `traceparent`, else valid `x-b3-*` headers, else a valid `b3` header. A
//! malformed value is never forwarded: the format it was in is rewritten from the context the
//! filter settled on (a new trace if nothing valid arrived). `tracestate` is never touched.

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

/// The names of the headers this module reads and writes.
pub mod names {
    pub const TRACEPARENT: &str = "traceparent";
    pub const B3: &str = "b3";
    pub const B3_TRACE_ID: &str = "x-b3-traceid";
    pub const B3_SPAN_ID: &str = "x-b3-spanid";
    pub const B3_PARENT_SPAN_ID: &str = "x-b3-parentspanid";
    pub const B3_SAMPLED: &str = "x-b3-sampled";
    pub const B3_FLAGS: &str = "x-b3-flags";
}

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

/// The headers to write when Envoy's tracer owns the trace (`tracing.owner: "envoy"`), in the
/// form of [`Context::headers`]: `Some` sets, `None` removes (the adapter skips removing what
/// did not arrive). `w3c` and `b3` say which formats the filter may touch.
///
/// Envoy's Zipkin tracer reads the caller's context in the connection manager, before any HTTP
/// filter runs: `b3` if present, else `x-b3-traceid` with `x-b3-spanid` (their sampling from
/// `x-b3-sampled` alone), else nothing (or `traceparent`, with Zipkin's W3C option); a context
/// it cannot parse gives it no span at all. At the router, after the filters, it writes its own
/// span over `x-b3-*` (Envoy 1.40 over `b3` instead when the caller sent `b3`), and over
/// `traceparent` with the W3C option. The filter never sees that span, so it creates no ids.
/// It writes the caller's context, the parent of Envoy's span, into the formats Envoy may leave
/// alone, and removes whatever could name another trace or another sampling decision:
/// `traceparent` when Envoy's trace is not the caller's B3 one or its sampling is unknown here,
/// `x-b3-flags` (Envoy ignores it), stale `x-b3-*` beside a `b3`, and every trace header of a
/// context that does not parse.
pub fn bridge(incoming: &TraceHeaders, w3c: bool, b3: bool) -> Vec<(&'static str, Option<String>)> {
    let mut out = Vec::new();
    let mut set = |on: bool, name: &'static str, value: Option<String>| {
        if on {
            out.push((name, value));
        }
    };
    match envoy_context(incoming) {
        Some(Some((caller, from_single))) => {
            let known = caller.sampled.is_some() || caller.debug;
            set(w3c, names::TRACEPARENT, known.then(|| caller.traceparent()));
            if !from_single {
                set(b3, names::B3, Some(caller.b3_single()));
                set(b3, names::B3_FLAGS, None);
                return out;
            }
        }
        Some(None) => set(w3c, names::TRACEPARENT, None),
        None => {
            set(w3c, names::TRACEPARENT, None);
            set(b3, names::B3, None);
        }
    }
    for name in MULTI {
        set(b3, name, None);
    }
    out
}

/// B3's multi-header names.
const MULTI: [&str; 5] = [
    names::B3_TRACE_ID,
    names::B3_SPAN_ID,
    names::B3_PARENT_SPAN_ID,
    names::B3_SAMPLED,
    names::B3_FLAGS,
];

/// The caller's context as Envoy's Zipkin tracer reads it: `Some(Some((context, from b3)))`
/// when it continues the caller's B3 trace (the context's span is the caller's), `Some(None)`
/// when it starts its own (nothing, a bare sampling decision, or only W3C arrived), `None` when
/// a B3 context arrived malformed (Envoy then has no span, or read it more leniently).
fn envoy_context(incoming: &TraceHeaders) -> Option<Option<(Context, bool)>> {
    let caller = |b3: B3| Context {
        trace_id: b3.trace_id,
        short_trace_id: b3.short,
        span_id: b3.span_id,
        parent_span_id: None,
        sampled: b3.sampled,
        debug: b3.debug,
    };
    if let Some(value) = incoming.b3_single {
        return match parse_b3_single(value)? {
            B3Header::Context(b3) => Some(Some((caller(b3), true))),
            B3Header::DecisionOnly { .. } => Some(None),
        };
    }
    if incoming.b3_trace_id.is_none() || incoming.b3_span_id.is_none() {
        return Some(None);
    }
    match parse_b3_multi(incoming)? {
        // Envoy takes the sampling from `x-b3-sampled` alone, never from `x-b3-flags`.
        B3Header::Context(b3) => Some(Some((
            Context {
                debug: false,
                ..caller(b3)
            },
            false,
        ))),
        B3Header::DecisionOnly { .. } => None,
    }
}

struct Parent {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    sampled: bool,
}

/// W3C Trace Context level 1: `version-traceid-parentid-flags`, lowercase hex, ids not zero.
/// Versions above 00 are read by their first four fields, as the spec asks; `ff` is invalid.
fn parse_traceparent(value: &[u8]) -> Option<Parent> {
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

struct B3 {
    trace_id: [u8; 16],
    short: bool,
    span_id: [u8; 8],
    sampled: Option<bool>,
    debug: bool,
}

/// What a B3 header (multi or single form) carries.
enum B3Header {
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
            let low: [u8; 8] = decode_hex(value)?;
            let mut id = [0u8; 16];
            id.get_mut(8..)?.copy_from_slice(&low);
            (id, true)
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

fn parse_b3_multi(incoming: &TraceHeaders) -> Option<B3Header> {
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
fn parse_b3_single(value: &[u8]) -> Option<B3Header> {
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

fn is_lower_hex(s: &[u8]) -> bool {
    s.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn decode_hex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != N * 2 || !is_lower_hex(s) {
        return None;
    }
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        let text = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    push_hex(&mut out, bytes);
    out
}

/// Appends `bytes` as lowercase hex.
#[inline]
fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let digit = |n: u8| char::from(DIGITS.get(usize::from(n & 0x0f)).copied().unwrap_or(b'0'));
    for b in bytes {
        out.push(digit(b >> 4));
        out.push(digit(*b));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every mix of the contexts a caller can send, valid or not: what the bridge writes names
    /// the trace Envoy's Zipkin tracer continues (b3 first, then x-b3-*), with the decision it
    /// uses, and nothing at all when Envoy starts a trace of its own or has none.
    #[test]
    fn the_bridge_only_ever_names_envoys_trace() {
        const T: &str = "80f198ee56343ba864fe8b2a57d3eff7";
        let traceparents = [
            None,
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ];
        let singles = [
            None,
            Some("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
            Some("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1"),
            Some("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-d-05e3ac9a4f6e3b90"),
            Some("0"),
            Some("80F198EE56343BA864FE8B2A57D3EFF7-e457b5a2e4d86bd1-1"),
            Some(""),
        ];
        type Multi = [Option<&'static str>; 5];
        let multis: [Multi; 7] = [
            [None; 5],
            [Some(T), Some("e457b5a2e4d86bd1"), None, Some("1"), None],
            [
                Some(T),
                Some("e457b5a2e4d86bd1"),
                Some("05e3ac9a4f6e3b90"),
                None,
                None,
            ],
            [
                Some("a3ce929d0e0e4736"),
                Some("e457b5a2e4d86bd1"),
                None,
                Some("0"),
                None,
            ],
            [Some(T), Some("e457b5a2e4d86bd1"), None, None, Some("1")],
            [
                None,
                Some("e457b5a2e4d86bd1"),
                Some("05e3ac9a4f6e3b90"),
                Some("1"),
                None,
            ],
            [
                Some("zz"),
                Some("e457b5a2e4d86bd1"),
                None,
                Some("yes"),
                None,
            ],
        ];
        for tp in traceparents {
            for single in singles {
                for m in multis {
                    let b = |v: Option<&'static str>| v.map(str::as_bytes);
                    let incoming = TraceHeaders {
                        traceparent: b(tp),
                        b3_single: b(single),
                        b3_trace_id: b(m[0]),
                        b3_span_id: b(m[1]),
                        b3_parent_span_id: b(m[2]),
                        b3_sampled: b(m[3]),
                        b3_flags: b(m[4]),
                    };
                    let what = format!("{incoming:?}");
                    let envoy = envoy_context(&incoming);
                    for (name, value) in bridge(&incoming, true, true) {
                        let Some(value) = value else { continue };
                        let Some(Some((caller, _))) = envoy else {
                            panic!("{name} written although Envoy does not continue: {what}");
                        };
                        let reread = TraceHeaders {
                            traceparent: (name == names::TRACEPARENT).then_some(value.as_bytes()),
                            b3_single: (name == names::B3).then_some(value.as_bytes()),
                            ..TraceHeaders::default()
                        };
                        let (again, source) = child(&reread, [1; 16], [1; 8]);
                        assert_ne!(source, Source::New, "{name} {value}: {what}");
                        assert_eq!(again.trace_id, caller.trace_id, "{name}: {what}");
                        let decided = caller.sampled.or(caller.debug.then_some(true));
                        assert_eq!(
                            again.sampled.or(again.debug.then_some(true)),
                            decided,
                            "{name} {value}: {what}"
                        );
                    }
                }
            }
        }
    }
}
