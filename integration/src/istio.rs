//! Conformance with what Istio itself generates: the shipped manifests applied, with istiod's
//! matching and insertion semantics, to a real sidecar's `virtualInbound` listener (an Istio
//! config dump), then run in a real Envoy with Istio's own bootstrap.
//!
//! The real files are third-party data (istio/istio, Apache-2.0), never committed here:
//! `make istio-data` puts them into `.cache/istio/`, from the mirror `ISTIO_DATA=<dir>` or from
//! GitHub by the commits pinned in `tools/istio-data.lock`, each checked by sha256.
//!
//! What is istiod's (and so must fail loudly here when it does not hold, where istiod would
//! silently skip a patch):
//! - EnvoyFilter `SIDECAR_INBOUND` listener match: `portNumber` against each filter chain's
//!   `filter_chain_match.destination_port` (chains without one, the catch-all and TCP chains,
//!   never match a port), `filterChain.filter.name` against the chain's network filters,
//!   `subFilter.name` against the HTTP filters of that connection manager;
//!   `INSERT_BEFORE` / `INSERT_AFTER` / `ADD` / `INSERT_FIRST` on HTTP filters;
//!   `CLUSTER` `ADD` (SIDECAR_INBOUND); `EXTENSION_CONFIG` `ADD` (served by ECDS).
//! - WasmPlugin (`mode: SERVER`, `ports`): one HTTP filter by ECDS per matched inbound chain,
//!   placed by `phase` as istiod's listener builder does: metadata exchange, CUSTOM ext_authz,
//!   [AUTHN], authn filters, [AUTHZ], rbac, [STATS], [unset], then grpc_stats, fault, cors,
//!   istio.stats, router. Its ECDS resource name depends on the Istio version ([`IstioVersion`]).
//!
//! What is changed to run it in upstream Envoy (and nothing else): the filters only istio-proxy
//! has are removed ([`ISTIO_ONLY_FILTERS`]); SDS certificates become static test files; ADS
//! becomes static resources and file-based ECDS; addresses become loopback ports the test picks;
//! the bootstrap's tracing, statsd sink and fixed-port admin listeners (collectors and ports
//! outside the test) are dropped; the pod's labels and namespace become a function's, and the
//! stats inclusion list gets what an operator's `proxyStatsMatcher` adds; the dump's AuthorizationPolicy (its principals need Istio's
//! authn state) is replaced by one of the test's, at the same place in the chain.

use crate::envoy_process::{ConfigOutcome, EnvoyProcess};
use crate::http::{self, Request, Response};
use serde_json::{json, Value};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The HTTP and network filters upstream Envoy lacks; removed before running, nothing else.
pub const ISTIO_ONLY_FILTERS: [&str; 3] = ["istio_authn", "istio.metadata_exchange", "istio.stats"];

/// The port the dump's workload (httpbin) serves; the OpenFaaS function port is 8080.
pub const DUMP_PORT: u16 = 80;
pub const FUNCTION_PORT: u16 = 8080;

const HCM: &str = "envoy.filters.network.http_connection_manager";
const WASM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";

/// The Istio release whose naming is emulated (the filter chain order is the same in both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IstioVersion {
    /// 1.29 and earlier: ECDS resource `extensions.istio.io/wasmplugin/<ns>.<name>`.
    V1_29,
    /// 1.30 and later: a WasmPlugin is translated into a TrafficExtension, ECDS resource
    /// `extensions.istio.io/trafficextension/<ns>.<name>~istio-translated-wasmplugin`.
    V1_30,
}

impl IstioVersion {
    pub fn ecds_name(self, namespace: &str, name: &str) -> String {
        match self {
            IstioVersion::V1_29 => format!("extensions.istio.io/wasmplugin/{namespace}.{name}"),
            IstioVersion::V1_30 => format!(
                "extensions.istio.io/trafficextension/{namespace}.{name}~istio-translated-wasmplugin"
            ),
        }
    }
}

/// The three real files, checked against `tools/istio-data.lock`.
pub struct IstioData {
    /// `ListenersConfigDump` of an httpbin sidecar (Istio 1.19 development).
    pub listeners: Value,
    /// The bootstrap Istio writes for a running sidecar (1.31 development).
    pub bootstrap: Value,
    /// How istiod delivered WasmPlugins by ECDS (EcdsConfigDump).
    pub ecds: Value,
}

