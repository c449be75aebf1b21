//! A running Envoy that a test started: the one command line every test Envoy runs with, its
//! process, its working folder, its logs, its admin stats and the one check of what Envoy did with
//! an extension configuration. Every Envoy the tests start is held in one of these, so each is
//! killed and reaped with its test, and a failing test prints the tail of its log.

use crate::filter_build::FilterBuild;
use crate::http::{self, Request, Response};
use serde_json::Value;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long Envoy may take to start, or to apply a pushed configuration (V8 compiles the module
/// on each worker; a loaded 2-core CI machine is slow).
pub const STARTUP_LIMIT: Duration = Duration::from_secs(60);

/// What Envoy did with a plugin configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigOutcome {
    /// The plugin started with it (the ECDS counter `update_success` went up).
    Accepted,
    /// The plugin refused it (`update_rejected` or `update_failure` went up); the previous one,
    /// if any, stays.
    Rejected,
}

/// The extension-config-discovery counters of one filter: (`update_success`, rejected), where
/// rejected counts `update_rejected` and `update_failure`.
pub type EcdsCounters = (u64, u64);

pub struct EnvoyProcess {
    child: Child,
    dir: tempfile::TempDir,
    admin: SocketAddr,
}

impl EnvoyProcess {
    /// Writes `bootstrap` into `dir`, starts Envoy on it with `concurrency` workers, and waits
    /// until its admin port answers. Envoy writes `envoy.log` and `stdout-stderr.log` into `dir`,
    /// which lives as long as the process. For the native build Envoy gets the environment of
    /// [`crate::filter_build::envoy_environment`] (the pod folder that
    /// [`crate::envoy::EnvoyOptions::bootstrap_yaml`] wrote into `dir`).
    pub async fn start(
        dir: tempfile::TempDir,
        bootstrap: &Value,
        concurrency: u32,
    ) -> io::Result<EnvoyProcess> {
        let binary = crate::envoy::envoy_binary()?;
        let build = FilterBuild::current();
        let bootstrap_path = dir.path().join("bootstrap.json");
        std::fs::write(&bootstrap_path, serde_json::to_vec_pretty(bootstrap)?)?;
        let admin_file = dir.path().join("admin-address");
        let output = std::fs::File::create(dir.path().join("stdout-stderr.log"))?;
        let mut command = Command::new(&binary);
        command
            .arg("--config-path")
            .arg(&bootstrap_path)
            .args(["--disable-hot-restart", "--concurrency"])
            .arg(concurrency.to_string())
            .arg("--admin-address-path")
            .arg(&admin_file)
            .arg("--log-path")
            .arg(dir.path().join("envoy.log"))
            .args(["--log-level", "info", "--component-log-level"])
            .arg(format!("{}:debug", build.log_component()))
            // Flush the log often, so a test reads what the filter just logged.
            .args(["--file-flush-interval-msec", "20"])
            .stdin(Stdio::null())
            .stdout(output.try_clone()?)
            .stderr(output);
        for (name, value) in crate::filter_build::envoy_environment(build, dir.path()) {
            match value {
                Some(value) => command.env(name, value),
                None => command.env_remove(name),
            };
        }
        crate::dies_with_the_test(&mut command);
        let child = command
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("starting {}: {e}", binary.display())))?;
        let mut process = EnvoyProcess {
            child,
            dir,
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let deadline = Instant::now() + STARTUP_LIMIT;
        loop {
            process.check_running()?;
            if let Some(addr) = std::fs::read_to_string(&admin_file)
                .ok()
                .and_then(|t| t.trim().parse().ok())
            {
                process.admin = addr;
                return Ok(process);
            }
            if Instant::now() > deadline {
                return Err(process.failure("Envoy did not open its admin port"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn admin(&self) -> SocketAddr {
        self.admin
    }

    /// `GET target` on the admin port.
    pub async fn admin_get(&self, target: &str) -> io::Result<Response> {
        http::send(self.admin, &Request::get(target)).await
    }

    /// Waits until the admin's `/listeners?format=json` gives what `found` looks for.
    pub async fn wait_for_listener<T>(
        &mut self,
        what: &str,
        found: impl Fn(&Value) -> Option<T>,
    ) -> io::Result<T> {
        let deadline = Instant::now() + STARTUP_LIMIT;
        loop {
            self.check_running()?;
            let response = self.admin_get("/listeners?format=json").await?;
            if response.status == 200 {
                let listeners: Value = serde_json::from_slice(&response.body)?;
                if let Some(value) = found(&listeners) {
                    return Ok(value);
                }
            }
            if Instant::now() > deadline {
                return Err(self.failure(&format!("Envoy did not open {what}")));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every counter and gauge, by name.
    pub async fn stats(&self) -> io::Result<Vec<(String, u64)>> {
        let response = self.admin_get("/stats").await?;
        Ok(response
            .text()
            .lines()
            .filter_map(|line| {
                let (name, value) = line.split_once(": ")?;
                Some((name.to_string(), value.trim().parse().ok()?))
            })
            .collect())
    }

    /// One counter or gauge; 0 when Envoy has not created it.
    pub async fn stat(&self, name: &str) -> io::Result<u64> {
        Ok(find_stat(&self.stats().await?, name))
    }

    /// The ECDS counters of the http filter Envoy knows as `filter`.
    pub async fn ecds_counters(&self, filter: &str) -> io::Result<EcdsCounters> {
        let stats = self.stats().await?;
        let get = |counter: &str| find_stat(&stats, &ecds_stat(filter, counter));
        Ok((
            get("update_success"),
            get("update_rejected") + get("update_failure"),
        ))
    }

    /// The one acceptance check: waits until Envoy has accepted or rejected a new version of
    /// `filter`'s configuration (its ECDS counters move past `before`).
    pub async fn wait_for_config_outcome(
        &mut self,
        filter: &str,
        before: EcdsCounters,
    ) -> io::Result<ConfigOutcome> {
        let deadline = Instant::now() + STARTUP_LIMIT;
        loop {
            self.check_running()?;
            let (success, rejected) = self.ecds_counters(filter).await?;
            if rejected > before.1 {
                return Ok(ConfigOutcome::Rejected);
            }
            if success > before.0 {
                return Ok(ConfigOutcome::Accepted);
            }
            if Instant::now() > deadline {
                return Err(self.failure(&format!(
                    "the configuration of {filter} was neither accepted nor rejected"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Envoy's log so far (the filter logs under [`FilterBuild::log_component`]).
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

/// Envoy's name for one of the filter's stats for `function` (`metric` as the filter names it,
/// e.g. `readiness.pending`): the filter's own [`faas_mesh_filter::metrics::name`] under the
/// prefix where Envoy shows the build's stats ([`FilterBuild::stats_prefix`]: `wasmcustom.` for
/// a Wasm module, `dynamicmodulescustom.` for a dynamic module).
pub fn filter_stat_name(function: &str, metric: &str) -> String {
    format!(
        "{}{}",
        FilterBuild::current().stats_prefix(),
        faas_mesh_filter::metrics::name(function, metric)
    )
}

/// Envoy's name for a policy outcome with its reason (`method`, `denied`), from the filter's own
/// [`faas_mesh_filter::metrics::policy_reason`].
pub fn policy_stat_name(function: &str, reason: &str, outcome: &str) -> String {
    format!(
        "{}{}",
        FilterBuild::current().stats_prefix(),
        faas_mesh_filter::metrics::policy_reason(function, reason, outcome)
    )
}

/// The name of one of `filter`'s extension-config-discovery counters
/// (`update_success`, `update_rejected`, `config_fail`, ...).
pub fn ecds_stat(filter: &str, counter: &str) -> String {
    format!("extension_config_discovery.http_filter.{filter}.{counter}")
}

fn find_stat(stats: &[(String, u64)], name: &str) -> u64 {
    stats
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| *v)
        .unwrap_or(0)
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
