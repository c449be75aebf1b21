//! The pod's shared policy counters: in-flight slots by owner (one per Wasm VM, so a dead VM's
//! slots are given back) and the rate-limit bucket, in one shared-data record, and the admission
//! of one request against them.

use super::bucket::Bucket;
use super::rules::RateLimit;

/// How long slots are kept for an owner that shows no sign of life. Every live owner (one per
/// Wasm VM, that is per Envoy worker) that holds slots writes its entry at least every
/// [`HEARTBEAT_MS`]; a VM that trapped writes nothing more, so at most this long after its last
/// write the slots it held are given back by whichever worker writes the record next.
pub const OWNER_EXPIRY_MS: u64 = 5_000;

/// How often an owner holding slots renews its entry (from the root context's tick).
pub const HEARTBEAT_MS: u64 = 1_000;

/// Owners one record keeps at most: the workers of one Envoy plus dead VMs not yet expired. A
/// record with more (which Envoy never produces) is read as its first entries only.
pub const MAX_OWNERS: usize = 256;

/// In-flight slots taken by one owner: a Wasm VM, named by a random id it picks when it starts,
/// with the time it last wrote its entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holder {
    pub owner: u64,
    pub held: u64,
    pub beat_ms: u64,
}

impl Holder {
    /// Whether the owner showed a sign of life recently enough to keep its slots.
    fn alive(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.beat_ms) <= OWNER_EXPIRY_MS
    }
}

/// The pod's policy counters in one shared record, so a request reads and writes shared data
/// once: `<milli-tokens>:<last refill ms>` then, per owner holding slots,
/// `;<owner hex>:<held>:<last write ms>`. The in-flight count is the sum of the owners' slots:
/// slots belong to the VM that took them, so when a VM dies (a trap) its slots can be told
/// apart and given back instead of being held for ever.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counters {
    pub holders: Vec<Holder>,
    pub bucket: Bucket,
}

/// What [`admit`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// The rate limit: passed, or the milliseconds until a token (no `rate_limit`: passed).
    pub rate: Result<(), u64>,
    /// `max_inflight`: `Some(true)` took a slot, `Some(false)` found none, `None` no such rule.
    pub slot: Option<bool>,
    /// Slots of dead owners this decision gave back.
    pub reclaimed: u64,
}

impl Counters {
    /// Absent or unreadable: nothing in flight, a full bucket. Unreadable owner entries are
    /// dropped (their slots freed).
    pub fn decode(bytes: Option<&[u8]>, limit: Option<&RateLimit>, now_ms: u64) -> Counters {
        let full = Bucket::full(limit, now_ms);
        let text = bytes
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or("");
        let mut entries = text.split(';');
        let mut bucket_parts = entries.next().unwrap_or("").split(':').map(str::parse);
        let bucket = match (
            bucket_parts.next(),
            bucket_parts.next(),
            bucket_parts.next(),
        ) {
            (Some(Ok(milli_tokens)), Some(Ok(last_ms)), None) => Bucket {
                milli_tokens,
                last_ms,
            },
            _ => full,
        };
        let holders = entries
            .filter_map(|entry| {
                let mut parts = entry.split(':');
                let owner = u64::from_str_radix(parts.next()?, 16).ok()?;
                let held = parts.next()?.parse().ok()?;
                let beat_ms = parts.next()?.parse().ok()?;
                parts.next().is_none().then_some(Holder {
                    owner,
                    held,
                    beat_ms,
                })
            })
            .filter(|h| h.held > 0)
            .take(MAX_OWNERS)
            .collect();
        Counters { holders, bucket }
    }

    pub fn encode(&self) -> Vec<u8> {
        use std::fmt::Write;
        let mut text = String::with_capacity(24 + 40 * self.holders.len());
        let _ = write!(text, "{}:{}", self.bucket.milli_tokens, self.bucket.last_ms);
        for h in &self.holders {
            let _ = write!(text, ";{:x}:{}:{}", h.owner, h.held, h.beat_ms);
        }
        text.into_bytes()
    }

    /// Slots in flight in the pod (every owner's, live or not yet expired).
    pub fn inflight(&self) -> u64 {
        self.holders
            .iter()
            .fold(0u64, |sum, h| sum.saturating_add(h.held))
    }

    /// The slots `owner` holds according to the record.
    pub fn held_by(&self, owner: u64) -> u64 {
        self.holders
            .iter()
            .find(|h| h.owner == owner)
            .map_or(0, |h| h.held)
    }

    /// Drops the entries of owners (other than `owner`) silent for longer than
    /// [`OWNER_EXPIRY_MS`]: the slots given back.
    fn reclaim(&mut self, owner: u64, now_ms: u64) -> u64 {
        let mut reclaimed = 0u64;
        self.holders.retain(|h| {
            let keep = h.owner == owner || h.alive(now_ms);
            if !keep {
                reclaimed = reclaimed.saturating_add(h.held);
            }
            keep
        });
        reclaimed
    }

