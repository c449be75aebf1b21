//! Policy on one worker: what the checks of [`crate::policy`] need from the host (the peer's
//! identity, the pod-wide in-flight count and token bucket in shared data) and what they leave
//! behind (stats per function and reason, audit log lines).

use crate::host::{Host, Stat};
use crate::metrics;
use crate::policy::{admit, Admission, Counters, Policy, PolicyMode, Reason, HEARTBEAT_MS};
use crate::reply::LocalReply;
use proxy_wasm::types::MetricType;
use std::cell::Cell;
use std::rc::Rc;

/// In-flight slots per owner and the rate-limit bucket, one record (see [`Counters`]). Named
/// anew when slots got owners: a module upgrade does not read the older record's format.
const COUNTERS_KEY: &str = "faas-mesh-filter.policy.counters.v2";
const CAS_ROUNDS: usize = 64;

/// This VM as an owner of in-flight slots. Every root context of the VM (the plugin's, and after
/// a configuration push the next one's, while the old one's requests finish) shares it: it is
/// the VM, not a configuration, that can die with slots held.
pub struct Owner {
    /// Random, picked when the VM first takes a slot; a VM started after a trap gets a new one.
    id: Cell<Option<u64>>,
    /// Slots this VM's requests hold now (its own count; the record agrees unless the entry was
    /// given back while this VM looked dead).
    held: Cell<u64>,
    /// When this VM last wrote its entry (ms).
    beat_ms: Cell<u64>,
}

impl Owner {
    pub fn new() -> Owner {
        Owner {
            id: Cell::new(None),
            held: Cell::new(0),
            beat_ms: Cell::new(0),
        }
    }
}

impl Default for Owner {
    fn default() -> Self {
        Owner::new()
    }
}

/// The connection's mTLS state and peer SPIFFE ID, never a request header. A URI SAN on the
/// peer certificate proves mTLS, so `connection.mtls` is read only when there is none and
/// `ask_mtls` (the policy needs it; telling the gateway apart needs only the SAN).
pub fn peer_of<H: Host>(host: &H, ask_mtls: bool) -> (bool, Option<Vec<u8>>) {
    let peer = host
        .property(b"connection\0uri_san_peer_certificate")
        .ok()
        .flatten()
        .filter(|p| !p.is_empty());
    let mtls = peer.is_some()
        || (ask_mtls
            && host
                .property(b"connection\0mtls")
                .ok()
                .flatten()
                .is_some_and(|v| v.first() == Some(&1)));
    (mtls, peer)
}

/// A metric id per reason, in [`Reason::ALL`] order.
type PerReason = [Stat; 6];

/// The policy of one worker's VM, on host `H`.
pub struct Enforcer<H: Host> {
    host: H,
    owner: Rc<Owner>,
    policy: Policy,
    function: String,
    allowed: Stat,
    denied: PerReason,
    audited: PerReason,
    inflight: Stat,
}

fn index(reason: Reason) -> usize {
    Reason::ALL.iter().position(|r| *r == reason).unwrap_or(0)
}

