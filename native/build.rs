//! Links the cdylib with `exports.map`: only `envoy_dynamic_module_on_*` are exported.
//!
//! And links the unwinder std needs (`_Unwind_Backtrace` and friends, for the panic message's
//! backtrace: with panic=abort nothing unwinds) from GCC's static `libgcc_eh.a` instead of the
//! shared `libgcc_s.so.1`. Envoy does not load libgcc_s itself, so the shared one cost the
//! process a whole extra library mapping (~100 KiB resident) for a few KB of code. std's
//! `unwind` crate asks for `-lgcc_s` on linux-gnu; a linker script named `libgcc_s.so` in a
//! directory searched first answers that with `libgcc_eh.a` (a C++ library's `-static-libgcc`).
//! The version script keeps its symbols local.
//!
//! And packs its relative relocations (`-z pack-relative-relocs`, DT_RELR): 1,425 of them, 34 KB
//! of `.rela.dyn` that the loader reads at every start, become 360 bytes of `.relr.dyn`, and the
//! module's resident mappings shrink by 64 KiB (measured). The cost: glibc 2.36 or newer in the
//! sidecar (the `GLIBC_ABI_DT_RELR` version need; the release's BUILD-INFO names it), where the
//! module needed 2.35 before. Debian 12 and Ubuntu 24.04 have it; Ubuntu 22.04 (2.35) does not.

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".to_string());
    let map = format!("{dir}/exports.map");
    println!("cargo:rerun-if-changed=exports.map");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rustc-cdylib-link-arg=-Wl,--version-script={map}");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,pack-relative-relocs");

    let linux_gnu = std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu");
    if !linux_gnu {
        return;
    }
    let Ok(out) = std::env::var("OUT_DIR") else {
        return;
    };
    let static_unwinder = format!("{out}/static-unwinder");
    let script = format!("{static_unwinder}/libgcc_s.so");
    let written = std::fs::create_dir_all(&static_unwinder)
        .and_then(|()| std::fs::write(&script, "INPUT(-lgcc_eh)\n"));
    if written.is_ok() {
        println!("cargo:rustc-link-search=native={static_unwinder}");
    }
}
