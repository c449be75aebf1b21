//! Envoy's callbacks on the fake host: what a client and the function see of a request, and
//! what the pod counts, for what only a real Envoy showed before.

use crate::host::call::Call;
use crate::host::fake::{Fake, Pod};
use crate::host::root::Root;
use crate::host::startup::Vm;
use proxy_wasm::types::{Action, MapType};
use std::rc::Rc;

const STAT: &str = "faas_mesh_filter.function.env.";

pub(super) fn stat(pod: &Pod, name: &str) -> i64 {
    pod.metric(&format!("{STAT}{name}"))
}

/// One worker's VM with its root context configured by `json` (function `env`).
pub(super) fn worker(pod: &Pod, json: &str) -> (Fake, Root<Fake>) {
    let vm = pod.worker();
    vm.set_plugin_configuration(json);
    let mut root = Root::in_vm(vm.clone(), Rc::new(Vm::default()));
    assert!(root.on_configure(), "{json}");
    (vm, root)
}

pub(super) fn pod() -> Pod {
    let pod = Pod::new();
    pod.add_cluster("faas_function_local");
    pod
}

/// A request's headers arrive: the call's verdict on them.
pub(super) fn arrive(
    vm: &Fake,
    root: &Root<Fake>,
    id: u32,
    headers: &[(&str, &str)],
) -> (Call<Fake>, Action) {
    vm.set_map(MapType::HttpRequestHeaders, headers);
    let mut call = root.new_call(id);
    let action = call.on_request_headers(false);
    (call, action)
}

/// Probes the function from the root's tick and answers every probe with `status`.
pub(super) fn probe(vm: &Fake, root: &mut Root<Fake>, status: &str) {
    root.on_tick();
    vm.answer_with(&[(":status", status)]);
    for (token, _) in vm.dispatched() {
        root.on_http_call_response(token);
    }
}

pub(super) fn header(map: &[(String, String)], name: &str) -> Vec<String> {
    map.iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
        .collect()
}

pub(super) const NO_GATE: &str = r#""function":{"name":"env"},"readiness":{"enabled":false}"#;

#[test]
fn a_rewritten_request_gets_its_call_id_and_start_time_in_the_fewest_host_calls() {
    let pod = pod();
    let (vm, root) = worker(&pod, &format!("{{{NO_GATE}}}"));
    vm.clear_calls();
    let (_, action) = arrive(&vm, &root, 1, &[(":path", "/function/env/x?q=1")]);
    assert_eq!(action, Action::Continue);
    let request = vm.map(MapType::HttpRequestHeaders);
    assert_eq!(header(&request, ":path"), ["/x?q=1"]);
    let call_id = header(&request, "x-call-id");
    assert_eq!(call_id.len(), 1);
    assert!(crate::call_id::is_safe_token(call_id[0].as_bytes()) && call_id[0].len() == 36);
    assert_eq!(header(&request, "x-start-time"), ["1700000000000000000"]);
    assert_eq!((stat(&pod, "requests"), stat(&pod, "rewritten")), (1, 1));
    // One clock read, one read of the map, one of the entropy, a write per changed header.
    let calls = [
        "now_nanos",
        "header_map HttpRequestHeaders",
        "random_bytes 16",
        "set_header x-call-id",
        "set_header :path",
        "set_header x-start-time",
    ];
    assert_eq!(vm.calls(), calls);
}

#[test]
fn replies_and_responses_carry_the_call_id_and_the_duration_once() {
    let pod = pod();
    for json in [
        format!("{{{NO_GATE}}}"),
        r#"{"function":{"name":"env"}}"#.into(),
    ] {
        let (vm, mut root) = worker(&pod, &json);
        probe(&vm, &mut root, "200"); // with the gate: ready
                                      // A path this pod does not serve: the filter's own reply carries the caller's call id.
        let path = (":path", "/function/other/x");
        let (mut call, action) = arrive(&vm, &root, 1, &[path, ("x-call-id", "abc-1")]);
        assert_eq!(action, Action::Pause);
        let sent = vm.sent().pop().unwrap();
        assert_eq!(sent.status, 404);
        assert!(sent.headers.contains(&("x-call-id".into(), "abc-1".into())));
        vm.set_map(MapType::HttpResponseHeaders, &[(":status", "404")]);
        call.on_response_headers(false);
        assert_eq!(
            vm.map(MapType::HttpResponseHeaders).len(),
            1,
            "not stamped twice"
        );
        // The function's answer: call id and duration added.
        let path = (":path", "/function/env/x");
        let (mut call, _) = arrive(&vm, &root, 2, &[path, ("x-call-id", "abc-2")]);
        pod.advance_ms(1500);
        vm.set_map(MapType::HttpResponseHeaders, &[(":status", "200")]);
        assert_eq!(call.on_response_headers(false), Action::Continue);
        let response = vm.map(MapType::HttpResponseHeaders);
        assert_eq!(header(&response, "x-call-id"), ["abc-2"]);
        assert_eq!(header(&response, "x-duration-seconds"), ["1.500000"]);
        // A duration the function (its watchdog) set is left alone.
        let (mut call, _) = arrive(&vm, &root, 3, &[path]);
        let function_said = [(":status", "200"), ("x-duration-seconds", "0.250000")];
        vm.set_map(MapType::HttpResponseHeaders, &function_said);
        call.on_response_headers(false);
        let response = vm.map(MapType::HttpResponseHeaders);
        assert_eq!(
            header(&response, "x-duration-seconds"),
            ["0.250000"],
            "{json}"
        );
        assert_eq!(header(&response, "x-call-id").len(), 1);
    }
}

