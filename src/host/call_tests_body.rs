//! Envoy's callbacks on the fake host, continued: bodies held by the gate and the policy, the
//! gate's verdict on a 5xx, and what a request gives back when it ends.

use super::call_tests::{arrive, header, pod, probe, stat, worker, NO_GATE};
use crate::host::fake::{Fake, Pod};
use crate::host::root::Root;
use proxy_wasm::types::{Action, MapType};

const BODY_LIMIT: &str = r#""function":{"name":"env"},"policy":{"default":{"max_body_bytes":10}}"#;
const POST: [(&str, &str); 2] = [(":path", "/function/env/x"), (":method", "POST")];

#[test]
fn a_held_body_of_unknown_length_keeps_the_headers_until_it_is_complete() {
    // The body completes (at its end of stream, or with trailers) while the gate is still
    // closed: released with the gate, as any other.
    for trailers in [false, true] {
        let pod = pod();
        let (vm, mut root) = worker(&pod, &format!("{{{BODY_LIMIT}}}"));
        let (mut call, action) = arrive(&vm, &root, 7, &POST);
        assert_eq!(action, Action::Pause);
        assert_eq!(call.on_request_body(4, false), Action::Pause);
        let last = match trailers {
            false => call.on_request_body(9, true),
            true => call.on_request_trailers(),
        };
        assert_eq!(last, Action::Pause, "complete; the gate still holds it");
        probe(&vm, &mut root, "200");
        assert_eq!(vm.resumed(), [7], "trailers: {trailers}");
    }

    // The gate opens first: the release must not let the headers go before the body is whole.
    let pod = self::pod();
    let (vm, mut root) = worker(&pod, &format!("{{{BODY_LIMIT}}}"));
    let (mut call, _) = arrive(&vm, &root, 8, &POST);
    assert_eq!(call.on_request_body(4, false), Action::Pause);
    probe(&vm, &mut root, "200");
    assert!(
        vm.resumed().is_empty(),
        "released, but still reading its body"
    );
    assert_eq!(call.on_request_body(6, false), Action::Pause);
    let whole = call.on_request_body(10, true);
    assert_eq!(whole, Action::Continue, "whole, within the limit");
    assert!(vm.sent().is_empty());
    assert_eq!(stat(&pod, "readiness.released"), 1);
}

#[test]
fn a_held_body_over_max_body_bytes_is_answered_413_and_gives_its_place_back() {
    let pod = pod();
    let (vm, root) = worker(&pod, &format!("{{{BODY_LIMIT}}}"));
    let (mut call, action) = arrive(&vm, &root, 3, &[POST[0], POST[1], ("x-call-id", "big-1")]);
    assert_eq!(action, Action::Pause);
    assert_eq!(stat(&pod, "readiness.pending"), 1);
    assert_eq!(call.on_request_body(11, false), Action::Pause);
    let sent = vm.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].status, 413);
    assert!(sent[0]
        .headers
        .contains(&("x-call-id".into(), "big-1".into())));
    assert_eq!(stat(&pod, "readiness.pending"), 0, "no longer held");
    assert_eq!(stat(&pod, "policy.reason.body_size.denied"), 1);
    // The rest of the body changes nothing; nor does the response Envoy sends for the reply.
    assert_eq!(call.on_request_body(20, true), Action::Pause);
    vm.set_map(MapType::HttpResponseHeaders, &[(":status", "413")]);
    call.on_response_headers(false);
    assert!(header(&vm.map(MapType::HttpResponseHeaders), "x-call-id").is_empty());
    assert_eq!(vm.sent().len(), 1);
}

#[test]
fn a_declared_length_over_the_pods_budget_is_answered_before_it_is_held() {
    let pod = pod();
    let json = r#"{"function":{"name":"env"},"readiness":{"max_pending_bytes":1000}}"#;
    let (vm, root) = worker(&pod, json);
    let (_, action) = arrive(
        &vm,
        &root,
        1,
        &[POST[0], POST[1], ("content-length", "1001")],
    );
    assert_eq!(action, Action::Pause);
    assert_eq!(vm.sent()[0].status, 413);
    assert_eq!(stat(&pod, "readiness.held"), 0);
}

