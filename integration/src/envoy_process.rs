//! A running Envoy that a test started: its process, its working folder and its logs. Every
//! Envoy the tests start is held in one of these, so each is killed and reaped with its test, and
//! a failing test prints the tail of its log.

use std::io;
use std::path::Path;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

pub struct EnvoyProcess {
    child: Child,
    dir: tempfile::TempDir,
}

impl EnvoyProcess {
    /// `child` writes `envoy.log` (its `--log-path`) and `stdout-stderr.log` into `dir`, which
    /// lives as long as the process.
    pub fn new(child: Child, dir: tempfile::TempDir) -> EnvoyProcess {
        EnvoyProcess { child, dir }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Envoy's log so far (the filter logs under the `wasm` component).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("envoy.log")).unwrap_or_default()
    }

    /// The log once it satisfies `done` (Envoy flushes it every 20 ms), or as it is after 30
    /// seconds (it returns as soon as `done` holds; the bound is for a loaded machine).
    pub async fn log_when(&self, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = self.log();
            if done(&log) || Instant::now() > deadline {
                return log;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn output(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stdout-stderr.log")).unwrap_or_default()
    }

    /// How Envoy exited, if it did, and what it wrote to stdout/stderr.
    pub fn exited(&mut self) -> Option<(ExitStatus, String)> {
        let status = self.child.try_wait().ok()??;
        Some((status, self.output()))
    }

    /// An error naming how Envoy exited, if it did.
    pub fn check_running(&mut self) -> io::Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => Err(self.failure(&format!("Envoy exited ({status})"))),
        }
    }

    /// `what` went wrong, with the tail of Envoy's log and its stdout/stderr.
    pub fn failure(&self, what: &str) -> io::Error {
        io::Error::other(format!(
            "{what}\n--- envoy.log (tail) ---\n{}\n--- stdout/stderr ---\n{}",
            self.log_tail(40),
            self.output()
        ))
    }
}

impl Drop for EnvoyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- envoy.log of the failed test (tail) ---\n{}",
                self.log_tail(60)
            );
        }
    }
}