#[test]
fn a_refused_configuration_is_counted_and_leaves_requests_alone() {
    let pod = pod();
    let vm = pod.worker();
    vm.set_plugin_configuration(r#"{"readiness":{"max_pending":0}}"#);
    let mut root = Root::in_vm(vm.clone(), Rc::new(Vm::default()));
    assert!(!root.on_configure());
    assert_eq!(pod.metric("faas_mesh_filter.config.rejected"), 1);
    assert_eq!(pod.metric("faas_mesh_filter.config.loaded"), 0);
    assert_eq!(vm.tick_ms(), 0, "no gate, no timer");
    let (_, action) = arrive(&vm, &root, 1, &[(":path", "/function/env/x")]);
    assert_eq!(action, Action::Continue);
    assert_eq!(
        header(&vm.map(MapType::HttpRequestHeaders), ":path"),
        ["/function/env/x"]
    );
    // The same host with a good configuration loads it.
    vm.set_plugin_configuration(r#"{"function":{"name":"env"}}"#);
    assert!(root.on_configure());
    assert_eq!(pod.metric("faas_mesh_filter.config.loaded"), 1);
}

#[test]
fn audit_mode_counts_a_429_and_lets_the_request_through() {
    let pod = pod();
    let rate = r#""rate_limit":{"requests_per_second":1,"burst":1}"#;
    for (mode, answered) in [("audit", false), ("enforce", true)] {
        let policy = format!(r#""policy":{{"default":{{"mode":"{mode}",{rate}}}}}"#);
        let (vm, root) = worker(&pod, &format!("{{{NO_GATE},{policy}}}"));
        let path = (":path", "/function/env/x");
        assert_eq!(arrive(&vm, &root, 1, &[path]).1, Action::Continue);
        let (_, action) = arrive(&vm, &root, 2, &[path]);
        assert_eq!(action == Action::Pause, answered, "{mode}");
        assert_eq!(vm.sent().len(), usize::from(answered));
        if answered {
            let sent = &vm.sent()[0];
            assert_eq!(sent.status, 429);
            assert!(
                sent.headers.contains(&("retry-after".into(), "1".into())),
                "{:?}",
                sent.headers
            );
        } else {
            // The function still gets the request, rewritten.
            assert_eq!(
                header(&vm.map(MapType::HttpRequestHeaders), ":path"),
                ["/x"]
            );
        }
        pod.advance_ms(2000); // the next mode starts with a full bucket
    }
    assert_eq!(stat(&pod, "policy.reason.rate_limit.audited"), 1);
    assert_eq!(stat(&pod, "policy.reason.rate_limit.denied"), 1);
    // Allowed: the first request of each mode only.
    assert_eq!(stat(&pod, "policy.allowed"), 2);
}

#[test]
fn a_header_check_denial_is_counted_once_and_answered_with_the_decisions_reply() {
    let pod = pod();
    let policy = r#""policy":{"default":{"methods":["GET"]}}"#;
    let (vm, root) = worker(&pod, &format!("{{{NO_GATE},{policy}}}"));
    let headers = [(":path", "/function/env/x"), (":method", "DELETE")];
    assert_eq!(arrive(&vm, &root, 1, &headers).1, Action::Pause);
    let sent = vm.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].status, 405);
    assert!(sent[0].headers.contains(&("allow".into(), "GET".into())));
    assert_eq!(stat(&pod, "policy.reason.method.denied"), 1);
    assert_eq!(stat(&pod, "policy.allowed"), 0);
}
