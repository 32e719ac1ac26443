//! Pacing of outbound parts (pure; the caller passes the clock): a token bucket per limit
//! (the carrier link's parts per second, and the 10DLC campaign's), and the retry schedule of
//! a message that failed for a transient reason.

use std::time::{Duration, Instant};

/// A token bucket of `rate` tokens a second with a burst of one second's worth. Rate 0 means
/// no limit.
#[derive(Debug, Clone)]
pub struct Bucket {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub fn new(rate: u32, now: Instant) -> Bucket {
        Bucket {
            rate: f64::from(rate),
            tokens: f64::from(rate.max(1)),
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.rate.max(1.0));
        self.at = now;
    }

    /// When a token is available: `None` now (the caller may `take`), or the instant it will be.
    pub fn ready_at(&mut self, now: Instant) -> Option<Instant> {
        if self.rate <= 0.0 {
            return None;
        }
        self.refill(now);
        if self.tokens >= 1.0 {
            None
        } else {
            Some(now + Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }

    /// Take a token (call after `ready_at` said none is missing).
    pub fn take(&mut self, now: Instant) {
        if self.rate > 0.0 {
            self.refill(now);
            self.tokens -= 1.0;
        }
    }
}

/// The delay before attempt `attempts + 1` after `attempts` transient failures: 2 s, doubling,
/// at most 15 minutes; a carrier's own hint (Retry-After) wins when longer.
pub fn retry_delay(attempts: u32, hint: Option<Duration>) -> Duration {
    let base = Duration::from_secs(2u64 << attempts.saturating_sub(1).min(9))
        .min(Duration::from_secs(900));
    match hint {
        Some(h) if h > base => h.min(Duration::from_secs(3600)),
        _ => base,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_lets_rate_parts_through_each_second() {
        let t0 = Instant::now();
        for rate in [1u32, 10, 500] {
            let mut b = Bucket::new(rate, t0);
            let mut sent = 0;
            let mut now = t0;
            // Ten simulated seconds in 1 ms steps.
            while now < t0 + Duration::from_secs(10) {
                while b.ready_at(now).is_none() {
                    b.take(now);
                    sent += 1;
                }
                now += Duration::from_millis(1);
            }
            // The first second's burst, then `rate` a second.
            let want = rate * 11;
            assert!(
                (sent as i64 - i64::from(want)).abs() <= i64::from(rate / 10 + 1),
                "rate {rate}: {sent} parts, want about {want}"
            );
        }
    }

    #[test]
    fn rate_zero_is_no_limit() {
        let now = Instant::now();
        let mut b = Bucket::new(0, now);
        for _ in 0..10_000 {
            assert!(b.ready_at(now).is_none());
            b.take(now);
        }
    }

    #[test]
    fn an_empty_bucket_says_when_the_next_token_comes() {
        let now = Instant::now();
        let mut b = Bucket::new(4, now);
        for _ in 0..4 {
            b.take(now);
        }
        let at = b.ready_at(now).unwrap();
        assert_eq!(at - now, Duration::from_millis(250));
    }

    #[test]
    fn retries_back_off_and_honour_a_longer_hint() {
        assert_eq!(retry_delay(1, None), Duration::from_secs(2));
        assert_eq!(retry_delay(2, None), Duration::from_secs(4));
        assert_eq!(retry_delay(5, None), Duration::from_secs(32));
        assert_eq!(retry_delay(30, None), Duration::from_secs(900));
        assert_eq!(
            retry_delay(1, Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
        assert_eq!(
            retry_delay(3, Some(Duration::from_secs(1))),
            Duration::from_secs(8)
        );
    }
}