impl IstioData {
    /// From `$ISTIO_DATA` (a mirror) if set, else `.cache/istio/` (`make istio-data`). Fails,
    /// naming both ways, when a file is missing or is not the pinned one: never a silent skip.
    pub fn load() -> Result<Self, String> {
        let root = crate::repo_root();
        let lock = std::fs::read_to_string(root.join("tools/istio-data.lock"))
            .map_err(|e| format!("tools/istio-data.lock: {e}"))?;
        let (dir, origin) = match std::env::var_os("ISTIO_DATA").filter(|d| !d.is_empty()) {
            // Relative to the repository root, as `make istio-data` reads it.
            Some(dir) => (root.join(PathBuf::from(dir)), "ISTIO_DATA"),
            None => (root.join(".cache/istio"), "`make istio-data`"),
        };
        let how = "run `make istio-data` (fetches them from github.com/istio/istio by the \
                   commits pinned in tools/istio-data.lock) or set ISTIO_DATA=<dir> to an offline \
                   mirror holding them";
        let read = |wanted: &str| -> Result<Value, String> {
            let line = lock
                .lines()
                .find(|l| l.split_whitespace().next() == Some(wanted))
                .ok_or_else(|| format!("tools/istio-data.lock does not list {wanted}"))?;
            let sha = line.split_whitespace().nth(1).unwrap_or_default();
            let path = dir.join(wanted);
            let bytes = std::fs::read(&path)
                .map_err(|e| format!("{} ({origin}): {e}; {how}", path.display()))?;
            let got = faas_mesh_tools::sha256_hex(&bytes);
            if got != sha {
                return Err(format!(
                    "{} ({origin}) has sha256 {got}, tools/istio-data.lock pins {sha}; {how}",
                    path.display()
                ));
            }
            serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))
        };
        Ok(IstioData {
            listeners: read("authz-configdump.json")?,
            bootstrap: read("bootstrap-running_golden.json")?,
            ecds: read("ecds-configdump.json")?,
        })
    }

    /// The sidecar's `virtualInbound` listener as istiod generated it.
    pub fn virtual_inbound(&self) -> Result<Value, String> {
        for config in self.listeners["configs"].as_array().into_iter().flatten() {
            for listener in config["dynamic_listeners"].as_array().into_iter().flatten() {
                if listener["name"] == "virtualInbound" {
                    return Ok(listener["active_state"]["listener"].clone());
                }
            }
        }
        Err("the listener dump has no virtualInbound listener".into())
    }
}

