//! Renders every manifest from the operator's configuration file.
//!
//! The configuration is checked by the filter's own parser first, so a mistake is reported here
//! with the message the sidecar would log, before anything reaches a cluster. Output is
//! deterministic: the same configuration and module give the same bytes.

use crate::oci::Image;
use crate::{base64, sha256_hex};
use faas_mesh_filter::config::Config;
use serde_json::Value;

const ENVOYFILTER: &str = include_str!("../templates/envoyfilter.yaml");
const ENVOYFILTER_REMOTE: &str = include_str!("../templates/envoyfilter-remote.yaml");
const WASMPLUGIN: &str = include_str!("../templates/wasmplugin.yaml");
const CONFIGMAP: &str = include_str!("../templates/wasm-configmap.yaml");
const MODULE_SERVER: &str = include_str!("../templates/module-server.yaml");
const STACK: &str = include_str!("../templates/stack.yml");
const ENVOYFILTER_NATIVE: &str = include_str!("../templates/envoyfilter-native.yaml");
const ENVOYFILTER_NATIVE_REMOTE: &str = include_str!("../templates/envoyfilter-native-remote.yaml");
const MODULE_SERVER_NATIVE: &str = include_str!("../templates/module-server-native.yaml");
const PROXYCONFIG_NATIVE: &str = include_str!("../templates/proxyconfig-native.yaml");
const OBSERVABILITY: &str = include_str!("../../envoyfilter/observability.yaml");

/// The module server's image (module-server.yaml): BusyBox's httpd. Whatever it serves, a
/// sidecar loads only the module whose sha256 the EnvoyFilter pins.
pub const MODULE_SERVER_IMAGE: &str = "docker.io/library/busybox:1.37.0";
/// Where sidecars fetch the module from on the remote route (the Service in module-server.yaml).
pub const MODULE_SERVER_HOST: &str = "faas-mesh-filter-module.openfaas.svc.cluster.local";
pub const MODULE_SERVER_PORT: u16 = 8080;
/// The cluster the remote EnvoyFilter adds for the fetch.
pub const MODULE_CLUSTER: &str = "faas_mesh_filter_module";

/// The native build's library name: Envoy loads `lib<name>.so` (by name, or the fetched file).
pub const NATIVE_NAME: &str = "faas_mesh_filter_native";
/// Where sidecars fetch the native module from (the Service in module-server-native.yaml).
pub const NATIVE_MODULE_SERVER_HOST: &str =
    "faas-mesh-filter-native-module.openfaas.svc.cluster.local";
/// The cluster the native remote EnvoyFilter adds for the fetch.
pub const NATIVE_MODULE_CLUSTER: &str = "faas_mesh_filter_native_module";

/// A Linux architecture the native module is built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    pub const ALL: [Arch; 2] = [Arch::Amd64, Arch::Arm64];

    /// Kubernetes' name (`kubernetes.io/arch`).
    pub fn name(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// The Rust target the release builds the module for.
    pub fn rust_target(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64-unknown-linux-gnu",
            Arch::Arm64 => "aarch64-unknown-linux-gnu",
        }
    }

    /// The rendered EnvoyFilter that fetches this architecture's module.
    pub fn envoyfilter_file(self) -> &'static str {
        match self {
            Arch::Amd64 => "envoyfilter-native-amd64.yaml",
            Arch::Arm64 => "envoyfilter-native-arm64.yaml",
        }
    }

    /// Where the module is in the release bundle and on the module server.
    pub fn module_path(self) -> String {
        format!("linux-{}/lib{NATIVE_NAME}.so", self.name())
    }
}

/// Where the native build's sidecars get the module from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NativeSource<'a> {
    /// `lib<name>.so` in Envoy's search path (`ENVOY_DYNAMIC_MODULES_SEARCH_PATH`): a sidecar
    /// image or a mount that carries the module.
    ByName,
    /// Fetched by every sidecar from the native module server, loaded only with this sha256.
    Remote {
        arch: Arch,
        sha256: &'a str,
        bytes: usize,
    },
}

