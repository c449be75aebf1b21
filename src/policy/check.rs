//! The policy's header rules: the effective rules of the local function compiled once, and the
//! checks a request's headers go through (peer, method, length), each a [`Reason`] when denied.

use super::rules::{PolicyMode, PolicyRules, RateLimit};

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
}
