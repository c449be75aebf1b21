//! Policy on one worker: what the checks of [`crate::policy`] need from the host (the peer's
//! identity, the pod-wide in-flight count and token bucket in shared data) and what they leave
//! behind (stats per function and reason, audit log lines).

use crate::config::PolicyMode;
use crate::host;
use crate::metrics;
use crate::policy::{admit, Admission, Counters, Policy, Reason};
use crate::reply::LocalReply;
use proxy_wasm::types::MetricType;

/// In-flight count and rate-limit bucket, one record (see [`Counters`]).
const COUNTERS_KEY: &str = "faas-mesh-filter.policy.counters";
const CAS_ROUNDS: usize = 64;

/// A metric id per reason, in [`Reason::ALL`] order.
type PerReason = [Option<u32>; 6];

pub struct Enforcer {
    policy: Policy,
    function: String,
    allowed: Option<u32>,
    denied: PerReason,
    audited: PerReason,
    inflight: Option<u32>,
}

fn index(reason: Reason) -> usize {
    Reason::ALL.iter().position(|r| *r == reason).unwrap_or(0)
}

impl Enforcer {
    /// Defines the stats (see [`crate::metrics`]): `….policy.allowed`, per reason the policy
    /// can deny for `….policy.reason.<r>.denied` (enforce) and `….audited` (audit), and the
    /// `….policy.inflight` gauge.
    #[inline(never)]
    pub fn new(policy: &Policy, function: &str) -> Enforcer {
        let counter = |n: String| host::define_metric(MetricType::Counter, &n).ok();
        let mut denied = PerReason::default();
        let mut audited = PerReason::default();
        for reason in policy.reasons() {
            let slot = index(reason);
            if let Some(d) = denied.get_mut(slot) {
                *d = counter(metrics::policy_reason(function, reason.tag(), "denied"));
            }
            if let Some(a) = audited.get_mut(slot) {
                *a = counter(metrics::policy_reason(function, reason.tag(), "audited"));
            }
        }
        let now_ms = host::now_nanos().unwrap_or(0) / 1_000_000;
        host::create_shared_data(
            COUNTERS_KEY,
            &Counters::decode(None, policy.rate_limit.as_ref(), now_ms).encode(),
        );
        Enforcer {
            policy: policy.clone(),
            function: function.to_string(),
            allowed: counter(metrics::name(function, "policy.allowed")),
            denied,
            audited,
            inflight: policy.max_inflight.and_then(|_| {
                host::define_metric(
                    MetricType::Gauge,
                    &metrics::name(function, "policy.inflight"),
                )
                .ok()
            }),
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The connection's mTLS state and peer SPIFFE ID (never a request header). A URI SAN on
    /// the peer certificate proves mTLS, so `connection.mtls` is read only when there is none.
    pub fn peer() -> (bool, Option<Vec<u8>>) {
        let peer = host::property(b"connection\0uri_san_peer_certificate")
            .ok()
            .flatten()
            .filter(|p| !p.is_empty());
        let mtls = peer.is_some()
            || host::property(b"connection\0mtls")
                .ok()
                .flatten()
                .is_some_and(|v| v.first() == Some(&1));
        (mtls, peer)
    }

    /// A request passed every check.
    pub fn count_allowed(&self) {
        if let Some(id) = self.allowed {
            let _ = host::increment_metric(id, 1);
        }
    }

    /// A check failed. Enforce: the reply to send. Audit: counted and logged, the request goes
    /// on (`None`).
    pub fn deny(&self, reason: Reason, call_id: &str, retry_after: u64) -> Option<LocalReply> {
        match self.policy.mode {
            PolicyMode::Enforce => {
                if let Some(Some(id)) = self.denied.get(index(reason)) {
                    let _ = host::increment_metric(*id, 1);
                }
                log::warn!(
                    "call {call_id} for function {:?}: denied ({})",
                    self.function,
                    reason.tag()
                );
                Some(reason.reply(retry_after))
            }
            PolicyMode::Audit => {
                if let Some(Some(id)) = self.audited.get(index(reason)) {
                    let _ = host::increment_metric(*id, 1);
                }
                log::warn!(
                    "audit: call {call_id} for function {:?} would be denied ({}); let through",
                    self.function,
                    reason.tag()
                );
                None
            }
            PolicyMode::Off => None,
        }
    }

    /// Takes a rate-limit token and an in-flight slot in one compare-and-swap of the pod's
    /// counters (one shared-data read and write per request).
    pub fn admit(&self, now_ms: u64) -> Admission {
        let limit = self.policy.rate_limit.as_ref();
        let max = self.policy.max_inflight;
        let enforce = self.policy.mode == PolicyMode::Enforce;
        let admitted = host::update_shared_data(COUNTERS_KEY, CAS_ROUNDS, |value| {
            let current = Counters::decode(value, limit, now_ms);
            let (next, admission) = admit(current, limit, max, now_ms, enforce);
            ((next != current).then(|| next.encode()), admission)
        });
        match admitted {
            Some(admission) => {
                if admission.slot == Some(true) {
                    self.adjust_inflight(1);
                }
                admission
            }
            // Shared data unusable: count nothing, refuse nothing (no slot is taken, so nothing
            // can drift either).
            None => Admission {
                rate: Ok(()),
                slot: None,
            },
        }
    }

    /// The request that took a slot in [`Enforcer::admit`] ended (every way a stream ends
    /// reaches `on_done`).
    pub fn release_inflight(&self) {
        let limit = self.policy.rate_limit.as_ref();
        let released = host::update_shared_data(COUNTERS_KEY, CAS_ROUNDS, |value| {
            let current = Counters::decode(value, limit, 0);
            let next = current.released();
            (Some(next.encode()), next.inflight < current.inflight)
        });
        if released == Some(true) {
            self.adjust_inflight(-1);
        }
    }

    /// Moves the in-flight gauge by the change (atomic in Envoy: workers' updates commute, where
    /// setting it to a value read before another worker's write could leave it stale).
    fn adjust_inflight(&self, delta: i64) {
        if let Some(id) = self.inflight {
            let _ = host::increment_metric(id, delta);
        }
    }
}
