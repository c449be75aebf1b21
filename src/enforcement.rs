//! Policy on one worker: what the checks of [`crate::policy`] need from the host (the peer's
//! identity, the pod-wide in-flight count and token bucket in shared data) and what they leave
//! behind (stats per function and reason, audit log lines).

use crate::config::{PolicyMode, RateLimit};
use crate::gate::decode_number;
use crate::host;
use crate::metrics;
use crate::policy::{Bucket, Policy, Reason};
use crate::reply::LocalReply;
use proxy_wasm::types::MetricType;

const INFLIGHT_KEY: &str = "faas-mesh-filter.policy.inflight";
const BUCKET_KEY: &str = "faas-mesh-filter.policy.rate-bucket";
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

    /// The connection's mTLS state and peer SPIFFE ID (never a request header).
    pub fn peer() -> (bool, Option<Vec<u8>>) {
        let mtls = host::property(b"connection\0mtls")
            .ok()
            .flatten()
            .is_some_and(|v| v.first() == Some(&1));
        let peer = host::property(b"connection\0uri_san_peer_certificate")
            .ok()
            .flatten();
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

    /// Takes one token from the pod's bucket; `Err(ms)` until one is there.
    pub fn take_token(&self, limit: &RateLimit, now_ms: u64) -> Result<(), u64> {
        for _ in 0..CAS_ROUNDS {
            let Ok((value, cas)) = host::shared_data(BUCKET_KEY) else {
                return Ok(()); // cannot count: let it through rather than refuse everyone
            };
            let bucket = Bucket::decode(value.as_deref(), limit, now_ms);
            let next = bucket.take(limit, now_ms)?;
            if let Ok(true) = host::set_shared_data(BUCKET_KEY, &next.encode(), cas) {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Counts a request into the pod's in-flight total unless it is at `max`.
    pub fn take_inflight(&self, max: u64) -> bool {
        self.add_inflight(|n| (n < max).then(|| n + 1))
    }

    /// The request counted by [`Enforcer::take_inflight`] ended (every way a stream ends
    /// reaches `on_done`).
    pub fn release_inflight(&self) {
        self.add_inflight(|n| Some(n.saturating_sub(1)));
    }

    /// Applies `change` to the shared count; true only if it was written (so a request counts
    /// as taken exactly when the count went up, and the count cannot drift).
    fn add_inflight(&self, change: impl Fn(u64) -> Option<u64>) -> bool {
        for _ in 0..CAS_ROUNDS {
            let Ok((value, cas)) = host::shared_data(INFLIGHT_KEY) else {
                return false;
            };
            let Some(next) = change(decode_number(value.as_deref())) else {
                return false;
            };
            if let Ok(true) = host::set_shared_data(INFLIGHT_KEY, next.to_string().as_bytes(), cas)
            {
                if let Some(id) = self.inflight {
                    let _ = host::record_metric(id, next);
                }
                return true;
            }
        }
        false
    }
}
