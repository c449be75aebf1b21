//! Process-wide shared data: what proxy-wasm's `proxy_{get,set}_shared_data` give the wasm
//! build, here one map behind a mutex (all workers are threads of one process), with the same
//! compare-and-swap rules as Envoy's: every write bumps the record's token; a write naming a
//! token (non-zero) fails if another write came in between; token 0 writes unconditionally.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, OnceLock};

#[derive(Default)]
pub struct SharedData {
    records: HashMap<String, (Vec<u8>, u32)>,
    next_cas: u32,
}

impl SharedData {
    /// The record and its token (`(None, 0)` when absent).
    pub fn get(&self, key: &str) -> (Option<Vec<u8>>, u32) {
        match self.records.get(key) {
            Some((value, cas)) => (Some(value.clone()), *cas),
            None => (None, 0),
        }
    }

    /// Writes the record unless `cas` is non-zero and stale; false: stale, nothing written.
    pub fn set(&mut self, key: &str, value: &[u8], cas: u32) -> bool {
        if let Some((old, token)) = self.records.get_mut(key) {
            if cas != 0 && cas != *token {
                return false;
            }
            self.next_cas = self.next_cas.wrapping_add(1).max(1);
            old.clear();
            old.extend_from_slice(value);
            *token = self.next_cas;
            return true;
        }
        self.next_cas = self.next_cas.wrapping_add(1).max(1);
        self.records
            .insert(key.to_string(), (value.to_vec(), self.next_cas));
        true
    }
}

/// The process's shared data. A worker that panicked cannot poison it: the module aborts on
/// panic, and a poisoned lock is taken over anyway (every write leaves a whole record).
pub fn lock() -> MutexGuard<'static, SharedData> {
    static DATA: OnceLock<Mutex<SharedData>> = OnceLock::new();
    let data = DATA.get_or_init(|| Mutex::new(SharedData::default()));
    data.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_and_swap_as_envoy() {
        let mut data = SharedData::default();
        assert_eq!(data.get("k"), (None, 0));
        assert!(data.set("k", b"1", 0));
        let (value, cas) = data.get("k");
        assert_eq!(value.as_deref(), Some(&b"1"[..]));
        assert_ne!(cas, 0);
        assert!(data.set("k", b"2", cas), "the token read last is current");
        assert!(!data.set("k", b"3", cas), "a stale token is refused");
        assert_eq!(data.get("k").0.as_deref(), Some(&b"2"[..]));
        assert!(data.set("k", b"4", 0), "token 0 always writes");
        assert_eq!(data.get("k").0.as_deref(), Some(&b"4"[..]));
    }
}
