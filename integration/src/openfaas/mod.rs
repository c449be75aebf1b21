//! The real OpenFaaS runtime around the filter: of-watchdog and the gateway (built by
//! `make openfaas` from source at pinned commits, see tools/thirdparty.sh), each in a network
//! namespace the test creates and deletes, because both listen on fixed ports (the watchdog on
//! :8080 and its metrics on :8081, the gateway on :8080 and :8082).
//!
//! The shape of one function pod and the gateway in front of it:
//!
//! ```text
//!  test ──► [ns G] gateway :8080 ──veth──► [ns P] 10.77.0.1:8080 ──(mTLS as the gateway)──► Envoy
//!                  provider (fake faas-netes)                                      (root ns, loopback)
//!  Envoy ──► bridge ──► [ns W] of-watchdog :8080 ──► the function's own server (in-test, killable)
//! ```
//!
//! `P` stands for the pod's address: what reaches it on :8080 is redirected to the sidecar's
//! inbound listener (Istio's iptables redirect, here an in-test forwarder that also originates the
//! mesh's mTLS with the gateway's SPIFFE identity, as the gateway's own sidecar would). Addresses
//! live inside the namespaces only; sockets are opened inside a namespace by a thread that enters
//! it (`setns`), so nothing is added to the host's network. Everything is stopped and deleted when
//! its guard is dropped, also when a test panics; the processes also die with the test process.

mod binaries;
mod forwarder;
mod function;
mod gateway;
mod netns;
mod watchdog;

pub use binaries::{gateway_binary, watchdog_binary};
pub use forwarder::{Forwarder, Upstream};
pub use function::{FunctionServer, Seen};
pub use gateway::{Gateway, GatewayOptions, Provider};
pub use netns::{link, Netns};
pub use watchdog::{start_watchdog, wait_for, Process};

/// The function every test deploys, and the service suffix the gateway appends to it.
pub const FUNCTION: &str = "env";
pub const NAMESPACE: &str = "openfaas-fn";
pub const SUFFIX: &str = "openfaas-fn.svc.cluster.local";
/// The gateway's identity under Istio mTLS (the filter's default `rewrite.gateway_principal`).
pub const GATEWAY_SPIFFE_ID: &str = "spiffe://cluster.local/ns/openfaas/sa/openfaas-controller";
/// The pod's address as the gateway sees it, and the gateway's own (inside the namespaces).
pub const POD_IP: &str = "10.77.0.1";
pub const GATEWAY_IP: &str = "10.77.0.2";

/// Summary of a set of latencies, in ms: (min, median, p90, max).
pub fn summary(mut values: Vec<f64>) -> (f64, f64, f64, f64) {
    values.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| -> f64 {
        if values.is_empty() {
            return f64::NAN;
        }
        let i = ((values.len() - 1) as f64 * q).round() as usize;
        values[i.min(values.len() - 1)]
    };
    (at(0.0), at(0.5), at(0.9), at(1.0))
}
