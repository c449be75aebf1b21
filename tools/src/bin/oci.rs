//! `faas-mesh-oci --wasm <module> --tag <tag> --out <dir>`: writes the module as an OCI image
//! layout Istio's wasm puller accepts, and prints its digest. Push it with
//! `skopeo copy oci:<dir>:<tag> docker://<registry>/<repository>:<tag>`.

use faas_mesh_tools::oci::Image;
use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut wasm = None;
    let mut tag = "0.1.0".to_string();
    let mut out = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next();
        match (flag.as_str(), value) {
            ("--wasm", Some(v)) => wasm = Some(PathBuf::from(v)),
            ("--tag", Some(v)) => tag = v,
            ("--out", Some(v)) => out = Some(PathBuf::from(v)),
            (other, _) => {
                eprintln!(
                    "usage: faas-mesh-oci --wasm <module> --tag <tag> --out <dir> ({other:?})"
                );
                return ExitCode::from(2);
            }
        }
    }
    let (Some(wasm), Some(out)) = (wasm, out) else {
        eprintln!("usage: faas-mesh-oci --wasm <module> --tag <tag> --out <dir>");
        return ExitCode::from(2);
    };
    let result = std::fs::read(&wasm)
        .and_then(|bytes| Image::build(&bytes, &tag))
        .and_then(|image| image.write_layout(&out, &tag).map(|()| image));
    match result {
        Ok(image) => {
            println!("{}:{tag} sha256:{}", out.display(), image.digest);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("faas-mesh-oci: {e}");
            ExitCode::FAILURE
        }
    }
}