/// The native build's EnvoyFilter with the filter configuration `pretty` (JSON, the same the
/// Wasm build takes), the connection manager's `request_timeout` and the module from `source`.
pub fn native_envoyfilter(pretty: &str, request_timeout: &str, source: NativeSource) -> String {
    let template = match source {
        NativeSource::ByName => ENVOYFILTER_NATIVE.to_string(),
        NativeSource::Remote {
            arch,
            sha256,
            bytes,
        } => ENVOYFILTER_NATIVE_REMOTE
            .replace("{{ARCH}}", arch.name())
            .replace("{{NATIVE_SHA256}}", sha256)
            .replace("{{NATIVE_BYTES}}", &bytes.to_string())
            .replace("{{MODULE_CLUSTER}}", NATIVE_MODULE_CLUSTER)
            .replace("{{MODULE_SERVER_HOST}}", NATIVE_MODULE_SERVER_HOST)
            .replace("{{MODULE_SERVER_PORT}}", &MODULE_SERVER_PORT.to_string()),
    };
    template
        .replace("{{NATIVE_NAME}}", NATIVE_NAME)
        .replace("{{REQUEST_TIMEOUT}}", request_timeout)
        .replace("{{CONFIGURATION}}", &indent(pretty, 16))
}

/// The built native modules, one per architecture (`lib<name>.so`).
pub struct NativeModules<'a> {
    pub amd64: &'a [u8],
    pub arm64: &'a [u8],
}

impl NativeModules<'_> {
    pub fn get(&self, arch: Arch) -> &[u8] {
        match arch {
            Arch::Amd64 => self.amd64,
            Arch::Arm64 => self.arm64,
        }
    }
}

/// The native build's delivery: per architecture, the EnvoyFilter that fetches the module by
/// its sha256 (`envoyfilter-native-<arch>.yaml`), the server that carries both
/// (`module-server-native.yaml`), and the writable TMPDIR the sidecars need to load a fetched
/// module (`proxyconfig-native.yaml`).
pub fn render_native(config_json: &str, modules: &NativeModules) -> Result<Vec<File>, String> {
    let config = checked(config_json)?;
    let pretty = serde_json::to_string_pretty(&config).map_err(|e| e.to_string())?;
    let timeout = request_timeout(config_json)?;
    let mut files = Vec::new();
    let mut server = MODULE_SERVER_NATIVE
        .replace("{{NATIVE_NAME}}", NATIVE_NAME)
        .replace("{{MODULE_SERVER_IMAGE}}", MODULE_SERVER_IMAGE);
    for arch in Arch::ALL {
        let so = modules.get(arch);
        if so.is_empty() {
            return Err(format!("the linux-{} native module is empty", arch.name()));
        }
        let sha256 = sha256_hex(so);
        let encoded = base64(so);
        // Each architecture's ConfigMap is one object: the encoded module must fit in it.
        if encoded.len() + 4096 > CONFIGMAP_LIMIT {
            return Err(format!(
                "the linux-{} native module is {} bytes; as a ConfigMap it is over the {} bytes \
                 Kubernetes allows: serve it from an image instead",
                arch.name(),
                so.len(),
                CONFIGMAP_LIMIT
            ));
        }
        let upper = arch.name().to_uppercase();
        server = server
            .replace(&format!("{{{{{upper}_BYTES}}}}"), &so.len().to_string())
            .replace(&format!("{{{{{upper}_SHA256}}}}"), &sha256)
            .replace(&format!("{{{{{upper}_BASE64}}}}"), &encoded);
        files.push(File {
            name: arch.envoyfilter_file(),
            contents: native_envoyfilter(
                &pretty,
                &timeout,
                NativeSource::Remote {
                    arch,
                    sha256: &sha256,
                    bytes: so.len(),
                },
            ),
        });
    }
    files.push(File {
        name: "module-server-native.yaml",
        contents: server,
    });
    files.push(File {
        name: "proxyconfig-native.yaml",
        contents: PROXYCONFIG_NATIVE.to_string(),
    });
    Ok(files)
}

/// Where the EnvoyFilter route's sidecars get the module from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleSource<'a> {
    /// A file in the sidecar: the ConfigMap mounted by per-function annotations (stack.yml).
    ConfigMapMount,
    /// Fetched by every sidecar from the module server, loaded only with this sha256 (hex); the
    /// filter's configuration inline in the listener, so Envoy fetches while the listener warms.
    Remote { sha256: &'a str },
}

