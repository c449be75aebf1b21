//! Any trace headers: never a panic; what the filter writes is well-formed, and reading it back
//! gives the same trace, the same sampling decision and this hop's span as the parent. With
//! Envoy's tracer in charge (`bridge`), what the filter writes reads back as one trace.
#![no_main]
use faas_mesh_filter::trace::{bridge, child, TraceHeaders, Source};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Seven header values separated by 0xff (absent when empty).
    let mut parts = data.split(|b| *b == 0xff);
    let mut next = || parts.next().filter(|p| !p.is_empty());
    let incoming = TraceHeaders {
        traceparent: next(),
        b3_trace_id: next(),
        b3_span_id: next(),
        b3_parent_span_id: next(),
        b3_sampled: next(),
        b3_flags: next(),
        b3_single: next(),
    };
    let (context, _) = child(&incoming, [0xaa; 16], [0xbb; 8]);
    let written = context.headers(true, true, incoming.has_b3_multi());
    let get = |name: &str| {
        written
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| v.as_deref())
            .map(str::as_bytes)
    };
    let traceparent = get("traceparent").expect("traceparent written");
    assert_eq!(traceparent.len(), 55);
    // Read back: a child of what we wrote carries the same trace and sampling, parent = our span.
    for reread in [
        TraceHeaders {
            traceparent: Some(traceparent),
            ..Default::default()
        },
        TraceHeaders {
            b3_single: get("b3"),
            ..Default::default()
        },
    ] {
        let (again, _) = child(&reread, [0xcc; 16], [0xdd; 8]);
        assert_eq!(again.trace_id, context.trace_id);
        assert_eq!(again.parent_span_id, Some(context.span_id));
    }

    // Envoy's tracer owns the trace: only W3C and b3 are written, each well-formed, one trace.
    let mut traces = Vec::new();
    for (name, value) in bridge(&incoming, true, true) {
        let Some(value) = value else { continue };
        let reread = match name {
            "traceparent" => TraceHeaders {
                traceparent: Some(value.as_bytes()),
                ..Default::default()
            },
            "b3" => TraceHeaders {
                b3_single: Some(value.as_bytes()),
                ..Default::default()
            },
            other => panic!("the bridge wrote {other}"),
        };
        let (again, source) = child(&reread, [0xcc; 16], [0xdd; 8]);
        assert_ne!(source, Source::New, "{name}: {value}");
        traces.push(again.trace_id);
    }
    traces.dedup();
    assert!(traces.len() <= 1, "two traces: {traces:?}");
});
