//! Per-function policy decisions, without the host: the effective rules of the local function,
//! compiled once, and the checks a request goes through.
//!
//! Nothing here looks at the path: rules apply to the local function whatever path reached it,
//! so encoded or doubled slashes, case games in the prefix or `/function/<other>` with
//! `other_function: pass` cannot select a weaker rule. The caller's identity comes from the
//! connection (the mTLS peer certificate), never from a request header.

use crate::config::{PolicyMode, PolicyRules, RateLimit};

/// Why a request is (or, in audit mode, would be) denied. The tag names the stat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No mTLS peer certificate while `require_mtls` (or while `principals` is set).
    Mtls,
    /// The peer's identity is not in `principals`.
    Principal,
    /// The method (or a method-override header) is not in `methods`.
    Method,
    /// The body is larger than `max_body_bytes`.
    BodySize,
    /// The pod-wide token bucket of `rate_limit` is empty.
    RateLimit,
    /// `max_inflight` requests of this function are in flight in the pod.
    Inflight,
}

impl Reason {
    pub const ALL: [Reason; 6] = [
        Reason::Mtls,
        Reason::Principal,
        Reason::Method,
        Reason::BodySize,
        Reason::RateLimit,
        Reason::Inflight,
    ];

    pub fn tag(self) -> &'static str {
        match self {
            Reason::Mtls => "mtls",
            Reason::Principal => "principal",
            Reason::Method => "method",
            Reason::BodySize => "body_size",
            Reason::RateLimit => "rate_limit",
            Reason::Inflight => "inflight",
        }
    }
}

/// Method-override headers some frameworks honour; a caller must not use them to reach a method
/// the policy does not allow.
pub const METHOD_OVERRIDE_HEADERS: [&[u8]; 3] = [
    b"x-http-method-override",
    b"x-http-method",
    b"x-method-override",
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Principal {
    Exact(Vec<u8>),
    Prefix(Vec<u8>),
}

/// The effective policy of the local function.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub mode: PolicyMode,
    methods: Option<Vec<Vec<u8>>>,
    /// The `Allow` header of a 405: the allowed methods, comma-separated.
    pub allow: String,
    principals: Option<Vec<Principal>>,
    require_mtls: bool,
    pub max_body_bytes: Option<u64>,
    pub max_inflight: Option<u64>,
    pub rate_limit: Option<RateLimit>,
}