impl<H: Host> Enforcer<H> {
    /// Defines the stats (see [`crate::metrics`]): `….policy.allowed`, per reason the policy
    /// can deny for `….policy.reason.<r>.denied` (enforce) and `….audited` (audit), and the
    /// `….policy.inflight` gauge.
    #[inline(never)]
    pub fn new(host: H, owner: Rc<Owner>, policy: &Policy, function: &str) -> Enforcer<H> {
        let counter = |n: String| Stat::define(&host, MetricType::Counter, &n);
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
        let now_ms = host.now_ms();
        host.create_shared_data(
            COUNTERS_KEY,
            &Counters::decode(None, policy.rate_limit.as_ref(), now_ms).encode(),
        );
        let inflight = match policy.max_inflight {
            Some(_) => Stat::define(
                &host,
                MetricType::Gauge,
                &metrics::name(function, "policy.inflight"),
            ),
            None => Stat::default(),
        };
        Enforcer {
            owner,
            policy: policy.clone(),
            function: function.to_string(),
            allowed: counter(metrics::name(function, "policy.allowed")),
            denied,
            audited,
            inflight,
            host,
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// A check failed. Enforce: the reply to send. Audit: counted and logged, the request goes
    /// on (`None`).
    pub fn deny(&self, reason: Reason, call_id: &str, retry_after: u64) -> Option<LocalReply> {
        self.record(reason, call_id)
            .then(|| crate::reply::denied(reason, retry_after, &self.policy.allow))
    }

    /// Counts and logs a failed check, per mode, without making its reply (a header check's
    /// reply comes with the request's decision). True when the mode answers it (enforce).
    pub fn record(&self, reason: Reason, call_id: &str) -> bool {
        match self.policy.mode {
            PolicyMode::Enforce => {
                if let Some(stat) = self.denied.get(index(reason)) {
                    stat.add(&self.host, 1);
                }
                log::warn!(
                    "call {call_id} for function {:?}: denied ({})",
                    self.function,
                    reason.tag()
                );
                true
            }
            PolicyMode::Audit => {
                if let Some(stat) = self.audited.get(index(reason)) {
                    stat.add(&self.host, 1);
                }
                log::warn!(
                    "audit: call {call_id} for function {:?} would be denied ({}); let through",
                    self.function,
                    reason.tag()
                );
                false
            }
            PolicyMode::Off => false,
        }
    }

    /// Whether the policy answers denials (not audit, not off).
    pub fn enforcing(&self) -> bool {
        self.policy.mode == PolicyMode::Enforce
    }

    /// A request's admission after its header checks: takes a rate-limit token and an in-flight
    /// slot from the pod's shared counters (`slot_taken` is set when it took a slot, to give back
    /// in `on_done`). The reply to send when one is refused in enforce mode; audit mode counts
    /// and logs, and the request goes on. `allowed_so_far`: no header check denied it (for the
    /// `allowed` stat).
    #[inline(never)]
    pub fn admit_call(
        &self,
        call_id: &str,
        allowed_so_far: bool,
        slot_taken: &mut bool,
    ) -> Option<LocalReply> {
        let mut denied = !allowed_so_far;
        if self.policy.rate_limit.is_some() || self.policy.max_inflight.is_some() {
            let admission = self.admit(self.host.now_ms());
            *slot_taken = admission.slot == Some(true);
            if let Err(ms) = admission.rate {
                denied = true;
                let reply = self.deny(Reason::RateLimit, call_id, ms.div_ceil(1000));
                if reply.is_some() {
                    return reply;
                }
            }
            if admission.slot == Some(false) {
                denied = true;
                let reply = self.deny(Reason::Inflight, call_id, 1);
                if reply.is_some() {
                    return reply;
                }
            }
        }
        if !denied {
            self.allowed.add(&self.host, 1);
        }
        None
    }

    /// Takes a rate-limit token and an in-flight slot in one compare-and-swap of the pod's
    /// counters (one shared-data read and write per request, as before slots had owners), giving
    /// back on the way the slots of VMs that died holding them.
    pub fn admit(&self, now_ms: u64) -> Admission {
        let limit = self.policy.rate_limit.as_ref();
        let max = self.policy.max_inflight;
        let enforce = self.policy.mode == PolicyMode::Enforce;
        let owner = if max.is_some() { self.owner_id() } else { 0 };
        let admitted = self
            .host
            .update_shared_data(COUNTERS_KEY, CAS_ROUNDS, |value| {
                let current = Counters::decode(value, limit, now_ms);
                let (next, admission) = admit(&current, limit, max, now_ms, enforce, owner);
                ((next != current).then(|| next.encode()), admission)
            });
        match admitted {
            Some(admission) => {
                self.reclaimed(admission.reclaimed);
                if admission.slot == Some(true) {
                    let o = &self.owner;
                    o.held.set(o.held.get().saturating_add(1));
                    o.beat_ms.set(now_ms);
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
        let owner = self.owner_id();
        let o = &self.owner;
        o.held.set(o.held.get().saturating_sub(1));
        let released = self
            .host
            .update_shared_data(COUNTERS_KEY, CAS_ROUNDS, |value| {
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
        let (held, last) = (self.owner.held.get(), self.owner.beat_ms.get());
        if held == 0 {
            return;
        }
        let now_ms = self.host.now_ms();
        if now_ms.saturating_sub(last) < HEARTBEAT_MS / 2 {
            return;
        }
        let limit = self.policy.rate_limit.as_ref();
        let owner = self.owner_id();
        let beat = self
            .host
            .update_shared_data(COUNTERS_KEY, CAS_ROUNDS, |value| {
                let current = Counters::decode(value, limit, now_ms);
                let (next, change, reclaimed) = current.heartbeat(owner, held, now_ms);
                (Some(next.encode()), (change, reclaimed))
            });
        if let Some((change, reclaimed)) = beat {
            self.owner.beat_ms.set(now_ms);
            self.reclaimed(reclaimed);
            if change != 0 {
                self.adjust_inflight(change);
            }
        }
    }

    /// This VM's owner id: 8 bytes of entropy, or the clock if the host has none (a VM per
    /// worker starts at a different nanosecond).
    fn owner_id(&self) -> u64 {
        if let Some(id) = self.owner.id.get() {
            return id;
        }
        let mut bytes = [0u8; 8];
        let id = match self.host.random_bytes(&mut bytes) {
            Ok(()) => u64::from_le_bytes(bytes),
            Err(_) => self.host.now_nanos().unwrap_or(1),
        };
        self.owner.id.set(Some(id));
        id
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
        self.inflight.add(&self.host, delta);
    }
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
