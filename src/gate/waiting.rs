//! The requests one worker holds, oldest first: a paused request can only be resumed (or
//! answered) by its own worker, so each worker keeps its own list.

use std::collections::VecDeque;

/// One request this worker holds, with what the adapter needs to answer or release it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiter<T> {
    pub context_id: u32,
    pub since_ms: u64,
    /// How long it may be held (`max_wait_ms`, less for the gateway's probe).
    pub wait_ms: u64,
    pub payload: T,
}

/// The requests one worker holds, oldest first.
#[derive(Debug)]
pub struct Waiting<T> {
    waiters: VecDeque<Waiter<T>>,
}

impl<T> Default for Waiting<T> {
    fn default() -> Self {
        Waiting {
            waiters: VecDeque::new(),
        }
    }
}

impl<T> Waiting<T> {
    pub fn hold(&mut self, context_id: u32, now_ms: u64, wait_ms: u64, payload: T) {
        self.waiters.push_back(Waiter {
            context_id,
            since_ms: now_ms,
            wait_ms,
            payload,
        });
    }

    /// The requests held, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Waiter<T>> {
        self.waiters.iter()
    }

    /// The request held with this context id, if any.
    pub fn find(&self, context_id: u32) -> Option<&Waiter<T>> {
        self.waiters.iter().find(|h| h.context_id == context_id)
    }

    /// Forgets a request (its client went away); `None` if it was not held.
    pub fn remove(&mut self, context_id: u32) -> Option<Waiter<T>> {
        let index = self
            .waiters
            .iter()
            .position(|h| h.context_id == context_id)?;
        self.waiters.remove(index)
    }

    /// Takes every request held for its `wait_ms` or longer, oldest first.
    pub fn expired(&mut self, now_ms: u64) -> Vec<Waiter<T>> {
        let mut out = Vec::new();
        let mut kept = VecDeque::with_capacity(self.waiters.len());
        for h in self.waiters.drain(..) {
            if now_ms.saturating_sub(h.since_ms) >= h.wait_ms {
                out.push(h);
            } else {
                kept.push_back(h);
            }
        }
        self.waiters = kept;
        out
    }

    /// Takes every held request (to release them all).
    pub fn take_all(&mut self) -> Vec<Waiter<T>> {
        self.waiters.drain(..).collect()
    }

    pub fn len(&self) -> usize {
        self.waiters.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiters.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_expires_the_oldest_and_forgets_the_gone() {
        let mut w = Waiting::default();
        w.hold(1, 100, 1000, "a");
        w.hold(2, 150, 1000, "b");
        w.hold(3, 400, 1000, "c");
        // A shorter wait expires before older requests.
        w.hold(4, 500, 100, "short");
        assert_eq!(
            w.remove(2).map(|h| (h.since_ms, h.payload)),
            Some((150, "b"))
        );
        assert_eq!(w.remove(2), None);
        let expired: Vec<u32> = w.expired(600).iter().map(|h| h.context_id).collect();
        assert_eq!(expired, vec![4]);
        let expired: Vec<u32> = w.expired(1100).iter().map(|h| h.context_id).collect();
        assert_eq!(expired, vec![1]);
        assert_eq!(w.len(), 1);
        assert_eq!(w.take_all().len(), 1);
        assert!(w.is_empty());
    }
}
