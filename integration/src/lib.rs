//! Test harness for faas-mesh-filter: everything runs for real, on loopback, started and stopped by
//! the test that uses it.
//!
//! - [`stand_in::StandInFunction`]: an OpenFaaS-like function (watchdog health and readiness
//!   endpoints, echoes what it received);
//! - [`envoy::Envoy`]: the pinned Envoy binary, configured from the patches in
//!   `envoyfilter/envoyfilter.yaml`, with the release `.wasm` loaded by file-based ECDS, or the
//!   native `.so` in its place ([`filter_build`]: `FAAS_MESH_BUILD=wasm|native`);
//! - [`http`]: a small HTTP/1.1 client that sends exactly the bytes a test asks for (duplicate
//!   headers, odd request targets), and an HTTP/2 (prior knowledge) client;
//! - [`tls::Pki`]: a mesh CA, the listener's certificate and SPIFFE client identities;
//! - [`server`]: the one HTTP/1.1 server loop every in-test server runs, with its handler;
//! - [`ports::ReservedPort`]: a loopback port held for a process the test starts later;
//! - [`openfaas`]: the real of-watchdog and gateway, in network namespaces the test creates.

pub mod envoy;
pub mod envoy_process;
pub mod filter_build;
pub mod http;
pub mod istio;
pub mod manifest;
pub mod openfaas;
pub mod ports;
pub mod server;
pub mod stand_in;
pub mod tls;

use std::path::PathBuf;

/// Has the kernel kill the child `command` starts if the thread that started it (the test) goes
/// away without stopping it, so a failed test leaves no process behind.
pub(crate) fn dies_with_the_test(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent; an exec'ed program
    // keeps the setting (`ip netns exec` execs the program itself).
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The repository root (the parent of this crate).
pub fn repo_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}

/// The release bundle the delivery suites test: `$RELEASE_BUNDLE` (set by `make integration`),
/// else the one bundle under `target/release-bundle/`; panics, naming what to run, when there is
/// none.
pub fn release_bundle() -> PathBuf {
    if let Some(dir) = std::env::var_os("RELEASE_BUNDLE").filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        assert!(
            dir.join("SHA256SUMS").is_file(),
            "RELEASE_BUNDLE={} holds no bundle: run `make release`",
            dir.display()
        );
        return dir;
    }
    let parent = repo_root().join("target/release-bundle");
    let found: Vec<PathBuf> = std::fs::read_dir(&parent)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.join("SHA256SUMS").is_file())
                .collect()
        })
        .unwrap_or_default();
    match found.as_slice() {
        [one] => one.clone(),
        _ => panic!(
            "expected one release bundle in {} (found {}): run `make release` or set RELEASE_BUNDLE",
            parent.display(),
            found.len()
        ),
    }
}