impl Policy {
    /// Compiles the merged rules (`policy.default` overridden by the function's entry).
    pub fn compile(rules: &PolicyRules) -> Policy {
        let methods = rules.methods.as_ref().map(|list| {
            list.iter()
                .map(|m| m.as_bytes().to_vec())
                .collect::<Vec<_>>()
        });
        let allow = rules
            .methods
            .as_ref()
            // Joined as &strs, the one instantiation of `join` the configuration's messages use.
            .map(|list| {
                list.iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        let principals = rules.principals.as_ref().map(|list| {
            list.iter()
                .map(|p| match p.strip_suffix('*') {
                    Some(prefix) => Principal::Prefix(prefix.as_bytes().to_vec()),
                    None => Principal::Exact(p.as_bytes().to_vec()),
                })
                .collect()
        });
        Policy {
            mode: rules.mode.unwrap_or(PolicyMode::Enforce),
            methods,
            allow,
            principals,
            require_mtls: rules.require_mtls.unwrap_or(false),
            max_body_bytes: rules.max_body_bytes,
            max_inflight: rules.max_inflight,
            rate_limit: rules.rate_limit,
        }
    }

    /// Whether any check runs at all (a mode other than `off` and at least one rule).
    pub fn is_active(&self) -> bool {
        self.mode != PolicyMode::Off
            && (self.methods.is_some()
                || self.principals.is_some()
                || self.require_mtls
                || self.max_body_bytes.is_some()
                || self.max_inflight.is_some()
                || self.rate_limit.is_some())
    }

    /// Whether the checks need the connection's peer identity (two property reads).
    pub fn needs_peer(&self) -> bool {
        self.require_mtls || self.principals.is_some()
    }

    /// The reasons this policy can deny for (the stats it defines).
    pub fn reasons(&self) -> Vec<Reason> {
        Reason::ALL
            .into_iter()
            .filter(|r| match r {
                Reason::Mtls => self.needs_peer(),
                Reason::Principal => self.principals.is_some(),
                Reason::Method => self.methods.is_some(),
                Reason::BodySize => self.max_body_bytes.is_some(),
                Reason::RateLimit => self.rate_limit.is_some(),
                Reason::Inflight => self.max_inflight.is_some(),
            })
            .collect()
    }

    /// `mtls`: the connection presented a verified client certificate; `peer`: its first URI
    /// SAN (the SPIFFE ID).
    pub fn check_peer(&self, mtls: bool, peer: Option<&[u8]>) -> Result<(), Reason> {
        if !self.needs_peer() {
            return Ok(());
        }
        if !mtls {
            return Err(Reason::Mtls);
        }
        let Some(principals) = &self.principals else {
            return Ok(());
        };
        let peer = peer.unwrap_or_default();
        let allowed = !peer.is_empty()
            && principals.iter().any(|p| match p {
                Principal::Exact(id) => peer == id.as_slice(),
                Principal::Prefix(prefix) => peer.starts_with(prefix),
            });
        if allowed {
            Ok(())
        } else {
            Err(Reason::Principal)
        }
    }

    /// The request method and any method-override header values must all be allowed.
    /// Methods are case-sensitive (RFC 9110): `get` is not `GET`.
    pub fn check_method(&self, method: &[u8], overrides: &[&[u8]]) -> Result<(), Reason> {
        let Some(methods) = &self.methods else {
            return Ok(());
        };
        let allowed = |m: &[u8]| methods.iter().any(|a| a.as_slice() == m);
        if allowed(method) && overrides.iter().all(|o| allowed(o.trim_ascii())) {
            Ok(())
        } else {
            Err(Reason::Method)
        }
    }

    /// By `Content-Length`, before any byte is forwarded. A length that does not parse is
    /// refused by Envoy before the filter sees the request.
    pub fn check_length(&self, content_length: Option<u64>) -> Result<(), Reason> {
        match (self.max_body_bytes, content_length) {
            (Some(max), Some(len)) if len > max => Err(Reason::BodySize),
            _ => Ok(()),
        }
    }

    /// Whether a body without `Content-Length` must be counted (and held until complete).
    pub fn counts_body(&self, content_length: Option<u64>) -> bool {
        self.max_body_bytes.is_some() && content_length.is_none()
    }

    /// Whether `seen` body bytes are over the limit.
    pub fn body_over(&self, seen: u64) -> bool {
        self.max_body_bytes.is_some_and(|max| seen > max)
    }
}

/// Parses a `Content-Length` value (digits only).
pub fn parse_content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// The pod-wide token bucket of `rate_limit`, kept in shared data as
/// `<milli-tokens>:<last refill, ms>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    pub milli_tokens: u64,
    pub last_ms: u64,
}

impl Bucket {
    /// Absent or unreadable: a full bucket.
    pub fn decode(bytes: Option<&[u8]>, limit: &RateLimit, now_ms: u64) -> Bucket {
        let parsed = bytes
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(|s| s.split_once(':'))
            .and_then(|(t, l)| Some((t.parse().ok()?, l.parse().ok()?)));
        match parsed {
            Some((milli_tokens, last_ms)) => Bucket {
                milli_tokens,
                last_ms,
            },
            None => Bucket {
                milli_tokens: limit.burst.saturating_mul(1000),
                last_ms: now_ms,
            },
        }
    }

    pub fn encode(self) -> Vec<u8> {
        format!("{}:{}", self.milli_tokens, self.last_ms).into_bytes()
    }

