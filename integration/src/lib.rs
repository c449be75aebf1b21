//! Test harness for faas-mesh-filter: everything runs for real, on loopback, started and stopped by
//! the test that uses it.
//!
//! - [`stand_in::StandInFunction`]: an OpenFaaS-like function (watchdog health and readiness
//!   endpoints, echoes what it received);
//! - [`envoy::Envoy`]: the pinned Envoy binary, configured from the patches in
//!   `envoyfilter/envoyfilter.yaml`, with the release `.wasm` loaded by file-based ECDS;
//! - [`http`]: a small HTTP/1.1 client that sends exactly the bytes a test asks for (duplicate
//!   headers, odd request targets), and an HTTP/2 (prior knowledge) client;
//! - [`tls::Pki`]: a mesh CA, the listener's certificate and SPIFFE client identities.

pub mod envoy;
pub mod http;
pub mod manifest;
pub mod stand_in;
pub mod tls;

use std::path::PathBuf;

/// The repository root (the parent of this crate).
pub fn repo_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}

/// A loopback port that was free a moment ago, for a process a test starts later (a function
/// that comes up after Envoy). Another process could take it in between; on loopback, in a test
/// run, that is rare enough.
pub fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}
