//! The policy's rules as the operator writes them (`policy.default`, a function's entry, its
//! annotations): every rule optional, so one set overrides another key by key. The configuration
//! reads them, `annotations.rs` narrows them, [`super::Policy::compile`] compiles them.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyMode {
    Enforce,
    Audit,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub requests_per_second: f64,
    pub burst: u64,
}

/// One policy entry as written: every rule optional, so a function's entry can override the
/// default key by key.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PolicyRules {
    pub mode: Option<PolicyMode>,
    pub methods: Option<Vec<String>>,
    pub principals: Option<Vec<String>>,
    pub require_mtls: Option<bool>,
    pub max_body_bytes: Option<u64>,
    pub max_inflight: Option<u64>,
    pub rate_limit: Option<RateLimit>,
}

impl PolicyRules {
    /// `self` overridden key by key by `over`.
    pub fn merged_with(&self, over: &PolicyRules) -> PolicyRules {
        PolicyRules {
            mode: over.mode.or(self.mode),
            methods: over.methods.clone().or_else(|| self.methods.clone()),
            principals: over.principals.clone().or_else(|| self.principals.clone()),
            require_mtls: over.require_mtls.or(self.require_mtls),
            max_body_bytes: over.max_body_bytes.or(self.max_body_bytes),
            max_inflight: over.max_inflight.or(self.max_inflight),
            rate_limit: over.rate_limit.or(self.rate_limit),
        }
    }
}
