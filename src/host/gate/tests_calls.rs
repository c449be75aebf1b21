//! The gate's API as a request's context uses it, on the fake host: what `admit` refuses,
//! what `hold_body` answers, what `after_response` does after each kind of response, and the
//! `Hold` handle of a request whose headers wait for its body.

use super::*;
use crate::config::Config;
use crate::host::fake::{Fake, Pod};
use crate::reply;
use std::cell::Cell as Flag;

const CLUSTER: &str = "faas_function_local";

fn gate(pod: &Pod, json: &str, owner: u64) -> (Fake, Rc<Gate<Fake>>) {
    let vm = pod.worker();
    let settings = Config::parse(json.as_bytes()).unwrap().readiness;
    let gate = Gate::new(vm.clone(), settings, "env", "x-call-id", owner);
    (vm, gate)
}

fn pod() -> Pod {
    let pod = Pod::new();
    pod.add_cluster(CLUSTER);
    pod
}

fn refusal(arrival: Arrival) -> Option<reply::LocalReply> {
    match arrival {
        Arrival::Refused(reply) => Some(reply),
        _ => None,
    }
}

fn held(arrival: Arrival) -> Hold {
    match arrival {
        Arrival::Held(hold) => hold,
        _ => panic!("expected the request to be held"),
    }
}

/// Makes the function ready through `vm`'s probe.
fn open(vm: &Fake, gate: &Gate<Fake>) {
    gate.on_tick();
    vm.answer_with(&[(":status", "200")]);
    for (token, _) in vm.dispatched() {
        gate.on_probe_answer(token);
    }
    assert!(gate.is_ready());
}

fn metric(pod: &Pod, name: &str) -> i64 {
    pod.metric(&format!("faas_mesh_filter.function.env.readiness.{name}"))
}

