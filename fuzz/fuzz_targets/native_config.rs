//! The native module's configuration path through its real exported hooks, on a fake Envoy
//! (fuzz/fake_envoy.rs): any filter configuration and pod files (labels, annotations,
//! namespace, in the folder `FAAS_MESH_POD_INFO_DIR` names) are accepted or refused, never a
//! crash; a refusal is logged as the wasm build logs it (`invalid configuration: ...`, at error
//! level); an accepted configuration serves a request and is destroyed cleanly.
//!
//! Input: the configuration, then the labels, annotations and namespace files, separated by
//! 0xff bytes (a part that is absent: no such file).
#![no_main]
#[path = "../fake_envoy.rs"]
mod fake_envoy;

use fake_envoy as envoy;
use libfuzzer_sys::fuzz_target;

const LOG_ERROR: u32 = 4;

fuzz_target!(|data: &[u8]| {
    let dir = envoy::pod_dir();
    let mut parts = data.splitn(4, |b| *b == 0xff);
    let config = parts.next().unwrap_or_default();
    for name in ["labels", "annotations", "namespace"] {
        let path = dir.join(name);
        match parts.next() {
            Some(bytes) => std::fs::write(&path, bytes).expect("pod file"),
            None => {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    envoy::set_strict(true);
    envoy::take_logs();
    let Some((index, module)) = envoy::config_new(b"faas-mesh-filter", config) else {
        let logs = envoy::take_logs();
        assert!(
            logs.iter()
                .any(|(level, m)| *level == LOG_ERROR && m.starts_with("invalid configuration: ")),
            "a refusal without its log line: {logs:?}"
        );
        return;
    };
    envoy::one_get(module, b"/function/env/a?b=c");
    envoy::config_destroy(index, module);
    envoy::forget_dead();
    envoy::take_logs();
});
