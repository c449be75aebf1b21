//! Holding requests on one worker: admitting one while not ready (or refusing it), its body in
//! the pod's budget, and the end of every hold: released when the function is ready, answered
//! 503 after `max_wait_ms`, or forgotten when its client goes away. Each held request counts in
//! this VM's entry of the pod's held record ([`crate::held`]) and gives its place and its bytes
//! back to that entry only.

use super::{Gate, CAS_ROUNDS};
use crate::body_budget::{self, Verdict};
use crate::gate::{self, Waiter};
use crate::held::{self, Record, Ticket};
use crate::host::{send_reply, Host};
use crate::reply::{self, LocalReply};
use std::cell::Cell;
use std::rc::Rc;

/// Where a held request stands; shared between the gate and the request's own context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum HoldState {
    /// Paused in its headers until the gate releases or answers it.
    Paused,
    /// Paused, and the request's own context is still reading its body (a body of unknown
    /// length under `max_body_bytes`): a release must not resume it; the context goes on when
    /// the body is complete (or answers 413).
    PausedReadingBody,
    Released,
    /// The gate answered it (503); the request's context must not stamp that reply again.
    Answered,
}

/// A held request's handle, kept by its call (the gate keeps the other end).
#[derive(Debug, Clone)]
pub struct Hold(Rc<Cell<HoldState>>);

impl Hold {
    /// Still waiting for the gate (paused, whether or not its body is still being read).
    pub fn is_held(&self) -> bool {
        matches!(
            self.0.get(),
            HoldState::Paused | HoldState::PausedReadingBody
        )
    }

    /// The gate answered it (503 after `max_wait_ms`).
    pub fn answered_by_gate(&self) -> bool {
        self.0.get() == HoldState::Answered
    }

    /// Its body is read to the end: a request the gate still holds waits for the gate as any
    /// other; one it released meanwhile goes on now (the caller's `Continue`).
    pub fn body_read(&self) {
        if self.0.get() == HoldState::PausedReadingBody {
            self.0.set(HoldState::Paused);
        }
    }

    #[cfg(test)]
    pub(super) fn state(&self) -> HoldState {
        self.0.get()
    }
}

/// What the gate decided for a request that arrived while the worker believed "not ready".
pub enum Arrival {
    /// The function is ready after all (another worker learned it): go on.
    Go,
    /// Paused; the request's context keeps the handle to know when it is released.
    Held(Hold),
    /// Answer this now: a body larger than the pod's whole budget (413), or `max_pending`
    /// requests already held across the pod (503).
    Refused(LocalReply),
}

/// What the gate needs to answer a held request itself.
pub(super) struct HeldCall {
    call_id: String,
    state: Rc<Cell<HoldState>>,
    /// The entry of the pod's held record its place (and its body bytes) were taken from.
    ticket: Ticket,
    /// Body bytes reserved for it in the pod's budget.
    pub(super) bytes: Cell<u64>,
}

impl<H: Host> Gate<H> {
    /// A request arrived while this worker believed the function not ready. `content_length`:
    /// its declared body size (a body larger than `max_pending_bytes` is refused now, not after
    /// `max_wait_ms`); `reads_body`: its headers must wait for the whole body
    /// (`hold_unsized_bodies`), so a release must not resume it.
    #[inline(never)]
    pub fn admit(
        &self,
        context_id: u32,
        call_id: &str,
        content_length: Option<u64>,
        reads_body: bool,
    ) -> Arrival {
        if content_length.is_some_and(|len| len > self.settings.max_pending_bytes) {
            return Arrival::Refused(reply::TOO_LARGE_TO_HOLD);
        }
        self.adopt(self.read_state());
        if self.is_ready() {
            return Arrival::Go;
        }
        let now = self.host.now_ms();
        let Some(ticket) = self.reserve_slot(now) else {
            self.stats.rejected_queue_full.add(&self.host, 1);
            log::warn!(
                "call {call_id} for function {:?}: {} requests already held; answered 503",
                self.function,
                self.settings.max_pending
            );
            let retry_after = gate::retry_after_seconds(self.settings.retry_interval_ms);
            return Arrival::Refused(reply::pending_full(retry_after));
        };
        let state = Rc::new(Cell::new(if reads_body {
            HoldState::PausedReadingBody
        } else {
            HoldState::Paused
        }));
        self.waiting.borrow_mut().hold(
            context_id,
            now,
            self.settings.max_wait_ms,
            HeldCall {
                call_id: call_id.to_string(),
                state: state.clone(),
                ticket,
                bytes: Cell::new(0),
            },
        );
        self.stats.held.add(&self.host, 1);
        // The probe goes out from the root context within a (now fast) tick, never from this
        // request's context.
        self.retick();
        Arrival::Held(Hold(state))
    }

    /// The client of a held request went away (or the filter answered it): forget it.
    pub fn forget(&self, context_id: u32) {
        let removed = self.waiting.borrow_mut().remove(context_id);
        if let Some(held) = removed {
            self.stats.abandoned.add(&self.host, 1);
            self.give_back(std::slice::from_ref(&held));
            self.retick();
        }
    }

