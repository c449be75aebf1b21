//! The root's tick on a worker, which the dynamic-modules ABI has no timer for.
//!
//! Envoy lets a module post an event to a live stream's worker from any thread (a stream's
//! scheduler: `on_http_filter_scheduled` runs on that worker). So a stream that holds state
//! needing ticks (held by the gate, holding an in-flight slot, or any stream while the gate
//! waits or checks a 5xx) becomes a *carrier*: one thread of this module posts a tick to one
//! carrier of each worker whose period has passed. A worker with no carrier gets no tick from
//! here; it catches up at its next request instead (see `bridge`).

use crate::abi::{self, SchedulerPtr};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

/// The event id of a tick.
pub const TICK: u64 = 1;

#[derive(Default)]
struct Inner {
    /// The period the worker's root asked for (0: none).
    period_ms: u32,
    /// When the next tick is due.
    due: Option<Instant>,
    /// (stream key, its scheduler): schedulers are deleted by the stream's destruction, after
    /// it left this list, so the ticker never posts to a deleted one.
    carriers: Vec<(u32, usize)>,
}

/// One worker root's tick (per worker, per filter configuration).
#[derive(Default)]
pub struct Ticks(Mutex<Inner>);

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Ticks {
    pub fn new() -> Arc<Ticks> {
        let ticks = Arc::new(Ticks::default());
        let mut all = registry();
        // The roots that are gone leave now: the ticker thread prunes too, but it sleeps while
        // no stream carries a tick, and a dead `Weak` keeps its `Ticks` allocated (about 85 B
        // per worker per configuration, for as long as Envoy keeps replacing configurations).
        all.retain(|w| w.strong_count() > 0);
        all.push(Arc::downgrade(&ticks));
        ticks
    }

    /// After a tick ran (or the period changed): the next one is due `period_ms` from now.
    pub fn ticked(&self, period_ms: u32) {
        let mut inner = lock(&self.0);
        inner.period_ms = period_ms;
        inner.due =
            (period_ms > 0).then(|| Instant::now() + Duration::from_millis(u64::from(period_ms)));
    }

    /// Whether a tick is due now (the period set and passed).
    pub fn due(&self, period_ms: u32) -> bool {
        let inner = lock(&self.0);
        match inner.due {
            Some(due) => Instant::now() >= due,
            None => period_ms > 0,
        }
    }

    pub fn is_carrier(&self, key: u32) -> bool {
        lock(&self.0).carriers.iter().any(|(k, _)| *k == key)
    }

    /// Makes a stream a carrier (its scheduler, made by the bridge on the worker).
    pub fn add_carrier(&self, key: u32, scheduler: SchedulerPtr) {
        lock(&self.0).carriers.push((key, scheduler as usize));
        start();
    }

    /// A stream stops carrying; returns its scheduler for the caller to delete.
    pub fn remove_carrier(&self, key: u32) -> Option<SchedulerPtr> {
        let mut inner = lock(&self.0);
        let at = inner.carriers.iter().position(|(k, _)| *k == key)?;
        Some(inner.carriers.swap_remove(at).1 as SchedulerPtr)
    }

    /// From the ticker thread: posts a tick to a carrier if one is due. False: this worker has
    /// no carrier (nothing to tick for now).
    fn post_if_due(&self, now: Instant) -> bool {
        let mut inner = lock(&self.0);
        let Some(&(_, scheduler)) = inner.carriers.first() else {
            return false;
        };
        if inner.period_ms == 0 {
            return true;
        }
        if inner.due.is_some_and(|due| now < due) {
            return true;
        }
        // Not again before the worker ran this one (it sets the next due time) or a period.
        inner.due = Some(now + Duration::from_millis(u64::from(inner.period_ms)));
        // SAFETY: the scheduler is in the list, so its stream has not deleted it (deletion
        // happens after removal, which takes this lock); commit is safe from any thread.
        unsafe {
            abi::envoy_dynamic_module_callback_http_filter_scheduler_commit(
                scheduler as SchedulerPtr,
                TICK,
            )
        };
        true
    }
}

fn registry() -> MutexGuard<'static, Vec<Weak<Ticks>>> {
    static ALL: OnceLock<Mutex<Vec<Weak<Ticks>>>> = OnceLock::new();
    (ALL.get_or_init(|| Mutex::new(Vec::new())).lock()).unwrap_or_else(|p| p.into_inner())
}

/// The ticker's resolution: the gate's fastest tick (10 ms while it holds requests).
const RESOLUTION: Duration = Duration::from_millis(5);

/// Starts the ticker thread once per process, and wakes it: it sleeps (parked, costing
/// nothing) while no worker has a carrier.
fn start() {
    static THREAD: OnceLock<Option<std::thread::Thread>> = OnceLock::new();
    let thread = THREAD.get_or_init(|| {
        let spawned = std::thread::Builder::new()
            .name("faas-mesh-tick".into())
            .spawn(run);
        match spawned {
            Ok(handle) => Some(handle.thread().clone()),
            Err(e) => {
                log::error!("no ticker thread ({e}); workers tick only at their requests");
                None
            }
        }
    });
    if let Some(thread) = thread {
        thread.unpark();
    }
}

fn run() {
    loop {
        std::thread::sleep(RESOLUTION);
        let now = Instant::now();
        let live: Vec<Arc<Ticks>> = {
            let mut all = registry();
            all.retain(|w| w.strong_count() > 0);
            all.iter().filter_map(Weak::upgrade).collect()
        };
        let mut carrying = false;
        for ticks in live {
            carrying |= ticks.post_if_due(now);
        }
        if !carrying {
            // Until a stream becomes a carrier (`add_carrier` unparks).
            std::thread::park();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_that_are_gone_leave_the_registry() {
        let gone = Ticks::new();
        let gone_weak = Arc::downgrade(&gone);
        drop(gone);
        // No ticker thread runs here (nothing carries a tick): only `new` can prune.
        let live = Ticks::new();
        let all = registry();
        assert!(
            !all.iter().any(|w| w.ptr_eq(&gone_weak)),
            "a dropped root's ticks are still registered"
        );
        assert!(all.iter().any(|w| w.ptr_eq(&Arc::downgrade(&live))));
    }
}
