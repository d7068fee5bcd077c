//! Keyed token-bucket rate limits (GCRA, from `governor`): one bucket per credential, and
//! one per model for inference and feedback.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::GatewayError;

/// Checks between two sweeps of idle keys, so buckets of clients long gone are dropped.
const SWEEP_EVERY: u64 = 4096;

/// A rate per key.
pub(crate) struct Limiter {
    buckets: DefaultKeyedRateLimiter<String>,
    checks: AtomicU64,
}

impl Limiter {
    /// `rps` requests per second sustained, `burst` at once (default: one second's worth).
    pub(crate) fn new(what: &str, rps: f64, burst: Option<u32>) -> Result<Self, GatewayError> {
        if !(rps.is_finite() && rps > 0.0) {
            return Err(GatewayError::Config(format!(
                "{what}_rps must be a positive number, not {rps}"
            )));
        }
        let burst = burst.unwrap_or_else(|| {
            // Saturating float-to-int cast; at least one request.
            (rps.ceil() as u32).max(1)
        });
        let burst = NonZeroU32::new(burst)
            .ok_or_else(|| GatewayError::Config(format!("{what}_burst must be at least 1")))?;
        let quota = Quota::with_period(Duration::from_secs_f64(1.0 / rps))
            .ok_or_else(|| GatewayError::Config(format!("{what}_rps {rps} is too high")))?
            .allow_burst(burst);
        Ok(Limiter {
            buckets: RateLimiter::dashmap(quota),
            checks: AtomicU64::new(0),
        })
    }

    /// Takes one request from `key`'s bucket, or says how long until one is available.
    pub(crate) fn check(&self, key: &str) -> Result<(), Duration> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.buckets.retain_recent();
            self.buckets.shrink_to_fit();
        }
        self.buckets
            .check_key(&key.to_string())
            .map_err(|not_until| not_until.wait_time_from(self.buckets.clock().now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_wait() {
        let limiter = Limiter::new("per_model", 1.0, Some(2)).unwrap();
        assert!(limiter.check("a").is_ok());
        assert!(limiter.check("a").is_ok());
        let wait = limiter.check("a").unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(limiter.check("b").is_ok());
        assert!(Limiter::new("per_model", 0.0, None).is_err());
        assert!(Limiter::new("per_model", 1.0, Some(0)).is_err());
    }
}
