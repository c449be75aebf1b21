//! Envoy replaces a filter configuration at every listener or ECDS update (in Istio, at every
//! push that touches the sidecar), and a sidecar lives for weeks: whatever the module keeps per
//! configuration must go when Envoy destroys it. This drives the module's real exported hooks
//! on the fuzz targets' fake Envoy (fuzz/fake_envoy.rs), through many configuration lifetimes,
//! and counts the bytes the process holds with a counting global allocator.
//!
//! A cycle: a configuration is built, serves one request on this thread (which builds the
//! thread's root for it, and drops the previous configuration's root), and is destroyed. After
//! a warm-up, the bytes held may not grow with the number of cycles.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "../../fuzz/fake_envoy.rs"]
mod fake_envoy;

use fake_envoy as envoy;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

/// The bytes the process holds from the heap (allocated minus freed), on every thread.
static HELD: AtomicIsize = AtomicIsize::new(0);

struct Counting;

// SAFETY: every call is System's; only the counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            HELD.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as above.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            HELD.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) };
        HELD.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as above.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            HELD.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// A configuration and the path of the request it serves.
type Case = (&'static str, &'static str);

/// Configurations whose streams never carry the worker's tick, so the module's ticker thread
/// never runs: what a sidecar sees once its function is ready and no limit holds a slot. The
/// gate off, policy with every check but concurrency, the filter's own tracing in audit mode,
/// and a request for another function (a local 404).
const QUIET: [Case; 4] = [
    (r#"{"readiness":{"enabled":false}}"#, "/function/env/a?b=c"),
    (
        r#"{"readiness":{"enabled":false},"policy":{"default":{"mode":"enforce",
        "methods":["GET","POST"],"principals":["spiffe://cluster.local/ns/openfaas/sa/*"],
        "max_body_bytes":1000,"rate_limit":{"requests_per_second":1000,"burst":50}}}}"#,
        "/function/env/",
    ),
    (
        r#"{"readiness":{"enabled":false},"tracing":{"owner":"filter"},
        "headers":{"trust_incoming_call_id":false},
        "policy":{"default":{"mode":"audit","methods":["POST"]}}}"#,
        "/function/env/a",
    ),
    (r#"{"readiness":{"enabled":false}}"#, "/function/other/a"),
];

/// Configurations whose streams carry ticks (the ticker thread runs): the defaults, whose gate
/// holds the first request and probes (the stream ends with the probe in flight), and a
/// concurrency limit (the stream holds an in-flight slot).
const CARRYING: [Case; 2] = [
    ("{}", "/function/env/a"),
    (
        r#"{"readiness":{"enabled":false},"policy":{"default":{"max_inflight":1}}}"#,
        "/function/env/a",
    ),
];

/// One configuration's life: built, one request and its response (or the module's reply), the
/// stream ended, the configuration destroyed.
fn cycle((config, path): Case) {
    let (index, module) = envoy::config_new(b"faas-mesh-filter", config.as_bytes())
        .unwrap_or_else(|| panic!("refused {config}: {:?}", envoy::take_logs()));
    assert!(
        envoy::one_get(module, path.as_bytes()),
        "the module refused a stream"
    );
    envoy::config_destroy(index, module);
    envoy::forget_dead();
    envoy::take_logs();
}

/// Cycles before measuring: every lazily built table has its size by then.
const WARM_UP: usize = 200;
/// Cycles measured.
const CYCLES: usize = 1_800;
/// What the process may gain over the measured cycles: 4 bytes per cycle, far below one
/// configuration's smallest leftover (a root's tick registration, about 80 bytes) and above
/// what a table's growth step or the ticker thread's transient list can add.
const MAX_GROWTH: isize = 4 * CYCLES as isize;

/// The bytes the process gained over [`CYCLES`] cycles of `cases`, after a warm-up.
fn growth(cases: &[Case]) -> isize {
    for i in 0..WARM_UP {
        cycle(cases[i % cases.len()]);
    }
    let before = HELD.load(Ordering::SeqCst);
    for i in 0..CYCLES {
        cycle(cases[i % cases.len()]);
    }
    HELD.load(Ordering::SeqCst) - before
}

#[test]
fn destroyed_configurations_leave_nothing_behind() {
    let dir = envoy::pod_dir();
    std::fs::write(dir.join("labels"), "faas_function=\"env\"\n").expect("labels");
    std::fs::write(dir.join("namespace"), "openfaas-fn\n").expect("namespace");
    envoy::set_strict(true);

    // One test, in this order: the counter is the whole process's, and the quiet phase must
    // run before anything starts the ticker thread (which also prunes, but only while it runs).
    let quiet = growth(&QUIET);
    let schedulers = || envoy::global().next_scheduler;
    assert_eq!(
        schedulers(),
        0,
        "a quiet configuration's stream carried ticks"
    );
    let carrying = growth(&CARRYING);
    assert!(
        schedulers() > 0,
        "no carrying configuration's stream carried ticks"
    );
    let _ = std::fs::remove_dir_all(&dir);
    for (what, growth) in [("quiet", quiet), ("carrying", carrying)] {
        assert!(
            growth <= MAX_GROWTH,
            "{what}: {growth} bytes more held after {CYCLES} configurations came and went \
             ({:.1} per configuration; at most {MAX_GROWTH} in all)",
            growth as f64 / CYCLES as f64
        );
    }
}
