//! Where the OpenFaaS binaries are: built by `make openfaas`, or named by the environment.

use std::io;
use std::path::PathBuf;

fn binary(var: &str, name: &str) -> io::Result<PathBuf> {
    let path = std::env::var_os(var)
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::repo_root().join("target/openfaas").join(name));
    if path.is_file() {
        Ok(path)
    } else {
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "no {name} at {}: run `make openfaas` (builds of-watchdog and the gateway at their \
                 pinned commits with Debian's golang-go; THIRDPARTY=<mirror> or git gives the \
                 source) or set {var}",
                path.display()
            ),
        ))
    }
}

/// The of-watchdog binary: `$OF_WATCHDOG_BIN`, else `target/openfaas/of-watchdog`.
pub fn watchdog_binary() -> io::Result<PathBuf> {
    binary("OF_WATCHDOG_BIN", "of-watchdog")
}

/// The gateway binary: `$OF_GATEWAY_BIN`, else `target/openfaas/of-gateway`.
pub fn gateway_binary() -> io::Result<PathBuf> {
    binary("OF_GATEWAY_BIN", "of-gateway")
}
