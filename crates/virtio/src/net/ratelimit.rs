//! The `rate=` token bucket on a NIC's transmit side (Xen's credit scheduler for netback:
//! `bytes` of credit every `interval`, at most one interval's worth saved up).

use std::time::{Duration, Instant};

/// Errors building a rate limiter.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RateLimitError {
    /// A zero rate or interval.
    #[error("a rate limit needs a non-zero amount and interval")]
    Zero,
}

/// A token bucket: `capacity` bytes refilled evenly over each `interval`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: u64,
    interval: Duration,
    /// Bytes of credit; may go negative after a frame larger than the credit left.
    tokens: i128,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `bytes` per `interval`.
    pub fn new(bytes: u64, interval: Duration, now: Instant) -> Result<Self, RateLimitError> {
        if bytes == 0 || interval.is_zero() {
            return Err(RateLimitError::Zero);
        }
        Ok(TokenBucket {
            capacity: bytes,
            interval,
            tokens: i128::from(bytes),
            last: now,
        })
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last);
        let add = i128::from(self.capacity) * elapsed.as_nanos() as i128
            / self.interval.as_nanos().max(1) as i128;
        if add > 0 {
            self.tokens = (self.tokens + add).min(i128::from(self.capacity));
            self.last = now;
        }
    }

    /// Takes `len` bytes of credit if any credit is left (a frame may overdraw it); otherwise
    /// returns how long to wait until there is credit again.
    pub fn consume(&mut self, len: u64, now: Instant) -> Result<(), Duration> {
        self.check(now)?;
        self.take(len);
        Ok(())
    }

    /// Whether any credit is left now; if not, how long until there is.
    pub fn check(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens > 0 {
            Ok(())
        } else {
            Err(self.wait_for_credit())
        }
    }

    /// Takes `len` bytes of credit (after a successful [`TokenBucket::check`]).
    pub fn take(&mut self, len: u64) {
        self.tokens -= i128::from(len);
    }

    /// How long until the credit is positive again.
    fn wait_for_credit(&self) -> Duration {
        let missing = (1 - self.tokens).max(1) as u128;
        let nanos = missing * self.interval.as_nanos() / u128::from(self.capacity);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
            .max(Duration::from_micros(100))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_is_refused() {
        let now = Instant::now();
        assert_eq!(
            TokenBucket::new(0, Duration::from_millis(50), now).err(),
            Some(RateLimitError::Zero)
        );
        assert!(TokenBucket::new(10, Duration::ZERO, now).is_err());
    }

    #[test]
    fn long_run_rate_holds() {
        // 1000 bytes per 10 ms = 100 kB/s; send 1500-byte frames for a simulated second.
        let start = Instant::now();
        let mut b = TokenBucket::new(1000, Duration::from_millis(10), start).expect("bucket");
        let mut now = start;
        let mut sent = 0u64;
        while now < start + Duration::from_secs(1) {
            match b.consume(1500, now) {
                Ok(()) => sent += 1500,
                Err(wait) => now += wait,
            }
        }
        // At most the initial credit plus one second's worth (and one frame of overdraft).
        assert!(sent <= 100_000 + 1000 + 1500, "sent {sent}");
        assert!(sent >= 95_000, "sent {sent}");
    }

    #[test]
    fn idle_time_saves_at_most_one_interval() {
        let start = Instant::now();
        let mut b = TokenBucket::new(1000, Duration::from_millis(10), start).expect("bucket");
        let later = start + Duration::from_secs(10);
        assert!(b.consume(1000, later).is_ok());
        assert!(b.consume(1, later).is_err());
    }
}
