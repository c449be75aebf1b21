//! Delivery: the manifests rendered from an operator's configuration file run in a real Envoy;
//! the release bundle (`make release`) is applied to a real Envoy as it is, its checker gives the
//! sidecar's own refusals, and its OCI image, published by `make publish`, survives a push to and
//! a pull from a real registry with the digest its WasmPlugin pins.
//!
//! The bundle is `$RELEASE_BUNDLE` (set by `make integration`), else the one folder under
//! `target/release-bundle/`.

use faas_mesh_integration::envoy::{filter_wasm, ConfigOutcome, Envoy, EnvoyOptions};
use faas_mesh_integration::http::Request;
use faas_mesh_integration::stand_in::StandInFunction;
use faas_mesh_integration::{release_bundle, repo_root};
use faas_mesh_tools::oci::wasm_from_layer;
use faas_mesh_tools::render::{render_all, Module};
use faas_mesh_tools::{base64, sha256_hex};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manifest_rendered_from_a_policy_file_is_the_one_that_runs() {
    let config = std::fs::read_to_string(repo_root().join("testdata/policy-sample.json"))
        .expect("sample policy");
    let wasm = std::fs::read(filter_wasm().expect("module")).expect("module");
    let files = render_all(
        &config,
        &Module {
            wasm: &wasm,
            image: "127.0.0.1:5000/faas-mesh-filter:test",
            version: "test",
        },
    )
    .expect("render");
    let dir = tempfile::tempdir().expect("tempdir");
    for file in &files {
        std::fs::write(dir.path().join(file.name), &file.contents).expect("write");
    }

    let function = StandInFunction::start().await.expect("function");
    let options =
        EnvoyOptions::from_manifest(&dir.path().join("envoyfilter.yaml"), function.port())
            .expect("manifest");
    let envoy = Envoy::start_accepted(options).await;
    // env's entry in the sample policy allows GET and POST only.
    assert_eq!(envoy.get("/function/env/x").await.status, 200);
    let response = envoy
        .send(&Request::new("DELETE", "/function/env/x"))
        .await
        .expect("send");
    assert_eq!(response.status, 405);
    assert_eq!(response.header("allow"), Some("GET, POST"));
}

/// `x.y.z` from `faas-mesh-filter-x.y.z`.
fn bundle_version(bundle: &Path) -> String {
    let name = bundle.file_name().expect("name").to_string_lossy();
    name.strip_prefix("faas-mesh-filter-")
        .expect("bundle folder name")
        .to_string()
}

/// The checker built for this machine.
fn checker(bundle: &Path) -> PathBuf {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => panic!("the release has no checker for {other}"),
    };
    bundle.join(format!("bin/faas-mesh-check-linux-{arch}"))
}