    /// Sets `owner`'s entry to `held` slots written at `now_ms` (removed when 0).
    fn set_held(&mut self, owner: u64, held: u64, now_ms: u64) {
        match self.holders.iter().position(|h| h.owner == owner) {
            Some(i) if held == 0 => {
                self.holders.remove(i);
            }
            Some(i) => {
                if let Some(h) = self.holders.get_mut(i) {
                    h.held = held;
                    h.beat_ms = now_ms;
                }
            }
            None if held == 0 => {}
            None => self.holders.push(Holder {
                owner,
                held,
                beat_ms: now_ms,
            }),
        }
    }

    /// The counters after a request of `owner` that held a slot ended. An owner whose entry is
    /// gone (given back while it looked dead) has nothing to return.
    pub fn released(&self, owner: u64) -> Counters {
        let mut next = self.clone();
        if let Some(i) = next.holders.iter().position(|h| h.owner == owner) {
            if let Some(h) = next.holders.get_mut(i) {
                h.held = h.held.saturating_sub(1);
            }
            if next.holders.get(i).is_some_and(|h| h.held == 0) {
                next.holders.remove(i);
            }
        }
        next
    }

    /// `owner` is alive and holds `held` slots (its own count): its entry is renewed (or put
    /// back, if it was given back while the owner looked dead), and dead owners' slots are given
    /// back. Returns the new counters, the change to `owner`'s slots in the record, and the
    /// slots reclaimed from dead owners.
    pub fn heartbeat(&self, owner: u64, held: u64, now_ms: u64) -> (Counters, i64, u64) {
        let mut next = self.clone();
        let reclaimed = next.reclaim(owner, now_ms);
        let before = next.held_by(owner);
        next.set_held(owner, held, now_ms);
        let change = i64::try_from(held)
            .unwrap_or(i64::MAX)
            .saturating_sub(i64::try_from(before).unwrap_or(i64::MAX));
        (next, change, reclaimed)
    }
}