#[test]
fn a_body_larger_than_the_whole_budget_is_refused_413_before_anything_is_counted() {
    let pod = pod();
    let (_, g) = gate(&pod, r#"{"readiness":{"max_pending_bytes":1000}}"#, 1);
    let reply = refusal(g.admit(1, "big", Some(1001), false));
    assert_eq!(reply, Some(reply::TOO_LARGE_TO_HOLD));
    assert_eq!((metric(&pod, "held"), metric(&pod, "pending")), (0, 0));
    // Exactly the budget, or no declared length: held.
    assert!(held(g.admit(2, "fits", Some(1000), false)).is_held());
    assert!(held(g.admit(3, "unsized", None, false)).is_held());
    assert_eq!(metric(&pod, "pending"), 2);
}

#[test]
fn a_full_queue_is_refused_503_with_retry_after_and_counted() {
    let pod = pod();
    let json = r#"{"readiness":{"max_pending":1,"retry_interval_ms":2500}}"#;
    let (_, g) = gate(&pod, json, 1);
    held(g.admit(1, "first", None, false));
    let reply = refusal(g.admit(2, "second", Some(10), false)).expect("refused");
    assert_eq!((reply.status, reply.retry_after), (503, Some(3)));
    assert_eq!(reply, reply::pending_full(3));
    assert_eq!(metric(&pod, "rejected_queue_full"), 1);
    assert_eq!(metric(&pod, "pending"), 1);
}

#[test]
fn a_gate_that_learns_readiness_in_admit_lets_the_request_go() {
    let pod = pod();
    let json = r#"{"readiness":{"max_pending_bytes":100}}"#;
    let (a, ga) = gate(&pod, json, 1);
    let (_, gb) = gate(&pod, json, 2);
    let (_, gc) = gate(&pod, json, 3);
    open(&a, &ga);
    // gb and gc have not ticked: they still believe "not ready" (the only time a call asks).
    assert!(!gb.is_ready() && !gc.is_ready());
    assert!(matches!(gb.admit(1, "c", Some(100), false), Arrival::Go));
    assert!(gb.is_ready());
    // The size is checked first, as before the state is read: a body the pod could never hold
    // is refused by a worker that believes "not ready".
    assert_eq!(
        refusal(gc.admit(2, "c", Some(101), false)),
        Some(reply::TOO_LARGE_TO_HOLD)
    );
    assert_eq!(metric(&pod, "held"), 0);
}

#[test]
fn hold_body_reserves_growth_and_answers_413_or_503_when_it_does_not_fit() {
    let pod = pod();
    let json = r#"{"readiness":{"max_pending_bytes":100}}"#;
    let (_, ga) = gate(&pod, json, 1);
    let (_, gb) = gate(&pod, json, 2);
    held(ga.admit(1, "a", None, false));
    held(gb.admit(2, "b", None, false));
    assert_eq!(ga.hold_body(1, 60, "a"), None);
    assert_eq!(ga.hold_body(1, 60, "a"), None, "no growth");
    assert_eq!(gb.hold_body(2, 40, "b"), None);
    // The pod holds 100 of 100: any growth is refused, 503.
    assert_eq!(gb.hold_body(2, 41, "b"), Some(reply::BYTES_FULL));
    // Larger than the whole budget: 413, whatever the pod holds.
    assert_eq!(ga.hold_body(1, 101, "a"), Some(reply::TOO_LARGE_TO_HOLD));
    // A request this gate does not hold: nothing to do.
    assert_eq!(ga.hold_body(9, 1_000_000, "x"), None);
    assert_eq!(gb.hold_body(1, 1_000_000, "a"), None, "another worker's");
}

#[test]
fn a_request_reading_its_body_is_not_resumed_by_a_release() {
    let pod = pod();
    let (a, g) = gate(&pod, "{}", 1);
    let reading = held(g.admit(1, "reading", None, true));
    let plain = held(g.admit(2, "plain", None, false));
    assert!(reading.is_held() && plain.is_held());
    open(&a, &g);
    // Both are released; only the one not reading its body is resumed by the gate. The other
    // goes on from its own body callback.
    assert_eq!(a.resumed(), [2]);
    assert!(!reading.is_held() && !plain.is_held());
    reading.body_read();
    assert!(!reading.is_held(), "a released request stays released");
    assert!(!reading.answered_by_gate());
}

#[test]
fn a_body_read_while_held_leaves_the_request_waiting_for_the_gate() {
    let pod = pod();
    let (a, g) = gate(&pod, r#"{"readiness":{"max_wait_ms":1000}}"#, 1);
    let hold = held(g.admit(1, "c", None, true));
    hold.body_read();
    assert!(hold.is_held());
    open(&a, &g);
    assert_eq!(a.resumed(), [1], "now the gate resumes it");
    // One that times out is answered by the gate, and says so.
    let (b, gb) = gate(&pod, r#"{"readiness":{"max_wait_ms":1000}}"#, 2);
    gb.upstream_gone();
    let late = held(gb.admit(2, "late", None, false));
    pod.advance_ms(1000);
    gb.on_tick();
    assert!(late.answered_by_gate() && !late.is_held());
    assert_eq!(b.sent().len(), 1);
}

#[test]
fn after_response_does_nothing_for_answers_that_are_not_5xx() {
    let pod = pod();
    let (a, g) = gate(&pod, "{}", 1);
    open(&a, &g);
    let read = Flag::new(false);
    for status in [&b"200"[..], b"404", b"429", b""] {
        g.after_response(status, || {
            read.set(true);
            0x20
        });
    }
    assert!(!read.get(), "the response flags are read for a 503 only");
    assert!(g.is_ready());
    assert_eq!(g.tick_ms(), crate::gate::READY_TICK_MS);
}

#[test]
fn after_response_rearms_every_worker_on_envoys_503_for_a_lost_connection() {
    let pod = pod();
    let (a, ga) = gate(&pod, "{}", 1);
    let (_, gb) = gate(&pod, "{}", 2);
    open(&a, &ga);
    gb.on_tick();
    assert!(gb.is_ready());
    gb.after_response(b"503", || 0x40);
    assert!(!gb.is_ready());
    ga.on_tick();
    assert!(!ga.is_ready(), "the other worker holds again too");
    assert!(held(ga.admit(1, "c", None, false)).is_held());
}

#[test]
fn after_response_checks_any_other_5xx_with_one_probe_that_decides() {
    let pod = pod();
    let (a, g) = gate(&pod, "{}", 1);
    open(&a, &g);
    let probes = a.dispatched().len();
    // A 503 without a connection failure, and a 500: both only ask for a probe.
    g.after_response(b"503", || 0x10);
    g.after_response(b"500", || panic!("flags read for a 500"));
    assert!(g.is_ready());
    assert_eq!(
        g.tick_ms(),
        crate::gate::HOLDING_TICK_MS,
        "the probe goes soon"
    );
    pod.advance_ms(200);
    g.on_tick();
    assert_eq!(a.dispatched().len(), probes + 1, "one probe for both");
    // The function answers the probe well: its 5xx was its own; the gate stays open.
    a.answer_with(&[(":status", "200")]);
    g.on_probe_answer(a.dispatched().last().unwrap().0);
    assert!(g.is_ready());
    // Another 5xx, and this time the probe fails: the gate holds again.
    g.after_response(b"502", || 0);
    pod.advance_ms(200);
    g.on_tick();
    a.answer_with(&[(":status", "503")]);
    g.on_probe_answer(a.dispatched().last().unwrap().0);
    assert!(!g.is_ready());
    assert!(held(g.admit(1, "c", None, false)).is_held());
}
