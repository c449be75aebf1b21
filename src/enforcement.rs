//! Policy on one worker: what the checks of [`crate::policy`] need from the host (the peer's
//! identity, the pod-wide in-flight count and token bucket in shared data) and what they leave
//! behind (stats per function and reason, audit log lines).

use crate::config::PolicyMode;
use crate::host;
use crate::metrics;
use crate::policy::{admit, Admission, Counters, Policy, Reason, HEARTBEAT_MS};
use crate::reply::LocalReply;
use proxy_wasm::types::MetricType;
use std::cell::Cell;

/// In-flight slots per owner and the rate-limit bucket, one record (see [`Counters`]). Named
/// anew when slots got owners: a module upgrade does not read the older record's format.
const COUNTERS_KEY: &str = "faas-mesh-filter.policy.counters.v2";
const CAS_ROUNDS: usize = 64;

/// This VM as an owner of in-flight slots. Every root context of the VM (the plugin's, and after
/// a configuration push the next one's, while the old one's requests finish) shares it: it is
/// the VM, not a configuration, that can die with slots held.
struct Owner {
    /// Random, picked when the VM first takes a slot; a VM started after a trap gets a new one.
    id: Cell<Option<u64>>,
    /// Slots this VM's requests hold now (its own count; the record agrees unless the entry was
    /// given back while this VM looked dead).
    held: Cell<u64>,
    /// When this VM last wrote its entry (ms).
    beat_ms: Cell<u64>,
}

thread_local! {
    static OWNER: Owner = const {
        Owner {
            id: Cell::new(None),
            held: Cell::new(0),
            beat_ms: Cell::new(0),
        }
    };
}

/// This VM's owner id: 8 bytes of entropy, or the clock if the host has none (a VM per worker
/// starts at a different nanosecond).
fn owner_id() -> u64 {
    OWNER.with(|o| {
        if let Some(id) = o.id.get() {
            return id;
        }
        let mut bytes = [0u8; 8];
        let id = match host::random_bytes(&mut bytes) {
            Ok(()) => u64::from_le_bytes(bytes),
            Err(_) => host::now_nanos().unwrap_or(1),
        };
        o.id.set(Some(id));
        id
    })
}

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
    /// counters (one shared-data read and write per request, as before slots had owners), giving
    /// back on the way the slots of VMs that died holding them.
    pub fn admit(&self, now_ms: u64) -> Admission {
        let limit = self.policy.rate_limit.as_ref();
        let max = self.policy.max_inflight;
        let enforce = self.policy.mode == PolicyMode::Enforce;
        let owner = if max.is_some() { owner_id() } else { 0 };
        let admitted = host::update_shared_data(COUNTERS_KEY, CAS_ROUNDS, |value| {
            let current = Counters::decode(value, limit, now_ms);
            let (next, admission) = admit(&current, limit, max, now_ms, enforce, owner);
            ((next != current).then(|| next.encode()), admission)
        });
        match admitted {
            Some(admission) => {
                self.reclaimed(admission.reclaimed);
                if admission.slot == Some(true) {
                    OWNER.with(|o| {
                        o.held.set(o.held.get().saturating_add(1));
                        o.beat_ms.set(now_ms);
                    });
                    self.adjust_inflight(1);
                }
                admission
            }
            // Shared data unusable: count nothing, refuse nothing (no slot is taken, so nothing
            // can drift either).
            None => Admission {
                rate: Ok(()),
                slot: None,
                reclaimed: 0,
            },
        }
    }

    /// The request that took a slot in [`Enforcer::admit`] ended (every way a stream ends
    /// reaches `on_done`; a VM that trapped reaches none, which is what the owners are for).
    pub fn release_inflight(&self) {
        let limit = self.policy.rate_limit.as_ref();
        let owner = owner_id();
        OWNER.with(|o| o.held.set(o.held.get().saturating_sub(1)));
        let released = host::update_shared_data(COUNTERS_KEY, CAS_ROUNDS, |value| {
            let current = Counters::decode(value, limit, 0);
            let next = current.released(owner);
            let released = next.held_by(owner) < current.held_by(owner);
            (released.then(|| next.encode()), released)
        });
        if released == Some(true) {
            self.adjust_inflight(-1);
        }
    }

    /// The tick period this enforcer needs (0: none): with `max_inflight`, a live VM holding
    /// slots renews its entry every [`HEARTBEAT_MS`].
    pub fn tick_ms(&self) -> u64 {
        if self.policy.max_inflight.is_some() {
            HEARTBEAT_MS
        } else {
            0
        }
    }

    /// From the root context's tick: while this VM holds slots, renews its entry once per
    /// [`HEARTBEAT_MS`] (one shared-data read and write), and gives back dead VMs' slots. Costs
    /// one clock read per tick otherwise.
    pub fn on_tick(&self) {
        if self.policy.max_inflight.is_none() {
            return;
        }
        let (held, last) = OWNER.with(|o| (o.held.get(), o.beat_ms.get()));
        if held == 0 {
            return;
        }
        let now_ms = host::now_nanos().unwrap_or(0) / 1_000_000;
        if now_ms.saturating_sub(last) < HEARTBEAT_MS / 2 {
            return;
        }
        let limit = self.policy.rate_limit.as_ref();
        let owner = owner_id();
        let beat = host::update_shared_data(COUNTERS_KEY, CAS_ROUNDS, |value| {
            let current = Counters::decode(value, limit, now_ms);
            let (next, change, reclaimed) = current.heartbeat(owner, held, now_ms);
            (Some(next.encode()), (change, reclaimed))
        });
        if let Some((change, reclaimed)) = beat {
            OWNER.with(|o| o.beat_ms.set(now_ms));
            self.reclaimed(reclaimed);
            if change != 0 {
                self.adjust_inflight(change);
            }
        }
    }

    /// Slots of a dead VM were given back: the gauge it moved up comes down again.
    fn reclaimed(&self, slots: u64) {
        if slots > 0 {
            log::warn!(
                "function {:?}: {slots} in-flight slot(s) of a Wasm VM that stopped (a trap) given back",
                self.function
            );
            self.adjust_inflight(-i64::try_from(slots).unwrap_or(i64::MAX));
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