/// Runs the bundle's checker: (exit code, stdout, stderr).
fn check(bundle: &Path, args: &[&str]) -> (i32, String, String) {
    let output = Command::new(checker(bundle))
        .args(args)
        .output()
        .expect("run faas-mesh-check");
    (
        output.status.code().expect("exit code"),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn yaml_documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("manifest");
    text.split("\n---\n")
        .map(|doc| serde_yaml::from_str(doc).expect("YAML"))
        .collect()
}

#[test]
fn the_bundle_is_what_its_checksums_and_its_wasmplugin_say() {
    let bundle = release_bundle();
    let version = bundle_version(&bundle);
    // SHA256SUMS covers every file in the folder, and each one matches (`sha256sum -c`).
    let sums = std::fs::read_to_string(bundle.join("SHA256SUMS")).expect("SHA256SUMS");
    let mut listed = Vec::new();
    for line in sums.lines() {
        let (sum, file) = line.split_once("  ").expect("sha256sum line");
        let bytes = std::fs::read(bundle.join(file)).expect("listed file");
        assert_eq!(sha256_hex(&bytes), sum, "{file}");
        listed.push(file.to_string());
    }
    let mut present = Vec::new();
    let mut dirs = vec![bundle.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                let rel = path.strip_prefix(&bundle).expect("inside");
                present.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    present.retain(|f| f != "SHA256SUMS");
    present.sort();
    listed.sort();
    assert_eq!(present, listed);
    for file in [
        "faas_mesh_filter.wasm",
        "manifests/envoyfilter.yaml",
        "manifests/wasm-configmap.yaml",
        "manifests/wasmplugin.yaml",
        "manifests/envoyfilter-remote.yaml",
        "manifests/module-server.yaml",
        "manifests/config.json",
        "bin/faas-mesh-check-linux-amd64",
        "bin/faas-mesh-check-linux-arm64",
        "native/linux-amd64/libfaas_mesh_filter_native.so",
        "native/linux-arm64/libfaas_mesh_filter_native.so",
        "manifests/envoyfilter-native.yaml",
        "manifests/envoyfilter-native-amd64.yaml",
        "manifests/envoyfilter-native-arm64.yaml",
        "manifests/module-server-native.yaml",
        "manifests/proxyconfig-native.yaml",
        &format!("faas-mesh-filter-{version}-oci.tar.gz"),
    ] {
        assert!(listed.iter().any(|f| f == file), "{file} missing");
    }

    // The WasmPlugin pins the image in the bundle's OCI layout, whose layer is the module.
    let wasm = std::fs::read(bundle.join("faas_mesh_filter.wasm")).expect("module");
    let (digest, manifest) = read_layout(&bundle.join("oci"));
    let plugin = yaml_documents(&bundle.join("manifests/wasmplugin.yaml"))
        .into_iter()
        .find(|d| d["kind"] == "WasmPlugin")
        .expect("WasmPlugin");
    assert_eq!(
        format!(
            "sha256:{}",
            plugin["spec"]["sha256"].as_str().expect("sha256")
        ),
        digest
    );
    assert!(plugin["spec"]["url"]
        .as_str()
        .expect("url")
        .ends_with(&format!(":{version}")));
    let layer_digest = manifest["layers"][0]["digest"].as_str().expect("layer");
    let layer = std::fs::read(
        bundle
            .join("oci/blobs/sha256")
            .join(layer_digest.trim_start_matches("sha256:")),
    )
    .expect("layer blob");
    assert_eq!(wasm_from_layer(&layer).expect("plugin.wasm"), wasm);

    // The checker, given each manifest, finds the configuration it carries valid.
    for file in [
        "manifests/config.json",
        "manifests/envoyfilter.yaml",
        "manifests/wasmplugin.yaml",
        "manifests/envoyfilter-native.yaml",
        "manifests/envoyfilter-native-amd64.yaml",
        "manifests/envoyfilter-native-arm64.yaml",
    ] {
        let path = bundle.join(file);
        let (code, out, err) = check(&bundle, &[path.to_str().expect("path")]);
        assert_eq!(code, 0, "{file}: {out}{err}");
        assert!(out.contains(": valid"), "{out}");
    }
    let (code, out, _) = check(&bundle, &["--version"]);
    assert_eq!(
        (code, out.trim()),
        (0, &*format!("faas-mesh-check {version}"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bundles_manifests_run_as_they_are_and_its_checker_speaks_for_the_sidecar() {
    let bundle = release_bundle();
    let manifests = bundle.join("manifests");
    // The ConfigMap carries the bundle's module under the name the EnvoyFilter loads it by
    // (the mount in stack.yml puts it in that directory).
    let wasm_path = bundle.join("faas_mesh_filter.wasm");
    let wasm = std::fs::read(&wasm_path).expect("module");
    let configmap = yaml_documents(&manifests.join("wasm-configmap.yaml"))
        .pop()
        .expect("ConfigMap");
    let envoyfilter = std::fs::read_to_string(manifests.join("envoyfilter.yaml")).expect("filter");
    let (key, carried) = configmap["binaryData"]
        .as_object()
        .and_then(|m| m.iter().next())
        .expect("binaryData");
    assert_eq!(carried.as_str(), Some(base64(&wasm).as_str()));
    assert!(
        envoyfilter.contains(&format!("filename: /var/local/lib/wasm/{key}")),
        "the EnvoyFilter does not load {key} from the ConfigMap's mount"
    );

    let function = StandInFunction::start().await.expect("function");
    let mut options =
        EnvoyOptions::from_manifest(&manifests.join("envoyfilter.yaml"), function.port())
            .expect("the bundle's EnvoyFilter");
    options.module = Some(wasm_path);
    let mut envoy = Envoy::start_accepted(options).await;
    let response = envoy.get("/function/env/a?x=1").await;
    assert_eq!(response.status, 200);
    assert!(response.header("x-call-id").is_some());
    assert_eq!(envoy.get("/function/other/").await.status, 404);

    // A configuration the checker refuses, the sidecar refuses with the same line, and keeps
    // serving with the last good one.
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = r#"{"policy": {"functions": {"env": {"max_inflight": -1, "methods": ["GET"]}}}}"#;
    let bad_path = dir.path().join("bad.json");
    std::fs::write(&bad_path, bad).expect("write");
    let (code, out, err) = check(&bundle, &[bad_path.to_str().expect("path")]);
    let line = "invalid configuration: policy.functions.env.max_inflight: expected a positive \
                integer, got -1";
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (1, "", &*format!("{line}\n"))
    );
    assert_eq!(
        envoy.push_config(bad).await.expect("push"),
        ConfigOutcome::Rejected
    );
    let log = envoy.log_when(|log| log.contains(line)).await;
    assert!(log.contains(line), "the sidecar did not log {line:?}");
    assert_eq!(envoy.get("/function/env/a").await.status, 200);

    // One the checker accepts, the sidecar enforces as the checker shows it.
    let good = r#"{"policy": {"functions": {"env": {"methods": ["GET"]}}}}"#;
    let good_path = dir.path().join("good.json");
    std::fs::write(&good_path, good).expect("write");
    let (code, out, err) = check(
        &bundle,
        &[good_path.to_str().expect("path"), "--function", "env"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("  methods         GET\n"), "{out}");
    assert_eq!(
        envoy.push_config(good).await.expect("push"),
        ConfigOutcome::Accepted
    );
    let response = envoy
        .send(&Request::new("POST", "/function/env/a"))
        .await
        .expect("send");
    assert_eq!(response.status, 405);
}

/// A process the test started; killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The port in docker-registry's `listening on 127.0.0.1:<port>` line, once its log has it whole
/// (the port followed by the rest of the line).
fn listening_port(log: &Path) -> u16 {
    const LINE: &str = "listening on 127.0.0.1:";
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some((_, rest)) = text.split_once(LINE) {
            if let Some(end) = rest.find(|c: char| !c.is_ascii_digit()) {
                return rest[..end]
                    .parse()
                    .unwrap_or_else(|_| panic!("no port in the registry's log: {text}"));
            }
        }
        assert!(
            Instant::now() < deadline,
            "the registry did not start: {text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn tool(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join(name))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| {
            panic!("{name} not found: run `make setup` (installs skopeo and docker-registry)")
        })
}

fn run(command: &mut Command) -> String {
    let output = command.output().expect("run");
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn read_layout(dir: &Path) -> (String, Value) {
    let index: Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).expect("index"))
            .expect("json");
    let digest = index["manifests"][0]["digest"]
        .as_str()
        .expect("digest")
        .to_string();
    let blob = |digest: &str| {
        std::fs::read(
            dir.join("blobs/sha256")
                .join(digest.trim_start_matches("sha256:")),
        )
        .expect("blob")
    };
    let manifest: Value = serde_json::from_slice(&blob(&digest)).expect("manifest");
    (digest, manifest)
}

#[test]
fn the_bundles_image_published_by_make_publish_round_trips_through_a_real_registry() {
    let skopeo = tool("skopeo");
    let registry_bin = tool("docker-registry");
    let bundle = release_bundle();
    let version = bundle_version(&bundle);
    let wasm = std::fs::read(bundle.join("faas_mesh_filter.wasm")).expect("module");
    let (pinned, _) = read_layout(&bundle.join("oci"));
    let pinned = pinned.trim_start_matches("sha256:").to_string();
    let dir = tempfile::tempdir().expect("tempdir");

    // A registry of our own on loopback, on a port it picks and names in its log.
    let storage = dir.path().join("registry");
    let config = dir.path().join("registry.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:0\n",
            storage.display()
        ),
    )
    .expect("registry config");
    let log = dir.path().join("registry.log");
    let _registry = Process(
        Command::new(registry_bin)
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("registry log"))
            .spawn()
            .expect("docker-registry"),
    );
    let port = listening_port(&log);

    // What the release workflow runs, against this registry.
    let image = format!("127.0.0.1:{port}/openfaas/faas-mesh-filter");
    let release_out = bundle.parent().expect("parent");
    run(Command::new("make")
        // Not a sub-make of the `make integration` that may have started this test.
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS")
        .env_remove("MAKELEVEL")
        .arg("--no-print-directory")
        .arg("-C")
        .arg(repo_root())
        .arg("publish")
        .arg(format!("VERSION={version}"))
        .arg(format!("IMAGE={image}"))
        .arg(format!("RELEASE_OUT={}", release_out.display()))
        .arg("PUBLISH_FLAGS=--dest-tls-verify=false"));
    let remote = format!("docker://{image}:{version}");

    // The registry serves the very manifest we built: the digest the WasmPlugin pins.
    let raw = run(Command::new(&skopeo).args(["inspect", "--raw", "--tls-verify=false", &remote]));
    assert_eq!(sha256_hex(raw.as_bytes()), pinned);
    let inspect: Value = serde_json::from_str(&run(Command::new(&skopeo).args([
        "inspect",
        "--tls-verify=false",
        &remote,
    ])))
    .expect("inspect json");
    assert_eq!(inspect["Digest"], format!("sha256:{pinned}"));

    // Pulled back, the module inside is byte for byte the one we built.
    let pulled = dir.path().join("pulled");
    run(Command::new(&skopeo).args([
        "copy",
        "--src-tls-verify=false",
        &remote,
        &format!("oci:{}:{version}", pulled.display()),
    ]));
    let (digest, manifest) = read_layout(&pulled);
    assert_eq!(digest, format!("sha256:{pinned}"));
    assert_eq!(
        manifest["layers"][0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    let layer_digest = manifest["layers"][0]["digest"].as_str().expect("layer");
    let layer = std::fs::read(
        pulled
            .join("blobs/sha256")
            .join(layer_digest.trim_start_matches("sha256:")),
    )
    .expect("layer blob");
    assert_eq!(wasm_from_layer(&layer).expect("plugin.wasm"), wasm);
}
