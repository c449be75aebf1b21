//! Links the cdylib with `exports.map`: only `envoy_dynamic_module_on_*` are exported.

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".to_string());
    let map = format!("{dir}/exports.map");
    println!("cargo:rerun-if-changed=exports.map");
    println!("cargo:rustc-cdylib-link-arg=-Wl,--version-script={map}");
}