    /// Refills for the time passed and takes one token: the new bucket, or the milliseconds
    /// until a token will be there.
    pub fn take(self, limit: &RateLimit, now_ms: u64) -> Result<Bucket, u64> {
        let capacity = limit.burst.saturating_mul(1000);
        let elapsed = now_ms.saturating_sub(self.last_ms);
        // requests_per_second tokens per second = requests_per_second milli-tokens per ms.
        let refill = (elapsed as f64 * limit.requests_per_second) as u64;
        let milli_tokens = self.milli_tokens.saturating_add(refill).min(capacity);
        if milli_tokens >= 1000 {
            Ok(Bucket {
                milli_tokens: milli_tokens - 1000,
                last_ms: now_ms.max(self.last_ms),
            })
        } else {
            let missing = (1000 - milli_tokens) as f64;
            Err((missing / limit.requests_per_second).ceil() as u64)
        }
    }
}

/// How long slots are kept for an owner that shows no sign of life. Every live owner (one per
/// Wasm VM, that is per Envoy worker) that holds slots writes its entry at least every
/// [`HEARTBEAT_MS`]; a VM that trapped writes nothing more, so at most this long after its last
/// write the slots it held are given back by whichever worker writes the record next.
pub const OWNER_EXPIRY_MS: u64 = 5_000;

/// How often an owner holding slots renews its entry (from the root context's tick).
pub const HEARTBEAT_MS: u64 = 1_000;

/// Owners one record keeps at most: the workers of one Envoy plus dead VMs not yet expired. A
/// record with more (which Envoy never produces) is read as its first entries only.
pub const MAX_OWNERS: usize = 256;

/// In-flight slots taken by one owner: a Wasm VM, named by a random id it picks when it starts,
/// with the time it last wrote its entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holder {
    pub owner: u64,
    pub held: u64,
    pub beat_ms: u64,
}

impl Holder {
    /// Whether the owner showed a sign of life recently enough to keep its slots.
    fn alive(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.beat_ms) <= OWNER_EXPIRY_MS
    }
}

/// The pod's policy counters in one shared record, so a request reads and writes shared data
/// once: `<milli-tokens>:<last refill ms>` then, per owner holding slots,
/// `;<owner hex>:<held>:<last write ms>`. The in-flight count is the sum of the owners' slots:
/// slots belong to the VM that took them, so when a VM dies (a trap) its slots can be told
/// apart and given back instead of being held for ever.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counters {
    pub holders: Vec<Holder>,
    pub bucket: Bucket,
}

/// What [`admit`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// The rate limit: passed, or the milliseconds until a token (no `rate_limit`: passed).
    pub rate: Result<(), u64>,
    /// `max_inflight`: `Some(true)` took a slot, `Some(false)` found none, `None` no such rule.
    pub slot: Option<bool>,
    /// Slots of dead owners this decision gave back.
    pub reclaimed: u64,
}

impl Counters {
    /// Absent or unreadable: nothing in flight, a full bucket. Unreadable owner entries are
    /// dropped (their slots freed).
    pub fn decode(bytes: Option<&[u8]>, limit: Option<&RateLimit>, now_ms: u64) -> Counters {
        let full = Bucket {
            milli_tokens: limit.map_or(0, |l| l.burst.saturating_mul(1000)),
            last_ms: now_ms,
        };
        let text = bytes
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or("");
        let mut entries = text.split(';');
        let mut bucket_parts = entries.next().unwrap_or("").split(':').map(str::parse);
        let bucket = match (
            bucket_parts.next(),
            bucket_parts.next(),
            bucket_parts.next(),
        ) {
            (Some(Ok(milli_tokens)), Some(Ok(last_ms)), None) => Bucket {
                milli_tokens,
                last_ms,
            },
            _ => full,
        };
        let holders = entries
            .filter_map(|entry| {
                let mut parts = entry.split(':');
                let owner = u64::from_str_radix(parts.next()?, 16).ok()?;
                let held = parts.next()?.parse().ok()?;
                let beat_ms = parts.next()?.parse().ok()?;
                parts.next().is_none().then_some(Holder {
                    owner,
                    held,
                    beat_ms,
                })
            })
            .filter(|h| h.held > 0)
            .take(MAX_OWNERS)
            .collect();
        Counters { holders, bucket }
    }

