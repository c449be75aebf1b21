//! The real of-watchdog in a namespace, and the processes the harness starts there.

use super::{watchdog_binary, Netns};
use crate::http::Request;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A process started in a namespace, killed when dropped; its output kept in a temporary
/// directory (printed when a test fails).
pub struct Process {
    pub(super) child: Child,
    pub(super) dir: tempfile::TempDir,
    pub(super) what: &'static str,
}

impl Process {
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("output.log")).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- {} output (tail) ---", self.what);
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!("{}", lines[lines.len().saturating_sub(30)..].join("\n"));
        }
    }
}

/// The real of-watchdog on :8080 inside `ns` (its metrics on :8081 there too), with its own
/// temporary directory (`TMPDIR`: the lock file it writes once ready is per watchdog).
pub fn start_watchdog(ns: &Netns, env: &[(&str, &str)]) -> io::Result<Process> {
    let binary = watchdog_binary()?;
    let dir = tempfile::Builder::new()
        .prefix("faas-mesh-watchdog-")
        .tempdir()?;
    let mut vars = vec![
        ("TMPDIR".to_string(), dir.path().display().to_string()),
        ("port".to_string(), "8080".to_string()),
    ];
    vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let child = ns.spawn(&binary, &vars, &dir.path().join("output.log"))?;
    Ok(Process {
        child,
        dir,
        what: "of-watchdog",
    })
}

/// Waits until something inside `ns` answers `GET path` on `addr` with `status`.
pub async fn wait_for(
    ns: &Arc<Netns>,
    addr: SocketAddr,
    path: &str,
    status: u16,
    limit: Duration,
) -> io::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(response) = ns.send(addr, &Request::get(path)).await {
            if response.status == status {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{addr}{path} did not answer {status} within {limit:?}"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