/// The EnvoyFilter with the plugin configuration `pretty` (JSON), the connection manager's
/// `request_timeout` (see [`request_timeout`]) and the module from `source`.
pub fn envoyfilter(pretty: &str, request_timeout: &str, source: ModuleSource) -> String {
    let template = match source {
        ModuleSource::ConfigMapMount => ENVOYFILTER.to_string(),
        ModuleSource::Remote { sha256 } => ENVOYFILTER_REMOTE
            .replace("{{WASM_SHA256}}", sha256)
            .replace("{{MODULE_CLUSTER}}", MODULE_CLUSTER)
            .replace("{{MODULE_SERVER_HOST}}", MODULE_SERVER_HOST)
            .replace("{{MODULE_SERVER_PORT}}", &MODULE_SERVER_PORT.to_string()),
    };
    template
        .replace("{{REQUEST_TIMEOUT}}", request_timeout)
        .replace("{{CONFIGURATION}}", &indent(pretty, 18))
}

/// Kubernetes refuses objects over 1 MiB; keep room for metadata.
pub const CONFIGMAP_LIMIT: usize = 1024 * 1024 - 4096;

/// The built module and where its image lives.
pub struct Module<'a> {
    pub wasm: &'a [u8],
    /// `registry/repository:tag`, without `oci://`.
    pub image: &'a str,
    pub version: &'a str,
}

/// One rendered file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    pub name: &'static str,
    pub contents: String,
}

/// The files that do not depend on the built module (committed under `envoyfilter/`).
pub fn render_static(config_json: &str) -> Result<Vec<File>, String> {
    let config = checked(config_json)?;
    let pretty = serde_json::to_string_pretty(&config).map_err(|e| e.to_string())?;
    Ok(vec![
        File {
            name: "envoyfilter.yaml",
            contents: envoyfilter(
                &pretty,
                &request_timeout(config_json)?,
                ModuleSource::ConfigMapMount,
            ),
        },
        File {
            name: "envoyfilter-native.yaml",
            contents: native_envoyfilter(
                &pretty,
                &request_timeout(config_json)?,
                NativeSource::ByName,
            ),
        },
        File {
            name: "observability.yaml",
            contents: OBSERVABILITY.to_string(),
        },
        File {
            name: "stack.yml",
            contents: STACK.to_string(),
        },
    ])
}

/// Every file: the static ones, the ConfigMap carrying the module, the WasmPlugin pinned to the
/// module's image digest, and the EnvoyFilter that fetches the module by its sha256 from the
/// module server (`envoyfilter-remote.yaml`, `module-server.yaml`).
pub fn render_all(config_json: &str, module: &Module) -> Result<Vec<File>, String> {
    let mut files = render_static(config_json)?;
    let config = checked(config_json)?;
    let image = Image::build(module.wasm, module.version).map_err(|e| e.to_string())?;
    let encoded = base64(module.wasm);
    let configmap = CONFIGMAP
        .replace("{{WASM_BYTES}}", &module.wasm.len().to_string())
        .replace("{{WASM_SHA256}}", &sha256_hex(module.wasm))
        .replace("{{WASM_BASE64}}", &encoded);
    if configmap.len() > CONFIGMAP_LIMIT {
        return Err(format!(
            "the module is {} bytes; as a ConfigMap it is {} bytes, over the {} bytes Kubernetes \
             allows: use wasmplugin.yaml (OCI) instead",
            module.wasm.len(),
            configmap.len(),
            CONFIGMAP_LIMIT
        ));
    }
    files.push(File {
        name: "wasm-configmap.yaml",
        contents: configmap,
    });
    let module_sha256 = sha256_hex(module.wasm);
    let pretty = serde_json::to_string_pretty(&config).map_err(|e| e.to_string())?;
    files.push(File {
        name: "envoyfilter-remote.yaml",
        contents: envoyfilter(
            &pretty,
            &request_timeout(config_json)?,
            ModuleSource::Remote {
                sha256: &module_sha256,
            },
        ),
    });
    files.push(File {
        name: "module-server.yaml",
        contents: MODULE_SERVER
            .replace("{{WASM_BYTES}}", &module.wasm.len().to_string())
            .replace("{{WASM_SHA256}}", &module_sha256)
            .replace("{{WASM_BASE64}}", &encoded)
            .replace("{{MODULE_SERVER_IMAGE}}", MODULE_SERVER_IMAGE),
    });
    // Istio's WasmPlugin cannot set the PluginConfig's allow_on_headers_stop_iteration: the
    // filter is told, so it never waits for body callbacks that such a host would not make.
    let mut plugin_config = config.clone();
    if let Value::Object(root) = &mut plugin_config {
        root.insert(
            "envoy".to_string(),
            serde_json::json!({ "allow_on_headers_stop_iteration": false }),
        );
    }
    let plugin_pretty = serde_json::to_string_pretty(&plugin_config).map_err(|e| e.to_string())?;
    files.push(File {
        name: "wasmplugin.yaml",
        contents: WASMPLUGIN
            .replace("{{IMAGE}}", module.image)
            .replace("{{SHA256}}", &image.digest)
            .replace("{{PLUGIN_CONFIG}}", &indent(&plugin_pretty, 4))
            .replace("{{REQUEST_TIMEOUT}}", &request_timeout(config_json)?),
    });
    Ok(files)
}

