//! Delivery: the manifests rendered from an operator's configuration file run in a real Envoy,
//! and the OCI image of the module survives a push to and a pull from a real registry.

use faas_mesh_integration::envoy::{filter_wasm, ConfigOutcome, Envoy, EnvoyOptions};
use faas_mesh_integration::http::Request;
use faas_mesh_integration::stand_in::StandInFunction;
use faas_mesh_integration::{free_port, repo_root};
use faas_mesh_tools::oci::{wasm_from_layer, Image};
use faas_mesh_tools::render::{render_all, Module};
use faas_mesh_tools::sha256_hex;
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
    let envoy = Envoy::start(options).await.expect("Envoy");
    assert_eq!(
        envoy.initial_config(),
        ConfigOutcome::Accepted,
        "{}",
        envoy.log()
    );
    // env's entry in the sample policy allows GET and POST only.
    assert_eq!(envoy.get("/function/env/x").await.status, 200);
    let response = envoy
        .send(&Request::new("DELETE", "/function/env/x"))
        .await
        .expect("send");
    assert_eq!(response.status, 405);
    assert_eq!(response.header("allow"), Some("GET, POST"));
}

/// A process the test started; killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
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
fn the_oci_image_round_trips_through_a_real_registry() {
    let skopeo = tool("skopeo");
    let registry_bin = tool("docker-registry");
    let wasm = std::fs::read(filter_wasm().expect("module")).expect("module");
    let image = Image::build(&wasm, "0.1.0").expect("image");
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = dir.path().join("oci");
    image.write_layout(&layout, "0.1.0").expect("layout");

    // A registry of our own on loopback.
    let port = free_port().expect("port");
    let storage = dir.path().join("registry");
    let config = dir.path().join("registry.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            storage.display()
        ),
    )
    .expect("registry config");
    let _registry = Process(
        Command::new(registry_bin)
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the registry did not start");
        std::thread::sleep(Duration::from_millis(50));
    }

    let remote = format!("docker://127.0.0.1:{port}/openfaas/faas-mesh-filter:0.1.0");
    let local = format!("oci:{}:0.1.0", layout.display());
    run(Command::new(&skopeo).args(["copy", "--dest-tls-verify=false", &local, &remote]));

    // The registry serves the very manifest we built: the digest a WasmPlugin pins.
    let raw = run(Command::new(&skopeo).args(["inspect", "--raw", "--tls-verify=false", &remote]));
    assert_eq!(sha256_hex(raw.as_bytes()), image.digest);
    let inspect: Value = serde_json::from_str(&run(Command::new(&skopeo).args([
        "inspect",
        "--tls-verify=false",
        &remote,
    ])))
    .expect("inspect json");
    assert_eq!(inspect["Digest"], format!("sha256:{}", image.digest));

    // Pulled back, the module inside is byte for byte the one we built.
    let pulled = dir.path().join("pulled");
    run(Command::new(&skopeo).args([
        "copy",
        "--src-tls-verify=false",
        &remote,
        &format!("oci:{}:0.1.0", pulled.display()),
    ]));
    let (digest, manifest) = read_layout(&pulled);
    assert_eq!(digest, format!("sha256:{}", image.digest));
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
