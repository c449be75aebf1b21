//! Any request path: the rewrite never panics, and what it forwards is always `/` followed by
//! bytes the caller sent (never invented, never decoded).
#![no_main]
use faas_mesh_filter::rewrite::OtherFunction;
use faas_mesh_filter::rewrite::{Rewriter, Route};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (mode, path) = match data.split_first() {
        Some((m, rest)) => (
            if m & 1 == 0 {
                OtherFunction::Reject
            } else {
                OtherFunction::Pass
            },
            rest,
        ),
        None => (OtherFunction::Reject, data),
    };
    for local in [Some("env"), None] {
        let rewriter = Rewriter::new("/function/", local, Some("openfaas-fn"), mode);
        match rewriter.route(path) {
            Route::Unprefixed => assert!(!path.starts_with(b"/function/")),
            Route::Rewrite(out) => {
                assert!(path.starts_with(b"/function/"));
                assert_eq!(out.first(), Some(&b'/'));
                assert!(out.len() <= path.len());
                let tail = &out[1..];
                assert!(
                    path.ends_with(tail),
                    "forwarded bytes the caller did not send"
                );
            }
            Route::NotFound(_) | Route::DotSegment => assert!(path.starts_with(b"/function/")),
        }
    }
});
