//! Request rates per identity: a token bucket each, so that one abusive caller is refused with
//! `RESOURCE_EXHAUSTED` and cannot starve the others; and the bound on calls in flight on one
//! connection.
//!
//! Keys are verified identities (a token's subject) or, for requests whose credentials failed,
//! the peer's address: a caller cannot spend someone else's budget by claiming their name.
//!
//! The other bounds live where they are enforced: TLS handshakes in flight in
//! [`crate::tls`], WatchCopy streams (per PVC, per identity, in all) in the driver.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

/// The most keys remembered; past it, idle (full) buckets are forgotten first.
pub const MAX_KEYS: usize = 10_000;

/// The most HTTP/2 streams (calls in flight, WatchCopy and agent links included) one connection
/// may hold open at once, advertised as `SETTINGS_MAX_CONCURRENT_STREAMS`: a client opening
/// more has them refused (`RST_STREAM REFUSED_STREAM`; well-behaved clients queue them
/// instead). Without it hyper allows 200.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 128;

/// Requests per second and burst for each key; `rate` 0 turns limiting off.
#[derive(Debug)]
pub struct RateLimits {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimits {
    /// `rate` requests per second with bursts of `burst` for each key (0: no limit).
    pub fn new(rate: u32, burst: u32) -> Self {
        Self {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `key` may make one more request at `now` (and, if so, it is counted).
    pub fn allow(&self, key: &str, now: Instant) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        let Ok(mut buckets) = self.buckets.lock() else {
            return true;
        };
        if buckets.len() >= MAX_KEYS && !buckets.contains_key(key) {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| refilled(b, now, rate, burst) < burst);
            if buckets.len() >= MAX_KEYS {
                // Every key busy: start afresh rather than refuse newcomers for good.
                buckets.clear();
            }
        }
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        bucket.tokens = refilled(bucket, now, self.rate, self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// The rate, for messages.
    pub fn rate(&self) -> f64 {
        self.rate
    }
}

fn refilled(b: &Bucket, now: Instant, rate: f64, burst: f64) -> f64 {
    let elapsed = now.checked_duration_since(b.at).unwrap_or(Duration::ZERO);
    (b.tokens + elapsed.as_secs_f64() * rate).min(burst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_gets_its_burst_then_its_rate_and_other_keys_are_untouched() {
        let limits = RateLimits::new(2, 3);
        let t0 = Instant::now();
        for i in 0..3 {
            assert!(limits.allow("a", t0), "burst request {i}");
        }
        assert!(!limits.allow("a", t0), "over the burst");
        assert!(limits.allow("b", t0), "another key has its own bucket");
        // Half a second at 2/s refills one request.
        let later = t0 + Duration::from_millis(500);
        assert!(limits.allow("a", later));
        assert!(!limits.allow("a", later));
        // Never more than the burst, however long idle.
        let much_later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert!(limits.allow("a", much_later));
        }
        assert!(!limits.allow("a", much_later));
    }

    #[test]
    fn a_rate_of_zero_is_no_limit_and_time_going_backwards_refills_nothing() {
        let off = RateLimits::new(0, 1);
        let t0 = Instant::now();
        assert!((0..1000).all(|_| off.allow("a", t0)));
        let limits = RateLimits::new(1, 1);
        let t1 = t0 + Duration::from_secs(10);
        assert!(limits.allow("a", t1));
        assert!(!limits.allow("a", t0), "an earlier time adds no tokens");
    }

    #[test]
    fn the_number_of_keys_is_bounded() {
        let limits = RateLimits::new(1, 1);
        let t0 = Instant::now();
        for i in 0..(MAX_KEYS + 10) {
            limits.allow(&format!("k{i}"), t0);
        }
        assert!(limits.buckets.lock().unwrap().len() <= MAX_KEYS);
    }
}