    pub fn encode(&self) -> Vec<u8> {
        use std::fmt::Write;
        let mut text = String::with_capacity(24 + 40 * self.holders.len());
        let _ = write!(text, "{}:{}", self.bucket.milli_tokens, self.bucket.last_ms);
        for h in &self.holders {
            let _ = write!(text, ";{:x}:{}:{}", h.owner, h.held, h.beat_ms);
        }
        text.into_bytes()
    }

    /// Slots in flight in the pod (every owner's, live or not yet expired).
    pub fn inflight(&self) -> u64 {
        self.holders
            .iter()
            .fold(0u64, |sum, h| sum.saturating_add(h.held))
    }

    /// The slots `owner` holds according to the record.
    pub fn held_by(&self, owner: u64) -> u64 {
        self.holders
            .iter()
            .find(|h| h.owner == owner)
            .map_or(0, |h| h.held)
    }

    /// Drops the entries of owners (other than `owner`) silent for longer than
    /// [`OWNER_EXPIRY_MS`]: the slots given back.
    fn reclaim(&mut self, owner: u64, now_ms: u64) -> u64 {
        let mut reclaimed = 0u64;
        self.holders.retain(|h| {
            let keep = h.owner == owner || h.alive(now_ms);
            if !keep {
                reclaimed = reclaimed.saturating_add(h.held);
            }
            keep
        });
        reclaimed
    }

    /// Sets `owner`'s entry to `held` slots written at `now_ms` (removed when 0).
    fn set_held(&mut self, owner: u64, held: u64, now_ms: u64) {
        match self.holders.iter().position(|h| h.owner == owner) {
            Some(i) if held == 0 => {
                self.holders.remove(i);
            }
            Some(i) => {
                if let Some(h) = self.holders.get_mut(i) {
                    h.held = held;
                    h.beat_ms = now_ms;
                }
            }
            None if held == 0 => {}
            None => self.holders.push(Holder {
                owner,
                held,
                beat_ms: now_ms,
            }),
        }
    }

    /// The counters after a request of `owner` that held a slot ended. An owner whose entry is
    /// gone (given back while it looked dead) has nothing to return.
    pub fn released(&self, owner: u64) -> Counters {
        let mut next = self.clone();
        if let Some(i) = next.holders.iter().position(|h| h.owner == owner) {
            if let Some(h) = next.holders.get_mut(i) {
                h.held = h.held.saturating_sub(1);
            }
            if next.holders.get(i).is_some_and(|h| h.held == 0) {
                next.holders.remove(i);
            }
        }
        next
    }

    /// `owner` is alive and holds `held` slots (its own count): its entry is renewed (or put
    /// back, if it was given back while the owner looked dead), and dead owners' slots are given
    /// back. Returns the new counters, the change to `owner`'s slots in the record, and the
    /// slots reclaimed from dead owners.
    pub fn heartbeat(&self, owner: u64, held: u64, now_ms: u64) -> (Counters, i64, u64) {
        let mut next = self.clone();
        let reclaimed = next.reclaim(owner, now_ms);
        let before = next.held_by(owner);
        next.set_held(owner, held, now_ms);
        let change = i64::try_from(held)
            .unwrap_or(i64::MAX)
            .saturating_sub(i64::try_from(before).unwrap_or(i64::MAX));
        (next, change, reclaimed)
    }
}

