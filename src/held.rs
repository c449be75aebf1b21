//! The pod-wide record of what the readiness gate holds: for each VM (worker) that holds
//! requests, how many and how many body bytes, so `max_pending` and `max_pending_bytes` hold
//! across workers.
//!
//! Each VM writes only its own entry, and a reservation goes back only to the entry it was taken
//! from: the entry of its VM, in the same incarnation (`since`, the time the entry was made). So
//! no event anywhere in the pod (the function becoming ready, a re-arm, another worker's
//! release, a VM that traps and is replaced) can make a reservation be subtracted from a count
//! it was not added to. A VM that dies cannot give its entry back: the entry carries `until`,
//! the time by which every request it held has been answered (the gate answers at `max_wait_ms`;
//! for a dead VM, Envoy's `request_timeout`, [`MARGIN_MS`] later), and is dropped by whichever
//! VM looks after that. Pure: the host side is in the gate's adapter.

/// The shared-data key. Named anew with this format (the older records were plain numbers).
pub const KEY: &str = "faas-mesh-filter.readiness.held.v2";

/// How long after `max_wait_ms` a held request of a dead VM is answered at the latest: the
/// sidecar's `request_timeout` is `max_wait_ms` plus this (the EnvoyFilter sets it), so a VM's
/// places are kept that long after the last request it held arrived.
pub const MARGIN_MS: u64 = 10_000;

/// One VM's part.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Entry {
    pub owner: u64,
    /// When this entry was made (ms): a reservation names it, so one taken from an entry that
    /// has since been dropped is never given back to a newer entry of the same VM.
    pub since: u64,
    pub count: u64,
    pub bytes: u64,
    /// By then every request counted here has been answered (ms).
    pub until: u64,
}

/// Which entry a reservation was taken from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ticket {
    pub owner: u64,
    pub since: u64,
}

/// The whole record: `owner:since:count:bytes:until` entries joined by `;`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    pub entries: Vec<Entry>,
}

impl Record {
    /// Absent or unreadable entries are skipped.
    pub fn decode(value: Option<&[u8]>) -> Record {
        let text = value
            .and_then(|v| std::str::from_utf8(v).ok())
            .unwrap_or("");
        let entries = text
            .split(';')
            .filter_map(|e| {
                let mut n = e.split(':').map(|f| f.parse::<u64>().ok());
                Some(Entry {
                    owner: n.next()??,
                    since: n.next()??,
                    count: n.next()??,
                    bytes: n.next()??,
                    until: n.next()??,
                })
            })
            .collect();
        Record { entries }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = String::new();
        for e in &self.entries {
            if !out.is_empty() {
                out.push(';');
            }
            for (i, n) in [e.owner, e.since, e.count, e.bytes, e.until]
                .iter()
                .enumerate()
            {
                if i > 0 {
                    out.push(':');
                }
                out.push_str(&n.to_string());
            }
        }
        out.into_bytes()
    }

    /// Requests held in the pod.
    pub fn count(&self) -> u64 {
        self.entries.iter().map(|e| e.count).sum()
    }

    /// Body bytes held in the pod.
    pub fn bytes(&self) -> u64 {
        self.entries.iter().map(|e| e.bytes).sum()
    }

    /// Drops the entries whose requests have all been answered by `now` (a VM that died holding
    /// them; a live VM's entry is emptied by its own releases first). Returns the requests
    /// dropped with them.
    pub fn expire(&mut self, now: u64) -> u64 {
        let mut dropped = 0;
        self.entries.retain(|e| {
            let keep = e.until > now;
            if !keep {
                dropped += e.count;
            }
            keep
        });
        dropped
    }

    /// Counts one more request held by `owner` until `until` at the latest, unless the pod holds
    /// `max` already (after dropping what expired). Returns the ticket to give it back with.
    pub fn hold(&mut self, owner: u64, now: u64, until: u64, max: u64) -> Option<Ticket> {
        self.expire(now);
        if self.count() >= max {
            return None;
        }
        if !self.entries.iter().any(|e| e.owner == owner) {
            self.entries.push(Entry {
                owner,
                since: now,
                ..Entry::default()
            });
        }
        let e = self.entries.iter_mut().find(|e| e.owner == owner)?;
        e.count += 1;
        e.until = e.until.max(until);
        Some(Ticket {
            owner,
            since: e.since,
        })
    }

