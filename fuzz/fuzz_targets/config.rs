//! Any plugin configuration: parsed or refused with a key path, never a panic; what parses also
//! compiles for a pod.
#![no_main]
use faas_mesh_filter::config::Config;
use faas_mesh_filter::plan::{Plan, PodInfo};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match Config::parse(data) {
        Ok(config) => {
            let pod = PodInfo {
                label_value: Some("env".into()),
                namespace: Some("openfaas-fn".into()),
                annotations: Vec::new(),
            };
            let _ = Plan::compile(&config, &pod);
        }
        Err(e) => {
            let message = e.to_string();
            assert!(message.contains(": "), "no key path in {message:?}");
        }
    }
});