    /// A held request's body has grown to `body_bytes` (Envoy buffers it while the gate holds
    /// the request): reserves the growth in the pod's budget, or the reply when it does not fit:
    /// 413 when it is larger than the whole `max_pending_bytes`, 503 when the pod holds too many
    /// bytes already. Nothing to do for a request this gate does not hold (any more).
    #[inline(never)]
    pub fn hold_body(&self, context_id: u32, body_bytes: u64, call_id: &str) -> Option<LocalReply> {
        let waiting = self.waiting.borrow();
        let call = &waiting.find(context_id)?.payload;
        let (reserved, ticket) = (call.bytes.get(), call.ticket);
        let max = self.settings.max_pending_bytes;
        let now = self.host.now_ms();
        let verdict = self
            .host
            .update_shared_data(held::KEY, CAS_ROUNDS, |value| {
                let mut record = Record::decode(value);
                record.expire(now);
                match body_budget::verdict(body_bytes, reserved, record.bytes(), max) {
                    Verdict::Hold { extra: 0, .. } => (None, Ok(0)),
                    Verdict::Hold { extra, .. } => {
                        if record.reserve_bytes(ticket, now, extra, max) {
                            (Some(record.encode()), Ok(extra))
                        } else {
                            (None, Err(Verdict::Full))
                        }
                    }
                    refused => (None, Err(refused)),
                }
            });
        match verdict {
            Some(Ok(extra)) => {
                call.bytes.set(reserved + extra);
                None
            }
            Some(Err(Verdict::Full)) => {
                log::warn!(
                    "call {call_id}: the pod already holds its max_pending_bytes of request \
                     bodies; answered 503"
                );
                Some(reply::BYTES_FULL)
            }
            Some(Err(_)) => Some(reply::TOO_LARGE_TO_HOLD),
            // Shared data unusable: hold rather than refuse (Envoy's buffer limit still bounds it).
            None => None,
        }
    }

    /// Resumes every request this worker holds (called from root callbacks only: it switches
    /// the effective context).
    pub(super) fn release_all(&self, now: u64) {
        let held = self.waiting.borrow_mut().take_all();
        if held.is_empty() {
            return;
        }
        for h in &held {
            let reading_body = h.payload.state.get() == HoldState::PausedReadingBody;
            h.payload.state.set(HoldState::Released);
            self.stats
                .held_ms
                .record(&self.host, now.saturating_sub(h.since_ms));
            if !reading_body && self.host.set_effective_context(h.context_id).is_ok() {
                let _ = self.host.resume_request();
            }
        }
        self.stats.released.add(&self.host, held.len() as i64);
        self.give_back(&held);
    }

    /// Answers 503 every request held for its `max_wait_ms` (root callbacks only).
    #[inline]
    pub(super) fn answer_expired(&self, now: u64) {
        let expired = self.waiting.borrow_mut().expired(now);
        if expired.is_empty() {
            return;
        }
        for held in &expired {
            self.answer_not_ready(held, now);
        }
        self.stats.timed_out.add(&self.host, expired.len() as i64);
        self.give_back(&expired);
    }

    fn answer_not_ready(&self, held: &Waiter<HeldCall>, now: u64) {
        held.payload.state.set(HoldState::Answered);
        log::warn!(
            "call {} for function {:?}: not ready after {} ms; answered 503",
            held.payload.call_id,
            self.function,
            now.saturating_sub(held.since_ms)
        );
        self.stats
            .held_ms
            .record(&self.host, now.saturating_sub(held.since_ms));
        let reply = reply::not_ready(gate::retry_after_seconds(self.settings.retry_interval_ms));
        if self.host.set_effective_context(held.context_id).is_ok() {
            send_reply(
                &self.host,
                &reply,
                &self.function,
                &self.call_id_header,
                &held.payload.call_id,
            );
        }
    }

    /// Counts a request into this VM's entry of the pod's held record, unless the pod holds
    /// `max_pending` (what dead VMs held counts until it has been answered).
    fn reserve_slot(&self, now: u64) -> Option<Ticket> {
        let s = &self.settings;
        let until = now
            .saturating_add(s.max_wait_ms)
            .saturating_add(held::MARGIN_MS);
        let owner = self.owner;
        let reserved = self
            .host
            .update_shared_data(held::KEY, CAS_ROUNDS, |value| {
                let mut record = Record::decode(value);
                let dropped = record.expire(now);
                let ticket = record.hold(owner, now, until, s.max_pending);
                let write = (ticket.is_some() || dropped > 0).then(|| record.encode());
                (write, (ticket, dropped))
            });
        match reserved {
            Some((ticket, dropped)) => {
                // The gauge moves by the change, not to the value: workers' updates commute.
                let added = i64::from(ticket.is_some());
                self.stats
                    .pending
                    .add(&self.host, added - i64::try_from(dropped).unwrap_or(0));
                ticket
            }
            // Cannot count: hold rather than refuse.
            None => Some(Ticket::default()),
        }
    }

    /// Gives back the places and body bytes of requests this gate no longer holds, each to the
    /// entry it was taken from.
    fn give_back(&self, calls: &[Waiter<HeldCall>]) {
        let mut by_ticket: Vec<(Ticket, u64, u64)> = Vec::new();
        for h in calls {
            let call = &h.payload;
            match by_ticket.iter_mut().find(|(t, _, _)| *t == call.ticket) {
                Some((_, count, bytes)) => {
                    *count += 1;
                    *bytes += call.bytes.get();
                }
                None => by_ticket.push((call.ticket, 1, call.bytes.get())),
            }
        }
        for (ticket, count, bytes) in by_ticket {
            let released = self
                .host
                .update_shared_data(held::KEY, CAS_ROUNDS, |value| {
                    let mut record = Record::decode(value);
                    let before = record.count();
                    record.release(ticket, count, bytes);
                    let released = before - record.count();
                    (Some(record.encode()), released)
                });
            if let Some(released) = released {
                self.stats
                    .pending
                    .add(&self.host, -i64::try_from(released).unwrap_or(0));
            }
        }
    }
}
