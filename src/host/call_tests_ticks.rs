//! When a call tells its host that it holds state only the root's tick looks after
//! ([`Call::needs_ticks`]): a host whose timer needs a live stream (the native build) keeps one
//! while that holds, so an in-flight slot's heartbeat and the probe after a 5xx still happen.

use super::call_tests::{arrive, pod, probe, worker, NO_GATE};
use proxy_wasm::types::{Action, MapType};

const REQUEST: [(&str, &str); 2] = [(":path", "/function/env/x"), (":method", "POST")];

#[test]
fn a_call_holding_an_in_flight_slot_needs_ticks_until_it_is_done() {
    let pod = pod();
    let policy = r#""policy":{"default":{"max_inflight":2}}"#;
    let (vm, root) = worker(&pod, &format!("{{{NO_GATE},{policy}}}"));
    let (mut call, action) = arrive(&vm, &root, 1, &REQUEST);
    assert_eq!(action, Action::Continue);
    assert!(call.needs_ticks(), "its slot lives on the tick's heartbeat");
    call.on_done();
    assert!(!call.needs_ticks(), "the slot is given back");

    // No slot, no gate: nothing for a tick to do.
    let (vm, root) = worker(&pod, &format!("{{{NO_GATE}}}"));
    let (call, action) = arrive(&vm, &root, 2, &REQUEST);
    assert_eq!(action, Action::Continue);
    assert!(!call.needs_ticks());
}

#[test]
fn a_5xx_while_ready_needs_ticks_until_the_probe_has_answered() {
    let pod = pod();
    let (vm, mut root) = worker(&pod, r#"{"function":{"name":"env"}}"#);
    probe(&vm, &mut root, "200");
    let (mut call, action) = arrive(&vm, &root, 1, &REQUEST);
    assert_eq!(action, Action::Continue);
    assert!(!call.needs_ticks(), "a ready gate with nothing to check");
    vm.set_map(MapType::HttpResponseHeaders, &[(":status", "500")]);
    call.on_response_headers(false);
    assert!(
        call.needs_ticks(),
        "the next tick sends the probe that checks the 5xx"
    );
    pod.advance_ms(5);
    let probes = vm.dispatched().len();
    root.on_tick();
    assert_eq!(vm.dispatched().len(), probes + 1, "the tick probed");
    assert!(call.needs_ticks(), "until the probe answers");
    vm.answer_with(&[(":status", "200")]);
    for (token, _) in vm.dispatched() {
        root.on_http_call_response(token);
    }
    assert!(
        !call.needs_ticks(),
        "the function is fine: nothing left to tick for"
    );
}

#[test]
fn a_held_call_needs_ticks_until_the_gate_lets_it_go() {
    let pod = pod();
    let (vm, mut root) = worker(&pod, r#"{"function":{"name":"env"}}"#);
    let (call, action) = arrive(&vm, &root, 1, &REQUEST);
    assert_eq!(action, Action::Pause);
    assert!(
        call.needs_ticks(),
        "held: the tick probes, releases or answers it"
    );
    probe(&vm, &mut root, "200");
    assert_eq!(vm.resumed(), [1]);
    assert!(!call.needs_ticks(), "released, and the gate is open");
}

#[test]
fn a_probe_the_host_dropped_is_sent_again_by_the_next_tick_and_counts_nothing() {
    let pod = pod();
    let (vm, mut root) = worker(&pod, r#"{"function":{"name":"env"}}"#);
    let (_held, action) = arrive(&vm, &root, 1, &REQUEST);
    assert_eq!(action, Action::Pause);
    root.on_tick();
    let sent = vm.dispatched();
    assert_eq!(sent.len(), 1, "the tick probed");
    let failed = super::call_tests::stat(&pod, "readiness.probes_failed");
    // The stream it went out on ended: the host drops it, unanswered.
    root.on_http_call_lost(sent[0].0);
    assert_eq!(
        super::call_tests::stat(&pod, "readiness.probes_failed"),
        failed
    );
    // A token it does not know changes nothing.
    root.on_http_call_lost(9999);
    // The lease is free: the next tick probes again at once, not after the probe's timeout.
    root.on_tick();
    assert_eq!(vm.dispatched().len(), 2, "sent again by the next tick");
    assert_eq!(
        super::call_tests::stat(&pod, "readiness.probes_failed"),
        failed
    );
    // The new probe's answer opens the gate as any.
    vm.answer_with(&[(":status", "200")]);
    for (token, _) in vm.dispatched() {
        root.on_http_call_response(token);
    }
    assert_eq!(vm.resumed(), [1]);
}
