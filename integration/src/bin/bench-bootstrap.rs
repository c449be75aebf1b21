//! The benchmark's Envoy bootstrap, built by the same code as the integration tests' from the
//! shipped manifests (`envoyfilter/envoyfilter.yaml`, `envoyfilter/observability.yaml`), so the
//! benchmark measures what ships. `bench/bench.py` runs it once per Envoy it starts.
//!
//! ```text
//! bench-bootstrap --upstream-port <port> --ecds <file> [--filter shipped|none|lua=<file>]
//!                 [--wasm|--module <module>] [--config-file <file>] [--route-file <file>]
//!                 [--tls <cert>,<key>,<ca>] [--manifest <envoyfilter.yaml>]
//! ```
//!
//! Prints the bootstrap (YAML) on stdout; with `--filter shipped` (the default) it also writes
//! the ECDS document the bootstrap names to `--ecds`. Every variant is that one bootstrap:
//! - `shipped`: the manifest's HTTP filter, extension config and plugin configuration, as a
//!   test's sidecar runs them; `--wasm` swaps the module (the no-op filter), `--config-file` the
//!   plugin configuration (everything on, policy sizes), nothing else;
//! - `none`: the filter taken out, the router alone (plain Envoy; with `--route-file`, the route
//!   rules an operator would write instead);
//! - `lua=<file>`: Envoy's Lua filter with that code in the filter's place.
//!
//! The build is the harness's (`FAAS_MESH_BUILD=wasm|native`, see
//! `faas_mesh_integration::filter_build`): with `native`, `shipped` is the native module
//! (`$NATIVE_MODULE`, or `--module <.so>`) in the filter's place, and the pod's labels and
//! annotations are written to `pod-info/` beside the ECDS file: Envoy must then be started with
//! `FAAS_MESH_POD_INFO_DIR=<that folder>/pod-info` (and without `POD_NAMESPACE`). The wasm build
//! needs no environment.
//!
//! `--route-file` holds one route (JSON) put before the default route, its `route` action merged
//! over the default one (same cluster, same timeout). Listener and admin ports are 0 (Envoy
//! picks; read them back from its admin API); the worker count is Envoy's `--concurrency`.

use faas_mesh_integration::envoy::EnvoyOptions;
use faas_mesh_integration::tls::ServerTls;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::ExitCode;

struct Args {
    upstream_port: u16,
    ecds: PathBuf,
    filter: Filter,
    wasm: Option<PathBuf>,
    config_file: Option<PathBuf>,
    route_file: Option<PathBuf>,
    tls: Option<ServerTls>,
    manifest: PathBuf,
}

enum Filter {
    Shipped,
    None,
    Lua(PathBuf),
}

fn main() -> ExitCode {
    match run() {
        Ok(yaml) => {
            print!("{yaml}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench-bootstrap: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<String, String> {
    let args = parse(std::env::args().skip(1))?;
    let mut options = EnvoyOptions::from_manifest(&args.manifest, args.upstream_port)
        .map_err(|e| e.to_string())?;
    if let Some(path) = &args.config_file {
        options.plugin_config = read(path)?;
    }
    options.module = args.wasm.as_ref().map(absolute).transpose()?;
    options.tls = args.tls;
    // The ECDS document goes where the bootstrap names it: `extension-config.json` beside it.
    let ecds = absolute(&args.ecds)?;
    let dir = ecds.parent().ok_or("--ecds names no folder")?;
    if ecds.file_name() != Some(std::ffi::OsStr::new("extension-config.json")) {
        return Err("--ecds must be <folder>/extension-config.json".into());
    }
    let yaml = options.bootstrap_yaml(dir).map_err(|e| e.to_string())?;
    let mut bootstrap: Value = serde_yaml::from_str(&yaml).map_err(|e| e.to_string())?;
    let hcm = &mut bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"];
    let filters = hcm["http_filters"]
        .as_array_mut()
        .ok_or("the bootstrap has no http_filters")?;
    if filters.len() != 2 || filters[1]["name"] != "envoy.filters.http.router" {
        return Err("expected the manifest's filter and the router in http_filters".into());
    }
    match &args.filter {
        Filter::Shipped => {}
        Filter::None => {
            filters.remove(0);
        }
        Filter::Lua(path) => {
            filters[0] = json!({
                "name": "envoy.filters.http.lua",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                    "default_source_code": { "inline_string": read(path)? }
                }
            });
        }
    }
    if let Some(path) = &args.route_file {
        let mut route: Value =
            serde_json::from_str(&read(path)?).map_err(|e| format!("{}: {e}", path.display()))?;
        let routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
            .as_array_mut()
            .ok_or("the bootstrap has no routes")?;
        let mut action = routes[0]["route"].clone();
        for (key, value) in route["route"].as_object().cloned().unwrap_or_default() {
            action[key] = value;
        }
        route["route"] = action;
        routes.insert(0, route);
    }
    serde_yaml::to_string(&bootstrap).map_err(|e| e.to_string())
}

fn parse(mut argv: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut args = Args {
        upstream_port: 0,
        ecds: PathBuf::new(),
        filter: Filter::Shipped,
        wasm: None,
        config_file: None,
        route_file: None,
        tls: None,
        manifest: faas_mesh_integration::repo_root().join("envoyfilter/envoyfilter.yaml"),
    };
    while let Some(flag) = argv.next() {
        let value = argv.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--upstream-port" => {
                args.upstream_port = value.parse().map_err(|e| format!("{flag}: {e}"))?
            }
            "--ecds" => args.ecds = value.into(),
            "--filter" => {
                args.filter = match value.as_str() {
                    "shipped" => Filter::Shipped,
                    "none" => Filter::None,
                    other => match other.strip_prefix("lua=") {
                        Some(file) => Filter::Lua(file.into()),
                        None => {
                            return Err(format!("--filter {other}: shipped, none or lua=<file>"))
                        }
                    },
                }
            }
            "--wasm" | "--module" => args.wasm = Some(value.into()),
            "--config-file" => args.config_file = Some(value.into()),
            "--route-file" => args.route_file = Some(value.into()),
            "--manifest" => args.manifest = value.into(),
            "--tls" => {
                let parts: Vec<&str> = value.split(',').collect();
                let [cert, key, ca] = parts[..] else {
                    return Err("--tls <cert>,<key>,<ca>".into());
                };
                args.tls = Some(ServerTls {
                    cert: absolute(&PathBuf::from(cert))?,
                    key: absolute(&PathBuf::from(key))?,
                    ca: absolute(&PathBuf::from(ca))?,
                });
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    if args.upstream_port == 0 || args.ecds.as_os_str().is_empty() {
        return Err("--upstream-port and --ecds are required".into());
    }
    Ok(args)
}

fn read(path: &PathBuf) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))
}

fn absolute(path: &PathBuf) -> Result<PathBuf, String> {
    std::path::absolute(path).map_err(|e| format!("{}: {e}", path.display()))
}
