//! Start-up, on any host: the plugin configuration read and compiled for this pod (with what the
//! node metadata says about it), the report of its annotations, and this VM's identity.

use crate::config::{Config, Keep};
use crate::header_map;
use crate::host::policy::Owner;
use crate::host::{Host, Stat};
use crate::metrics;
use crate::plan::{Plan, PodInfo};
use proxy_wasm::types::MetricType;
use std::cell::Cell;
use std::rc::Rc;

/// What belongs to the Wasm VM rather than to one root context: every root context of the VM
/// (the plugin's, and after a configuration push the next one's, while the old one's requests
/// finish) shares it. A VM that replaces one that trapped starts with fresh memory, so it is
/// another VM here too.
#[derive(Default)]
pub struct Vm {
    /// This VM's id in the pod's held record (0: not picked yet).
    id: Cell<u64>,
    /// This VM as an owner of in-flight slots.
    pub owner: Rc<Owner>,
}

impl Vm {
    /// This VM's id in the pod's held record: random, picked once (the clock if the host has no
    /// entropy).
    pub fn id<H: Host>(&self, host: &H) -> u64 {
        if self.id.get() == 0 {
            let mut bytes = [0u8; 8];
            let random = host
                .random_bytes(&mut bytes)
                .map(|()| u64::from_le_bytes(bytes));
            let fresh = random.unwrap_or_else(|_| host.now_nanos().unwrap_or(1));
            self.id.set(fresh.max(1));
        }
        self.id.get()
    }
}

#[cfg(target_arch = "wasm32")]
thread_local! {
    static VM: Rc<Vm> = Rc::new(Vm::default());
}

/// This VM (one VM per thread in Envoy).
#[cfg(target_arch = "wasm32")]
pub fn this_vm() -> Rc<Vm> {
    VM.with(Rc::clone)
}

/// Natively, every root context is a VM of its own (tests make workers sharing one with
/// `Root::in_vm`).
#[cfg(not(target_arch = "wasm32"))]
pub fn this_vm() -> Rc<Vm> {
    Rc::new(Vm::default())
}

/// Reads the plugin configuration from the host and compiles it for this pod: the error names
/// the key and the problem.
#[inline(never)]
pub fn configure<H: Host>(host: &H) -> Result<Plan, String> {
    let raw = host
        .plugin_configuration()
        .map_err(|e| format!("configuration: the host did not hand it over ({e:?})"))?
        .unwrap_or_default();
    // The pod label is read once the `function` section is known; only the local function's
    // policy entry is kept (every entry is still checked).
    let mut pod = PodInfo::default();
    let config = Config::parse_with(&raw, |function| {
        pod = pod_info(host, &function.name_label);
        Keep::Only(Plan::local_function(function, &pod))
    })
    .map_err(|e| e.to_string())?;
    Plan::compile(&config, &pod).map_err(|e| e.to_string())
}

/// Reads what Istio put in the node metadata: the function's pod label and the namespace.
fn pod_info<H: Host>(host: &H, label: &str) -> PodInfo {
    let text = |path: &[u8]| -> Option<String> {
        let bytes = host.property(path).ok()??;
        String::from_utf8(bytes).ok().filter(|s| !s.is_empty())
    };
    let mut label_path = b"xds\0node\0metadata\0LABELS\0".to_vec();
    label_path.extend_from_slice(label.as_bytes());
    PodInfo {
        label_value: text(&label_path),
        namespace: text(b"xds\0node\0metadata\0NAMESPACE"),
        annotations: pod_annotations(host),
    }
}

/// The pod's annotations from the node metadata. Envoy hands a metadata map over as a
/// serialized pair list (the header-map format); only the filter's own prefix and OpenFaaS's
/// readiness path are kept.
fn pod_annotations<H: Host>(host: &H) -> Vec<(String, String)> {
    let Ok(Some(bytes)) = host.property(b"xds\0node\0metadata\0ANNOTATIONS") else {
        return Vec::new();
    };
    header_map::pairs(&bytes)
        .filter(|(name, _)| {
            name.starts_with(crate::annotations::PREFIX.as_bytes())
                || *name == crate::annotations::READY_PATH.as_bytes()
        })
        .map(|(name, value)| {
            (
                String::from_utf8_lossy(name).into_owned(),
                String::from_utf8_lossy(value).into_owned(),
            )
        })
        .collect()
}

/// The start-up log lines of a configuration that loaded: its notices, its annotations, the
/// function and namespace it serves.
pub fn report<H: Host>(host: &H, plan: &Plan) {
    for notice in &plan.notices {
        log::info!("{notice}");
    }
    report_annotations(host, plan);
    log::info!(
        "configured for function {:?} in namespace {:?}",
        plan.function_or_empty(),
        plan.namespace.as_deref().unwrap_or("")
    );
}

/// One log line per `com.openfaas.mesh.*` annotation, applied or refused (the operator's rule
/// stands), and two gauges: how many are applied and refused now (every VM configures, so a
/// counter would count each annotation once per worker).
fn report_annotations<H: Host>(host: &H, plan: &Plan) {
    if plan.annotations.is_empty() {
        return;
    }
    let function = plan.function_or_empty();
    let mut refused = 0u64;
    for outcome in &plan.annotations {
        match outcome.refused {
            None => log::info!(
                "function {function:?}: annotation {} applied",
                outcome.annotation
            ),
            Some(why) => {
                refused += 1;
                log::warn!(
                    "function {function:?}: annotation {} refused ({why}); the operator's rule stands",
                    outcome.annotation
                );
            }
        }
    }
    let applied = plan.annotations.len() as u64 - refused;
    for (what, n) in [
        ("annotations.applied", applied),
        ("annotations.refused", refused),
    ] {
        Stat::define(host, MetricType::Gauge, &metrics::name(function, what)).record(host, n);
    }
}
