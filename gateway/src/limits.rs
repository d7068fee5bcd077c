//! Keyed token-bucket rate limits (GCRA, from `governor`): one bucket per credential, and
//! one per model for inference and feedback; and [`FailureLimiter`], the failed
//! authentications per client address.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use parking_lot::Mutex;

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

/// Addresses [`FailureLimiter`] tracks at most; beyond, the address closest to forgiven
/// is forgotten (a few MiB at most, whatever the number of addresses that fail).
const MAX_ADDRESSES: usize = 65_536;

/// Failed authentications per client address: a leaky bucket that only failures fill and
/// that drains at `rate` per second. Once an address has `burst` failures in the bucket,
/// its requests are refused before their credentials are checked, so guessing costs the
/// guesser time and not the key store or the JWT verifier work. Valid requests neither
/// fill the bucket nor are slowed by it until it is full.
pub(crate) struct FailureLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

/// Failures of one address, as of `at`.
#[derive(Clone, Copy)]
struct Bucket {
    level: f64,
    at: Instant,
}

impl Bucket {
    fn level(&self, rate: f64, now: Instant) -> f64 {
        (self.level - now.saturating_duration_since(self.at).as_secs_f64() * rate).max(0.0)
    }
}

impl FailureLimiter {
    /// `rate` failures per second forgiven, `burst` allowed at once; `None` when `rate`
    /// is 0 (no limit).
    pub(crate) fn new(rate: f64, burst: u32) -> Result<Option<Self>, GatewayError> {
        if rate == 0.0 {
            return Ok(None);
        }
        if !(rate.is_finite() && rate > 0.0) {
            return Err(GatewayError::Config(format!(
                "auth_failure_rps must be 0 (no limit) or a positive number, not {rate}"
            )));
        }
        if burst == 0 {
            return Err(GatewayError::Config(
                "auth_failure_burst must be at least 1".into(),
            ));
        }
        Ok(Some(FailureLimiter {
            rate,
            burst: f64::from(burst),
            buckets: Mutex::new(HashMap::new()),
        }))
    }

    /// Whether `client` may try to authenticate now, or how long until it may.
    pub(crate) fn check(&self, client: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        let Some(bucket) = self.buckets.lock().get(&address_key(client)).copied() else {
            return Ok(());
        };
        let excess = bucket.level(self.rate, now) - (self.burst - 1.0);
        if excess <= 0.0 {
            return Ok(());
        }
        Err(Duration::from_secs_f64(excess / self.rate))
    }

    /// Counts one failed authentication of `client`.
    pub(crate) fn failed(&self, client: IpAddr) {
        let now = Instant::now();
        let key = address_key(client);
        let mut buckets = self.buckets.lock();
        if buckets.len() >= MAX_ADDRESSES && !buckets.contains_key(&key) {
            buckets.retain(|_, b| b.level(self.rate, now) > 0.0);
            if buckets.len() >= MAX_ADDRESSES
                && let Some(lowest) = buckets
                    .iter()
                    .min_by(|a, b| {
                        a.1.level(self.rate, now)
                            .total_cmp(&b.1.level(self.rate, now))
                    })
                    .map(|(k, _)| *k)
            {
                buckets.remove(&lowest);
            }
        }
        let level = buckets.get(&key).map_or(0.0, |b| b.level(self.rate, now));
        buckets.insert(
            key,
            Bucket {
                level: level + 1.0,
                at: now,
            },
        );
    }
}

/// The unit of the failure limit: an IPv4 address, or the /64 network of an IPv6 one (a
/// single IPv6 client usually holds a whole /64, and would otherwise get 2^64 buckets).
fn address_key(client: IpAddr) -> IpAddr {
    match client.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_fill_a_bucket_per_address() {
        let limiter = FailureLimiter::new(1.0, 3).unwrap().unwrap();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert!(limiter.check(a).is_ok());
            limiter.failed(a);
        }
        let wait = limiter.check(a).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(limiter.check(b).is_ok());
        // One /64: the same bucket; another /64: its own.
        let v6: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        for _ in 0..3 {
            limiter.failed(v6);
        }
        assert!(limiter.check(same).is_err());
        assert!(limiter.check(other).is_ok());
        assert!(FailureLimiter::new(0.0, 3).unwrap().is_none());
        assert!(FailureLimiter::new(-1.0, 3).is_err());
        assert!(FailureLimiter::new(1.0, 0).is_err());
    }

    #[test]
    fn failure_table_is_bounded() {
        let limiter = FailureLimiter::new(0.001, 1).unwrap().unwrap();
        for i in 0..(MAX_ADDRESSES as u32 + 10) {
            limiter.failed(IpAddr::from(i.to_be_bytes()));
        }
        assert_eq!(limiter.buckets.lock().len(), MAX_ADDRESSES);
    }

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