/// Rewrites the workload's port in a `virtualInbound` listener, and nothing else: the chain's
/// `destination_port`, the listener filters' port ranges, and (with `names`) the names istiod
/// derives from it (`0.0.0.0_80`, `inbound|80||`, `inbound_0.0.0.0_80`).
pub fn rewrite_port(listener: &mut Value, from: u16, to: u16, names: bool) {
    fn walk(value: &mut Value, from: u16, to: u16, names: bool) {
        match value {
            Value::Object(map) => {
                for (key, v) in map.iter_mut() {
                    match key.as_str() {
                        "destination_port" if *v == json!(from) => *v = json!(to),
                        "destination_port_range" if v["start"] == json!(from) => {
                            v["start"] = json!(to);
                            v["end"] = json!(to + 1);
                        }
                        _ => walk(v, from, to, names),
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| walk(v, from, to, names)),
            Value::String(s) if names => {
                for (a, b) in [
                    (format!("0.0.0.0_{from}"), format!("0.0.0.0_{to}")),
                    (format!("|{from}|"), format!("|{to}|")),
                ] {
                    if s.contains(&a) {
                        *s = s.replace(&a, &b);
                    }
                }
            }
            _ => {}
        }
    }
    walk(listener, from, to, names);
}

/// One chain a patch or plugin applied to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainRef {
    pub index: usize,
    pub name: String,
    pub destination_port: Option<u64>,
    pub transport_protocol: String,
}

/// A sidecar's inbound configuration being patched as istiod would.
#[derive(Debug, Clone)]
pub struct Mesh {
    pub listener: Value,
    /// Clusters added by `CLUSTER` patches.
    pub clusters: Vec<Value>,
    /// ECDS resources (`TypedExtensionConfig`) from `EXTENSION_CONFIG` patches and WasmPlugins.
    pub extension_configs: Vec<Value>,
}

impl Mesh {
    pub fn new(listener: Value) -> Self {
        Mesh {
            listener,
            clusters: Vec::new(),
            extension_configs: Vec::new(),
        }
    }

    fn chain_ref(&self, index: usize) -> ChainRef {
        let chain = &self.listener["filter_chains"][index];
        ChainRef {
            index,
            name: chain["name"].as_str().unwrap_or_default().to_string(),
            destination_port: chain["filter_chain_match"]["destination_port"].as_u64(),
            transport_protocol: chain["filter_chain_match"]["transport_protocol"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        }
    }

    /// Chains whose HTTP connection manager has an HTTP filter named `name`.
    pub fn chains_with_http_filter(&self, name: &str) -> Vec<ChainRef> {
        (0..self.chain_count())
            .filter(|&i| self.http_filters(i).iter().any(|f| f == name))
            .map(|i| self.chain_ref(i))
            .collect()
    }

    pub fn chain_count(&self) -> usize {
        self.listener["filter_chains"]
            .as_array()
            .map(|a| a.len())
            .unwrap_or(0)
    }

    /// The HTTP filter names of chain `index` (empty for a TCP chain).
    pub fn http_filters(&self, index: usize) -> Vec<String> {
        self.listener["filter_chains"][index]["filters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|f| f["name"] == HCM)
            .flat_map(|f| {
                f["typed_config"]["http_filters"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .map(|f| f["name"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// Applies every patch of an EnvoyFilter (all documents of a manifest that are
    /// EnvoyFilters). Returns, per HTTP_FILTER patch, the chains it changed. A listener patch
    /// that matches no chain is an error (istiod would skip it silently, and the filter would
    /// be missing from every sidecar).
    pub fn apply_envoyfilter(&mut self, doc: &Value) -> Result<Vec<Vec<ChainRef>>, String> {
        if doc["kind"] != "EnvoyFilter" {
            return Err(format!("not an EnvoyFilter: {}", doc["kind"]));
        }
        let mut applied = Vec::new();
        for (n, patch) in doc["spec"]["configPatches"]
            .as_array()
            .ok_or("spec.configPatches is not a list")?
            .iter()
            .enumerate()
        {
            let what = format!(
                "{} patch {n} ({})",
                doc["metadata"]["name"], patch["applyTo"]
            );
            let operation = patch["patch"]["operation"].as_str().unwrap_or_default();
            let value = patch["patch"]["value"].clone();
            match patch["applyTo"].as_str().unwrap_or_default() {
                "CLUSTER" => {
                    // Applied to inbound only when the context says so explicitly.
                    if patch["match"]["context"] != "SIDECAR_INBOUND" || operation != "ADD" {
                        return Err(format!("{what}: only CLUSTER ADD in SIDECAR_INBOUND"));
                    }
                    self.clusters.push(value);
                }
                "EXTENSION_CONFIG" => {
                    if operation != "ADD" {
                        return Err(format!("{what}: only EXTENSION_CONFIG ADD"));
                    }
                    self.extension_configs.push(value);
                }
                "HTTP_FILTER" => {
                    let chains = self
                        .patch_http_filter(patch, &value)
                        .map_err(|e| format!("{what}: {e}"))?;
                    applied.push(chains);
                }
                "NETWORK_FILTER" => {
                    self.merge_network_filter(patch, &value)
                        .map_err(|e| format!("{what}: {e}"))?;
                }
                other => return Err(format!("{what}: applyTo {other} is not emulated")),
            }
        }
        Ok(applied)
    }

    /// `NETWORK_FILTER` `MERGE` as istiod applies it: the patch's value merged, as protobuf
    /// merges messages, into each network filter of that name on the chains the port matches.
    /// Returns the chains changed; a match that changes nothing is an error.
    fn merge_network_filter(
        &mut self,
        patch: &Value,
        value: &Value,
    ) -> Result<Vec<ChainRef>, String> {
        let m = &patch["match"];
        if m["context"] != "SIDECAR_INBOUND" {
            return Err(format!("context {} is not SIDECAR_INBOUND", m["context"]));
        }
        if patch["patch"]["operation"] != "MERGE" {
            return Err("only NETWORK_FILTER MERGE is emulated".into());
        }
        let port = m["listener"]["portNumber"].as_u64();
        let filter_name = m["listener"]["filterChain"]["filter"]["name"].as_str();
        let mut changed = Vec::new();
        for index in 0..self.chain_count() {
            let chain_ref = self.chain_ref(index);
            if port.is_some() && chain_ref.destination_port != port {
                continue;
            }
            let Some(filters) = self.listener["filter_chains"][index]["filters"].as_array_mut()
            else {
                continue;
            };
            for network_filter in filters.iter_mut() {
                if filter_name.is_some_and(|want| network_filter["name"] != want) {
                    continue;
                }
                if network_filter["typed_config"]["@type"] != value["typed_config"]["@type"] {
                    return Err(format!(
                        "typed_config {} cannot merge into the chain's {}",
                        value["typed_config"]["@type"], network_filter["typed_config"]["@type"]
                    ));
                }
                proto_merge(network_filter, value);
                changed.push(chain_ref.clone());
            }
        }
        if changed.is_empty() {
            return Err(format!(
                "portNumber {} and filterChain.filter.name {:?} match no network filter",
                port.unwrap_or(0),
                filter_name.unwrap_or_default()
            ));
        }
        Ok(changed)
    }

    fn patch_http_filter(&mut self, patch: &Value, value: &Value) -> Result<Vec<ChainRef>, String> {
        let m = &patch["match"];
        if m["context"] != "SIDECAR_INBOUND" {
            return Err(format!("context {} is not SIDECAR_INBOUND", m["context"]));
        }
        let listener_match = &m["listener"];
        let port = listener_match["portNumber"].as_u64();
        let filter_name = listener_match["filterChain"]["filter"]["name"].as_str();
        let sub_filter = listener_match["filterChain"]["filter"]["subFilter"]["name"].as_str();
        let operation = patch["patch"]["operation"].as_str().unwrap_or_default();
        let mut changed = Vec::new();
        let mut port_matched = 0;
        let mut filter_matched = 0;
        for index in 0..self.chain_count() {
            let chain_ref = self.chain_ref(index);
            if let Some(port) = port {
                // istiod: the chain's destination_port; a chain without one never matches.
                if chain_ref.destination_port != Some(port) {
                    continue;
                }
            }
            port_matched += 1;
            let chain = &mut self.listener["filter_chains"][index];
            let Some(filters) = chain["filters"].as_array_mut() else {
                continue;
            };
            for network_filter in filters.iter_mut() {
                let name = network_filter["name"].as_str().unwrap_or_default();
                if filter_name.is_some_and(|want| want != name) {
                    continue;
                }
                // HTTP_FILTER patches only ever touch an HTTP connection manager.
                if name != HCM {
                    continue;
                }
                filter_matched += 1;
                let Some(http_filters) =
                    network_filter["typed_config"]["http_filters"].as_array_mut()
                else {
                    continue;
                };
                let position =
                    sub_filter.map(|want| http_filters.iter().position(|f| f["name"] == want));
                let done = match (operation, position) {
                    ("ADD", _) => {
                        http_filters.push(value.clone());
                        true
                    }
                    ("INSERT_FIRST", _) => {
                        http_filters.insert(0, value.clone());
                        true
                    }
                    ("INSERT_BEFORE", Some(Some(i))) => {
                        http_filters.insert(i, value.clone());
                        true
                    }
                    ("INSERT_AFTER", Some(Some(i))) => {
                        http_filters.insert(i + 1, value.clone());
                        true
                    }
                    ("INSERT_BEFORE" | "INSERT_AFTER", _) => false,
                    (other, _) => return Err(format!("operation {other} is not emulated")),
                };
                if done {
                    changed.push(chain_ref.clone());
                }
            }
        }
        if changed.is_empty() {
            let ports: Vec<String> = (0..self.chain_count())
                .filter_map(|i| self.chain_ref(i).destination_port)
                .map(|p| p.to_string())
                .collect();
            return Err(if port_matched == 0 {
                format!(
                    "portNumber {} matches no inbound filter chain (the listener's chains serve \
                     destination ports {})",
                    port.unwrap_or(0),
                    ports.join(", ")
                )
            } else if filter_matched == 0 {
                format!(
                    "filterChain.filter.name {:?} matches no network filter of the chains for \
                     port {}",
                    filter_name.unwrap_or_default(),
                    port.unwrap_or(0)
                )
            } else {
                format!(
                    "subFilter.name {:?} matches no HTTP filter of the chains for port {}",
                    sub_filter.unwrap_or_default(),
                    port.unwrap_or(0)
                )
            });
        }
        Ok(changed)
    }

    /// Applies a WasmPlugin as istiod does for a sidecar's inbound side: the ECDS resource
    /// (module at `module_path`, where istio-agent would have stored the download) and one
    /// HTTP filter per matched chain, placed by `phase`. Returns the chains changed.
    pub fn apply_wasmplugin(
        &mut self,
        doc: &Value,
        version: IstioVersion,
        module_path: &Path,
    ) -> Result<Vec<ChainRef>, String> {
        if doc["kind"] != "WasmPlugin" {
            return Err(format!("not a WasmPlugin: {}", doc["kind"]));
        }
        let spec = &doc["spec"];
        if spec["type"] != "HTTP" {
            return Err("only type: HTTP is emulated".into());
        }
        let namespace = doc["metadata"]["namespace"].as_str().unwrap_or("default");
        let name = doc["metadata"]["name"].as_str().unwrap_or_default();
        let resource = version.ecds_name(namespace, name);
        let mut ports = Vec::new();
        for m in spec["match"].as_array().into_iter().flatten() {
            if m["mode"] != "SERVER" {
                return Err(format!("match mode {} is not emulated", m["mode"]));
            }
            ports.extend(
                m["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p["number"].as_u64()),
            );
        }
        let phase = spec["phase"].as_str().unwrap_or("UNSPECIFIED_PHASE");
        let filter = json!({
            "name": resource,
            "config_discovery": {
                "config_source": { "ads": {}, "initial_fetch_timeout": "0s" },
                "type_urls": [WASM_TYPE],
            }
        });
        let mut changed = Vec::new();
        for index in 0..self.chain_count() {
            let chain_ref = self.chain_ref(index);
            let Some(port) = chain_ref.destination_port else {
                continue; // catch-all chains: a WasmPlugin with ports never applies there
            };
            if !ports.is_empty() && !ports.contains(&port) {
                continue;
            }
            let chain = &mut self.listener["filter_chains"][index];
            for network_filter in chain["filters"].as_array_mut().into_iter().flatten() {
                if network_filter["name"] != HCM {
                    continue;
                }
                let Some(http_filters) =
                    network_filter["typed_config"]["http_filters"].as_array_mut()
                else {
                    continue;
                };
                let at = phase_position(http_filters, phase)?;
                http_filters.insert(at, filter.clone());
                changed.push(chain_ref.clone());
            }
        }
        if changed.is_empty() {
            return Err(format!(
                "the WasmPlugin's ports {ports:?} match no inbound HTTP chain"
            ));
        }
        let configuration =
            serde_json::to_string(&spec["pluginConfig"]).map_err(|e| e.to_string())?;
        let failure_policy = match spec["failStrategy"].as_str().unwrap_or("FAIL_CLOSE") {
            "FAIL_OPEN" => "FAIL_OPEN",
            "FAIL_RELOAD" => "FAIL_RELOAD",
            _ => "FAIL_CLOSED",
        };
        self.extension_configs.push(json!({
            "name": resource,
            "typed_config": {
                "@type": WASM_TYPE,
                "config": {
                    "name": format!("{namespace}.{name}"),
                    "root_id": spec["pluginName"],
                    "vm_config": {
                        "runtime": "envoy.wasm.runtime.v8",
                        "code": { "local": { "filename": module_path.display().to_string() } },
                        "environment_variables": {
                            "key_values": { "ISTIO_META_WASM_PLUGIN_RESOURCE_VERSION": "1" }
                        }
                    },
                    "configuration": {
                        "@type": "type.googleapis.com/google.protobuf.StringValue",
                        "value": configuration,
                    },
                    "failure_policy": failure_policy,
                }
            }
        }));
        Ok(changed)
    }
}

/// Where istiod's listener builder puts a plugin of `phase` in an inbound HTTP chain that it
/// built (the dump's): after the metadata exchange and CUSTOM ext_authz for AUTHN, after the
/// authn filters for AUTHZ, after rbac (and earlier plugins of later phases) for STATS and
/// for no phase. All of them land before grpc_stats, fault, cors, istio.stats and the router.
fn phase_position(http_filters: &[Value], phase: &str) -> Result<usize, String> {
    const FIRST: [&str; 2] = ["istio.metadata_exchange", "envoy.filters.http.ext_authz"];
    const AUTHN: [&str; 3] = ["envoy.filters.http.jwt_authn", "istio_authn", "istio.authn"];
    const AUTHZ: [&str; 1] = ["envoy.filters.http.rbac"];
    let names: Vec<&str> = http_filters
        .iter()
        .map(|f| f["name"].as_str().unwrap_or_default())
        .collect();
    let plugin = |n: &str| n.starts_with("extensions.istio.io/");
    let after_last = |groups: &[&[&str]], plugins_too: bool| -> usize {
        names
            .iter()
            .rposition(|n| groups.iter().any(|g| g.contains(n)) || (plugins_too && plugin(n)))
            .map(|i| i + 1)
            .unwrap_or(0)
    };
    Ok(match phase {
        "AUTHN" => after_last(&[&FIRST], false),
        "AUTHZ" => after_last(&[&FIRST, &AUTHN], false),
        "STATS" | "UNSPECIFIED_PHASE" => after_last(&[&FIRST, &AUTHN, &AUTHZ], true),
        other => return Err(format!("phase {other} is not one of AUTHN, AUTHZ, STATS")),
    })
}

/// How to run a patched [`Mesh`] in upstream Envoy.
pub struct SidecarOptions {
    /// The function's loopback port (`inbound|8080||` and the probe cluster point there).
    pub function_port: u16,
    /// Where the sidecar finds the module for `code.local` (the ConfigMap mount, or
    /// istio-agent's download).
    pub module: PathBuf,
    /// The module server for `code.remote`: the cluster named so is pointed at this address.
    pub module_server: Option<(String, SocketAddr)>,
    /// Pod labels (`LABELS`) and namespace (`NAMESPACE`): the real bootstrap's are those of a
    /// pod that is no OpenFaaS function.
    pub labels: Vec<(String, String)>,
    pub namespace: String,
    /// Stats names added to Istio's inclusion list, as `proxyStatsMatcher.inclusionPrefixes`
    /// does (Istio exports only the stats it is told to).
    pub stats_inclusion_prefixes: Vec<String>,
    /// Static certificates in place of SDS.
    pub tls: crate::tls::ServerTls,
    /// Worker threads.
    pub concurrency: u32,
    /// Serve `virtualInbound` by LDS (from a file) rather than statically, so a test can push a
    /// new version of it as istiod does ([`Sidecar::push_listener`]).
    pub dynamic_listeners: bool,
}

/// A running upstream Envoy built from Istio's bootstrap and a patched `virtualInbound`.
pub struct Sidecar {
    process: EnvoyProcess,
    admin: SocketAddr,
    /// The declared port (the chains the manifests matched).
    pub declared: SocketAddr,
    /// A port the Service does not declare: Istio's catch-all chains.
    pub undeclared: SocketAddr,
    /// The filters removed because upstream Envoy lacks them.
    pub removed: Vec<String>,
    /// The bootstrap Envoy runs (for a failure message).
    pub bootstrap: Value,
    /// The ECDS file of each extension config, by resource name.
    ecds_paths: Vec<(String, PathBuf)>,
    version: u64,
    /// The LDS file, with `dynamic_listeners`.
    lds_path: Option<PathBuf>,
    /// The declared and undeclared ports, held while the sidecar listens on them.
    _ports: [crate::ports::ReservedPort; 2],
}

impl Sidecar {
    /// Builds the runnable configuration and starts Envoy; returns once the admin and the
    /// listener answer (the ECDS outcome is for the test to read from the stats).
    pub async fn start(
        mesh: &Mesh,
        data: &IstioData,
        options: &SidecarOptions,
    ) -> io::Result<Sidecar> {
        let dir = tempfile::Builder::new()
            .prefix("faas-mesh-istio-")
            .tempdir()?;
        // Held for as long as the sidecar runs; its listeners bind them with SO_REUSEPORT.
        let ports = [
            crate::ports::ReservedPort::new()?,
            crate::ports::ReservedPort::new()?,
        ];
        let [declared_port, undeclared_port] = [ports[0].port(), ports[1].port()];
        // The native build reads the pod's labels and namespace from Istio's downward-API files
        // (EnvoyProcess::start points it at this folder), not from the node metadata.
        if crate::filter_build::FilterBuild::current() == crate::filter_build::FilterBuild::Native {
            crate::filter_build::write_pod_info(
                dir.path(),
                &crate::filter_build::PodInfo {
                    labels: options.labels.clone(),
                    annotations: Vec::new(),
                    namespace: Some(options.namespace.clone()),
                },
            )?;
        }
        let mut ecds_paths = Vec::new();
        for (i, resource) in mesh.extension_configs.iter().enumerate() {
            let mut resource = resource.clone();
            let code = &mut resource["typed_config"]["config"]["vm_config"]["code"];
            if code.get("local").is_some() {
                code["local"] = json!({ "filename": options.module.display().to_string() });
            }
            let path = dir.path().join(format!("ecds-{i}.json"));
            std::fs::write(
                &path,
                serde_json::to_vec_pretty(&json!({
                    "version_info": "1",
                    "resources": [{
                        "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
                        "name": resource["name"],
                        "typed_config": resource["typed_config"],
                    }]
                }))?,
            )?;
            ecds_paths.push((
                resource["name"].as_str().unwrap_or_default().to_string(),
                path,
            ));
        }
        let mut removed = Vec::new();
        let listener = runnable_listener(
            mesh,
            declared_port,
            undeclared_port,
            options,
            &ecds_paths,
            &mut removed,
        );

        // Clusters the routes name (from CDS in a real sidecar): the function, and the
        // passthrough, which stands for the function listening on a port the Service does not
        // declare.
        let function = |name: &str| static_cluster(name, options.function_port);
        let mut clusters = vec![
            function("inbound|8080||"),
            function("InboundPassthroughClusterIpv4"),
            json!({ "name": "BlackHoleCluster", "type": "STATIC", "connect_timeout": "1s" }),
        ];
        for cluster in &mesh.clusters {
            let mut cluster = cluster.clone();
            let name = cluster["name"].as_str().unwrap_or_default().to_string();
            let target = match &options.module_server {
                Some((server, addr)) if *server == name => Some(*addr),
                _ => None,
            };
            // The EnvoyFilter's own clusters: the probe one to the function, the module
            // server's to the test's server (a loopback address replaces the Service's name).
            let addr = target.unwrap_or(SocketAddr::from(([127, 0, 0, 1], options.function_port)));
            cluster["type"] = json!("STATIC");
            if let Some(groups) = cluster["load_assignment"]["endpoints"].as_array_mut() {
                for group in groups {
                    for endpoint in group["lb_endpoints"].as_array_mut().into_iter().flatten() {
                        endpoint["endpoint"]["address"]["socket_address"] = json!({
                            "address": "127.0.0.1", "port_value": addr.port() });
                    }
                }
            }
            if let Some(map) = cluster.as_object_mut() {
                map.remove("dns_lookup_family");
                map.remove("respect_dns_ttl");
                map.remove("dns_refresh_rate");
            }
            clusters.push(cluster);
        }

        let mut bootstrap = data.bootstrap.clone();
        let b = bootstrap
            .as_object_mut()
            .ok_or_else(|| io::Error::other("bootstrap"))?;
        for outside in ["dynamic_resources", "tracing", "stats_sinks"] {
            b.remove(outside);
        }
        let node = &mut b["node"]["metadata"];
        for (k, v) in &options.labels {
            node["LABELS"][k] = json!(v);
        }
        node["NAMESPACE"] = json!(options.namespace);
        if let Some(patterns) =
            b["stats_config"]["stats_matcher"]["inclusion_list"]["patterns"].as_array_mut()
        {
            for prefix in &options.stats_inclusion_prefixes {
                patterns.push(json!({ "prefix": prefix }));
            }
        }
        b["admin"]["address"] =
            json!({ "socket_address": { "address": "127.0.0.1", "port_value": 0 } });
        b["admin"]["profile_path"] = json!(dir.path().join("envoy.prof").display().to_string());
        let lds_path = if options.dynamic_listeners {
            let path = dir.path().join("lds.json");
            write_lds(&path, &listener, 1)?;
            b.insert(
                "dynamic_resources".into(),
                json!({ "lds_config": {
                    "path_config_source": { "path": path.display().to_string() },
                    "resource_api_version": "V3",
                } }),
            );
            b["static_resources"]["listeners"] = json!([]);
            Some(path)
        } else {
            b["static_resources"]["listeners"] = json!([listener]);
            None
        };
        let statics = &mut b["static_resources"];
        let mut all = statics["clusters"].as_array().cloned().unwrap_or_default();
        all.retain(|c| c["name"] != "zipkin");
        all.extend(clusters);
        statics["clusters"] = Value::Array(all);

        let mut process = EnvoyProcess::start(dir, &bootstrap, options.concurrency).await?;
        process
            .wait_for_listener("virtualInbound", |listeners| {
                listeners
                    .to_string()
                    .contains("virtualInbound")
                    .then_some(())
            })
            .await?;
        Ok(Sidecar {
            admin: process.admin(),
            process,
            declared: SocketAddr::from(([127, 0, 0, 1], declared_port)),
            undeclared: SocketAddr::from(([127, 0, 0, 1], undeclared_port)),
            removed,
            bootstrap,
            ecds_paths,
            version: 1,
            lds_path,
            _ports: ports,
        })
    }

    /// Waits until one of the ECDS counters of `filter` moves: `Ok(true)` for `update_success`,
    /// `Ok(false)` for `update_rejected` or `update_failure`.
    pub async fn ecds_outcome(&mut self, filter: &str) -> io::Result<bool> {
        Ok(self.process.wait_for_config_outcome(filter, (0, 0)).await? == ConfigOutcome::Accepted)
    }

    pub async fn send(&self, request: &Request) -> io::Result<Response> {
        http::send(self.declared, request).await
    }

    /// Whether Envoy is initialized and serving (admin `/ready`: LIVE).
    pub async fn ready(&self) -> bool {
        http::send(self.admin, &Request::get("/ready"))
            .await
            .map(|r| r.status == 200)
            .unwrap_or(false)
    }

    /// The active (not warming) `virtualInbound` as Envoy runs it, as JSON text.
    pub async fn active_listener(&self) -> io::Result<String> {
        let dump = http::send(
            self.admin,
            &Request::get("/config_dump?resource=dynamic_listeners"),
        )
        .await?
        .json();
        Ok(dump["configs"]
            .as_array()
            .into_iter()
            .flatten()
            // With `resource=`, each config is one DynamicListener.
            .map(|l| l["active_state"]["listener"].to_string())
            .collect::<Vec<_>>()
            .join("\n"))
    }

    /// Pushes a new version of `virtualInbound`, built from `mesh` as at start, by LDS.
    pub fn push_listener(&mut self, mesh: &Mesh, options: &SidecarOptions) -> io::Result<()> {
        let path = self
            .lds_path
            .clone()
            .ok_or_else(|| io::Error::other("started without dynamic_listeners"))?;
        let mut removed = Vec::new();
        let listener = runnable_listener(
            mesh,
            self.declared.port(),
            self.undeclared.port(),
            options,
            &self.ecds_paths,
            &mut removed,
        );
        self.version += 1;
        write_lds(&path, &listener, self.version)
    }

    /// Pushes a new version of an extension config (`TypedExtensionConfig`, as an
    /// EXTENSION_CONFIG patch carries it), as istiod does after `kubectl apply`.
    pub fn push_extension_config(&mut self, resource: &Value) -> io::Result<()> {
        let name = resource["name"].as_str().unwrap_or_default();
        let path = self
            .ecds_paths
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p.clone())
            .ok_or_else(|| io::Error::other(format!("no extension config {name}")))?;
        self.version += 1;
        let tmp = path.with_extension("tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(&json!({
                "version_info": self.version.to_string(),
                "resources": [{
                    "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
                    "name": name,
                    "typed_config": resource["typed_config"],
                }]
            }))?,
        )?;
        std::fs::rename(&tmp, &path)
    }

    pub async fn get(&self, target: &str) -> Response {
        self.send(&Request::get(target))
            .await
            .unwrap_or_else(|e| panic!("GET {target}: {e}\n{}", self.log_tail(40)))
    }

    /// Every counter and gauge, by name.
    pub async fn stats(&self) -> io::Result<Vec<(String, u64)>> {
        self.process.stats().await
    }

    pub async fn stat(&self, name: &str) -> u64 {
        self.process.stat(name).await.unwrap_or(0)
    }

    /// The listener as Envoy runs it (`/config_dump`), to check where the filter landed.
    pub async fn running_http_filters(&self, chain_name: &str) -> io::Result<Vec<String>> {
        let dump = http::send(
            self.admin,
            &Request::get("/config_dump?resource=static_listeners"),
        )
        .await?
        .json();
        let mut names = Vec::new();
        for config in dump["configs"].as_array().into_iter().flatten() {
            for chain in config["listener"]["filter_chains"]
                .as_array()
                .into_iter()
                .flatten()
            {
                if chain["name"] != chain_name {
                    continue;
                }
                for f in chain["filters"].as_array().into_iter().flatten() {
                    for h in f["typed_config"]["http_filters"]
                        .as_array()
                        .into_iter()
                        .flatten()
                    {
                        names.push(h["name"].as_str().unwrap_or_default().to_string());
                    }
                }
                return Ok(names);
            }
        }
        Ok(names)
    }

    pub fn log(&self) -> String {
        self.process.log()
    }

    /// The log once it satisfies `done`, or as it is after 30 seconds.
    pub async fn log_when(&self, done: impl Fn(&str) -> bool) -> String {
        self.process.log_when(done).await
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }

    /// How Envoy exited, if it did, and what it wrote to stdout/stderr.
    pub fn exited(&mut self) -> Option<(std::process::ExitStatus, String)> {
        self.process.exited()
    }
}

fn write_lds(path: &Path, listener: &Value, version: u64) -> io::Result<()> {
    let mut resource = listener.clone();
    resource["@type"] = json!("type.googleapis.com/envoy.config.listener.v3.Listener");
    let tmp = path.with_extension("tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(&json!({
            "version_info": version.to_string(),
            "resources": [resource],
        }))?,
    )?;
    std::fs::rename(&tmp, path)
}

/// The patched `virtualInbound` as upstream Envoy can run it on loopback (see the module docs).
fn runnable_listener(
    mesh: &Mesh,
    declared_port: u16,
    undeclared_port: u16,
    options: &SidecarOptions,
    ecds_paths: &[(String, PathBuf)],
    removed: &mut Vec<String>,
) -> Value {
    let mut listener = mesh.listener.clone();
    if let Some(map) = listener.as_object_mut() {
        map.remove("@type"); // a config dump's, not a bootstrap's
    }
    // The chains of the function's port (8080 after rewrite_port) get the test's port.
    rewrite_port(&mut listener, FUNCTION_PORT, declared_port, false);
    listener["address"] =
        json!({ "socket_address": { "address": "127.0.0.1", "port_value": declared_port } });
    listener["additional_addresses"] = json!([{ "address": { "socket_address": {
            "address": "127.0.0.1", "port_value": undeclared_port } } }]);
    for chain in listener["filter_chains"]
        .as_array_mut()
        .into_iter()
        .flatten()
    {
        if let Some(filters) = chain["filters"].as_array_mut() {
            filters.retain(|f| {
                let name = f["name"].as_str().unwrap_or_default();
                let istio_only = ISTIO_ONLY_FILTERS.contains(&name);
                if istio_only {
                    removed.push(format!("network {name}"));
                }
                !istio_only
            });
            for f in filters.iter_mut().filter(|f| f["name"] == HCM) {
                let hcm = &mut f["typed_config"];
                if let Some(http_filters) = hcm["http_filters"].as_array_mut() {
                    http_filters.retain(|h| {
                        let name = h["name"].as_str().unwrap_or_default();
                        let istio_only = ISTIO_ONLY_FILTERS.contains(&name);
                        if istio_only {
                            removed.push(format!("http {name}"));
                        }
                        !istio_only
                    });
                    for h in http_filters.iter_mut() {
                        adapt_http_filter(h, ecds_paths, &options.module);
                    }
                }
            }
        }
        if chain.get("transport_socket").is_some() {
            static_certificates(&mut chain["transport_socket"], &options.tls);
        }
    }
    removed.sort();
    removed.dedup();
    listener
}

/// The AuthorizationPolicy the test puts in place of the dump's (whose principals need Istio's
/// authn state): deny `/function/env/private`, allow everything else.
pub const TEST_DENIED_PREFIX: &str = "/function/env/private";

fn adapt_http_filter(filter: &mut Value, ecds_paths: &[(String, PathBuf)], module: &Path) {
    let name = filter["name"].as_str().unwrap_or_default().to_string();
    // An inline Wasm filter with a local module: the file the sidecar would have.
    if let Some(local) = filter.pointer_mut("/typed_config/config/vm_config/code/local") {
        *local = json!({ "filename": module.display().to_string() });
    }
    if filter.get("config_discovery").is_some() {
        // ADS becomes the file the test wrote for that resource.
        let source = &mut filter["config_discovery"]["config_source"];
        if let Some(map) = source.as_object_mut() {
            map.remove("ads");
        }
        if let Some((_, path)) = ecds_paths.iter().find(|(n, _)| *n == name) {
            source["path_config_source"] = json!({ "path": path.display().to_string() });
            source["resource_api_version"] = json!("V3");
        }
        return;
    }
    match name.as_str() {
        "envoy.filters.http.rbac" => {
            filter["typed_config"]["rules"] = json!({
                "action": "DENY",
                "policies": { "test-deny-private": {
                    "permissions": [{ "url_path": { "path": { "prefix": TEST_DENIED_PREFIX } } }],
                    "principals": [{ "any": true }],
                } }
            });
        }
        // Inert in Istio's inbound chain (no route config); here a header can ask it for an
        // abort, to show what runs before and after it.
        "envoy.filters.http.fault" => {
            filter["typed_config"]["abort"] =
                json!({ "header_abort": {}, "percentage": { "numerator": 100 } });
        }
        _ => {}
    }
}

/// SDS (istio-agent's `default` and `ROOTCA` secrets) becomes static files.
fn static_certificates(socket: &mut Value, tls: &crate::tls::ServerTls) {
    let common = &mut socket["typed_config"]["common_tls_context"];
    if let Some(map) = common.as_object_mut() {
        map.remove("tls_certificate_sds_secret_configs");
        let mut validation = map
            .remove("combined_validation_context")
            .map(|c| c["default_validation_context"].clone())
            .unwrap_or_else(|| json!({}));
        validation["trusted_ca"] = json!({ "filename": tls.ca.display().to_string() });
        map.insert("validation_context".into(), validation);
        map.insert(
            "tls_certificates".into(),
            json!([{
                "certificate_chain": { "filename": tls.cert.display().to_string() },
                "private_key": { "filename": tls.key.display().to_string() }
            }]),
        );
    }
}

fn static_cluster(name: &str, port: u16) -> Value {
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "10s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": { "socket_address": {
                "address": "127.0.0.1", "port_value": port } } } }] }]
        }
    })
}

/// Every YAML document of a manifest file.
pub fn yaml_documents(text: &str) -> Result<Vec<Value>, String> {
    text.split("\n---\n")
        .filter(|d| !d.trim().is_empty())
        .map(|d| serde_yaml::from_str(d).map_err(|e| format!("not YAML: {e}")))
        .collect()
}

/// Protobuf's merge, on JSON: messages field by field, lists appended, anything else replaced.
fn proto_merge(into: &mut Value, from: &Value) {
    match (into, from) {
        (Value::Object(into), Value::Object(from)) => {
            for (key, value) in from {
                match into.get_mut(key) {
                    Some(slot) => proto_merge(slot, value),
                    None => {
                        into.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (Value::Array(into), Value::Array(from)) => into.extend(from.iter().cloned()),
        (slot, value) => *slot = value.clone(),
    }
}
