//! The gate on the fake host with two workers sharing data: one probe per pod, readiness that
//! reaches every worker, `max_pending` and the body budget across workers, re-arming, and the
//! held record kept exact at any interleaving (a VM dying included).

use super::holding::HoldState;
use super::*;
use crate::config::Config;
use crate::held::Record;
use crate::host::fake::{Fake, Pod};
use crate::reply;

const CLUSTER: &str = "faas_function_local";

fn settings(json: &str) -> ReadinessSection {
    Config::parse(json.as_bytes()).unwrap().readiness
}

/// One worker: its VM and its gate.
type Worker = (Fake, Rc<Gate<Fake>>);

/// A pod with two workers' gates.
fn pod(json: &str) -> (Pod, [Worker; 2]) {
    let pod = Pod::new();
    pod.add_cluster(CLUSTER);
    let workers = [worker(&pod, json, 1), worker(&pod, json, 2)];
    (pod, workers)
}

/// One more worker's VM in `pod` (a new one after a trap has another owner id).
fn worker(pod: &Pod, json: &str, owner: u64) -> Worker {
    let vm = pod.worker();
    let gate = Gate::new(vm.clone(), settings(json), "env", "x-call-id", owner);
    (vm, gate)
}

/// What a gate holds: (context id, body bytes reserved).
fn held_ids(gate: &Gate<Fake>) -> Vec<(u32, u64)> {
    let waiting = gate.waiting.borrow();
    waiting
        .iter()
        .map(|h| (h.context_id, h.payload.bytes.get()))
        .collect()
}

fn record(pod: &Pod) -> Record {
    Record::decode(pod.shared(held::KEY).as_deref())
}

fn held(admission: Arrival) -> Hold {
    match admission {
        Arrival::Held(hold) => hold,
        _ => panic!("expected the request to be held"),
    }
}

/// The status of the reply a refused arrival gets (0: not refused).
fn refused(admission: Arrival) -> u32 {
    match admission {
        Arrival::Refused(reply) => reply.status,
        _ => 0,
    }
}

/// Answers every probe `vm` has in flight with `status`.
fn answer(vm: &Fake, gate: &Gate<Fake>, status: &str) {
    vm.answer_with(&[(":status", status)]);
    for (token, _) in vm.dispatched() {
        gate.on_probe_answer(token);
    }
}

#[test]
fn one_probe_per_pod_and_readiness_reaches_the_other_worker() {
    let (pod, [(a, ga), (b, gb)]) = pod("{}");
    let held_a = held(ga.admit(1, "id-a", None, false));
    let held_b = held(gb.admit(7, "id-b", None, false));
    // No probe from a request's context: the root contexts' ticks send it.
    assert!(a.dispatched().is_empty() && b.dispatched().is_empty());
    ga.on_tick();
    gb.on_tick();
    let probes = a.dispatched().len() + b.dispatched().len();
    assert_eq!(probes, 1, "one probe in flight in the pod (the lease)");
    let (prober, gate, other, other_gate) = if a.dispatched().is_empty() {
        (&b, &gb, &a, &ga)
    } else {
        (&a, &ga, &b, &gb)
    };
    assert_eq!(prober.dispatched()[0].1, "/_/ready");
    answer(prober, gate, "200");
    assert!(gate.is_ready());
    // The other worker learns it from shared data on its next tick and releases its own.
    pod.advance_ms(5);
    other_gate.on_tick();
    assert!(other_gate.is_ready());
    assert_eq!(a.resumed(), [1]);
    assert_eq!(b.resumed(), [7]);
    assert_eq!(held_a.state(), HoldState::Released);
    assert_eq!(held_b.state(), HoldState::Released);
    assert!(other.sent().is_empty() && prober.sent().is_empty());
    assert_eq!(
        pod.metric("faas_mesh_filter.function.env.readiness.pending"),
        0
    );
    // Once ready, a request is not held.
    assert!(matches!(ga.admit(2, "id", None, false), Arrival::Go));
}

