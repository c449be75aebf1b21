//! Envoy's tracer owns the trace (`tracing.owner: "envoy"`): the filter creates no ids, it only
//! makes the formats Envoy does not write name Envoy's trace, or removes them.

use super::names;
use super::parse::{parse_b3_multi, parse_b3_single, B3Header, B3};
use super::{Context, TraceHeaders};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::{child, Source};

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