/// Parses and validates the configuration as the filter does; returns it as JSON.
fn checked(config_json: &str) -> Result<Value, String> {
    Config::parse(config_json.as_bytes()).map_err(|e| e.to_string())?;
    let value: Value = if config_json.trim().is_empty() {
        Value::Object(Default::default())
    } else {
        serde_json::from_str(config_json).map_err(|e| format!("configuration: {e}"))?
    };
    Ok(value)
}

/// The sidecar's `request_timeout` (a protobuf Duration): `readiness.max_wait_ms` plus the
/// margin in which Envoy answers what a dead VM held ([`faas_mesh_filter::held::MARGIN_MS`]).
pub fn request_timeout(config_json: &str) -> Result<String, String> {
    let config = Config::parse(config_json.as_bytes()).map_err(|e| e.to_string())?;
    let ms = config.readiness.max_wait_ms + faas_mesh_filter::held::MARGIN_MS;
    Ok(format!("{}.{:03}s", ms / 1000, ms % 1000))
}

fn indent(text: &str, spaces: usize) -> String {
    let pad = " ".repeat(spaces);
    text.lines()
        .map(|l| format!("{pad}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module(wasm: &[u8]) -> Module<'_> {
        Module {
            wasm,
            image: "registry.example/faas-mesh-filter:0.1.0",
            version: "0.1.0",
        }
    }

    #[test]
    fn the_committed_manifests_are_what_render_makes_of_the_committed_configuration() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../envoyfilter");
        let config = std::fs::read_to_string(root.join("config.json")).unwrap();
        for file in render_static(&config).unwrap() {
            let committed = std::fs::read_to_string(root.join(file.name)).unwrap();
            assert!(
                committed == file.contents,
                "envoyfilter/{} differs from `make render` output; run `make manifests` and commit",
                file.name
            );
        }
    }

    #[test]
    fn both_routes_set_request_timeout_to_max_wait_plus_the_margin() {
        assert_eq!(request_timeout("{}").unwrap(), "40.000s");
        assert_eq!(
            request_timeout(r#"{"readiness": {"max_wait_ms": 2500}}"#).unwrap(),
            "12.500s"
        );
        let module = Module {
            wasm: b"\0asm",
            image: "example/faas-mesh-filter:0.1.0",
            version: "0.1.0",
        };
        for file in render_all(r#"{"readiness": {"max_wait_ms": 1000}}"#, &module).unwrap() {
            assert!(!file.contents.contains("{{"), "{}", file.name);
            if file.name == "envoyfilter.yaml" || file.name == "wasmplugin.yaml" {
                assert!(
                    file.contents.contains("request_timeout: 11.000s"),
                    "{}",
                    file.name
                );
            }
        }
    }

    #[test]
    fn rendering_is_reproducible_and_pins_the_image_digest() {
        let config = r#"{"policy": {"default": {"methods": ["GET"]}}}"#;
        let wasm = b"\0asm\x01\0\0\0module bytes".to_vec();
        let a = render_all(config, &module(&wasm)).unwrap();
        let b = render_all(config, &module(&wasm)).unwrap();
        assert_eq!(a, b);
        let plugin = &a
            .iter()
            .find(|f| f.name == "wasmplugin.yaml")
            .unwrap()
            .contents;
        let digest = Image::build(&wasm, "0.1.0").unwrap().digest;
        assert!(plugin.contains(&format!("sha256: {digest}")));
        assert!(plugin.contains("url: oci://registry.example/faas-mesh-filter:0.1.0"));
        assert!(plugin.contains(r#""methods": ["#));
        let configmap = &a
            .iter()
            .find(|f| f.name == "wasm-configmap.yaml")
            .unwrap()
            .contents;
        assert!(configmap.contains(&base64(&wasm)));
        let filter = &a
            .iter()
            .find(|f| f.name == "envoyfilter.yaml")
            .unwrap()
            .contents;
        assert!(
            filter.contains(r#"                    "methods": ["#),
            "{filter}"
        );
    }

    #[test]
    fn the_remote_envoyfilter_pins_the_module_the_module_server_carries() {
        let wasm = b"\0asm\x01\0\0\0module bytes".to_vec();
        let files = render_all("{}", &module(&wasm)).unwrap();
        let get = |name: &str| &files.iter().find(|f| f.name == name).unwrap().contents;
        let remote = get("envoyfilter-remote.yaml");
        assert!(remote.contains(&format!("sha256: {}", sha256_hex(&wasm))));
        assert!(remote.contains(&format!("cluster: {MODULE_CLUSTER}")));
        assert!(remote.contains(&format!("name: {MODULE_CLUSTER}")));
        assert!(remote.contains(&format!("address: {MODULE_SERVER_HOST}")));
        assert!(!remote.contains("filename:"));
        assert!(!remote.contains("config_discovery"));
        assert!(!remote.contains("{{"));
        let server = get("module-server.yaml");
        assert!(server.contains(&base64(&wasm)));
        assert!(server.contains(&format!("image: {MODULE_SERVER_IMAGE}")));
        assert!(server.contains("sidecar.istio.io/inject: \"false\""));
        // The fallback, with no module server: the file the ConfigMap mount provides.
        let local = get("envoyfilter.yaml");
        assert!(local.contains("filename: /var/local/lib/wasm/faas_mesh_filter.wasm"));
        assert!(!local.contains("remote:"));
    }

    fn native() -> (Vec<u8>, Vec<u8>) {
        (
            b"\x7fELF\x02\x01\x01 amd64 module".to_vec(),
            b"\x7fELF\x02\x01\x01 arm64 module".to_vec(),
        )
    }

    fn yaml(text: &str) -> Vec<Value> {
        text.split("\n---\n")
            .map(|d| serde_yaml::from_str(d).unwrap())
            .collect()
    }

    #[test]
    fn each_native_envoyfilter_pins_the_module_the_native_server_serves_at_its_url() {
        let (amd64, arm64) = native();
        let config = r#"{"policy": {"default": {"methods": ["GET"]}}}"#;
        let files = render_native(
            config,
            &NativeModules {
                amd64: &amd64,
                arm64: &arm64,
            },
        )
        .unwrap();
        let get = |name: &str| &files.iter().find(|f| f.name == name).unwrap().contents;
        let server = yaml(get("module-server-native.yaml"));
        let service = server.iter().find(|d| d["kind"] == "Service").unwrap();
        assert_eq!(
            format!(
                "{}.{}.svc.cluster.local",
                service["metadata"]["name"].as_str().unwrap(),
                service["metadata"]["namespace"].as_str().unwrap()
            ),
            NATIVE_MODULE_SERVER_HOST
        );
        let deployment = server.iter().find(|d| d["kind"] == "Deployment").unwrap();
        let sources = deployment["spec"]["template"]["spec"]["volumes"][0]["projected"]["sources"]
            .as_array()
            .unwrap();
        for (arch, so) in [(Arch::Amd64, &amd64), (Arch::Arm64, &arm64)] {
            let sha = sha256_hex(so);
            // The server: the module in a ConfigMap, projected at the path the URL names.
            let source = sources
                .iter()
                .find(|s| s["configMap"]["items"][0]["path"] == arch.module_path().as_str())
                .unwrap_or_else(|| panic!("no {} in the server's volume", arch.module_path()));
            let configmap = server
                .iter()
                .find(|d| d["metadata"]["name"] == source["configMap"]["name"])
                .unwrap();
            let key = source["configMap"]["items"][0]["key"].as_str().unwrap();
            assert_eq!(configmap["binaryData"][key], base64(so).as_str());
            // The EnvoyFilter: the module at that URL, with its sha256, through the cluster it adds.
            let doc = &yaml(get(arch.envoyfilter_file()))[0];
            assert_eq!(doc["metadata"]["name"], "faas-mesh-filter");
            let patches = doc["spec"]["configPatches"].as_array().unwrap();
            let filter = patches
                .iter()
                .find(|p| p["applyTo"] == "HTTP_FILTER")
                .unwrap();
            assert_eq!(filter["patch"]["operation"], "INSERT_BEFORE");
            let typed = &filter["patch"]["value"]["typed_config"];
            let remote = &typed["dynamic_module_config"]["module"]["remote"];
            assert_eq!(remote["sha256"], sha.as_str());
            assert_eq!(
                remote["http_uri"]["uri"],
                format!(
                    "http://{NATIVE_MODULE_SERVER_HOST}:{MODULE_SERVER_PORT}/{}",
                    arch.module_path()
                )
                .as_str()
            );
            assert_eq!(remote["http_uri"]["cluster"], NATIVE_MODULE_CLUSTER);
            assert_eq!(
                remote["retry_policy"]["num_retries"].as_u64(),
                Some(u64::from(u32::MAX)),
                "a fetch Envoy gives up leaves the filter out"
            );
            assert!(patches
                .iter()
                .any(|p| p["patch"]["value"]["name"] == NATIVE_MODULE_CLUSTER));
            assert_eq!(typed["filter_name"], "faas-mesh-filter");
            let carried: Value =
                serde_json::from_str(typed["filter_config"]["value"].as_str().unwrap()).unwrap();
            assert_eq!(carried, serde_json::from_str::<Value>(config).unwrap());
            assert!(!get(arch.envoyfilter_file()).contains("{{"));
        }
        assert!(!get("module-server-native.yaml").contains("{{"));
        let proxyconfig = &yaml(get("proxyconfig-native.yaml"))[0];
        assert_eq!(proxyconfig["kind"], "ProxyConfig");
        assert_eq!(proxyconfig["metadata"]["namespace"], "openfaas-fn");
        assert_eq!(
            proxyconfig["spec"]["environmentVariables"]["TMPDIR"],
            "/var/lib/istio/data"
        );
        assert_eq!(
            render_native(
                config,
                &NativeModules {
                    amd64: &amd64,
                    arm64: &arm64
                }
            )
            .unwrap(),
            files,
            "not reproducible"
        );
    }

    #[test]
    fn the_committed_native_envoyfilter_loads_the_module_by_name_with_the_same_configuration() {
        let config = r#"{"readiness": {"max_wait_ms": 1000}}"#;
        let files = render_static(config).unwrap();
        let text = &files
            .iter()
            .find(|f| f.name == "envoyfilter-native.yaml")
            .unwrap()
            .contents;
        let doc = &yaml(text)[0];
        let patches = doc["spec"]["configPatches"].as_array().unwrap();
        let typed = &patches
            .iter()
            .find(|p| p["applyTo"] == "HTTP_FILTER")
            .unwrap()["patch"]["value"]["typed_config"];
        assert_eq!(typed["dynamic_module_config"]["name"], NATIVE_NAME);
        assert!(typed["dynamic_module_config"].get("module").is_none());
        assert_eq!(
            serde_json::from_str::<Value>(typed["filter_config"]["value"].as_str().unwrap())
                .unwrap(),
            serde_json::from_str::<Value>(config).unwrap()
        );
        assert!(text.contains("request_timeout: 11.000s"));
        assert!(!text.contains("{{"));
    }

    #[test]
    fn a_native_module_too_large_for_a_configmap_is_refused() {
        let big = vec![1u8; 800 * 1024];
        let err = render_native(
            "{}",
            &NativeModules {
                amd64: &big,
                arm64: b"\x7fELF",
            },
        )
        .unwrap_err();
        assert!(
            err.contains("linux-amd64") && err.contains("from an image"),
            "{err}"
        );
    }

    #[test]
    fn a_bad_configuration_is_refused_with_the_filters_own_message() {
        let err = render_static(r#"{"policy": {"functions": {"env": {"max_inflight": -1}}}}"#)
            .unwrap_err();
        assert_eq!(
            err,
            "policy.functions.env.max_inflight: expected a positive integer, got -1"
        );
    }

    #[test]
    fn a_module_too_large_for_a_configmap_is_refused() {
        let wasm = vec![0u8; 800 * 1024];
        let err = render_all("{}", &module(&wasm)).unwrap_err();
        assert!(err.contains("use wasmplugin.yaml"), "{err}");
    }
}