/// Takes a rate-limit token and an in-flight slot for one request of `owner` (and gives back
/// the slots of dead owners first). `enforce`: stop at the first refusal (a rate-limited request
/// takes no slot). Otherwise (audit) both are evaluated and a request takes what is free.
pub fn admit(
    counters: &Counters,
    limit: Option<&RateLimit>,
    max_inflight: Option<u64>,
    now_ms: u64,
    enforce: bool,
    owner: u64,
) -> (Counters, Admission) {
    let mut next = counters.clone();
    let rate = match limit {
        None => Ok(()),
        Some(limit) => counters.bucket.take(limit, now_ms).map(|bucket| {
            next.bucket = bucket;
        }),
    };
    let mut reclaimed = 0;
    let slot = match max_inflight {
        None => None,
        Some(_) if enforce && rate.is_err() => None,
        Some(max) => {
            reclaimed = next.reclaim(owner, now_ms);
            if next.inflight() < max {
                let held = next.held_by(owner).saturating_add(1);
                next.set_held(owner, held, now_ms);
                Some(true)
            } else {
                Some(false)
            }
        }
    };
    (
        next,
        Admission {
            rate,
            slot,
            reclaimed,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: u64 = 0xa1;
    const OTHER: u64 = 0xb2;

    #[test]
    fn one_record_holds_the_slot_count_and_the_bucket() {
        let limit = RateLimit {
            requests_per_second: 1.0,
            burst: 1,
        };
        let c = Counters::decode(None, Some(&limit), 5000);
        assert_eq!((c.inflight(), c.bucket.milli_tokens), (0, 1000));
        let (c, a) = admit(&c, Some(&limit), Some(1), 5000, true, ME);
        assert_eq!(
            a,
            Admission {
                rate: Ok(()),
                slot: Some(true),
                reclaimed: 0
            }
        );
        assert_eq!(c.held_by(ME), 1);
        assert_eq!(Counters::decode(Some(&c.encode()), Some(&limit), 0), c);
        // No token left: refused, and in enforce mode no slot is taken either.
        let (after, a) = admit(&c, Some(&limit), Some(5), 5000, true, ME);
        assert_eq!((a.rate, a.slot), (Err(1000), None));
        assert_eq!(after, c);
        // Audit evaluates both.
        let (_, a) = admit(&c, Some(&limit), Some(1), 5000, false, ME);
        assert_eq!((a.rate, a.slot), (Err(1000), Some(false)));
        assert_eq!(c.released(ME).inflight(), 0);
        assert_eq!(c.released(ME).released(ME).inflight(), 0);
        // Without rules nothing changes.
        let (same, a) = admit(&c, None, None, 9000, true, ME);
        assert_eq!(same, c);
        assert_eq!((a.rate, a.slot), (Ok(()), None));
    }

    #[test]
    fn slots_belong_to_the_vm_that_took_them() {
        let c = Counters::decode(None, None, 0);
        let (c, _) = admit(&c, None, Some(3), 1000, true, ME);
        let (c, _) = admit(&c, None, Some(3), 1000, true, OTHER);
        let (c, _) = admit(&c, None, Some(3), 1000, true, OTHER);
        assert_eq!((c.held_by(ME), c.held_by(OTHER), c.inflight()), (1, 2, 3));
        let (full, a) = admit(&c, None, Some(3), 1000, true, ME);
        assert_eq!(a.slot, Some(false));
        assert_eq!(full, c, "a refusal changes nothing");
        // A release returns the releasing owner's slot, never another's.
        let c = c.released(ME);
        assert_eq!((c.held_by(ME), c.held_by(OTHER)), (0, 2));
        assert_eq!(c.released(ME), c, "nothing left to return");
        assert_eq!(
            String::from_utf8(c.encode()).unwrap(),
            "0:0;b2:2:1000",
            "owners without slots leave the record"
        );
        assert_eq!(Counters::decode(Some(&c.encode()), None, 0), c);
    }

    #[test]
    fn a_dead_owners_slots_are_given_back_after_the_expiry() {
        // OTHER took every slot at t=1000, then trapped: it never writes again.
        let c = Counters::decode(None, None, 0);
        let (c, _) = admit(&c, None, Some(2), 1000, true, OTHER);
        let (c, _) = admit(&c, None, Some(2), 1000, true, OTHER);
        let (_, a) = admit(&c, None, Some(2), 1000 + OWNER_EXPIRY_MS, true, ME);
        assert_eq!(a.slot, Some(false), "still within the expiry");
        let (c, a) = admit(&c, None, Some(2), 1001 + OWNER_EXPIRY_MS, true, ME);
        assert_eq!((a.slot, a.reclaimed), (Some(true), 2));
        assert_eq!((c.held_by(OTHER), c.inflight()), (0, 1));
        // A live owner keeps its slots however long its requests run, by its heartbeat.
        let mut c = c;
        let mut now = 1001 + OWNER_EXPIRY_MS;
        for _ in 0..20 {
            now += HEARTBEAT_MS;
            let (next, change, reclaimed) = c.heartbeat(ME, 1, now);
            assert_eq!((change, reclaimed), (0, 0));
            c = next;
            let (_, a) = admit(&c, None, Some(1), now + 10, true, OTHER);
            assert_eq!(a.slot, Some(false), "a live owner's slot was taken away");
        }
        // Its own old entry is never reclaimed by itself.
        let (_, a) = admit(&c, None, Some(2), now + 10 * OWNER_EXPIRY_MS, true, ME);
        assert_eq!((a.slot, a.reclaimed), (Some(true), 0));
    }

    #[test]
    fn a_heartbeat_puts_back_slots_given_back_while_the_owner_looked_dead() {
        let c = Counters::decode(None, None, 0);
        let (c, _) = admit(&c, None, Some(4), 1000, true, ME);
        let (c, _) = admit(&c, None, Some(4), 1000, true, ME);
        // ME stalled past the expiry; OTHER's admission gave its slots back.
        let (c, a) = admit(&c, None, Some(4), 2000 + OWNER_EXPIRY_MS, true, OTHER);
        assert_eq!(a.reclaimed, 2);
        // ME's requests are still at the function: its heartbeat counts them again.
        let (c, change, reclaimed) = c.heartbeat(ME, 2, 2100 + OWNER_EXPIRY_MS);
        assert_eq!((change, reclaimed, c.inflight()), (2, 0, 3));
        // An owner with nothing held leaves the record.
        let (c, change, _) = c.heartbeat(ME, 0, 2200 + OWNER_EXPIRY_MS);
        assert_eq!((change, c.held_by(ME)), (-2, 0));
    }

    #[test]
    fn unreadable_records_and_entries_free_their_slots() {
        for bad in [
            &b"3:1000:5"[..], // the record as written before owners
            b"x",
            b"",
            b"\xff",
        ] {
            let c = Counters::decode(Some(bad), None, 7);
            assert_eq!((c.inflight(), c.bucket.last_ms), (0, 7), "{bad:?}");
        }
        let c = Counters::decode(
            Some(b"5:6;a1:1:9;zz:1:9;b2:x:9;c3:2:9:9;d4:0:9;e5:3:8"),
            None,
            0,
        );
        assert_eq!(c.bucket.milli_tokens, 5);
        assert_eq!(
            c.holders,
            vec![
                Holder {
                    owner: 0xa1,
                    held: 1,
                    beat_ms: 9
                },
                Holder {
                    owner: 0xe5,
                    held: 3,
                    beat_ms: 8
                }
            ]
        );
    }
}
