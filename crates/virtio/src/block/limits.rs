//! A disk's I/O limits (rxen's own disk-spec keys `rxen-bps=` and `rxen-iops=`, as Firecracker's
//! rate limiters): a token bucket of bytes and one of requests, each refilled every second.
//! While either is empty the device takes no more requests from its queue; its rate timer
//! wakes it when there is credit again.

use std::time::{Duration, Instant};

use crate::net::{RateLimitError, TokenBucket};
use crate::ratetimer::RateTimer;

/// The limits a block device is given.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlockRate {
    /// Bytes read or written per second.
    pub bytes_per_sec: Option<u64>,
    /// Requests per second.
    pub ops_per_sec: Option<u64>,
}

impl BlockRate {
    /// Whether any limit is set.
    pub fn is_limited(&self) -> bool {
        self.bytes_per_sec.is_some() || self.ops_per_sec.is_some()
    }
}

/// The buckets and the timer of a limited device.
#[derive(Debug)]
pub struct Limiter {
    bytes: Option<TokenBucket>,
    ops: Option<TokenBucket>,
    /// Wakes the device's I/O thread when a bucket has credit again.
    pub timer: RateTimer,
}

/// Errors setting limits up.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    /// A zero limit.
    #[error(transparent)]
    Rate(#[from] RateLimitError),
    /// The timer could not be created.
    #[error("cannot create the rate-limit timer: {0}")]
    Timer(std::io::Error),
}

impl Limiter {
    /// Full buckets for `rate`; `None` when it limits nothing.
    pub fn new(rate: BlockRate) -> Result<Option<Self>, LimitError> {
        if !rate.is_limited() {
            return Ok(None);
        }
        let now = Instant::now();
        let second = Duration::from_secs(1);
        let bucket = |v: Option<u64>| v.map(|v| TokenBucket::new(v, second, now)).transpose();
        Ok(Some(Self {
            bytes: bucket(rate.bytes_per_sec)?,
            ops: bucket(rate.ops_per_sec)?,
            timer: RateTimer::new("virtio-blk").map_err(LimitError::Timer)?,
        }))
    }

    /// `None` when another request may go now, else how long until one may.
    pub fn wait(&mut self, now: Instant) -> Option<Duration> {
        let mut wait = None;
        for b in [&mut self.bytes, &mut self.ops].into_iter().flatten() {
            if let Err(w) = b.check(now) {
                wait = Some(wait.map_or(w, |x: Duration| x.max(w)));
            }
        }
        wait
    }

    /// Charges one request of `bytes` bytes (it may overdraw: the next waits longer).
    pub fn charge(&mut self, bytes: u64) {
        if let Some(b) = &mut self.bytes {
            b.take(bytes);
        }
        if let Some(o) = &mut self.ops {
            o.take(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ops_limit_holds_requests_back_until_the_next_refill() {
        let mut l = Limiter::new(BlockRate {
            bytes_per_sec: None,
            ops_per_sec: Some(2),
        })
        .expect("limiter")
        .expect("limited");
        let now = Instant::now();
        assert_eq!(l.wait(now), None);
        l.charge(4096);
        assert_eq!(l.wait(now), None);
        l.charge(4096);
        let w = l.wait(now).expect("empty after two");
        assert!(w <= Duration::from_secs(1), "{w:?}");
        assert_eq!(l.wait(now + Duration::from_secs(1)), None);
        assert!(Limiter::new(BlockRate::default()).expect("none").is_none());
    }
}
