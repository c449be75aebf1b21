//! The pod-wide readiness record on one worker: reading it, adopting only news, publishing that
//! the function is ready, and re-arming (back to holding). Every write is a compare-and-swap on
//! the generation, so two workers never flip-flop over an old value.

use super::{Gate, CAS_ROUNDS};
use crate::gate::{PodReadiness, STATE_KEY};
use crate::host::Host;

impl<H: Host> Gate<H> {
    /// The pod's record, or what this worker knew when shared data cannot be read.
    pub(super) fn read_state(&self) -> PodReadiness {
        match self.host.shared_data(STATE_KEY) {
            Ok((value, _)) => PodReadiness::decode(value.as_deref()),
            // Keep what we knew.
            Err(_) => PodReadiness {
                generation: self.generation.get(),
                ready: self.ready.get(),
            },
        }
    }

    /// Takes a pod state if it is news.
    pub(super) fn adopt(&self, state: PodReadiness) {
        if state.generation < self.generation.get()
            || (state.generation == self.generation.get() && state.ready == self.ready.get())
        {
            return;
        }
        self.generation.set(state.generation);
        self.ready.set(state.ready);
        self.stats.ready.record(&self.host, u64::from(state.ready));
        if !state.ready {
            // Nothing to check any more: the gate holds again.
            self.verify.set(false);
        }
        self.retick();
    }

    /// A probe found the function ready: says so to the pod (once) and adopts it.
    pub(super) fn publish_ready(&self) {
        let outcome = self
            .host
            .update_shared_data(STATE_KEY, CAS_ROUNDS, |value| {
                let current = PodReadiness::decode(value);
                if current.ready {
                    (None, (current, false))
                } else {
                    let next = current.next(true);
                    (Some(next.encode()), (next, true))
                }
            });
        match outcome {
            Some((state, wrote)) => {
                if wrote {
                    log::info!(
                        "readiness: function {:?} answered {}; requests flow",
                        self.function,
                        self.probe_path()
                    );
                }
                self.adopt(state);
            }
            // Shared data unusable: at least this worker knows.
            None => self.ready.set(true),
        }
    }

    /// Puts the gate back to holding, unless the pod state moved on since generation `known`.
    pub(super) fn rearm(&self, known: u64, why: &str) {
        let outcome = self
            .host
            .update_shared_data(STATE_KEY, CAS_ROUNDS, |value| {
                let current = PodReadiness::decode(value);
                if current.generation != known || !current.ready {
                    // Somebody already said so, or the function came back since.
                    (None, (current, false))
                } else {
                    let next = current.next(false);
                    (Some(next.encode()), (next, true))
                }
            });
        if let Some((state, wrote)) = outcome {
            if wrote {
                log::info!(
                    "readiness: function {:?}: {why}; holding requests until {} answers",
                    self.function,
                    self.probe_path()
                );
            }
            self.adopt(state);
        }
    }
}
