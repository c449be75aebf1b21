//! Facts of the native build only (the shared suite proves the behaviour of both builds): the
//! module loads in this Envoy with its pinned ABI version and no deprecation warning, refuses a
//! malformed configuration with the same message as the wasm build, and exports nothing but
//! Envoy's event hooks.
//!
//! Each test starts its own Envoy, on a minimal bootstrap of its own with the dynamic-modules
//! filter loading the module by file, on loopback ports it picks. The module is `$NATIVE_MODULE`
//! (`make native` builds it), else `target/release/libfaas_mesh_filter_native.so`.

use faas_mesh_integration::envoy::envoy_binary;
use faas_mesh_integration::envoy_process::EnvoyProcess;
use faas_mesh_integration::http::{self, Request};
use faas_mesh_integration::repo_root;
use faas_mesh_integration::stand_in::StandInFunction;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::Command;

/// The ABI version the module returns, as Envoy 1.40 names its own.
const ABI_VERSION: &str = "v0.2.0";

fn module() -> PathBuf {
    let path = std::env::var_os("NATIVE_MODULE")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/release/libfaas_mesh_filter_native.so"));
    assert!(
        path.is_file(),
        "no native module at {}: run `make native`",
        path.display()
    );
    path
}

/// The dynamic-modules filter with `plugin_config` (the wasm build's plugin configuration).
fn filter(plugin_config: &str) -> Value {
    json!({
        "name": "envoy.filters.http.dynamic_modules",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
            "dynamic_module_config": {"module": {"local": {"filename": module()}}},
            "filter_name": "faas-mesh-filter",
            "filter_config": {
                "@type": "type.googleapis.com/google.protobuf.StringValue",
                "value": plugin_config,
            },
        },
    })
}

fn cluster(name: &str, port: u16) -> Value {
    json!({
        "name": name,
        "connect_timeout": "1s",
        "type": "STATIC",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                "socket_address": {"address": "127.0.0.1", "port_value": port}
            }}}]}],
        },
    })
}

/// A listener on `listener_port` with the filter in front of the function on `function_port`
/// (also the readiness gate's default cluster).
fn bootstrap(plugin_config: &str, listener_port: u16, function_port: u16) -> Value {
    json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [{
                "name": "inbound",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": listener_port}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "inbound",
                        "route_config": {"virtual_hosts": [{
                            "name": "all",
                            "domains": ["*"],
                            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "function"}}],
                        }]},
                        "http_filters": [
                            filter(plugin_config),
                            {"name": "envoy.filters.http.router", "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                            }},
                        ],
                    },
                }]}],
            }],
            "clusters": [cluster("function", function_port), cluster("faas_function_local", function_port)],
        },
    })
}

#[tokio::test]
async fn the_module_loads_with_its_abi_version_and_rewrites() {
    let function = StandInFunction::start().await.expect("stand-in function");
    // Envoy's listener binds it with SO_REUSEPORT, beside the reservation.
    let reserved = faas_mesh_integration::ports::ReservedPort::new().expect("port");
    let port = reserved.port();
    let config = r#"{"function": {"name": "env"}, "readiness": {"enabled": false}}"#;
    let dir = tempfile::tempdir().expect("dir");
    let mut envoy = EnvoyProcess::start(dir, &bootstrap(config, port, function.port()), 1)
        .await
        .expect("Envoy");
    envoy
        .wait_for_listener("the listener", |l| {
            l.to_string().contains(&port.to_string()).then_some(())
        })
        .await
        .expect("listener");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let response = http::send(addr, &Request::get("/function/env/x?y=1"))
        .await
        .expect("request");
    assert_eq!(response.status, 200, "{}", envoy.log_tail(30));
    let echo = response.json();
    assert_eq!(
        echo["path"], "/x?y=1",
        "the function sees the rewritten path"
    );
    let call_id = response
        .header("x-call-id")
        .expect("a call id on the response");
    assert_eq!(
        echo["headers"]["x-call-id"][0], call_id,
        "the function got the same call id"
    );
    // The module was loaded before the listener opened; Envoy flushes its log every 20 ms.
    let log = envoy
        .log_when(|l| l.contains("Dynamic module ABI version"))
        .await;
    assert!(
        log.contains(&format!("Dynamic module ABI version {ABI_VERSION} matched")),
        "Envoy did not confirm ABI {ABI_VERSION}:\n{log}"
    );
    assert!(
        !log.contains("deprecated"),
        "Envoy warned about the module's ABI version:\n{log}"
    );
}

/// The configuration refusals of the core (testdata/config.json, which the wasm build's tests
/// check word for word) are Envoy's log line for the native build too, and Envoy refuses the
/// configuration. Checked with Envoy's `--mode validate`, which builds the filter configuration
/// (where the module refuses it) without serving.
#[test]
fn a_malformed_configuration_is_refused_with_the_cores_message() {
    let vectors: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("testdata/config.json")).expect("vectors"),
    )
    .expect("vectors JSON");
    let cases = vectors["error"].as_array().expect("error cases");
    assert!(!cases.is_empty());
    let dir = tempfile::tempdir().expect("dir");
    let envoy = envoy_binary().expect("Envoy binary");
    for (i, case) in cases.iter().enumerate() {
        let raw = match case.get("raw").and_then(Value::as_str) {
            Some(raw) => raw.to_string(),
            None => case["config"].to_string(),
        };
        let expected = case["error"].as_str().expect("error message");
        let path = dir.path().join(format!("bootstrap-{i}.json"));
        let bootstrap = bootstrap(&raw, 1, 1);
        std::fs::write(&path, serde_json::to_vec(&bootstrap).expect("JSON")).expect("write");
        let out = Command::new(&envoy)
            .args(["--mode", "validate", "--disable-hot-restart", "-l", "info"])
            .arg("--config-path")
            .arg(&path)
            .output()
            .expect("envoy --mode validate");
        let log = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(
            !out.status.success(),
            "configuration {raw} was accepted (expected: {expected}):\n{log}"
        );
        assert!(
            log.contains(&format!("invalid configuration: {expected}")),
            "configuration {raw}: expected the refusal {expected:?}:\n{log}"
        );
    }
}

/// Envoy looks the module's hooks up by name; nothing else of it is for Envoy to call (the
/// proxy-wasm SDK's entry points, linked in with the core, stay local).
#[test]
fn only_the_event_hooks_are_exported() {
    let out = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(module())
        .output()
        .expect("nm (binutils)");
    assert!(out.status.success());
    let symbols: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2).map(str::to_string))
        .collect();
    assert!(
        symbols
            .iter()
            .any(|s| s == "envoy_dynamic_module_on_program_init"),
        "{symbols:?}"
    );
    let others: Vec<&String> = (symbols.iter())
        .filter(|s| !s.starts_with("envoy_dynamic_module_on_"))
        .collect();
    assert!(others.is_empty(), "exported besides the hooks: {others:?}");
}
