//! Conformance with real Istio data (`make istio-data`; see `faas_mesh_integration::istio`): the
//! shipped manifests applied as istiod applies them to a real sidecar's `virtualInbound`
//! listener, and run in a real Envoy with Istio's bootstrap, on both routes.
//!
//! The dump's workload serves port 80; an OpenFaaS function's port is 8080. The dump is adapted
//! by rewriting that port only (`rewrite_port`), so the bytes under test are the shipped
//! manifests with their 8080 match, not a copy rendered for the dump.

use faas_mesh_integration::envoy::filter_wasm;
use faas_mesh_integration::http::{Request, Response};
use faas_mesh_integration::istio::{
    rewrite_port, yaml_documents, ChainRef, IstioData, IstioVersion, Mesh, Sidecar, SidecarOptions,
    DUMP_PORT, FUNCTION_PORT, ISTIO_ONLY_FILTERS, TEST_DENIED_PREFIX,
};
use faas_mesh_integration::repo_root;
use faas_mesh_integration::stand_in::StandInFunction;
use faas_mesh_integration::tls::Pki;
use faas_mesh_tools::render::{render_all, File, Module};
use serde_json::Value;

const FILTER: &str = "openfaas-fn.faas-mesh-filter";
const ROUTER: &str = "envoy.filters.http.router";

fn data() -> IstioData {
    IstioData::load().unwrap_or_else(|e| panic!("{e}"))
}

/// The real `virtualInbound`, its workload port rewritten to the function's.
fn function_listener(data: &IstioData) -> Value {
    let mut listener = data.virtual_inbound().expect("virtualInbound");
    rewrite_port(&mut listener, DUMP_PORT, FUNCTION_PORT, true);
    listener
}

fn shipped_envoyfilter() -> Value {
    let text = std::fs::read_to_string(repo_root().join("envoyfilter/envoyfilter.yaml"))
        .expect("envoyfilter/envoyfilter.yaml");
    yaml_documents(&text).expect("YAML").remove(0)
}

/// Every file `make render` makes of the shipped configuration and the built module.
fn render_shipped() -> Vec<File> {
    let config = std::fs::read_to_string(repo_root().join("envoyfilter/config.json")).unwrap();
    let wasm = std::fs::read(filter_wasm().expect("module")).expect("module");
    render_all(
        &config,
        &Module {
            wasm: &wasm,
            image: "registry.example/faas-mesh-filter:test",
            version: "test",
        },
    )
    .expect("render")
}

/// The manifest `name` of [`render_shipped`], as YAML documents.
fn rendered(name: &str) -> Vec<Value> {
    let files = render_shipped();
    let file = files.iter().find(|f| f.name == name).expect(name);
    yaml_documents(&file.contents).expect("YAML")
}

fn names(chains: &[ChainRef]) -> Vec<(String, Option<u64>, String)> {
    let mut v: Vec<_> = chains
        .iter()
        .map(|c| {
            (
                c.name.clone(),
                c.destination_port,
                c.transport_protocol.clone(),
            )
        })
        .collect();
    v.sort();
    v
}

/// The two chains istiod builds for a declared HTTP port: mTLS and plaintext.
fn function_chains() -> Vec<(String, Option<u64>, String)> {
    vec![
        ("0.0.0.0_8080".into(), Some(8080), "raw_buffer".into()),
        ("0.0.0.0_8080".into(), Some(8080), "tls".into()),
    ]
}

/// The real chain's HTTP filters, Istio's own in the order istiod wrote them, with `inserted`
/// at `at`.
fn expected_order(inserted: &str, at: usize) -> Vec<String> {
    let real = [
        "istio.metadata_exchange",
        "envoy.filters.http.rbac",
        "envoy.filters.http.grpc_stats",
        "envoy.filters.http.fault",
        "envoy.filters.http.cors",
        "istio.stats",
        ROUTER,
    ];
    let mut order: Vec<String> = real.iter().map(|s| s.to_string()).collect();
    order.insert(at, inserted.to_string());
    order
}

