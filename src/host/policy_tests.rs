//! The policy on one worker, on the fake host: slots across workers, modes, identity.

use super::*;
use crate::config::Config;
use crate::host::fake::{Fake, Pod};
use crate::policy::OWNER_EXPIRY_MS;

fn policy(json: &str) -> Policy {
    let config = Config::parse(json.as_bytes()).unwrap();
    Policy::compile(&config.policy.default)
}

fn enforcer(pod: &Pod, p: &Policy) -> (Fake, Enforcer<Fake>) {
    let vm = pod.worker();
    let e = Enforcer::new(vm.clone(), Rc::new(Owner::new()), p, "env");
    (vm, e)
}

const METRIC: &str = "faas_mesh_filter.function.env.";

#[test]
fn in_flight_slots_hold_across_two_workers_and_come_back() {
    let pod = Pod::new();
    let p = policy(r#"{"policy":{"default":{"max_inflight":2}}}"#);
    let (_, a) = enforcer(&pod, &p);
    let (_, b) = enforcer(&pod, &p);
    assert_eq!(a.admit(pod_ms(&pod)).slot, Some(true));
    assert_eq!(b.admit(pod_ms(&pod)).slot, Some(true));
    assert_eq!(a.admit(pod_ms(&pod)).slot, Some(false), "third in the pod");
    assert_eq!(b.admit(pod_ms(&pod)).slot, Some(false));
    assert_eq!(pod.metric(&format!("{METRIC}policy.inflight")), 2);
    b.release_inflight();
    assert_eq!(a.admit(pod_ms(&pod)).slot, Some(true), "b's slot is free");
    a.release_inflight();
    a.release_inflight();
    assert_eq!(pod.metric(&format!("{METRIC}policy.inflight")), 0);
}

#[test]
fn slots_survive_contention_on_the_record() {
    let pod = Pod::new();
    let p = policy(r#"{"policy":{"default":{"max_inflight":3}}}"#);
    let (_, a) = enforcer(&pod, &p);
    let (_, b) = enforcer(&pod, &p);
    for _ in 0..3 {
        pod.conflict_next_writes(5);
        assert_eq!(a.admit(pod_ms(&pod)).slot, Some(true));
    }
    assert_eq!(
        b.admit(pod_ms(&pod)).slot,
        Some(false),
        "no update was lost"
    );
}

#[test]
fn a_dead_vms_slots_return_after_the_expiry_and_a_live_ones_do_not() {
    let pod = Pod::new();
    let p = policy(r#"{"policy":{"default":{"max_inflight":2}}}"#);
    let (_, dead) = enforcer(&pod, &p);
    let (_, live) = enforcer(&pod, &p);
    assert_eq!(dead.admit(pod_ms(&pod)).slot, Some(true));
    assert_eq!(live.admit(pod_ms(&pod)).slot, Some(true));
    drop(dead); // trapped: never releases, never beats again
    assert_eq!(
        live.admit(pod_ms(&pod)).slot,
        Some(false),
        "full while both count"
    );
    // The live VM keeps its slot alive with its heartbeat; the dead one expires (the
    // heartbeat or the next admission gives it back).
    for _ in 0..(OWNER_EXPIRY_MS / HEARTBEAT_MS + 1) {
        pod.advance_ms(HEARTBEAT_MS);
        live.on_tick();
    }
    assert_eq!(
        live.admit(pod_ms(&pod)).slot,
        Some(true),
        "the dead VM's slot came back"
    );
    assert_eq!(
        live.admit(pod_ms(&pod)).slot,
        Some(false),
        "the live ones stay"
    );
    assert_eq!(pod.metric(&format!("{METRIC}policy.inflight")), 2);
}

#[test]
fn each_mode_answers_counts_and_logs_as_documented() {
    let pod = Pod::new();
    let rules = r#""methods":["GET"],"max_inflight":1"#;
    for (mode, answers) in [("enforce", true), ("audit", false), ("off", false)] {
        let p = policy(&format!(
            r#"{{"policy":{{"default":{{"mode":"{mode}",{rules}}}}}}}"#
        ));
        let (_, e) = enforcer(&pod, &p);
        let reply = e.deny(Reason::Method, "id-1", 0);
        assert_eq!(reply.is_some(), answers, "{mode}");
        if let Some(reply) = reply {
            assert_eq!(reply.status, 405);
        }
    }
    assert_eq!(
        pod.metric(&format!("{METRIC}policy.reason.method.denied")),
        1
    );
    assert_eq!(
        pod.metric(&format!("{METRIC}policy.reason.method.audited")),
        1
    );
    // Audit never refuses a slot: the request goes on and the would-be denial is counted.
    let p = policy(r#"{"policy":{"default":{"mode":"audit","max_inflight":1}}}"#);
    let (_, e) = enforcer(&pod, &p);
    assert_ne!(e.admit(pod_ms(&pod)).slot, Some(false));
}

#[test]
fn identity_comes_from_the_connection_only() {
    let pod = Pod::new();
    let p = policy(r#"{"policy":{"default":{"principals":["spiffe://a/*"]}}}"#);
    let vm = pod.worker();
    assert_eq!(peer_of(&vm, true), (false, None));
    vm.set_property(b"connection\0mtls", &[1]);
    assert_eq!(peer_of(&vm, true), (true, None));
    vm.set_property(b"connection\0uri_san_peer_certificate", b"spiffe://a/b");
    vm.clear_calls();
    let (mtls, peer) = peer_of(&vm, true);
    assert!(mtls);
    assert_eq!(p.check_peer(mtls, peer.as_deref()), Ok(()));
    assert_eq!(
        vm.calls().len(),
        1,
        "a URI SAN proves mTLS: one property read"
    );
}

fn pod_ms(pod: &Pod) -> u64 {
    pod.worker().now_ms()
}
