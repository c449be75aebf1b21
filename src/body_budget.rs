//! The pod-wide budget of request-body bytes held while the function is not ready.
//!
//! `readiness.max_pending` bounds how many requests wait; this bounds their bodies, which Envoy
//! buffers in the sidecar until the gate releases them. Each held request reserves what it has
//! buffered so far in its VM's entry of the pod's held record ([`crate::held`]) and gives it back,
//! to that entry only, when it is released, answered or gone. Pure: the host side is in the gate.

/// What to do with a held request whose buffered body has grown to `body_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Reserve `extra` more bytes (0: nothing new); the pod's total becomes `total`.
    Hold { extra: u64, total: u64 },
    /// This body alone is larger than the whole budget: answer 413 at once.
    TooLarge,
    /// The pod holds too many bytes already: answer 503 at once.
    Full,
}

/// Decides for a request that has `reserved` bytes reserved and now buffers `body_bytes`, when
/// the pod has `pod_total` reserved (its own included) out of `max`.
pub fn verdict(body_bytes: u64, reserved: u64, pod_total: u64, max: u64) -> Verdict {
    if body_bytes > max {
        return Verdict::TooLarge;
    }
    let extra = body_bytes.saturating_sub(reserved);
    let total = pod_total.saturating_add(extra);
    if extra > 0 && total > max {
        Verdict::Full
    } else {
        Verdict::Hold { extra, total }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_larger_than_the_budget_is_refused_whatever_the_pod_holds() {
        assert_eq!(verdict(11, 0, 0, 10), Verdict::TooLarge);
        assert_eq!(verdict(11, 10, 10, 10), Verdict::TooLarge);
    }

    #[test]
    fn growth_is_reserved_until_the_pod_is_full() {
        assert_eq!(verdict(4, 0, 0, 10), Verdict::Hold { extra: 4, total: 4 });
        assert_eq!(verdict(6, 4, 4, 10), Verdict::Hold { extra: 2, total: 6 });
        // Another request holds 5: this one may not grow past the pod's 10.
        assert_eq!(verdict(6, 0, 5, 10), Verdict::Full);
        assert_eq!(
            verdict(5, 0, 5, 10),
            Verdict::Hold {
                extra: 5,
                total: 10
            }
        );
    }

    #[test]
    fn no_growth_is_never_refused() {
        assert_eq!(
            verdict(3, 3, 12, 10),
            Verdict::Hold {
                extra: 0,
                total: 12
            }
        );
        assert_eq!(
            verdict(0, 0, 10, 10),
            Verdict::Hold {
                extra: 0,
                total: 10
            }
        );
    }
}