#[test]
fn the_shipped_envoyfilter_lands_right_before_the_router_on_exactly_the_function_ports_chains() {
    let data = data();
    let mut mesh = Mesh::new(function_listener(&data));
    let untouched = mesh.clone();
    let applied = mesh
        .apply_envoyfilter(&shipped_envoyfilter())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(applied.len(), 1, "one HTTP_FILTER patch");
    assert_eq!(names(&applied[0]), function_chains());
    // Istio's chain for the port, as istiod wrote it, is what the docs show.
    for chain in &applied[0] {
        assert_eq!(
            untouched.http_filters(chain.index),
            expected_order("x", 0)[1..].to_vec(),
            "the real chain's HTTP filters"
        );
        assert_eq!(
            mesh.http_filters(chain.index),
            expected_order(FILTER, 6),
            "EnvoyFilter route: after istio.stats, right before the router"
        );
    }
    // The connection manager's request_timeout (docs/reliability.md) on exactly those chains.
    for index in 0..mesh.listener["filter_chains"]
        .as_array()
        .map_or(0, Vec::len)
    {
        let timeout = mesh.listener["filter_chains"][index]["filters"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|f| f["name"] == "envoy.filters.network.http_connection_manager")
            .map(|hcm| hcm["typed_config"]["request_timeout"].clone());
        let on_function_chain = applied[0].iter().any(|c| c.index == index);
        assert_eq!(
            timeout.as_ref().is_some_and(|t| t == "40.000s"),
            on_function_chain,
            "request_timeout on chain {index}: {timeout:?}"
        );
    }
    // The catch-all chains (a port the Service does not declare) and TCP chains: no filter.
    assert_eq!(
        names(&mesh.chains_with_http_filter(FILTER)),
        function_chains()
    );
    let catch_all = mesh.chains_with_http_filter(ROUTER);
    assert!(catch_all
        .iter()
        .any(|c| c.name == "virtualInbound-catchall-http" && c.destination_port.is_none()));
    // Istio configures fault and CORS on the caller's side: the inbound routes carry no
    // per-route config, so those two filters are inert there (docs/istio.md).
    let text = serde_json::to_string(&untouched.listener).unwrap();
    assert!(!text.contains("typed_per_filter_config"));
    // The cluster and the extension config came along, by name.
    assert_eq!(mesh.clusters.len(), 1);
    assert_eq!(mesh.clusters[0]["name"], "faas_function_local");
    assert_eq!(mesh.extension_configs.len(), 1);
    assert_eq!(mesh.extension_configs[0]["name"], FILTER);
}

#[test]
fn a_match_the_real_listener_does_not_have_is_an_error_not_a_missing_filter() {
    let data = data();
    // The dump as captured serves 80: the shipped 8080 match finds nothing there.
    let mut as_captured = Mesh::new(data.virtual_inbound().expect("virtualInbound"));
    let err = as_captured
        .apply_envoyfilter(&shipped_envoyfilter())
        .unwrap_err();
    assert!(
        err.contains("portNumber 8080 matches no inbound filter chain"),
        "{err}"
    );
    assert!(err.contains("destination ports 15006, 80, 80"), "{err}");

    let broken = |pointer: &str, value: &str| {
        let mut doc = shipped_envoyfilter();
        let patches = doc["spec"]["configPatches"].as_array_mut().unwrap();
        let patch = patches
            .iter_mut()
            .find(|p| p["applyTo"] == "HTTP_FILTER")
            .unwrap();
        *patch.pointer_mut(pointer).unwrap() = Value::from(value);
        Mesh::new(function_listener(&data))
            .apply_envoyfilter(&doc)
            .unwrap_err()
    };
    let err = broken(
        "/match/listener/filterChain/filter/subFilter/name",
        "envoy.router",
    );
    assert!(
        err.contains("subFilter.name \"envoy.router\" matches no HTTP filter"),
        "{err}"
    );
    let err = broken(
        "/match/listener/filterChain/filter/name",
        "envoy.http_connection_manager",
    );
    assert!(err.contains("filterChain.filter.name"), "{err}");
}

