//! Delivery of the native build: the release bundle's native EnvoyFilter (the one for this
//! machine's architecture), applied by Istio's rules to a real sidecar listener in a real Envoy
//! 1.40, with the module fetched by Envoy's remote source from a loopback server that serves what
//! the bundle's module-server-native.yaml carries. The pinned sha256 is the bundle's module's; the
//! sidecar serves rewritten requests with a call id. With another sha256 the module is never
//! loaded and the sidecar never serves, and why the manifest never stops retrying is pinned too.
//!
//! The bundle is `$RELEASE_BUNDLE` (set by `make integration`), else the one folder under
//! `target/release-bundle/`. The module is built for Envoy 1.40 only: on another Envoy these tests
//! fail at once, naming it (`make integration` runs them on 1.40 also when ENVOY_VERSION is older).

use faas_mesh_integration::envoy::envoy_binary;
use faas_mesh_integration::http::{Request, Response};
use faas_mesh_integration::istio::{
    rewrite_port, yaml_documents, IstioData, Mesh, Sidecar, SidecarOptions, DUMP_PORT,
    FUNCTION_PORT,
};
use faas_mesh_integration::release_bundle;
use faas_mesh_integration::server::{reply, serve, Reply};
use faas_mesh_integration::stand_in::StandInFunction;
use faas_mesh_integration::tls::Pki;
use faas_mesh_tools::render::{Arch, NATIVE_MODULE_CLUSTER};
use faas_mesh_tools::{base64, sha256_hex};
use serde_json::Value;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The Envoy release the native module is built and tested for: `$NATIVE_ENVOY_VERSION` (set by
/// `make integration-native`), else the Makefile's default.
fn native_envoy_version() -> String {
    std::env::var("NATIVE_ENVOY_VERSION")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "1.40.0".to_string())
}

/// Stops the test unless the Envoy under test is the one the native module is built for: `make
/// integration` runs this suite on that Envoy only (`NATIVE_ENVOY_VERSION`), so another one is a
/// mistake in how the suite was started, not a case to pass quietly.
fn assert_native_envoy() {
    let expected = native_envoy_version();
    let binary = envoy_binary().expect("envoy binary");
    let output = std::process::Command::new(&binary)
        .arg("--version")
        .output()
        .expect("envoy --version");
    let version = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        version.contains(&format!("/{expected}/")),
        "the native module is built for Envoy {expected}; {} is {} (run `make \
         integration-native`, which uses that Envoy)",
        binary.display(),
        version.trim()
    );
}

/// What a sidecar of these tests has, as istio-proxy would: a writable TMPDIR of its own (Envoy
/// stores a fetched module there, and loads it from there without a fetch the next time) and the
/// pod's downward-API files (the function's name). Envoy takes them from this process's
/// environment, so the tests of this file run one at a time, each holding the returned guard.
async fn sidecar_environment() -> (tokio::sync::MutexGuard<'static, ()>, tempfile::TempDir) {
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    static SYSTEM_TMP: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let guard = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::Builder::new()
        .prefix("faas-mesh-native-")
        .tempdir_in(SYSTEM_TMP.get_or_init(std::env::temp_dir))
        .expect("tempdir");
    let tmp = dir.path().join("tmp");
    let pod = dir.path().join("pod");
    std::fs::create_dir_all(&tmp).expect("tmp");
    std::fs::create_dir_all(&pod).expect("pod");
    std::fs::write(pod.join("labels"), "faas_function=\"env\"\n").expect("labels");
    std::fs::write(pod.join("annotations"), "").expect("annotations");
    std::fs::write(pod.join("namespace"), "openfaas-fn").expect("namespace");
    std::env::set_var("TMPDIR", &tmp);
    std::env::set_var("FAAS_MESH_POD_INFO_DIR", &pod);
    std::env::set_var("POD_NAMESPACE", "openfaas-fn");
    (guard, dir)
}

