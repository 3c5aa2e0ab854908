//! Token buckets, one per API action: the API limits each action separately (20 requests/s by
//! default), so a burst of describes must not starve creates. The client waits for a token before
//! each attempt; cloudsim uses the same bucket to refuse requests beyond its limit. Time is
//! `tokio::time::Instant`, so tests pause it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// The documented default of every EKSCI action.
pub const DEFAULT_PER_SECOND: u32 = 20;

/// A bucket that holds at most one second of tokens.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    per_second: f64,
    /// Negative while callers are queued behind reservations.
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket refilling at `per_second` (at least 1).
    pub fn new(per_second: u32, now: Instant) -> Self {
        let per_second = f64::from(per_second.max(1));
        Self {
            per_second,
            tokens: per_second,
            updated: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.per_second);
        self.updated = self.updated.max(now);
    }

    /// Takes a token if one is there now (the server side: refuse rather than wait).
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Reserves the next token and says how long to wait until it is due (the client side: callers
    /// queue in order instead of polling).
    pub fn reserve(&mut self, now: Instant) -> Duration {
        self.refill(now);
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.per_second)
        }
    }
}

/// Requests per second, per action; 0 means unlimited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimits {
    pub per_second: u32,
    /// Limits for particular actions, by action name.
    pub per_action: BTreeMap<String, u32>,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            per_second: DEFAULT_PER_SECOND,
            per_action: BTreeMap::new(),
        }
    }
}

impl RateLimits {
    pub fn unlimited() -> Self {
        Self {
            per_second: 0,
            per_action: BTreeMap::new(),
        }
    }

    pub fn for_action(&self, action: &str) -> u32 {
        self.per_action.get(action).copied().unwrap_or(self.per_second)
    }
}

/// The client's limiter: one bucket per action, created on first use.
#[derive(Debug)]
pub struct RateLimiter {
    limits: RateLimits,
    buckets: Mutex<HashMap<String, TokenBucket>>,
}

impl RateLimiter {
    pub fn new(limits: RateLimits) -> Self {
        Self {
            limits,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Waits until `action` may be sent.
    pub async fn acquire(&self, action: &str) {
        let per_second = self.limits.for_action(action);
        if per_second == 0 {
            return;
        }
        let wait = {
            let now = Instant::now();
            let mut buckets = self
                .buckets
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            buckets
                .entry(action.to_string())
                .or_insert_with(|| TokenBucket::new(per_second, now))
                .reserve(now)
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_beyond_the_limit_is_spread_over_time_at_the_configured_rate() {
        let limiter = RateLimiter::new(RateLimits::default());
        let start = Instant::now();
        for _ in 0..20 {
            limiter.acquire("DescribeEKSContainerInstances").await;
        }
        assert_eq!(
            start.elapsed(),
            Duration::ZERO,
            "one second of tokens is available at once"
        );
        for _ in 0..40 {
            limiter.acquire("DescribeEKSContainerInstances").await;
        }
        // 40 more tokens at 20/s take two more seconds of (paused, virtual) time.
        let elapsed = start.elapsed();
        assert!(
            elapsed >= Duration::from_millis(1990) && elapsed <= Duration::from_millis(2010),
            "{elapsed:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn each_action_has_its_own_bucket_and_overrides_apply() {
        let limits = RateLimits {
            per_second: 20,
            per_action: BTreeMap::from([("CreateEKSContainerInstances".to_string(), 2)]),
        };
        let limiter = RateLimiter::new(limits);
        let start = Instant::now();
        for _ in 0..20 {
            limiter.acquire("DescribeEKSContainerInstances").await;
        }
        limiter.acquire("CreateEKSContainerInstances").await;
        limiter.acquire("CreateEKSContainerInstances").await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        limiter.acquire("CreateEKSContainerInstances").await;
        assert!(
            start.elapsed() >= Duration::from_millis(490),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn zero_means_unlimited() {
        let limiter = RateLimiter::new(RateLimits::unlimited());
        let start = Instant::now();
        for _ in 0..1000 {
            limiter.acquire("DescribeEKSContainerInstances").await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[test]
    fn the_server_side_bucket_refuses_beyond_its_rate_and_refills() {
        let now = Instant::now();
        let mut bucket = TokenBucket::new(2, now);
        assert!(bucket.try_take(now));
        assert!(bucket.try_take(now));
        assert!(!bucket.try_take(now));
        assert!(bucket.try_take(now + Duration::from_millis(500)));
        assert!(!bucket.try_take(now + Duration::from_millis(500)));
    }
}