#[test]
fn max_pending_holds_across_workers() {
    let (pod, [(_, ga), (_, gb)]) = pod(r#"{"readiness":{"max_pending":3}}"#);
    held(ga.admit(1, "1", None, false));
    held(gb.admit(2, "2", None, false));
    held(ga.admit(3, "3", None, false));
    assert!(refused(gb.admit(4, "4", None, false)) == 503);
    assert!(refused(ga.admit(5, "5", None, false)) == 503);
    // A client that hangs up gives its place back.
    gb.forget(2);
    held(gb.admit(6, "6", None, false));
    assert_eq!(
        pod.metric("faas_mesh_filter.function.env.readiness.pending"),
        3
    );
}

#[test]
fn a_request_held_too_long_gets_503_with_its_call_id() {
    let (pod, [(a, ga), _]) = pod(r#"{"readiness":{"max_wait_ms":1000}}"#);
    let state = held(ga.admit(9, "call-9", None, false));
    pod.advance_ms(1001);
    ga.on_tick();
    assert_eq!(state.state(), HoldState::Answered);
    let sent = a.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!((sent[0].context_id, sent[0].status), (9, 503));
    assert!(sent[0]
        .headers
        .contains(&("x-call-id".to_string(), "call-9".to_string())));
    assert!(String::from_utf8_lossy(&sent[0].body).contains("function not ready"));
    assert_eq!(
        pod.metric("faas_mesh_filter.function.env.readiness.pending"),
        0
    );
}

#[test]
fn the_probe_belongs_to_the_pod_not_to_a_client_that_hangs_up() {
    let (pod, [(a, ga), _]) = pod("{}");
    held(ga.admit(1, "1", None, false));
    held(ga.admit(2, "2", None, false));
    ga.on_tick();
    let token = a.dispatched()[0].0;
    ga.forget(1); // the client whose arrival started the probing hangs up
    a.answer_with(&[(":status", "200")]);
    ga.on_probe_answer(token);
    assert!(ga.is_ready());
    assert_eq!(a.resumed(), [2]);
    assert_eq!(
        pod.metric("faas_mesh_filter.function.env.readiness.abandoned"),
        1
    );
}

#[test]
fn a_failed_probe_is_retried_and_a_server_without_ready_is_probed_on_health() {
    let (pod, [(a, ga), _]) = pod("{}");
    held(ga.admit(1, "1", None, false));
    ga.on_tick();
    answer(&a, &ga, "404"); // no /_/ready here: the classic watchdog, a custom server
    assert!(!ga.is_ready());
    let paths: Vec<String> = a.dispatched().into_iter().map(|(_, p)| p).collect();
    assert_eq!(paths.last().map(String::as_str), Some("/_/health"));
    let (token, _) = a.dispatched().pop().unwrap();
    a.answer_with(&[(":status", "503")]);
    ga.on_probe_answer(token);
    assert!(!ga.is_ready());
    let sent_before = a.dispatched().len();
    ga.on_tick();
    assert_eq!(
        a.dispatched().len(),
        sent_before,
        "not before the retry interval"
    );
    pod.advance_ms(200);
    ga.on_tick();
    assert_eq!(a.dispatched().len(), sent_before + 1);
    let (token, path) = a.dispatched().pop().unwrap();
    assert_eq!(path, "/_/health");
    a.answer_with(&[(":status", "200")]);
    ga.on_probe_answer(token);
    assert!(ga.is_ready());
    assert_eq!(a.resumed(), [1]);
}

#[test]
fn a_lost_connection_rearms_every_worker() {
    let (pod, [(a, ga), (_, gb)]) = pod("{}");
    ga.on_tick();
    answer(&a, &ga, "200");
    pod.advance_ms(5);
    gb.on_tick();
    assert!(ga.is_ready() && gb.is_ready());
    gb.upstream_gone();
    assert!(!gb.is_ready());
    pod.advance_ms(5);
    ga.on_tick();
    assert!(!ga.is_ready(), "the other worker holds again too");
    held(ga.admit(3, "3", None, false));
}

#[test]
fn a_dead_workers_places_come_back_once_its_held_calls_have_been_answered() {
    let json = r#"{"readiness":{"max_pending":3,"max_wait_ms":1000}}"#;
    let (pod, [(a, ga), (_, gb)]) = pod(json);
    held(gb.admit(1, "1", None, false));
    pod.advance_ms(100);
    held(gb.admit(2, "2", None, false));
    drop(gb); // this worker's VM traps: it never releases what it counted
    held(ga.admit(3, "3", None, false));
    assert!(refused(ga.admit(4, "4", None, false)) == 503);
    // Envoy answers the dead VM's held calls by max_wait_ms + the margin (request_timeout):
    // until the last of them is answered its places stay taken, then they come back.
    pod.advance_ms(1000 + held::MARGIN_MS - 1);
    ga.on_tick(); // answers ga's own call 3 (503): its place comes back at once
    assert!(held(ga.admit(5, "5", None, false)).state() == HoldState::Paused);
    assert!(refused(ga.admit(6, "6", None, false)) == 503);
    pod.advance_ms(1);
    held(ga.admit(7, "7", None, false));
    held(ga.admit(8, "8", None, false));
    assert!(refused(ga.admit(9, "9", None, false)) == 503);
    assert_eq!(record(&pod).count(), 3);
    assert_eq!(
        pod.metric("faas_mesh_filter.function.env.readiness.pending"),
        3
    );
    // A VM started after the trap is another owner; the function comes up: all released.
    let (c, gc) = worker(&pod, json, 3);
    answer(&a, &ga, "200");
    pod.advance_ms(5);
    gc.on_tick();
    assert!(gc.is_ready() && c.sent().is_empty());
    assert_eq!(a.resumed(), [5, 7, 8]);
    assert_eq!(record(&pod), Record::default());
    assert_eq!(
        pod.metric("faas_mesh_filter.function.env.readiness.pending"),
        0
    );
}

/// Issue 23, part 1: three 20 kB bodies held, released when the function is ready, still
/// running when the gate re-arms and holds three more. The first three's bytes went back
/// when they were released, to the entry they came from: the budget holds.
#[test]
fn the_body_budget_holds_across_a_rearm() {
    let json = r#"{"readiness":{"max_pending_bytes":65536}}"#;
    let (pod, [(a, ga), (b, gb)]) = pod(json);
    // Made at configure time, before any request counts in it (a write to an absent key
    // is unconditional: two workers creating it at once would lose an entry).
    assert_eq!(pod.shared(held::KEY).as_deref(), Some(&b";"[..]));
    for (ctx, gate) in [(1, &ga), (2, &gb), (3, &ga)] {
        held(gate.admit(ctx, "first", None, false));
        assert!(gate.hold_body(ctx, 20_000, "c").is_none());
    }
    assert_eq!(record(&pod).bytes(), 60_000);
    ga.on_tick();
    gb.on_tick();
    let (prober, gate) = if a.dispatched().is_empty() {
        (&b, &gb)
    } else {
        (&a, &ga)
    };
    answer(prober, gate, "200");
    pod.advance_ms(5);
    ga.on_tick();
    gb.on_tick();
    assert_eq!(a.resumed(), [1, 3]);
    assert_eq!(b.resumed(), [2]);
    assert_eq!(record(&pod), Record::default());
    // They run for seconds; the function fails meanwhile and the gate re-arms.
    ga.upstream_gone();
    pod.advance_ms(5);
    gb.on_tick();
    for (ctx, gate) in [(11, &ga), (12, &gb), (13, &gb)] {
        held(gate.admit(ctx, "second", None, false));
        assert!(gate.hold_body(ctx, 20_000, "c").is_none());
    }
    // The first three finish now: nothing of theirs is left to give back, so the fourth
    // body of the second wave does not fit.
    held(ga.admit(14, "fourth", None, false));
    assert_eq!(ga.hold_body(14, 20_000, "fourth"), Some(reply::BYTES_FULL));
    ga.forget(14); // answered 503
    assert_eq!(record(&pod).bytes(), 60_000);
    assert_eq!(
        gb.hold_body(12, 65_537, "c"),
        Some(reply::TOO_LARGE_TO_HOLD)
    );
}

/// Every interleaving of hold, body growth, release on readiness, re-arm, answer, abort,
/// and a VM dying and being replaced, over two workers: after each step each live VM's
/// entry in the pod's record is exactly what it holds, the pod never holds more than its
/// budgets, and a dead VM's entry is gone once its calls have been answered.
#[test]
fn the_held_record_is_exact_at_any_interleaving() {
    let json = r#"{"readiness":{"max_pending":6,"max_pending_bytes":50000,"max_wait_ms":1000}}"#;
    for seed in 1..=300u64 {
        let pod = Pod::new();
        pod.add_cluster(CLUSTER);
        let mut next_owner = 3;
        let mut workers = vec![worker(&pod, json, 1), worker(&pod, json, 2)];
        let mut dead: Vec<(u64, u64)> = Vec::new(); // (owner, died at ms)
        let mut rng = seed;
        let mut roll = |n: u64| {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (rng >> 33) % n
        };
        let mut ctx = 100;
        for _step in 0..200 {
            let w = roll(2) as usize;
            let (vm, gate) = (&workers[w].0, &workers[w].1);
            match roll(9) {
                0 | 1 => {
                    ctx += 1;
                    let _ = gate.admit(ctx, "c", None, false);
                }
                2 | 3 => {
                    let ids = held_ids(gate);
                    if let Some(&(id, bytes)) = ids.get(roll(ids.len().max(1) as u64) as usize) {
                        if gate.hold_body(id, bytes + roll(20_000), "c").is_some() {
                            gate.forget(id);
                        }
                    }
                }
                4 => {
                    if let Some(&(id, _)) = held_ids(gate).first() {
                        gate.forget(id);
                    }
                }
                5 => {
                    gate.on_tick();
                    let status = if roll(2) == 0 { "200" } else { "503" };
                    answer(vm, gate, status);
                }
                6 => gate.upstream_gone(),
                7 => {
                    pod.advance_ms(roll(400));
                    for (_, g) in &workers {
                        g.on_tick();
                    }
                }
                _ => {
                    if roll(4) == 0 {
                        let now = workers[w].0.now_ms();
                        dead.push((workers[w].1.owner, now));
                        workers[w] = worker(&pod, json, next_owner);
                        next_owner += 1;
                    }
                }
            }
            let now = workers[0].0.now_ms();
            let r = record(&pod);
            assert!(r.count() <= 6 && r.bytes() <= 50_000, "seed {seed}: {r:?}");
            for (_, g) in &workers {
                let (count, bytes) = held_ids(g)
                    .into_iter()
                    .fold((0, 0), |(c, b), (_, bytes)| (c + 1, b + bytes));
                let mine = r.entries.iter().filter(|e| e.owner == g.owner);
                let (rc, rb) = mine.fold((0, 0), |(c, b), e| (c + e.count, b + e.bytes));
                assert_eq!((rc, rb), (count, bytes), "seed {seed}: {r:?}");
            }
            for (owner, died) in &dead {
                if now > died + 1000 + held::MARGIN_MS {
                    // Gone at the latest when the next request is held anywhere.
                    let mut r = r.clone();
                    r.expire(now);
                    assert!(r.entries.iter().all(|e| e.owner != *owner));
                }
            }
        }
    }
}
