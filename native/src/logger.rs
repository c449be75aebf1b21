//! The core's `log` lines into Envoy's log (`[dynamic_modules]` component), at Envoy's level.

use crate::abi;

struct EnvoyLogger;

static LOGGER: EnvoyLogger = EnvoyLogger;

/// Installs the logger once per process (later calls do nothing).
pub fn init() {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Trace);
    }
}

fn level(level: log::Level) -> u32 {
    match level {
        log::Level::Error => abi::LOG_ERROR,
        log::Level::Warn => abi::LOG_WARN,
        log::Level::Info => abi::LOG_INFO,
        log::Level::Debug => abi::LOG_DEBUG,
        log::Level::Trace => abi::LOG_TRACE,
    }
}

impl log::Log for EnvoyLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        // SAFETY: a plain query.
        unsafe { abi::envoy_dynamic_module_callback_log_enabled(level(metadata.level())) }
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let message = record.args().to_string();
        // SAFETY: `message` outlives the call; Envoy copies it.
        unsafe {
            abi::envoy_dynamic_module_callback_log(
                level(record.level()),
                abi::ModuleBuffer::of(message.as_bytes()),
            )
        }
    }

    fn flush(&self) {}
}