/// Takes a rate-limit token and an in-flight slot for one request of `owner` (and gives back
/// the slots of dead owners first). `enforce`: stop at the first refusal (a rate-limited request
/// takes no slot). Otherwise (audit) both are evaluated and a request takes what is free.
pub fn admit(
    counters: &Counters,
    limit: Option<&RateLimit>,
    max_inflight: Option<u64>,
    now_ms: u64,
    enforce: bool,
    owner: u64,
) -> (Counters, Admission) {
    let mut next = counters.clone();
    let rate = match limit {
        None => Ok(()),
        Some(limit) => counters.bucket.take(limit, now_ms).map(|bucket| {
            next.bucket = bucket;
        }),
    };
    let mut reclaimed = 0;
    let slot = match max_inflight {
        None => None,
        Some(_) if enforce && rate.is_err() => None,
        Some(max) => {
            reclaimed = next.reclaim(owner, now_ms);
            if next.inflight() < max {
                let held = next.held_by(owner).saturating_add(1);
                next.set_held(owner, held, now_ms);
                Some(true)
            } else {
                Some(false)
            }
        }
    };
    (
        next,
        Admission {
            rate,
            slot,
            reclaimed,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(json: &str) -> Policy {
        let config = crate::config::Config::parse(
            format!(r#"{{"policy": {{"default": {json}}}}}"#).as_bytes(),
        )
        .unwrap();
        Policy::compile(&config.policy.default)
    }

    #[test]
    fn principals_match_exactly_or_by_trailing_star() {
        let p = policy(
            r#"{"principals": ["spiffe://cluster.local/ns/openfaas/sa/*", "spiffe://cluster.local/ns/x/sa/one"]}"#,
        );
        assert!(p.needs_peer());
        let ok = |peer: &str| p.check_peer(true, Some(peer.as_bytes()));
        assert_eq!(ok("spiffe://cluster.local/ns/openfaas/sa/gateway"), Ok(()));
        assert_eq!(ok("spiffe://cluster.local/ns/x/sa/one"), Ok(()));
        assert_eq!(
            ok("spiffe://cluster.local/ns/x/sa/one-more"),
            Err(Reason::Principal)
        );
        assert_eq!(
            ok("spiffe://cluster.local/ns/openfaas-fn/sa/x"),
            Err(Reason::Principal)
        );
        assert_eq!(ok(""), Err(Reason::Principal));
        assert_eq!(p.check_peer(true, None), Err(Reason::Principal));
        assert_eq!(
            p.check_peer(false, Some(b"spiffe://cluster.local/ns/x/sa/one")),
            Err(Reason::Mtls)
        );
    }

    #[test]
    fn require_mtls_alone_needs_a_certificate_not_an_identity() {
        let p = policy(r#"{"require_mtls": true}"#);
        assert_eq!(p.check_peer(true, None), Ok(()));
        assert_eq!(p.check_peer(false, None), Err(Reason::Mtls));
        assert_eq!(policy("{}").check_peer(false, None), Ok(()));
    }

    #[test]
    fn methods_and_overrides() {
        let p = policy(r#"{"methods": ["GET", "POST"]}"#);
        assert_eq!(p.allow, "GET, POST");
        assert_eq!(p.check_method(b"GET", &[]), Ok(()));
        assert_eq!(p.check_method(b"DELETE", &[]), Err(Reason::Method));
        assert_eq!(
            p.check_method(b"get", &[]),
            Err(Reason::Method),
            "case matters"
        );
        assert_eq!(p.check_method(b"POST", &[b"DELETE"]), Err(Reason::Method));
        assert_eq!(p.check_method(b"POST", &[b" GET "]), Ok(()));
        let reply = crate::reply::denied(Reason::Method, 0, "GET");
        assert_eq!((reply.status, reply.retry_after), (405, None));
    }

    #[test]
    fn body_size_by_length_or_count() {
        let p = policy(r#"{"max_body_bytes": 10}"#);
        assert_eq!(p.check_length(Some(10)), Ok(()));
        assert_eq!(p.check_length(Some(11)), Err(Reason::BodySize));
        assert_eq!(p.check_length(None), Ok(()));
        assert!(p.counts_body(None));
        assert!(!p.counts_body(Some(3)));
        assert!(!p.body_over(10));
        assert!(p.body_over(11));
        assert_eq!(parse_content_length(b"42"), Some(42));
        assert_eq!(parse_content_length(b"4 2"), None);
        assert_eq!(parse_content_length(b""), None);
    }

    #[test]
    fn modes_and_activity() {
        assert!(!policy("{}").is_active());
        assert!(!policy(r#"{"mode": "off", "methods": ["GET"]}"#).is_active());
        assert!(policy(r#"{"mode": "audit", "methods": ["GET"]}"#).is_active());
        assert_eq!(
            policy(r#"{"max_inflight": 2, "methods": ["GET"]}"#).reasons(),
            vec![Reason::Method, Reason::Inflight]
        );
    }

    #[test]
    fn token_bucket_refills_at_the_rate_up_to_the_burst() {
        let limit = RateLimit {
            requests_per_second: 10.0,
            burst: 2,
        };
        let b = Bucket::decode(None, &limit, 1000);
        let b = b.take(&limit, 1000).unwrap();
        let b = b.take(&limit, 1000).unwrap();
        // Empty: one token needs 100 ms at 10/s.
        assert_eq!(b.take(&limit, 1000), Err(100));
        assert_eq!(b.take(&limit, 1050), Err(50));
        let b = b.take(&limit, 1100).unwrap();
        assert_eq!(b.milli_tokens, 0);
        // A long pause refills only up to the burst.
        let b = b.take(&limit, 100_000).unwrap();
        assert_eq!(b.milli_tokens, 1000);
        assert_eq!(Bucket::decode(Some(&b.encode()), &limit, 0), b);
        assert_eq!(
            crate::reply::denied(Reason::RateLimit, 0, "").retry_after,
            Some(1)
        );
    }

    const ME: u64 = 0xa1;
    const OTHER: u64 = 0xb2;

    #[test]
    fn one_record_holds_the_slot_count_and_the_bucket() {
        let limit = RateLimit {
            requests_per_second: 1.0,
            burst: 1,
        };
        let c = Counters::decode(None, Some(&limit), 5000);
        assert_eq!((c.inflight(), c.bucket.milli_tokens), (0, 1000));
        let (c, a) = admit(&c, Some(&limit), Some(1), 5000, true, ME);
        assert_eq!(
            a,
            Admission {
                rate: Ok(()),
                slot: Some(true),
                reclaimed: 0
            }
        );
        assert_eq!(c.held_by(ME), 1);
        assert_eq!(Counters::decode(Some(&c.encode()), Some(&limit), 0), c);
        // No token left: refused, and in enforce mode no slot is taken either.
        let (after, a) = admit(&c, Some(&limit), Some(5), 5000, true, ME);
        assert_eq!((a.rate, a.slot), (Err(1000), None));
        assert_eq!(after, c);
        // Audit evaluates both.
        let (_, a) = admit(&c, Some(&limit), Some(1), 5000, false, ME);
        assert_eq!((a.rate, a.slot), (Err(1000), Some(false)));
        assert_eq!(c.released(ME).inflight(), 0);
        assert_eq!(c.released(ME).released(ME).inflight(), 0);
        // Without rules nothing changes.
        let (same, a) = admit(&c, None, None, 9000, true, ME);
        assert_eq!(same, c);
        assert_eq!((a.rate, a.slot), (Ok(()), None));
    }

    #[test]
    fn slots_belong_to_the_vm_that_took_them() {
        let c = Counters::decode(None, None, 0);
        let (c, _) = admit(&c, None, Some(3), 1000, true, ME);
        let (c, _) = admit(&c, None, Some(3), 1000, true, OTHER);
        let (c, _) = admit(&c, None, Some(3), 1000, true, OTHER);
        assert_eq!((c.held_by(ME), c.held_by(OTHER), c.inflight()), (1, 2, 3));
        let (full, a) = admit(&c, None, Some(3), 1000, true, ME);
        assert_eq!(a.slot, Some(false));
        assert_eq!(full, c, "a refusal changes nothing");
        // A release returns the releasing owner's slot, never another's.
        let c = c.released(ME);
        assert_eq!((c.held_by(ME), c.held_by(OTHER)), (0, 2));
        assert_eq!(c.released(ME), c, "nothing left to return");
        assert_eq!(
            String::from_utf8(c.encode()).unwrap(),
            "0:0;b2:2:1000",
            "owners without slots leave the record"
        );
        assert_eq!(Counters::decode(Some(&c.encode()), None, 0), c);
    }

    #[test]
    fn a_dead_owners_slots_are_given_back_after_the_expiry() {
        // OTHER took every slot at t=1000, then trapped: it never writes again.
        let c = Counters::decode(None, None, 0);
        let (c, _) = admit(&c, None, Some(2), 1000, true, OTHER);
        let (c, _) = admit(&c, None, Some(2), 1000, true, OTHER);
        let (_, a) = admit(&c, None, Some(2), 1000 + OWNER_EXPIRY_MS, true, ME);
        assert_eq!(a.slot, Some(false), "still within the expiry");
        let (c, a) = admit(&c, None, Some(2), 1001 + OWNER_EXPIRY_MS, true, ME);
        assert_eq!((a.slot, a.reclaimed), (Some(true), 2));
        assert_eq!((c.held_by(OTHER), c.inflight()), (0, 1));
        // A live owner keeps its slots however long its requests run, by its heartbeat.
        let mut c = c;
        let mut now = 1001 + OWNER_EXPIRY_MS;
        for _ in 0..20 {
            now += HEARTBEAT_MS;
            let (next, change, reclaimed) = c.heartbeat(ME, 1, now);
            assert_eq!((change, reclaimed), (0, 0));
            c = next;
            let (_, a) = admit(&c, None, Some(1), now + 10, true, OTHER);
            assert_eq!(a.slot, Some(false), "a live owner's slot was taken away");
        }
        // Its own old entry is never reclaimed by itself.
        let (_, a) = admit(&c, None, Some(2), now + 10 * OWNER_EXPIRY_MS, true, ME);
        assert_eq!((a.slot, a.reclaimed), (Some(true), 0));
    }

    #[test]
    fn a_heartbeat_puts_back_slots_given_back_while_the_owner_looked_dead() {
        let c = Counters::decode(None, None, 0);
        let (c, _) = admit(&c, None, Some(4), 1000, true, ME);
        let (c, _) = admit(&c, None, Some(4), 1000, true, ME);
        // ME stalled past the expiry; OTHER's admission gave its slots back.
        let (c, a) = admit(&c, None, Some(4), 2000 + OWNER_EXPIRY_MS, true, OTHER);
        assert_eq!(a.reclaimed, 2);
        // ME's requests are still at the function: its heartbeat counts them again.
        let (c, change, reclaimed) = c.heartbeat(ME, 2, 2100 + OWNER_EXPIRY_MS);
        assert_eq!((change, reclaimed, c.inflight()), (2, 0, 3));
        // An owner with nothing held leaves the record.
        let (c, change, _) = c.heartbeat(ME, 0, 2200 + OWNER_EXPIRY_MS);
        assert_eq!((change, c.held_by(ME)), (-2, 0));
    }

    #[test]
    fn unreadable_records_and_entries_free_their_slots() {
        for bad in [
            &b"3:1000:5"[..], // the record as written before owners
            b"x",
            b"",
            b"\xff",
        ] {
            let c = Counters::decode(Some(bad), None, 7);
            assert_eq!((c.inflight(), c.bucket.last_ms), (0, 7), "{bad:?}");
        }
        let c = Counters::decode(
            Some(b"5:6;a1:1:9;zz:1:9;b2:x:9;c3:2:9:9;d4:0:9;e5:3:8"),
            None,
            0,
        );
        assert_eq!(c.bucket.milli_tokens, 5);
        assert_eq!(
            c.holders,
            vec![
                Holder {
                    owner: 0xa1,
                    held: 1,
                    beat_ms: 9
                },
                Holder {
                    owner: 0xe5,
                    held: 3,
                    beat_ms: 8
                }
            ]
        );
    }
}