    /// Reserves `extra` more body bytes for a request held under `ticket`, unless that takes
    /// the pod past `max`. False also when the ticket's entry is gone (it expired: its requests
    /// are past their time).
    pub fn reserve_bytes(&mut self, ticket: Ticket, now: u64, extra: u64, max: u64) -> bool {
        self.expire(now);
        if self.bytes().saturating_add(extra) > max {
            return false;
        }
        match self.find(ticket) {
            Some(e) => {
                e.bytes += extra;
                true
            }
            None => false,
        }
    }

    /// Gives back `count` requests and `bytes` body bytes taken under `ticket`: only to that
    /// entry, never to another VM's or a newer one of the same VM. An emptied entry is removed.
    pub fn release(&mut self, ticket: Ticket, count: u64, bytes: u64) {
        if let Some(e) = self.find(ticket) {
            e.count = e.count.saturating_sub(count);
            e.bytes = e.bytes.saturating_sub(bytes);
        }
        self.entries.retain(|e| e.count > 0 || e.bytes > 0);
    }

    fn find(&mut self, ticket: Ticket) -> Option<&mut Entry> {
        self.entries
            .iter_mut()
            .find(|e| e.owner == ticket.owner && e.since == ticket.since)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_skips_what_it_cannot_read() {
        let mut r = Record::default();
        let t = r.hold(7, 100, 5000, 10).unwrap();
        assert!(r.reserve_bytes(t, 100, 42, 1000));
        let back = Record::decode(Some(&r.encode()));
        assert_eq!(back, r);
        assert_eq!(r.encode(), b"7:100:1:42:5000");
        assert_eq!(Record::decode(Some(b"x;1:2:3:4:5;1:2")).entries.len(), 1);
        assert_eq!(Record::decode(None), Record::default());
        assert_eq!(
            Record::decode(Some(b"17")),
            Record::default(),
            "the old format"
        );
    }

    #[test]
    fn max_pending_and_bytes_hold_across_owners() {
        let mut r = Record::default();
        let a = r.hold(1, 0, 1000, 3).unwrap();
        let b = r.hold(2, 0, 1000, 3).unwrap();
        assert!(r.hold(2, 0, 1000, 3).is_some());
        assert_eq!(r.hold(1, 0, 1000, 3), None);
        assert!(r.reserve_bytes(a, 0, 60, 100));
        assert!(!r.reserve_bytes(b, 0, 41, 100));
        assert!(r.reserve_bytes(b, 0, 40, 100));
        assert_eq!((r.count(), r.bytes()), (3, 100));
    }

    #[test]
    fn a_release_only_goes_back_to_its_own_entry() {
        let mut r = Record::default();
        let old = r.hold(1, 0, 1000, 10).unwrap();
        assert!(r.reserve_bytes(old, 0, 500, 1000));
        // The entry expires (its VM stalled past `until`); the VM holds anew: a new entry.
        let new = r.hold(1, 2000, 3000, 10).unwrap();
        assert_ne!(old, new);
        assert!(r.reserve_bytes(new, 2000, 300, 1000));
        r.release(old, 1, 500);
        assert_eq!(
            (r.count(), r.bytes()),
            (1, 300),
            "the old release took nothing"
        );
        // Another VM's release never touches this one.
        r.release(
            Ticket {
                owner: 2,
                since: 2000,
            },
            1,
            300,
        );
        assert_eq!((r.count(), r.bytes()), (1, 300));
        r.release(new, 1, 300);
        assert!(r.entries.is_empty());
    }

    #[test]
    fn a_dead_vms_places_come_back_when_its_requests_have_been_answered() {
        let mut r = Record::default();
        r.hold(9, 0, 1000 + MARGIN_MS, 2).unwrap();
        r.hold(9, 500, 1500 + MARGIN_MS, 2).unwrap();
        // VM 9 dies. Until its last request has been answered, its places are taken.
        assert_eq!(r.hold(1, 1400 + MARGIN_MS, 5000, 2), None);
        let t = r.hold(1, 1500 + MARGIN_MS, 20_000, 2);
        assert!(t.is_some());
        assert_eq!(r.count(), 1);
        let mut r2 = r.clone();
        assert_eq!(r2.expire(u64::MAX), 1);
    }
}