fn this_arch() -> Arch {
    match std::env::consts::ARCH {
        "x86_64" => Arch::Amd64,
        "aarch64" => Arch::Arm64,
        other => panic!("the release has no native module for {other}"),
    }
}

/// The bundle's native module for `arch`, after checking SHA256SUMS lists it with its sum.
fn bundled_module(bundle: &Path, arch: Arch) -> Vec<u8> {
    let file = format!("native/{}", arch.module_path());
    let so = std::fs::read(bundle.join(&file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    let sums = std::fs::read_to_string(bundle.join("SHA256SUMS")).expect("SHA256SUMS");
    assert!(
        sums.lines()
            .any(|l| l == format!("{}  {file}", sha256_hex(&so))),
        "SHA256SUMS does not list {file} with its sha256"
    );
    so
}

fn manifest(bundle: &Path, name: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(bundle.join("manifests").join(name))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    yaml_documents(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The remote source of the dynamic-modules filter in an EnvoyFilter.
fn remote_source(doc: &mut Value) -> &mut Value {
    doc["spec"]["configPatches"]
        .as_array_mut()
        .expect("configPatches")
        .iter_mut()
        .find_map(|p| {
            p.pointer_mut("/patch/value/typed_config/dynamic_module_config/module/remote")
        })
        .expect("an HTTP_FILTER patch with dynamic_module_config.module.remote")
}

/// The module server of a test: serves `module` at `path` on a loopback port, counts fetches.
struct ModuleServer {
    addr: SocketAddr,
    state: Arc<Served>,
    task: tokio::task::JoinHandle<()>,
}

struct Served {
    path: String,
    module: Vec<u8>,
    fetches: AtomicU64,
}

impl ModuleServer {
    async fn start(path: String, module: Vec<u8>) -> ModuleServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Served {
            path,
            module,
            fetches: AtomicU64::new(0),
        });
        async fn handle(
            request: hyper::Request<hyper::body::Incoming>,
            state: Arc<Served>,
        ) -> Result<Reply, Infallible> {
            state.fetches.fetch_add(1, Ordering::SeqCst);
            Ok(if request.uri().path() == state.path {
                reply(200, "application/octet-stream", state.module.clone())
            } else {
                reply(404, "text/plain", Vec::new())
            })
        }
        let task = tokio::spawn(serve(listener, state.clone(), handle));
        ModuleServer { addr, state, task }
    }

    fn fetches(&self) -> u64 {
        self.state.fetches.load(Ordering::SeqCst)
    }
}

impl Drop for ModuleServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The bundle's native EnvoyFilter for this machine, the module it pins, and a loopback server
/// serving that module where the bundle's module server serves it (checked against
/// module-server-native.yaml).
async fn bundle_route() -> (Value, Vec<u8>, ModuleServer) {
    let bundle = release_bundle();
    let arch = this_arch();
    let so = bundled_module(&bundle, arch);
    let mut doc = manifest(&bundle, arch.envoyfilter_file()).remove(0);
    let remote = remote_source(&mut doc).clone();
    assert_eq!(remote["sha256"], sha256_hex(&so).as_str());
    assert_eq!(remote["http_uri"]["cluster"], NATIVE_MODULE_CLUSTER);
    let uri = remote["http_uri"]["uri"].as_str().expect("uri");
    let path = format!("/{}", arch.module_path());
    assert!(
        uri.ends_with(&path),
        "{uri} is not the module's path {path}"
    );

    // The bundle's module server carries this module, projected at that path.
    let server = manifest(&bundle, "module-server-native.yaml");
    let deployment = server
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("Deployment");
    let source = deployment["spec"]["template"]["spec"]["volumes"][0]["projected"]["sources"]
        .as_array()
        .expect("projected sources")
        .iter()
        .find(|s| s["configMap"]["items"][0]["path"] == arch.module_path().as_str())
        .expect("the module's path in the server's volume");
    let configmap = server
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == source["configMap"]["name"])
        .expect("the module's ConfigMap");
    let key = source["configMap"]["items"][0]["key"]
        .as_str()
        .expect("key");
    assert_eq!(configmap["binaryData"][key], base64(&so).as_str());

    let module_server = ModuleServer::start(path, so.clone()).await;
    (doc, so, module_server)
}

/// A function behind a sidecar that runs `doc` (applied by Istio's rules to the real listener),
/// its module server at `server`.
async fn native_sidecar(doc: &Value, server: SocketAddr) -> (StandInFunction, Sidecar, Pki) {
    let data = IstioData::load().unwrap_or_else(|e| panic!("{e}"));
    let mut listener = data.virtual_inbound().expect("virtualInbound");
    rewrite_port(&mut listener, DUMP_PORT, FUNCTION_PORT, true);
    let mut mesh = Mesh::new(listener);
    mesh.apply_envoyfilter(doc)
        .unwrap_or_else(|e| panic!("{e}"));
    let pki = Pki::new().expect("pki");
    let function = StandInFunction::start().await.expect("function");
    let options = SidecarOptions {
        function_port: function.port(),
        // For a Wasm filter's local file; the native filter has none.
        module: PathBuf::from("/nonexistent"),
        module_server: Some((NATIVE_MODULE_CLUSTER.to_string(), server)),
        labels: vec![("faas_function".into(), "env".into())],
        namespace: "openfaas-fn".into(),
        stats_inclusion_prefixes: vec!["dynamic_modules".into()],
        tls: pki.server(),
        concurrency: 2,
        dynamic_listeners: false,
    };
    let sidecar = Sidecar::start(&mesh, &data, &options)
        .await
        .expect("Envoy with Istio's bootstrap and listener");
    (function, sidecar, pki)
}

async fn live(sidecar: &Sidecar) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !sidecar.ready().await {
        assert!(Instant::now() < deadline, "{}", sidecar.log_tail(30));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn call_id(response: &Response) -> Option<&str> {
    response.header("x-call-id")
}

/// Envoy's counts of a remote module it gave up or could not load, and of a configuration the
/// loaded module refused.
const FETCH_ERRORS: &str = "dynamic_modules.remote_fetch_error.config_name.faas-mesh-filter";
const CONFIG_ERRORS: &str = "dynamic_modules.config_init_error.config_name.faas-mesh-filter";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bundles_native_envoyfilter_loads_the_module_it_pins_from_the_module_server() {
    assert_native_envoy();
    let _environment = sidecar_environment().await;
    let (doc, _, server) = bundle_route().await;
    let (function, sidecar, _pki) = native_sidecar(&doc, server.addr).await;
    live(&sidecar).await;
    assert!(server.fetches() >= 1);
    assert_eq!(sidecar.stat(FETCH_ERRORS).await, 0);
    assert_eq!(sidecar.stat(CONFIG_ERRORS).await, 0);
    let response = sidecar.get("/function/env/a?x=1").await;
    assert_eq!(response.status, 200, "{}", sidecar.log_tail(30));
    assert!(
        call_id(&response).is_some(),
        "no call id: the module did not run"
    );
    assert_eq!(
        function.received().last().expect("a call")["path"],
        "/a?x=1"
    );
    assert_eq!(sidecar.get("/function/other/").await.status, 404);
    let log = sidecar.log();
    assert!(
        log.contains("Dynamic module ABI version"),
        "{}",
        sidecar.log_tail(30)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_other_than_the_pinned_one_is_never_loaded_and_nothing_is_served() {
    assert_native_envoy();
    let _environment = sidecar_environment().await;
    let (mut doc, so, server) = bundle_route().await;
    // The server serves the bundle's module; the EnvoyFilter pins other bytes (an older release).
    remote_source(&mut doc)["sha256"] = Value::from(sha256_hex(b"another build"));
    let (function, sidecar, _pki) = native_sidecar(&doc, server.addr).await;
    // Envoy fetches, refuses the bytes and fetches again, without end.
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.fetches() < 3 {
        assert!(
            Instant::now() < deadline,
            "Envoy did not retry\n{}",
            sidecar.log_tail(30)
        );
        if let Ok(response) =
            faas_mesh_integration::http::send(sidecar.declared, &Request::get("/function/env/a"))
                .await
        {
            panic!(
                "the sidecar served while its module was refused: {} {}",
                response.status,
                response.text()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!sidecar.ready().await, "Envoy is ready without its module");
    assert_eq!(function.calls(), 0, "a request reached the function");
    assert_eq!(
        sidecar.stat(FETCH_ERRORS).await,
        0,
        "Envoy gave up the fetch"
    );
    assert!(
        !sidecar.log().contains("Dynamic module ABI version"),
        "a module was loaded\n{}",
        sidecar.log_tail(30)
    );
    // The module the server serves is the bundle's, just not the pinned one.
    assert!(!so.is_empty());
}

/// Why the native EnvoyFilter retries without end, pinned so that a fixed Envoy shows up here:
/// once Envoy 1.40 gives up a remote module, it leaves the dynamic-modules filter out of the
/// chain and requests reach the function unfiltered (source/extensions/filters/http/
/// dynamic_modules/factory.cc: the factory for a failed fetch adds no filter). The Wasm filter's
/// remote source fails closed instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_envoy_gives_up_leaves_the_filter_out() {
    assert_native_envoy();
    let _environment = sidecar_environment().await;
    let (mut doc, _, server) = bundle_route().await;
    let remote = remote_source(&mut doc);
    remote["sha256"] = Value::from(sha256_hex(b"another build"));
    remote["retry_policy"] = serde_json::json!({
        "num_retries": 1,
        "retry_back_off": { "base_interval": "0.1s", "max_interval": "0.2s" },
    });
    let (function, sidecar, _pki) = native_sidecar(&doc, server.addr).await;
    live(&sidecar).await;
    // Once per filter chain the EnvoyFilter patched (the port's mTLS and plaintext chains).
    assert!(sidecar.stat(FETCH_ERRORS).await >= 1);
    let response = sidecar.get("/function/env/a").await;
    assert_eq!(response.status, 200);
    assert_eq!(call_id(&response), None);
    assert_eq!(
        function.received().last().expect("a call")["path"],
        "/function/env/a",
        "the request reached the function unfiltered"
    );
}

/// A configuration the module refuses, in the remote EnvoyFilter, is logged with the module's
/// own line and counted, and Envoy 1.40 then leaves the filter out as for a given-up fetch: the
/// reason to run the checker before applying (docs/operator-guide.md, "What can go wrong").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configuration_the_module_refuses_leaves_the_filter_out_and_says_why() {
    assert_native_envoy();
    let _environment = sidecar_environment().await;
    let (mut doc, _, server) = bundle_route().await;
    let bad = r#"{"policy": {"functions": {"env": {"max_inflight": -1}}}}"#;
    for patch in doc["spec"]["configPatches"]
        .as_array_mut()
        .expect("configPatches")
    {
        if let Some(value) = patch.pointer_mut("/patch/value/typed_config/filter_config/value") {
            *value = Value::from(bad);
        }
    }
    let (function, sidecar, _pki) = native_sidecar(&doc, server.addr).await;
    live(&sidecar).await;
    let line = "invalid configuration: policy.functions.env.max_inflight: expected a positive \
                integer, got -1";
    let log = sidecar.log_when(|log| log.contains(line)).await;
    assert!(log.contains(line), "{}", sidecar.log_tail(30));
    assert!(sidecar.stat(CONFIG_ERRORS).await >= 1);
    assert_eq!(sidecar.stat(FETCH_ERRORS).await, 0);
    let response = sidecar.get("/function/env/a").await;
    assert_eq!(call_id(&response), None);
    assert_eq!(
        function.received().last().expect("a call")["path"],
        "/function/env/a",
        "the request reached the function unfiltered"
    );
}
