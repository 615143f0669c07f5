//! Retrying one hop: exponential backoff with jitter (backon), `Retry-After` honoured, bounded
//! attempts and total time, a timeout on every attempt, and a rate-limiter slot taken for every
//! attempt (a retry is a request too).
//!
//! What is retried is decided by the error ([`AzureError::retryable`]): 429, 5xx, IMDS 404/410,
//! connection failures and timeouts are; 400/401/403 are not. A `Retry-After` longer than
//! [`RetryPolicy::max_retry_after`] ends the attempts and is handed to the caller (whose
//! per-binding backoff then waits that long) rather than holding a request open.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use backon::{BackoffBuilder, ExponentialBuilder, Retryable};

use super::error::{AzureError, ErrorKind};
use super::limits::Limiter;
use super::metrics::{Hop, PipelineMetrics};

/// How one hop is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total (1 = no retry).
    pub max_attempts: u32,
    /// Delay before the first retry; doubles each retry.
    pub base_delay: Duration,
    /// Upper bound of one backoff delay (before jitter).
    pub max_delay: Duration,
    /// No retry is scheduled if it would start later than this after the first attempt was sent.
    pub max_total: Duration,
    /// A longer `Retry-After` is not waited for here; the error carries it to the caller.
    pub max_retry_after: Duration,
    /// Add up to 100 % random jitter to each delay (delay ∈ [d, 2d)).
    pub jitter: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(8),
            max_total: Duration::from_secs(60),
            max_retry_after: Duration::from_secs(30),
            jitter: true,
        }
    }
}

impl RetryPolicy {
    fn backoff(&self) -> ExponentialBuilder {
        let builder = ExponentialBuilder::new()
            .with_factor(2.0)
            .with_min_delay(self.base_delay)
            .with_max_delay(self.max_delay)
            .with_max_times(self.max_attempts.saturating_sub(1) as usize);
        if self.jitter {
            builder.with_jitter()
        } else {
            builder
        }
    }

    /// The backoff delays this policy would use without `Retry-After` (for tests and docs).
    pub fn delays(&self) -> Vec<Duration> {
        self.backoff().build().collect()
    }
}

