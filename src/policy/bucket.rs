//! The rate limit's token bucket: refilled at the rate, up to the burst, one token a request.

use super::rules::RateLimit;

/// The pod-wide token bucket of `rate_limit`, kept in shared data as
/// `<milli-tokens>:<last refill, ms>` at the head of the [`super::Counters`] record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    pub milli_tokens: u64,
    pub last_ms: u64,
}

impl Bucket {
    /// A full bucket at `now_ms` (empty without a rate limit): what an absent or unreadable
    /// record holds.
    pub fn full(limit: Option<&RateLimit>, now_ms: u64) -> Bucket {
        Bucket {
            milli_tokens: limit.map_or(0, |l| l.burst.saturating_mul(1000)),
            last_ms: now_ms,
        }
    }

    /// Refills for the time passed and takes one token: the new bucket, or the milliseconds
    /// until a token will be there.
    pub fn take(self, limit: &RateLimit, now_ms: u64) -> Result<Bucket, u64> {
        let capacity = limit.burst.saturating_mul(1000);
        let elapsed = now_ms.saturating_sub(self.last_ms);
        // requests_per_second tokens per second = requests_per_second milli-tokens per ms.
        let refill = (elapsed as f64 * limit.requests_per_second) as u64;
        let milli_tokens = self.milli_tokens.saturating_add(refill).min(capacity);
        if milli_tokens >= 1000 {
            Ok(Bucket {
                milli_tokens: milli_tokens - 1000,
                last_ms: now_ms.max(self.last_ms),
            })
        } else {
            let missing = (1000 - milli_tokens) as f64;
            Err((missing / limit.requests_per_second).ceil() as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_bucket_refills_at_the_rate_up_to_the_burst() {
        let limit = RateLimit {
            requests_per_second: 10.0,
            burst: 2,
        };
        let b = Bucket::full(Some(&limit), 1000);
        let b = b.take(&limit, 1000).unwrap();
        let b = b.take(&limit, 1000).unwrap();
        // Empty: one token needs 100 ms at 10/s.
        assert_eq!(b.take(&limit, 1000), Err(100));
        assert_eq!(b.take(&limit, 1050), Err(50));
        let b = b.take(&limit, 1100).unwrap();
        assert_eq!(b.milli_tokens, 0);
        // A long pause refills only up to the burst.
        let b = b.take(&limit, 100_000).unwrap();
        assert_eq!(b.milli_tokens, 1000);
    }
}
