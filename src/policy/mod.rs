//! Per-function policy decisions, without the host: the effective rules of the local function,
//! compiled once, and the checks a request goes through.
//!
//! Nothing here looks at the path: rules apply to the local function whatever path reached it,
//! so encoded or doubled slashes, case games in the prefix or `/function/<other>` with
//! `other_function: pass` cannot select a weaker rule. The caller's identity comes from the
//! connection (the mTLS peer certificate), never from a request header.
//!
//! - `rules.rs`: the rules as written ([`PolicyRules`], [`PolicyMode`], [`RateLimit`]);
//! - `check.rs`: the rules compiled ([`Policy`]) and the header checks, each a [`Reason`];
//! - `bucket.rs`: the rate limit's token bucket;
//! - `counters.rs`: the pod's shared counters: in-flight slots by owner, and [`admit`].

mod bucket;
mod check;
mod counters;
mod rules;

pub use bucket::Bucket;
pub use check::*;
pub use counters::*;
pub use rules::*;