/// Runs `call` under `limiter` with retries; every attempt is timed out and metered.
pub(crate) async fn with_retries<T, F, Fut>(
    policy: &RetryPolicy,
    attempt_timeout: Duration,
    hop: Hop,
    limiter: &Limiter,
    metrics: &PipelineMetrics,
    mut call: F,
) -> Result<T, AzureError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, AzureError>>,
{
    // The time budget starts when the first attempt is sent, not when the caller queued for
    // the limiter: under a burst the queue alone can take longer than the budget.
    let first_sent: Mutex<Option<Instant>> = Mutex::new(None);
    let first_sent = &first_sent;
    let max_pause = policy.max_retry_after;
    let attempt = || {
        let fut = call();
        async move {
            let _permit = limiter.acquire(metrics).await;
            let sent = Instant::now();
            first_sent
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_insert(sent);
            let result = match tokio::time::timeout(attempt_timeout, fut).await {
                Ok(result) => result,
                Err(_) => Err(AzureError::new(
                    ErrorKind::AzureUnavailable,
                    format!(
                        "{} request timed out after {}s",
                        hop.as_str(),
                        attempt_timeout.as_secs_f64()
                    ),
                )),
            };
            metrics.record_attempt(hop, result.as_ref().map(|_| ()), sent.elapsed());
            if let Err(e) = &result {
                if e.kind() == ErrorKind::Throttled {
                    if let Some(wait) = e.retry_after() {
                        limiter.pause_for(wait.min(max_pause));
                    }
                }
            }
            result
        }
    };
    attempt
        .retry(policy.backoff())
        .sleep(tokio::time::sleep)
        .when(AzureError::retryable)
        .adjust(|err: &AzureError, backoff: Option<Duration>| {
            let mut delay = backoff?;
            if let Some(retry_after) = err.retry_after() {
                if retry_after > policy.max_retry_after {
                    return None;
                }
                delay = delay.max(retry_after);
            }
            let started = first_sent
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .unwrap_or_else(Instant::now);
            if started.elapsed() + delay > policy.max_total {
                return None;
            }
            Some(delay)
        })
        .notify(|err: &AzureError, delay: Duration| {
            metrics.record_retry(hop);
            tracing::debug!(
                hop = hop.as_str(),
                reason = err.reason(),
                delay_ms = delay.as_millis() as u64,
                "Retrying token request"
            );
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::azure::limits::LimitConfig;
    use std::sync::atomic::{AtomicU32, Ordering};

    const T: Duration = Duration::from_secs(20);

    fn limiter() -> Limiter {
        Limiter::new("imds", LimitConfig::new(1000, 1000, 100)).unwrap_or_else(|e| panic!("{e}"))
    }

    fn unavailable() -> AzureError {
        AzureError::new(ErrorKind::AzureUnavailable, "503")
    }

    #[test]
    fn delays_double_up_to_the_cap() {
        let policy = RetryPolicy {
            max_attempts: 6,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(4),
            jitter: false,
            ..RetryPolicy::default()
        };
        assert_eq!(
            policy.delays(),
            [1, 2, 4, 4, 4].map(Duration::from_secs).to_vec()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn non_retryable_errors_stop_at_once() {
        let calls = AtomicU32::new(0);
        let metrics = PipelineMetrics::new();
        let result: Result<(), _> = with_retries(
            &RetryPolicy::default(),
            T,
            Hop::AcrExchange,
            &limiter(),
            &metrics,
            || {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err(AzureError::new(ErrorKind::Unauthorized, "401")) }
            },
        )
        .await;
        assert_eq!(result.map_err(|e| e.reason()), Err("Unauthorized"));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(metrics.retries_total(Hop::AcrExchange), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn long_retry_after_is_returned_to_the_caller() {
        let calls = AtomicU32::new(0);
        let metrics = PipelineMetrics::new();
        let result: Result<(), _> = with_retries(
            &RetryPolicy::default(),
            T,
            Hop::Imds,
            &limiter(),
            &metrics,
            || {
                calls.fetch_add(1, Ordering::SeqCst);
                async {
                    Err(AzureError::new(ErrorKind::Throttled, "429")
                        .with_retry_after(Some(Duration::from_secs(120))))
                }
            },
        )
        .await;
        let err = result.expect_err("must fail");
        assert_eq!(err.retry_after(), Some(Duration::from_secs(120)));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_and_total_time_are_bounded() {
        let calls = AtomicU32::new(0);
        let metrics = PipelineMetrics::new();
        let policy = RetryPolicy {
            max_attempts: 3,
            ..RetryPolicy::default()
        };
        let result: Result<(), _> =
            with_retries(&policy, T, Hop::Imds, &limiter(), &metrics, || {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err(unavailable()) }
            })
            .await;
        assert!(result.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(metrics.retries_total(Hop::Imds), 2);

        let calls = AtomicU32::new(0);
        let policy = RetryPolicy {
            max_attempts: 100,
            max_total: Duration::from_secs(10),
            jitter: false,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(4),
            ..RetryPolicy::default()
        };
        let started = tokio::time::Instant::now();
        let result: Result<(), _> =
            with_retries(&policy, T, Hop::Imds, &limiter(), &metrics, || {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err(unavailable()) }
            })
            .await;
        assert!(result.is_err());
        // Delays 1 + 2 + 4 = 7 s; the next 4 s would pass the 10 s budget.
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        assert_eq!(started.elapsed(), Duration::from_secs(7));
    }

    #[tokio::test(start_paused = true)]
    async fn queueing_for_the_limiter_does_not_use_up_the_retry_budget() {
        let limiter =
            Limiter::new("imds", LimitConfig::new(1000, 1000, 1)).unwrap_or_else(|e| panic!("{e}"));
        let metrics = PipelineMetrics::new();
        let policy = RetryPolicy {
            max_attempts: 2,
            max_total: Duration::from_secs(10),
            ..RetryPolicy::default()
        };
        let calls = AtomicU32::new(0);
        let ((), result) = tokio::join!(
            async {
                // Another request holds the only slot for 60 s first.
                let _slot = limiter.acquire(&metrics).await;
                tokio::time::sleep(Duration::from_secs(60)).await;
            },
            with_retries(&policy, T, Hop::Imds, &limiter, &metrics, || {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n == 0 {
                        Err(unavailable())
                    } else {
                        Ok(n)
                    }
                }
            })
        );
        assert!(metrics.requests_total(Hop::Imds, "AzureUnavailable") == 1);
        assert_eq!(result, Ok(1));
    }

    #[tokio::test(start_paused = true)]
    async fn hung_attempts_time_out_and_are_retried() {
        let calls = AtomicU32::new(0);
        let metrics = PipelineMetrics::new();
        let policy = RetryPolicy {
            max_attempts: 2,
            base_delay: Duration::from_secs(1),
            jitter: false,
            ..RetryPolicy::default()
        };
        let started = tokio::time::Instant::now();
        let result = with_retries(
            &policy,
            Duration::from_secs(5),
            Hop::Entra,
            &limiter(),
            &metrics,
            || {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n == 0 {
                        std::future::pending::<()>().await;
                    }
                    Ok::<_, AzureError>(n)
                }
            },
        )
        .await;
        assert_eq!(result, Ok(1));
        assert_eq!(started.elapsed(), Duration::from_secs(6));
        assert_eq!(metrics.requests_total(Hop::Entra, "AzureUnavailable"), 1);
        assert_eq!(metrics.requests_total(Hop::Entra, "success"), 1);
    }
}
