//! Client-side rate and concurrency limits, shared by all bindings: one limiter per endpoint
//! class (IMDS, Entra) and one per ACR registry host.
//!
//! Each limiter is a GCRA rate limit (governor) plus a concurrency cap (a FIFO tokio
//! semaphore). A caller first takes a concurrency slot, then waits for a rate cell, then sends:
//! taking the slot first keeps the actual send times spaced by the rate limit even when many
//! callers queue.
//!
//! A 429 with `Retry-After` pauses the whole class (see [`Limiter::pause_for`]), since the
//! server throttles this client, not one binding.
//!
//! governor's default clock is `quanta`/`std`, which `tokio::time::pause()` does not move, so
//! [`TokioClock`] implements governor's `Clock` on `tokio::time::Instant`, and waiting uses
//! `tokio::time::sleep`.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::{AzureError, ErrorKind};
use super::metrics::PipelineMetrics;

/// governor's clock on tokio's (pausable) monotonic clock.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    origin: tokio::time::Instant,
}

impl TokioClock {
    pub fn new() -> Self {
        Self {
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        let elapsed = tokio::time::Instant::now().saturating_duration_since(self.origin);
        Nanos::from(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX))
    }
}

/// Rate and concurrency for one endpoint class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitConfig {
    /// Sustained requests per second.
    pub requests_per_second: u32,
    /// Requests allowed back to back before spacing applies. `1` means strictly spaced
    /// (never more than `requests_per_second` in any one-second window).
    pub burst: u32,
    /// Requests in flight at once.
    pub max_concurrent: u32,
}

impl LimitConfig {
    pub const fn new(requests_per_second: u32, burst: u32, max_concurrent: u32) -> Self {
        Self {
            requests_per_second,
            burst,
            max_concurrent,
        }
    }
}

/// The limits of every endpoint class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Documented IMDS managed-identity limit: 20 requests/s and 5 concurrent per VM.
    pub imds: LimitConfig,
    pub entra: LimitConfig,
    /// Applied per registry host.
    pub acr_per_registry: LimitConfig,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            imds: LimitConfig::new(20, 1, 5),
            entra: LimitConfig::new(20, 1, 10),
            acr_per_registry: LimitConfig::new(10, 1, 5),
        }
    }
}

type GcraLimiter = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Nanos>>;

/// One rate + concurrency limiter.
#[derive(Debug)]
pub struct Limiter {
    name: &'static str,
    rate: GcraLimiter,
    clock: TokioClock,
    slots: Arc<Semaphore>,
    /// Set from a 429's `Retry-After`: no request of this class is sent before it.
    paused_until: Mutex<Option<tokio::time::Instant>>,
}

/// Held while a request is in flight; dropping it frees the concurrency slot.
#[derive(Debug)]
pub struct LimiterPermit {
    _slot: OwnedSemaphorePermit,
}

impl Limiter {
    /// `name` is the metric label (an endpoint class, never a host).
    pub fn new(name: &'static str, config: LimitConfig) -> Result<Self, AzureError> {
        let invalid = |what: &str| {
            AzureError::new(
                ErrorKind::InvalidConfig,
                format!("{name} limiter: {what} must be at least 1"),
            )
        };
        let rps = NonZeroU32::new(config.requests_per_second)
            .ok_or_else(|| invalid("requests per second"))?;
        let burst = NonZeroU32::new(config.burst).ok_or_else(|| invalid("burst"))?;
        if config.max_concurrent == 0 {
            return Err(invalid("max concurrent"));
        }
        let period = Duration::from_secs(1) / rps.get();
        let quota = Quota::with_period(period)
            .ok_or_else(|| invalid("requests per second"))?
            .allow_burst(burst);
        let clock = TokioClock::new();
        Ok(Self {
            name,
            rate: RateLimiter::direct_with_clock(quota, clock),
            clock,
            slots: Arc::new(Semaphore::new(config.max_concurrent as usize)),
            paused_until: Mutex::new(None),
        })
    }

    /// Waits for a concurrency slot and a rate cell, recording the wait.
    pub async fn acquire(&self, metrics: &PipelineMetrics) -> LimiterPermit {
        let started = tokio::time::Instant::now();
        let slot = loop {
            // The semaphore is never closed; the loop only guards against that impossibility
            // without a panic.
            if let Ok(slot) = self.slots.clone().acquire_owned().await {
                break slot;
            }
            tokio::task::yield_now().await;
        };
        loop {
            let paused_until = *self.paused_until.lock().unwrap_or_else(|e| e.into_inner());
            match paused_until {
                Some(until) if until > tokio::time::Instant::now() => {
                    tokio::time::sleep_until(until).await
                }
                _ => break,
            }
        }
        while let Err(not_until) = self.rate.check() {
            tokio::time::sleep(not_until.wait_time_from(self.clock.now())).await;
        }
        metrics.record_limiter_wait(self.name, started.elapsed());
        LimiterPermit { _slot: slot }
    }

    /// Holds back every request of this class for `wait` (a server said `Retry-After` on a
    /// 429): the endpoint throttles the caller, not one binding, so the whole class waits.
    pub fn pause_for(&self, wait: Duration) {
        let until = tokio::time::Instant::now() + wait;
        let mut paused = self.paused_until.lock().unwrap_or_else(|e| e.into_inner());
        if paused.is_none_or(|current| current < until) {
            *paused = Some(until);
        }
    }
}

/// All limiters of one pipeline.
#[derive(Debug)]
pub struct LimiterSet {
    pub(crate) imds: Limiter,
    pub(crate) entra: Limiter,
    acr_config: LimitConfig,
    acr: Mutex<HashMap<String, Arc<Limiter>>>,
}

impl LimiterSet {
    pub fn new(limits: &Limits) -> Result<Self, AzureError> {
        // Validate the per-registry config up front rather than on first use.
        Limiter::new("acr", limits.acr_per_registry)?;
        Ok(Self {
            imds: Limiter::new("imds", limits.imds)?,
            entra: Limiter::new("entra", limits.entra)?,
            acr_config: limits.acr_per_registry,
            acr: Mutex::new(HashMap::new()),
        })
    }

    /// The limiter of one registry host (created on first use; hosts are bounded by the
    /// allowed suffixes and the bindings that exist).
    pub fn acr(&self, host: &str) -> Result<Arc<Limiter>, AzureError> {
        let key = host.to_ascii_lowercase();
        let mut map = self.acr.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(limiter) = map.get(&key) {
            return Ok(limiter.clone());
        }
        let limiter = Arc::new(Limiter::new("acr", self.acr_config)?);
        map.insert(key, limiter.clone());
        Ok(limiter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn spacing_follows_tokio_time() {
        let limiter =
            Limiter::new("imds", LimitConfig::new(4, 1, 10)).unwrap_or_else(|e| panic!("{e}"));
        let metrics = PipelineMetrics::new();
        let start = tokio::time::Instant::now();
        let mut times = Vec::new();
        for _ in 0..5 {
            let _p = limiter.acquire(&metrics).await;
            times.push(start.elapsed());
        }
        assert_eq!(
            times,
            (0..5)
                .map(|i| Duration::from_millis(250 * i))
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn zero_limits_are_config_errors() {
        for config in [
            LimitConfig::new(0, 1, 1),
            LimitConfig::new(1, 0, 1),
            LimitConfig::new(1, 1, 0),
        ] {
            let err = Limiter::new("imds", config).expect_err("must refuse");
            assert_eq!(err.reason(), "InvalidConfig");
        }
    }
}