#[test]
fn the_wasmplugin_lands_after_rbac_and_before_istio_stats_with_each_versions_ecds_name() {
    let data = data();
    let plugin = rendered("wasmplugin.yaml")
        .into_iter()
        .find(|d| d["kind"] == "WasmPlugin")
        .expect("WasmPlugin");
    assert_eq!(plugin["spec"]["phase"], "STATS");
    for (version, resource) in [
        (
            IstioVersion::V1_29,
            "extensions.istio.io/wasmplugin/openfaas-fn.faas-mesh-filter",
        ),
        (
            IstioVersion::V1_30,
            "extensions.istio.io/trafficextension/openfaas-fn.faas-mesh-filter~istio-translated-wasmplugin",
        ),
    ] {
        let mut mesh = Mesh::new(function_listener(&data));
        let chains = mesh
            .apply_wasmplugin(&plugin, version, std::path::Path::new("/var/lib/istio/data/x.wasm"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(names(&chains), function_chains());
        for chain in &chains {
            // After Istio's authorization (rbac), before grpc_stats, fault, cors and istio.stats.
            assert_eq!(
                mesh.http_filters(chain.index),
                expected_order(resource, 2),
                "{version:?}"
            );
        }
        assert_eq!(mesh.extension_configs[0]["name"], resource);
    }
    // The ECDS resource has the shape istiod delivered in the real ECDS dump.
    let delivered = &data.ecds["configs"][0]["ecds_filters"][1]["ecds_filter"];
    let mut mesh = Mesh::new(function_listener(&data));
    mesh.apply_wasmplugin(
        &plugin,
        IstioVersion::V1_30,
        std::path::Path::new("/x.wasm"),
    )
    .unwrap();
    let ours = &mesh.extension_configs[0]["typed_config"];
    for pointer in [
        "/@type",
        "/config/vm_config/runtime",
        "/config/configuration/@type",
    ] {
        assert_eq!(
            ours.pointer(pointer),
            delivered["typed_config"].pointer(pointer),
            "{pointer}"
        );
    }
}

/// A function `env` behind an upstream Envoy built from Istio's bootstrap and the patched
/// listener.
async fn sidecar(
    mesh: &Mesh,
    module_server: Option<(String, std::net::SocketAddr)>,
) -> (StandInFunction, Sidecar, Pki) {
    let pki = Pki::new().expect("pki");
    let function = StandInFunction::start().await.expect("function");
    let options = SidecarOptions {
        function_port: function.port(),
        module: filter_wasm().expect("module"),
        module_server,
        labels: vec![("faas_function".into(), "env".into())],
        namespace: "openfaas-fn".into(),
        // Istio's own inclusion list hides the ECDS counters and the filter's stats: what
        // docs/istio.md tells operators to add.
        stats_inclusion_prefixes: vec![
            "extension_config_discovery".into(),
            "wasmcustom.faas_mesh_filter".into(),
        ],
        tls: pki.server(),
        concurrency: 2,
        dynamic_listeners: false,
    };
    let sidecar = Sidecar::start(mesh, &data(), &options)
        .await
        .expect("Envoy with Istio's bootstrap and listener");
    let mut removed: Vec<&str> = sidecar
        .removed
        .iter()
        .map(|r| r.split_once(' ').unwrap().1)
        .collect();
    removed.sort();
    removed.dedup();
    let mut istio_only = ISTIO_ONLY_FILTERS.to_vec();
    istio_only.sort();
    assert_eq!(
        removed, istio_only,
        "only the istio-proxy filters are removed"
    );
    (function, sidecar, pki)
}

fn call_id(response: &Response) -> Option<&str> {
    response.header("x-call-id")
}

/// What holds on both routes: the filter serves the declared port, an AuthorizationPolicy
/// answers before it (no call id), and a port the Service does not declare has no filter.
async fn both_routes(sidecar: &Sidecar, function: &StandInFunction) {
    let response = sidecar.get("/function/env/a?x=1").await;
    assert_eq!(response.status, 200, "{}", sidecar.log_tail(30));
    assert!(call_id(&response).is_some());
    assert_eq!(function.received().last().unwrap()["path"], "/a?x=1");
    let other = sidecar.get("/function/other/").await;
    assert_eq!(other.status, 404);
    assert!(
        call_id(&other).is_some(),
        "the filter's own replies carry a call id"
    );

    // rbac (an AuthorizationPolicy) answers first: its 403 has no call id, the gate never saw it.
    let calls = function.calls();
    let denied = sidecar.get(&format!("{TEST_DENIED_PREFIX}/x")).await;
    assert_eq!(denied.status, 403);
    assert_eq!(denied.text(), "RBAC: access denied");
    assert_eq!(call_id(&denied), None);
    assert_eq!(function.calls(), calls);

    // A port the Service does not declare: Istio's catch-all chain, without the filter. The
    // request reaches the function as sent: no rewrite, no call id, no policy.
    let undeclared =
        faas_mesh_integration::http::send(sidecar.undeclared, &Request::get("/function/other/raw"))
            .await
            .expect("undeclared port");
    assert_eq!(undeclared.status, 200);
    assert_eq!(call_id(&undeclared), None);
    assert_eq!(
        function.received().last().unwrap()["path"],
        "/function/other/raw"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_envoyfilter_route_in_a_real_sidecar_listener_and_bootstrap() {
    let data = data();
    let mut mesh = Mesh::new(function_listener(&data));
    mesh.apply_envoyfilter(&shipped_envoyfilter()).unwrap();
    let (function, mut sidecar, _pki) = sidecar(&mesh, None).await;
    assert!(
        sidecar.ecds_outcome(FILTER).await.expect("ECDS"),
        "{}",
        sidecar.log_tail(40)
    );
    // Envoy runs the chain as the docs show it (istio.stats removed: upstream lacks it).
    assert_eq!(
        sidecar.running_http_filters("0.0.0.0_8080").await.unwrap(),
        [
            "envoy.filters.http.rbac",
            "envoy.filters.http.grpc_stats",
            "envoy.filters.http.fault",
            "envoy.filters.http.cors",
            FILTER,
            ROUTER
        ]
    );
    both_routes(&sidecar, &function).await;

    // fault runs before the gate: its abort has no call id, even for a call the gate refuses.
    let aborted = sidecar
        .send(&Request::get("/function/other/").header("x-envoy-fault-abort-request", "503"))
        .await
        .unwrap();
    assert_eq!(aborted.status, 503);
    assert_eq!(call_id(&aborted), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wasmplugin_route_in_a_real_sidecar_listener_and_bootstrap() {
    let data = data();
    let docs = rendered("wasmplugin.yaml");
    let plugin = docs.iter().find(|d| d["kind"] == "WasmPlugin").unwrap();
    let probe = docs.iter().find(|d| d["kind"] == "EnvoyFilter").unwrap();
    let mut mesh = Mesh::new(function_listener(&data));
    let resource = IstioVersion::V1_30.ecds_name("openfaas-fn", "faas-mesh-filter");
    // The module istio-agent would have pulled (the image's layer is the built module).
    mesh.apply_wasmplugin(plugin, IstioVersion::V1_30, &filter_wasm().unwrap())
        .unwrap();
    mesh.apply_envoyfilter(probe).unwrap();
    let (function, mut sidecar, _pki) = sidecar(&mesh, None).await;
    assert!(
        sidecar.ecds_outcome(&resource).await.expect("ECDS"),
        "{}",
        sidecar.log_tail(40)
    );
    assert_eq!(
        sidecar.running_http_filters("0.0.0.0_8080").await.unwrap(),
        [
            "envoy.filters.http.rbac",
            &resource,
            "envoy.filters.http.grpc_stats",
            "envoy.filters.http.fault",
            "envoy.filters.http.cors",
            ROUTER
        ]
    );
    both_routes(&sidecar, &function).await;

    // The gate runs before fault: a call the gate refuses is refused by it, whatever fault
    // would have done; one it admits then meets the abort.
    let refused = sidecar
        .send(&Request::get("/function/other/").header("x-envoy-fault-abort-request", "503"))
        .await
        .unwrap();
    assert_eq!(refused.status, 404);
    assert!(call_id(&refused).is_some());
    let calls = function.calls();
    let aborted = sidecar
        .send(&Request::get("/function/env/a").header("x-envoy-fault-abort-request", "503"))
        .await
        .unwrap();
    assert_eq!(aborted.status, 503);
    assert_eq!(function.calls(), calls);
}

/// The module server of a test: serves `module` at `/faas_mesh_filter.wasm` on a loopback port
/// it picks, counts the fetches, stops when dropped.
struct ModuleServer {
    addr: std::net::SocketAddr,
    fetches: std::sync::Arc<std::sync::atomic::AtomicU64>,
    module: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ModuleServer {
    async fn start(module: Vec<u8>) -> ModuleServer {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let fetches = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = fetches.clone();
        let module = std::sync::Arc::new(std::sync::Mutex::new(module));
        let serving = module.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let module = serving.lock().unwrap().clone();
                let counter = counter.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let found = head.starts_with(b"GET /faas_mesh_filter.wasm ");
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let (status, body): (&str, &[u8]) = if found {
                        ("200 OK", &module)
                    } else {
                        ("404 Not Found", b"")
                    };
                    let reply = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/wasm\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = stream.write_all(reply.as_bytes()).await;
                    let _ = stream.write_all(body).await;
                });
            }
        });
        ModuleServer {
            addr,
            fetches,
            module,
            task,
        }
    }

    /// From now on, serves `module` (a new release's ConfigMap).
    fn serve(&self, module: Vec<u8>) {
        *self.module.lock().unwrap() = module;
    }

    fn fetches(&self) -> u64 {
        self.fetches.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for ModuleServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The rendered EnvoyFilter that fetches the module (`vm_config.code.remote`), and the cluster
/// it fetches through.
fn remote_envoyfilter() -> (Value, String) {
    let files = render_shipped();
    let wasm = std::fs::read(filter_wasm().expect("module")).expect("module");
    for file in &files {
        for doc in yaml_documents(&file.contents).expect("YAML") {
            if doc["kind"] != "EnvoyFilter" {
                continue;
            }
            for patch in doc["spec"]["configPatches"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let Some(remote) =
                    patch.pointer("/patch/value/typed_config/config/vm_config/code/remote")
                else {
                    continue;
                };
                let cluster = remote["http_uri"]["cluster"]
                    .as_str()
                    .expect("http_uri.cluster");
                assert_eq!(
                    remote["sha256"].as_str(),
                    Some(faas_mesh_tools::sha256_hex(&wasm).as_str()),
                    "{}: the pinned sha256 is not the module's",
                    file.name
                );
                return (doc.clone(), cluster.to_string());
            }
        }
    }
    panic!(
        "no rendered EnvoyFilter fetches the module (vm_config.code.remote): the EnvoyFilter route \
         still needs the module mounted into every function (sidecar.istio.io/userVolume)"
    );
}

/// The remote EnvoyFilter with its module pinned to `sha256`.
fn with_sha256(doc: &Value, sha256: &str) -> Value {
    let mut doc = doc.clone();
    for patch in doc["spec"]["configPatches"].as_array_mut().unwrap() {
        if let Some(sha) =
            patch.pointer_mut("/patch/value/typed_config/config/vm_config/code/remote/sha256")
        {
            *sha = Value::from(sha256);
        }
    }
    doc
}

/// A function behind a sidecar running the remote EnvoyFilter `doc` on the real listener, its
/// module server at `server`; `dynamic`: the listener comes by LDS, so a test can push another.
async fn remote_sidecar(
    doc: &Value,
    cluster: &str,
    server: std::net::SocketAddr,
    dynamic: bool,
) -> (StandInFunction, Sidecar, SidecarOptions, Pki) {
    let mut mesh = Mesh::new(function_listener(&data()));
    mesh.apply_envoyfilter(doc)
        .unwrap_or_else(|e| panic!("{e}"));
    let pki = Pki::new().expect("pki");
    let function = StandInFunction::start().await.expect("function");
    let options = SidecarOptions {
        function_port: function.port(),
        module: filter_wasm().expect("module"),
        module_server: Some((cluster.to_string(), server)),
        labels: vec![("faas_function".into(), "env".into())],
        namespace: "openfaas-fn".into(),
        stats_inclusion_prefixes: vec!["extension_config_discovery".into()],
        tls: pki.server(),
        concurrency: 2,
        dynamic_listeners: dynamic,
    };
    let sidecar = Sidecar::start(&mesh, &data(), &options)
        .await
        .expect("Envoy with Istio's bootstrap and listener");
    // The certificates must outlive the Envoy (a pushed listener reads them again).
    (function, sidecar, options, pki)
}

async fn remote_route(server: std::net::SocketAddr) -> (StandInFunction, Sidecar, Pki) {
    let (doc, cluster) = remote_envoyfilter();
    let (function, sidecar, _, pki) = remote_sidecar(&doc, &cluster, server, false).await;
    (function, sidecar, pki)
}

/// Waits until Envoy is initialized (it is not while it fetches the module at startup).
async fn live(sidecar: &Sidecar) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !sidecar.ready().await {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            sidecar.log_tail(30)
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A sidecar whose module cannot be had: while Envoy retries the fetch it is not initialized
/// (its listener accepts nothing: Kubernetes sees the pod not ready); once the retries are spent
/// `wasm.remote_load_fetch_failures` counts the failure and every request is answered 503 by the
/// fail-closed plugin. At no point does a request reach the function.
async fn fails_closed(sidecar: &Sidecar, function: &StandInFunction) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    loop {
        if let Ok(response) =
            faas_mesh_integration::http::send(sidecar.declared, &Request::get("/function/env/a"))
                .await
        {
            assert!(
                response.status >= 500,
                "{}: {}",
                response.status,
                response.text()
            );
        }
        assert_eq!(function.calls(), 0, "a request reached the function");
        if sidecar.stat("wasm.remote_load_fetch_failures").await >= 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the fetch neither failed nor succeeded\n{}",
            sidecar.log_tail(30)
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(sidecar.stat("wasm.remote_load_fetch_successes").await, 0);
    // Envoy serves again (retries spent): every request gets the plugin's 503.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let response = loop {
        match faas_mesh_integration::http::send(sidecar.declared, &Request::get("/function/env/a"))
            .await
        {
            Ok(response) => break response,
            Err(e) => assert!(std::time::Instant::now() < deadline, "{e}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(response.status, 503, "{}", response.text());
    assert_eq!(call_id(&response), None);
    for target in ["/", "/function/other/", "/function/env/b"] {
        let response = sidecar.get(target).await;
        assert_eq!(response.status, 503, "{target}");
    }
    assert_eq!(function.calls(), 0, "a request reached the function");
    for line in [
        "Retry limit exceeded for fetching data from remote data source.",
        "Plugin configured to fail closed failed to load",
    ] {
        let log = sidecar.log_when(|log| log.contains(line)).await;
        assert!(
            log.contains(line),
            "no {line:?} in\n{}",
            sidecar.log_tail(30)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_remote_route_loads_the_module_pinned_by_digest_from_the_module_server() {
    // The module server the bundle ships carries the very module the EnvoyFilter pins, at the
    // address the EnvoyFilter's cluster names.
    let wasm = std::fs::read(filter_wasm().unwrap()).unwrap();
    let (filter, cluster) = remote_envoyfilter();
    let server_docs = rendered("module-server.yaml");
    let carried = server_docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap")
        .and_then(|d| d["binaryData"]["faas_mesh_filter.wasm"].as_str())
        .expect("the module server's ConfigMap");
    assert_eq!(carried, faas_mesh_tools::base64(&wasm));
    let service = server_docs.iter().find(|d| d["kind"] == "Service").unwrap();
    let host = format!(
        "{}.{}.svc.cluster.local",
        service["metadata"]["name"].as_str().unwrap(),
        service["metadata"]["namespace"].as_str().unwrap()
    );
    let fetch_cluster = filter["spec"]["configPatches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["patch"]["value"]["name"] == cluster.as_str())
        .expect("the EnvoyFilter adds the cluster it fetches through");
    let endpoint = &fetch_cluster["patch"]["value"]["load_assignment"]["endpoints"][0]
        ["lb_endpoints"][0]["endpoint"]["address"]["socket_address"];
    assert_eq!(endpoint["address"], host.as_str());
    assert_eq!(endpoint["port_value"], service["spec"]["ports"][0]["port"]);

    let server = ModuleServer::start(wasm).await;
    let (function, sidecar, _pki) = remote_route(server.addr).await;
    live(&sidecar).await;
    assert!(server.fetches() >= 1);
    assert!(sidecar.stat("wasm.remote_load_fetch_successes").await >= 1);
    assert_eq!(sidecar.stat("wasm.remote_load_fetch_failures").await, 0);
    let response = sidecar.get("/function/env/a").await;
    assert_eq!(response.status, 200);
    assert!(call_id(&response).is_some());
    assert_eq!(function.received().last().unwrap()["path"], "/a");
    assert_eq!(sidecar.get("/function/other/").await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_server_serving_other_bytes_fails_closed_visibly() {
    // A server that serves anything but the pinned module (an older build, a truncated copy).
    let mut other = std::fs::read(filter_wasm().unwrap()).unwrap();
    other.truncate(other.len() / 2);
    let server = ModuleServer::start(other).await;
    let (function, sidecar, _pki) = remote_route(server.addr).await;
    fails_closed(&sidecar, &function).await;
    assert!(server.fetches() >= 2, "Envoy did not retry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_module_server_fails_closed_visibly() {
    // A loopback port nothing listens on.
    let nobody = faas_mesh_integration::ports::ReservedPort::new().expect("port");
    let (function, sidecar, _pki) = remote_route(nobody.addr()).await;
    fails_closed(&sidecar, &function).await;
}

/// The same EnvoyFilter with the Wasm filter delivered by ECDS (as envoyfilter.yaml does it).
fn by_ecds(doc: &Value) -> Value {
    let mut doc = doc.clone();
    let patches = doc["spec"]["configPatches"].as_array_mut().unwrap();
    let filter = patches
        .iter_mut()
        .find(|p| p["applyTo"] == "HTTP_FILTER")
        .unwrap();
    let value = filter["patch"]["value"].clone();
    filter["patch"]["value"] = serde_json::json!({
        "name": value["name"],
        "config_discovery": {
            "config_source": { "ads": {}, "initial_fetch_timeout": "0s" },
            "type_urls": ["type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"],
        }
    });
    patches.push(serde_json::json!({
        "applyTo": "EXTENSION_CONFIG",
        "patch": { "operation": "ADD", "value": value },
    }));
    doc
}

/// Why the remote EnvoyFilter carries the filter inline and not by ECDS, pinned so that a fixed
/// Envoy shows up here: by ECDS, a running sidecar that is pushed a module it has not fetched
/// yet (a new sha256) creates the plugin before the fetch ends and never loads the module:
/// requests meet an empty fail-closed context (503) or, with no plugin handle, no filter at all
/// (source/extensions/common/wasm/wasm.cc, PluginConfig::createContext returns nullptr whatever
/// the failure policy, and the HTTP filter factory then adds no filter); both were seen,
/// depending on timing. Later pushes do not help: the fetch stays "in progress" for that Envoy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_ecds_a_new_module_pushed_to_a_running_sidecar_never_serves() {
    let wasm = std::fs::read(filter_wasm().unwrap()).unwrap();
    let server = ModuleServer::start(wasm).await;
    let (inline, cluster) = remote_envoyfilter();
    let doc = by_ecds(&inline);
    let (function, mut sidecar, _, _pki) = remote_sidecar(&doc, &cluster, server.addr, false).await;
    assert!(sidecar.ecds_outcome(FILTER).await.expect("ECDS outcome"));
    live(&sidecar).await;
    let response = sidecar.get("/function/env/a").await;
    assert_eq!(response.status, 200);
    assert!(call_id(&response).is_some());
    // A new release: the server serves the new module, the EnvoyFilter pins its sha256 (the
    // test-trap build: the same filter, a different module).
    let new = std::fs::read(faas_mesh_integration::envoy::trap_wasm().unwrap()).unwrap();
    server.serve(new.clone());
    let mut resource = doc["spec"]["configPatches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["applyTo"] == "EXTENSION_CONFIG")
        .unwrap()["patch"]["value"]
        .clone();
    resource["typed_config"]["config"]["vm_config"]["code"]["remote"]["sha256"] =
        Value::from(faas_mesh_tools::sha256_hex(&new));
    let ecds = format!("extension_config_discovery.http_filter.{FILTER}.update_success");
    let mut seen = std::collections::BTreeSet::new();
    for round in 0..2 {
        if round == 1 {
            // A later change of that configuration (Envoy skips a push of identical content)
            // does not help: the fetch stays "in progress" for this Envoy until it restarts.
            let value = resource["typed_config"]["config"]["configuration"]["value"]
                .as_str()
                .unwrap()
                .to_string();
            resource["typed_config"]["config"]["configuration"]["value"] =
                Value::from(format!("{value} "));
        }
        let before = sidecar.stat(&ecds).await;
        sidecar.push_extension_config(&resource).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while sidecar.stat(&ecds).await <= before {
            assert!(
                std::time::Instant::now() < deadline,
                "the push was not applied"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        // Neither the old module nor the new one serves any more: each request is refused by
        // an empty fail-closed context (503), or passes with no filter at all.
        for i in 0..20 {
            let target = format!("/function/env/r{round}-{i}");
            let response = sidecar.get(&target).await;
            assert_eq!(call_id(&response), None, "{target}: a module served");
            match response.status {
                503 => seen.insert("503 (fail closed)"),
                200 => {
                    assert_eq!(function.received().last().unwrap()["path"], target.as_str());
                    seen.insert("unfiltered (fail open)")
                }
                other => panic!("{target}: {other}"),
            };
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    eprintln!("after the push: {seen:?}");
    assert!(server.fetches() >= 2, "the new module was fetched");
    let log = sidecar.log();
    assert!(
        log.contains("createWasm: failed to load (in progress)"),
        "{}",
        sidecar.log_tail(30)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_module_reaches_a_running_sidecar_in_place() {
    let wasm = std::fs::read(filter_wasm().unwrap()).unwrap();
    let server = ModuleServer::start(wasm).await;
    let (doc, cluster) = remote_envoyfilter();
    let (function, mut sidecar, options, _pki) =
        remote_sidecar(&doc, &cluster, server.addr, true).await;
    live(&sidecar).await;
    // A new release (the test-trap build: the same filter, another module): the server serves
    // it, the EnvoyFilter pins its sha256, istiod pushes the listener.
    let new = std::fs::read(faas_mesh_integration::envoy::trap_wasm().unwrap()).unwrap();
    let sha = faas_mesh_tools::sha256_hex(&new);
    server.serve(new);
    let mut mesh = Mesh::new(function_listener(&data()));
    mesh.apply_envoyfilter(&with_sha256(&doc, &sha)).unwrap();
    sidecar.push_listener(&mesh, &options).unwrap();
    // Every request meets a filter, the old module's until the new one is fetched: none is
    // refused, none reaches the function unfiltered.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let mut i = 0;
    loop {
        i += 1;
        let target = format!("/function/env/u{i}");
        let response = sidecar.get(&target).await;
        assert_eq!(response.status, 200, "{target}");
        assert!(call_id(&response).is_some(), "{target}: no filter");
        assert_eq!(
            function.received().last().unwrap()["path"],
            format!("/u{i}").as_str()
        );
        let active = sidecar.active_listener().await.unwrap();
        if active.contains(&sha)
            && sidecar
                .stat("listener_manager.total_listeners_warming")
                .await
                == 0
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new listener never became active"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(sidecar.stat("wasm.remote_load_fetch_successes").await >= 2);
    assert_eq!(sidecar.stat("wasm.remote_load_fetch_failures").await, 0);
    let response = sidecar.get("/function/env/new").await;
    assert_eq!(response.status, 200);
    assert!(call_id(&response).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_upgrade_keeps_the_running_module_while_envoy_retries_then_fails_closed() {
    let wasm = std::fs::read(filter_wasm().unwrap()).unwrap();
    let server = ModuleServer::start(wasm.clone()).await;
    let (doc, cluster) = remote_envoyfilter();
    let (function, mut sidecar, options, _pki) =
        remote_sidecar(&doc, &cluster, server.addr, true).await;
    live(&sidecar).await;
    // The EnvoyFilter pins a digest the server does not serve (a release applied before its
    // module server, or a wrong server).
    let mut mesh = Mesh::new(function_listener(&data()));
    mesh.apply_envoyfilter(&with_sha256(
        &doc,
        &faas_mesh_tools::sha256_hex(b"another module"),
    ))
    .unwrap();
    sidecar.push_listener(&mesh, &options).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    let mut i = 0;
    while sidecar.stat("wasm.remote_load_fetch_failures").await == 0
        || sidecar
            .stat("listener_manager.total_listeners_warming")
            .await
            != 0
    {
        // While the new listener warms, the running one serves with the module it has.
        i += 1;
        let target = format!("/function/env/w{i}");
        let response = sidecar.get(&target).await;
        match response.status {
            200 => {
                assert!(call_id(&response).is_some(), "{target}: no filter");
                assert_eq!(
                    function.received().last().unwrap()["path"],
                    format!("/w{i}").as_str()
                );
            }
            // The new listener became active between the two stats reads.
            503 => assert_eq!(call_id(&response), None),
            other => panic!("{target}: {other}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            sidecar.log_tail(30)
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let calls = function.calls();
    for target in ["/function/env/a", "/", "/function/other/"] {
        let response = sidecar.get(target).await;
        assert_eq!(response.status, 503, "{target}");
        assert_eq!(call_id(&response), None);
    }
    assert_eq!(function.calls(), calls, "a request reached the function");
    let log = sidecar
        .log_when(|l| l.contains("Retry limit exceeded for fetching data from remote data source."))
        .await;
    assert!(log.contains("Plugin configured to fail closed failed to load"));
}

/// The price of the filter inline in the listener: a plugin configuration the filter refuses
/// makes Envoy reject the whole inbound listener update (istiod sees a NACK); the last good
/// listener, with its configuration, keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configuration_the_filter_refuses_keeps_the_last_good_listener_on_the_remote_route() {
    let wasm = std::fs::read(filter_wasm().unwrap()).unwrap();
    let server = ModuleServer::start(wasm).await;
    let (doc, cluster) = remote_envoyfilter();
    let (function, mut sidecar, options, _pki) =
        remote_sidecar(&doc, &cluster, server.addr, true).await;
    live(&sidecar).await;
    let mut bad = doc.clone();
    for patch in bad["spec"]["configPatches"].as_array_mut().unwrap() {
        if let Some(v) = patch.pointer_mut("/patch/value/typed_config/config/configuration/value") {
            *v = Value::from(r#"{"policy": {"functions": {"env": {"max_inflight": -1}}}}"#);
        }
    }
    let mut mesh = Mesh::new(function_listener(&data()));
    mesh.apply_envoyfilter(&bad).unwrap();
    sidecar.push_listener(&mesh, &options).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while sidecar.stat("listener_manager.lds.update_rejected").await == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            sidecar.log_tail(30)
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let response = sidecar.get("/function/env/still").await;
    assert_eq!(response.status, 200);
    assert!(call_id(&response).is_some());
    assert_eq!(function.received().last().unwrap()["path"], "/still");
    for line in [
        "invalid configuration: policy.functions.env.max_inflight: expected a positive integer, got -1",
        // (Envoy 1.36 and 1.40 both log this; 1.40 also "lds: listener ... config rejected".)
        "Error adding/updating listener(s) virtualInbound: Unable to create Wasm plugin faas-mesh-filter",
    ] {
        let log = sidecar.log_when(|l| l.contains(line)).await;
        assert!(log.contains(line), "no {line:?} in\n{}", sidecar.log_tail(30));
    }
}
