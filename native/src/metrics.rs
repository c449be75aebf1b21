//! The filter's metrics on Envoy's configuration-level metric callbacks.
//!
//! Envoy lets a module define metrics only while it builds the configuration (on the main
//! thread, inside `on_http_filter_config_new`); after that the ids it handed out are updated
//! from any worker, with no stream. So a configuration's [`Metrics`] are filled once by the
//! defining host and read-only afterwards, shared by every worker. No labels: the names carry
//! what the wasm build's names carry.

use crate::abi::{self, ConfigPtr, ModuleBuffer};
use crate::host::REFUSED;
use faas_mesh_filter::host::HostError;
use proxy_wasm::types::MetricType;
use std::collections::HashMap;
use std::ptr::null_mut;

/// A defined metric: its kind and Envoy's id for it.
pub type Metric = (MetricType, usize);

/// The metrics of one filter configuration: the core's ids (in definition order) onto Envoy's.
#[derive(Default, Debug)]
pub struct Metrics {
    by_name: HashMap<String, u32>,
    defined: Vec<Metric>,
}

/// What the core asks of a metric.
#[derive(Clone, Copy, Debug)]
pub enum Update {
    /// `increment_metric`: a counter up, a gauge up or down.
    By(i64),
    /// `record_metric`: a gauge set, a histogram value recorded.
    Set(u64),
}

impl Metrics {
    /// The core's id of the metric named `name`, if defined.
    pub fn find(&self, name: &str) -> Option<u32> {
        self.by_name.get(name).copied()
    }

    pub fn get(&self, id: u32) -> Option<Metric> {
        self.defined.get(id as usize).copied()
    }

    /// Defines `name` with Envoy (once: a name defined before answers its id). A definition
    /// Envoy refuses is not recorded, and its status is the error.
    ///
    /// # Safety
    /// `config` is the configuration Envoy is building, and this runs inside its
    /// `on_http_filter_config_new` (the only time Envoy accepts definitions).
    pub unsafe fn define(
        &mut self,
        config: ConfigPtr,
        kind: MetricType,
        name: &str,
    ) -> Result<u32, HostError> {
        if let Some(id) = self.find(name) {
            return Ok(id);
        }
        let id = u32::try_from(self.defined.len()).map_err(|_| REFUSED)?;
        let name_buf = ModuleBuffer::of(name.as_bytes());
        let mut envoy_id = 0usize;
        // SAFETY: the caller's contract; `name` and `envoy_id` outlive the call; no labels.
        let status = unsafe {
            match kind {
                MetricType::Counter => {
                    abi::envoy_dynamic_module_callback_http_filter_config_define_counter(
                        config,
                        name_buf,
                        null_mut(),
                        0,
                        &mut envoy_id,
                    )
                }
                MetricType::Gauge => {
                    abi::envoy_dynamic_module_callback_http_filter_config_define_gauge(
                        config,
                        name_buf,
                        null_mut(),
                        0,
                        &mut envoy_id,
                    )
                }
                MetricType::Histogram => {
                    abi::envoy_dynamic_module_callback_http_filter_config_define_histogram(
                        config,
                        name_buf,
                        null_mut(),
                        0,
                        &mut envoy_id,
                    )
                }
                // A kind a later proxy-wasm may add: Envoy has no callback for it.
                _ => return Err(REFUSED),
            }
        };
        succeeded(status)?;
        self.defined.push((kind, envoy_id));
        self.by_name.insert(name.to_string(), id);
        Ok(id)
    }
}

/// Updates a defined metric. What Envoy has no callback for (a counter going down or set, a
/// histogram incremented) is refused without a call.
///
/// # Safety
/// `config` is a live configuration (Envoy destroys it after the last stream and worker that
/// use it) and `metric` one of its metrics.
pub unsafe fn update(config: ConfigPtr, metric: Metric, update: Update) -> Result<(), HostError> {
    let (kind, id) = metric;
    let none = null_mut();
    // SAFETY: the caller's contract; no labels.
    let status = unsafe {
        match (kind, update) {
            (MetricType::Counter, Update::By(by)) if by >= 0 => {
                abi::envoy_dynamic_module_callback_http_filter_config_increment_counter(
                    config,
                    id,
                    none,
                    0,
                    by.unsigned_abs(),
                )
            }
            (MetricType::Gauge, Update::By(by)) if by >= 0 => {
                abi::envoy_dynamic_module_callback_http_filter_config_increment_gauge(
                    config,
                    id,
                    none,
                    0,
                    by.unsigned_abs(),
                )
            }
            (MetricType::Gauge, Update::By(by)) => {
                abi::envoy_dynamic_module_callback_http_filter_config_decrement_gauge(
                    config,
                    id,
                    none,
                    0,
                    by.unsigned_abs(),
                )
            }
            (MetricType::Gauge, Update::Set(value)) => {
                abi::envoy_dynamic_module_callback_http_filter_config_set_gauge(
                    config, id, none, 0, value,
                )
            }
            (MetricType::Histogram, Update::Set(value)) => {
                abi::envoy_dynamic_module_callback_http_filter_config_record_histogram_value(
                    config, id, none, 0, value,
                )
            }
            _ => return Err(REFUSED),
        }
    };
    succeeded(status)
}

/// Envoy's `metrics_result` as the core's result: anything but success is its status.
fn succeeded(status: u32) -> Result<(), HostError> {
    if status == abi::METRICS_SUCCESS {
        Ok(())
    } else {
        Err(HostError(status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the test build's inert callbacks answer: every status type's failure.
    const STUB_STATUS: HostError = HostError(1);

    fn update_of(kind: MetricType, update: Update) -> Result<(), HostError> {
        // SAFETY: under `cargo test` the callbacks are inert stubs that touch nothing.
        unsafe { super::update(null_mut(), (kind, 0), update) }
    }

    #[test]
    fn updates_envoy_has_a_callback_for_reach_it() {
        for (kind, update) in [
            (MetricType::Counter, Update::By(1)),
            (MetricType::Counter, Update::By(0)),
            (MetricType::Gauge, Update::By(2)),
            (MetricType::Gauge, Update::By(-2)),
            (MetricType::Gauge, Update::By(i64::MIN)),
            (MetricType::Gauge, Update::Set(3)),
            (MetricType::Histogram, Update::Set(7)),
        ] {
            assert_eq!(
                update_of(kind, update),
                Err(STUB_STATUS),
                "{kind:?} {update:?} did not reach Envoy's callback"
            );
        }
    }

    #[test]
    fn updates_envoy_has_no_callback_for_are_refused_without_a_call() {
        for (kind, update) in [
            (MetricType::Counter, Update::By(-1)),
            (MetricType::Counter, Update::Set(5)),
            (MetricType::Histogram, Update::By(1)),
        ] {
            assert_eq!(update_of(kind, update), Err(REFUSED), "{kind:?} {update:?}");
        }
    }

    #[test]
    fn a_definition_envoy_refuses_is_not_recorded() {
        let mut metrics = Metrics::default();
        // SAFETY: inert stubs, as above.
        let defined = unsafe { metrics.define(null_mut(), MetricType::Counter, "requests") };
        assert_eq!(defined, Err(STUB_STATUS));
        assert_eq!(metrics.find("requests"), None);
        assert_eq!(metrics.get(0).map(|(_, id)| id), None);
    }
}
