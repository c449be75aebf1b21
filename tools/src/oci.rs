//! The module as an OCI image in the "compat" layout of the Wasm image specification, which
//! Istio's puller reads (`pkg/wasm/imagefetcher.go`): an OCI image manifest whose single layer
//! (`application/vnd.oci.image.layer.v1.tar+gzip`) is a tar holding `plugin.wasm`.
//!
//! Everything is deterministic (tar entry mtime 0, owner 0, gzip without a timestamp, JSON with
//! sorted keys), so the same module gives the same manifest digest: the `sha256` a WasmPlugin
//! pins.

use crate::sha256_hex;
use flate2::write::GzEncoder;
use flate2::{Compression, GzBuilder};
use serde_json::json;
use std::io::{self, Write};
use std::path::Path;

pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// The file Istio looks for in the layer.
pub const WASM_FILE_NAME: &str = "plugin.wasm";

/// The blobs of the image and the digest of its manifest.
#[derive(Debug, Clone)]
pub struct Image {
    pub manifest: Vec<u8>,
    pub config: Vec<u8>,
    pub layer: Vec<u8>,
    /// Hex SHA-256 of the manifest: the image digest registries and Istio report.
    pub digest: String,
}

impl Image {
    pub fn build(wasm: &[u8], version: &str) -> io::Result<Image> {
        let tar = tar_one_file(WASM_FILE_NAME, wasm)?;
        let layer = gzip(&tar)?;
        let config = serde_json::to_vec(&json!({
            "architecture": "wasm",
            "os": "wasip1",
            "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{}", sha256_hex(&tar))] },
            "config": {},
        }))?;
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": {
                "mediaType": CONFIG_MEDIA_TYPE,
                "digest": format!("sha256:{}", sha256_hex(&config)),
                "size": config.len(),
            },
            "layers": [{
                "mediaType": LAYER_MEDIA_TYPE,
                "digest": format!("sha256:{}", sha256_hex(&layer)),
                "size": layer.len(),
                "annotations": { "org.opencontainers.image.title": WASM_FILE_NAME },
            }],
            "annotations": {
                "module.wasm.image/variant": "compat",
                "org.opencontainers.image.title": "faas-mesh-filter",
                "org.opencontainers.image.version": version,
            },
        }))?;
        Ok(Image {
            digest: sha256_hex(&manifest),
            manifest,
            config,
            layer,
        })
    }

    /// Writes an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/…`) that
    /// `skopeo copy oci:<dir>:<tag> docker://<registry>/<name>:<tag>` pushes as is.
    pub fn write_layout(&self, dir: &Path, tag: &str) -> io::Result<()> {
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs)?;
        for blob in [&self.manifest, &self.config, &self.layer] {
            std::fs::write(blobs.join(sha256_hex(blob)), blob)?;
        }
        std::fs::write(
            dir.join("oci-layout"),
            serde_json::to_vec(&json!({ "imageLayoutVersion": "1.0.0" }))?,
        )?;
        let index = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": MANIFEST_MEDIA_TYPE,
                "digest": format!("sha256:{}", self.digest),
                "size": self.manifest.len(),
                "annotations": { "org.opencontainers.image.ref.name": tag },
            }],
        });
        std::fs::write(dir.join("index.json"), serde_json::to_vec(&index)?)
    }
}

/// A ustar archive with one regular file, owned by root, mode 0644, mtime 0.
fn tar_one_file(name: &str, data: &[u8]) -> io::Result<Vec<u8>> {
    if name.len() > 99 {
        return Err(io::Error::other("tar name too long"));
    }
    let mut header = [0u8; 512];
    let mut field = |offset: usize, value: &[u8]| {
        header[offset..offset + value.len()].copy_from_slice(value);
    };
    field(0, name.as_bytes());
    field(100, b"0000644\0");
    field(108, b"0000000\0");
    field(116, b"0000000\0");
    field(124, format!("{:011o}\0", data.len()).as_bytes());
    field(136, b"00000000000\0");
    field(148, b"        ");
    field(156, b"0");
    field(257, b"ustar\0");
    field(263, b"00");
    let checksum: u32 = header.iter().map(|b| u32::from(*b)).sum();
    header[148..156].copy_from_slice(format!("{checksum:06o}\0 ").as_bytes());

    let mut out = Vec::with_capacity(512 + data.len() + 1536);
    out.extend_from_slice(&header);
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out.extend_from_slice(&[0u8; 1024]);
    Ok(out)
}

fn gzip(data: &[u8]) -> io::Result<Vec<u8>> {
    let mut encoder: GzEncoder<Vec<u8>> = GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(Vec::new(), Compression::best());
    encoder.write_all(data)?;
    encoder.finish()
}

/// The `plugin.wasm` inside a layer built by [`Image::build`] (or any gzip'd tar holding it).
pub fn wasm_from_layer(layer: &[u8]) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(layer).read_to_end(&mut tar)?;
    let mut offset = 0;
    while offset + 512 <= tar.len() {
        let header = &tar[offset..offset + 512];
        if header.iter().all(|b| *b == 0) {
            break;
        }
        let name_end = header[..100].iter().position(|b| *b == 0).unwrap_or(100);
        let name = String::from_utf8_lossy(&header[..name_end]).into_owned();
        let size_text = String::from_utf8_lossy(&header[124..135])
            .trim_matches('\0')
            .trim()
            .to_string();
        let size = usize::from_str_radix(&size_text, 8).map_err(io::Error::other)?;
        let start = offset + 512;
        let body = tar
            .get(start..start + size)
            .ok_or_else(|| io::Error::other("truncated tar"))?;
        if name.rsplit('/').next() == Some(WASM_FILE_NAME) {
            return Ok(body.to_vec());
        }
        offset = start + size.div_ceil(512) * 512;
    }
    Err(io::Error::other("plugin.wasm not found in the layer"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_module_gives_the_same_image() {
        let wasm = b"\0asm\x01\0\0\0 not really a module".to_vec();
        let a = Image::build(&wasm, "1.0.0").unwrap();
        let b = Image::build(&wasm, "1.0.0").unwrap();
        assert_eq!(a.digest, b.digest);
        assert_eq!(a.layer, b.layer);
        assert_eq!(wasm_from_layer(&a.layer).unwrap(), wasm);
        let other = Image::build(b"\0asm\x01\0\0\0", "1.0.0").unwrap();
        assert_ne!(other.digest, a.digest);
    }

    #[test]
    fn the_tar_is_readable_by_gnu_tar_conventions() {
        let tar = tar_one_file("plugin.wasm", &[7u8; 600]).unwrap();
        assert_eq!(tar.len(), 512 + 1024 + 1024);
        assert_eq!(&tar[257..263], b"ustar\0");
        // The checksum field covers the header with itself as spaces.
        let mut copy = tar[..512].to_vec();
        copy[148..156].copy_from_slice(b"        ");
        let sum: u32 = copy.iter().map(|b| u32::from(*b)).sum();
        assert_eq!(&tar[148..155], format!("{sum:06o}\0").as_bytes());
    }
}