/// A ready gate, then a response with `status` and Envoy's response flags `flags`.
fn respond(status: &str, flags: u64) -> (Pod, Fake, Root<Fake>) {
    let pod = pod();
    let (vm, mut root) = worker(&pod, r#"{"function":{"name":"env"}}"#);
    probe(&vm, &mut root, "200");
    assert_eq!(stat(&pod, "readiness.ready"), 1);
    let (mut call, action) = arrive(&vm, &root, 1, &POST);
    assert_eq!(action, Action::Continue);
    vm.set_property(b"response\0flags", &flags.to_le_bytes());
    vm.set_map(MapType::HttpResponseHeaders, &[(":status", status)]);
    vm.clear_calls();
    call.on_response_headers(false);
    (pod, vm, root)
}

#[test]
fn a_503_for_a_lost_connection_rearms_the_gate_and_another_5xx_sends_a_probe() {
    for flags in [0x20, 0x40] {
        // Envoy's 503 with UF or UC: the function's process is gone; the next request waits.
        let (pod, vm, root) = respond("503", flags);
        assert_eq!(stat(&pod, "readiness.ready"), 0, "{flags:#x}");
        assert_eq!(arrive(&vm, &root, 2, &POST).1, Action::Pause);
        assert_eq!(stat(&pod, "readiness.held"), 1);
    }
    for (status, flags) in [("500", 0x20), ("503", 0), ("502", 0)] {
        // Any other 5xx: still ready, and one probe from the next tick decides.
        let (pod, vm, mut root) = respond(status, flags);
        assert_eq!(stat(&pod, "readiness.ready"), 1, "{status}");
        let probes = vm.dispatched().len();
        pod.advance_ms(5);
        root.on_tick();
        assert_eq!(
            vm.dispatched().len(),
            probes + 1,
            "{status}: a probe checks it"
        );
        assert_eq!(arrive(&vm, &root, 2, &POST).1, Action::Continue);
        let read_flags = vm
            .calls()
            .iter()
            .any(|c| c.starts_with("property response"));
        assert_eq!(
            read_flags,
            status == "503",
            "{status}: flags read only for a 503"
        );
    }
    // A success says nothing.
    let (pod, vm, mut root) = respond("200", 0x20);
    pod.advance_ms(5);
    let probes = vm.dispatched().len();
    root.on_tick();
    assert_eq!(vm.dispatched().len(), probes);
    assert!(!vm.calls().iter().any(|c| c.starts_with("property")));
}

#[test]
fn on_done_gives_back_the_in_flight_slot_and_the_held_place() {
    let pod = pod();
    let policy = r#""policy":{"default":{"max_inflight":1}}"#;
    let (vm, root) = worker(&pod, &format!("{{{NO_GATE},{policy}}}"));
    let (mut first, action) = arrive(&vm, &root, 1, &POST);
    assert_eq!(action, Action::Continue);
    assert_eq!(stat(&pod, "policy.inflight"), 1);
    assert_eq!(
        arrive(&vm, &root, 2, &POST).1,
        Action::Pause,
        "the slot is taken"
    );
    assert_eq!(vm.sent()[0].status, 429);
    first.on_done();
    assert_eq!(stat(&pod, "policy.inflight"), 0);
    let (mut third, action) = arrive(&vm, &root, 3, &POST);
    assert_eq!(action, Action::Continue, "the slot came back");
    third.on_done();
    third.on_done(); // Envoy calls it once; a second call gives nothing back twice
    assert_eq!(stat(&pod, "policy.inflight"), 0);

    // A client that hangs up while held leaves the wait list: never resumed.
    let pod = self::pod();
    let (vm, mut root) = worker(&pod, r#"{"function":{"name":"env"}}"#);
    let (mut held, action) = arrive(&vm, &root, 4, &POST);
    assert_eq!(action, Action::Pause);
    assert_eq!(stat(&pod, "readiness.pending"), 1);
    held.on_done();
    assert_eq!(stat(&pod, "readiness.pending"), 0);
    assert_eq!(stat(&pod, "readiness.abandoned"), 1);
    probe(&vm, &mut root, "200");
    assert!(vm.resumed().is_empty());
}
