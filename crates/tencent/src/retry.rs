//! Bounded retries with jittered exponential backoff, for transient errors only. A non-idempotent
//! action (Create) is repeated only when the failure proves the server did not execute it
//! (throttled, or never connected): after a timeout or an internal error the instance may exist, and
//! the caller must look before creating again.

use std::future::Future;
use std::time::Duration;

use rand::Rng;

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, the first included; 1 disables retries.
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    pub fn none() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// The ceiling before the `retry`-th retry (0-based): initial × 2^retry, capped.
    pub fn ceiling(&self, retry: u32) -> Duration {
        self.initial_backoff
            .saturating_mul(2u32.saturating_pow(retry))
            .min(self.max_backoff)
    }

    /// "Equal jitter": half the ceiling plus a random share of the other half, so clients that
    /// failed together do not retry together, yet every wait is at least half the ceiling.
    pub fn backoff(&self, retry: u32) -> Duration {
        let ceiling = self.ceiling(retry);
        let half = ceiling / 2;
        let jitter = rand::rng().random_range(0..=half.as_nanos().min(u128::from(u64::MAX)) as u64);
        half + Duration::from_nanos(jitter)
    }
}

/// Runs `attempt` (given the attempt number, from 1) until it succeeds, fails for good, or the attempts
/// run out; returns the last error.
pub async fn with_retries<T, F, Fut>(
    policy: &RetryPolicy,
    action: &str,
    idempotent: bool,
    mut attempt: F,
) -> Result<T>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let max_attempts = policy.max_attempts.max(1);
    let mut number = 1;
    loop {
        let error: Error = match attempt(number).await {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        let retryable = error.is_transient() && (idempotent || error.request_was_not_executed());
        if !retryable || number >= max_attempts {
            return Err(error);
        }
        let wait = policy.backoff(number - 1);
        tracing::debug!(
            action,
            attempt = number,
            code = error.code(),
            ?wait,
            "retrying a transient cloud error"
        );
        tokio::time::sleep(wait).await;
        number += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use tokio::time::Instant;

    fn api(code: &str) -> Error {
        Error::Api {
            action: "DescribeEKSContainerInstances",
            code: code.into(),
            message: String::new(),
            request_id: String::new(),
            subnet_id: None,
        }
    }

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_are_retried_with_growing_waits_until_success() {
        let calls = AtomicU32::new(0);
        let start = Instant::now();
        let got = with_retries(&policy(), "Describe", true, |n| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 4 {
                    Err(api("RequestLimitExceeded"))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(got.unwrap(), 4);
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        // Waits are at least half of 100, 200 and 400 ms and at most the full ceilings.
        let elapsed = start.elapsed();
        assert!(
            elapsed >= Duration::from_millis(350) && elapsed <= Duration::from_millis(700),
            "{elapsed:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_are_bounded_and_the_last_error_is_returned() {
        let calls = AtomicU32::new(0);
        let got: Result<()> = with_retries(&policy(), "Describe", true, |_| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err(api("InternalError")) }
        })
        .await;
        assert_eq!(got.unwrap_err().code(), "InternalError");
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_are_not_retried() {
        let calls = AtomicU32::new(0);
        let got: Result<()> = with_retries(&policy(), "Describe", true, |_| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err(api("InvalidParameter")) }
        })
        .await;
        assert_eq!(got.unwrap_err().code(), "InvalidParameter");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_create_is_retried_after_throttling_but_not_after_an_internal_error() {
        let calls = AtomicU32::new(0);
        let got = with_retries(&policy(), "Create", false, |n| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 1 {
                    Err(api("RequestLimitExceeded"))
                } else {
                    Ok(())
                }
            }
        })
        .await;
        assert!(got.is_ok());
        assert_eq!(calls.load(Ordering::SeqCst), 2);

        let calls = AtomicU32::new(0);
        let got: Result<()> = with_retries(&policy(), "Create", false, |_| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err(api("InternalError")) }
        })
        .await;
        assert_eq!(got.unwrap_err().code(), "InternalError");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_jitter_stays_within_half_and_full() {
        let policy = policy();
        assert_eq!(policy.ceiling(0), Duration::from_millis(100));
        assert_eq!(policy.ceiling(3), Duration::from_millis(800));
        assert_eq!(policy.ceiling(30), Duration::from_secs(1));
        for retry in 0..6 {
            let wait = policy.backoff(retry);
            assert!(
                wait >= policy.ceiling(retry) / 2 && wait <= policy.ceiling(retry),
                "{retry}: {wait:?}"
            );
        }
    }
}
