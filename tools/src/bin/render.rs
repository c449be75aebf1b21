//! `faas-mesh-render --config <file> [--wasm <module> --image <ref> --version <v>]
//!  [--native-amd64 <so> --native-arm64 <so>] --out <dir>`
//!
//! Without `--wasm`: the manifests that do not depend on the build (what `envoyfilter/` holds).
//! With it: also the ConfigMap carrying the module and the WasmPlugin pinned to its image digest.
//! With the native modules (both architectures): also the EnvoyFilter per architecture that
//! fetches the native module by its sha256, and the server that carries them.

use faas_mesh_tools::render::{render_all, render_native, render_static, Module, NativeModules};
use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("faas-mesh-render: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let mut config = None;
    let mut wasm = None;
    let mut image = "ghcr.io/openfaas-mesh/faas-mesh-filter:0.1.0".to_string();
    let mut version = "0.1.0".to_string();
    let mut out = None;
    let mut native_amd64 = None;
    let mut native_arm64 = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--config" => config = Some(PathBuf::from(value()?)),
            "--wasm" => wasm = Some(PathBuf::from(value()?)),
            "--image" => image = value()?,
            "--version" => version = value()?,
            "--out" => out = Some(PathBuf::from(value()?)),
            "--native-amd64" => native_amd64 = Some(PathBuf::from(value()?)),
            "--native-arm64" => native_arm64 = Some(PathBuf::from(value()?)),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let config_path = config.ok_or("--config <file> is required")?;
    let out = out.ok_or("--out <dir> is required")?;
    let config = std::fs::read_to_string(&config_path)
        .map_err(|e| format!("reading {}: {e}", config_path.display()))?;
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))
    };
    let native = match (&native_amd64, &native_arm64) {
        (None, None) => None,
        (Some(amd64), Some(arm64)) => Some((read(amd64)?, read(arm64)?)),
        _ => return Err("--native-amd64 and --native-arm64 go together".to_string()),
    };
    let mut files = match &wasm {
        None => render_static(&config),
        Some(path) => {
            let bytes =
                std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
            render_all(
                &config,
                &Module {
                    wasm: &bytes,
                    image: &image,
                    version: &version,
                },
            )
        }
    }
    .map_err(|e| format!("{}: {e}", config_path.display()))?;
    if let Some((amd64, arm64)) = &native {
        let modules = NativeModules { amd64, arm64 };
        files.extend(
            render_native(&config, &modules)
                .map_err(|e| format!("{}: {e}", config_path.display()))?,
        );
    }
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    for file in files {
        let path = out.join(file.name);
        std::fs::write(&path, file.contents).map_err(|e| format!("{}: {e}", path.display()))?;
        println!("{}", path.display());
    }
    Ok(())
}
