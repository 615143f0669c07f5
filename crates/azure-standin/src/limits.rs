//! Server-side throttling (IMDS requests per second and concurrency, registry operations per
//! minute) and the peak load each limiter observed.
//!
//! Peaks are measured on the *offered* load (every arrival, admitted or not), so a test can
//! assert that a client-side limiter never exceeded the service's limits.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::log::lock;

/// What a limiter saw.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LimiterStats {
    /// `imds` or `acr:<host>`.
    pub name: String,
    /// Length of the rate window in milliseconds.
    pub window_ms: u64,
    /// Requests allowed per window (0 = no rate limit).
    pub rate_limit: u32,
    /// Concurrent requests allowed (0 = no concurrency limit).
    pub concurrency_limit: u32,
    /// Most arrivals seen within any one window.
    pub peak_rate: u32,
    /// Most requests in flight at once.
    pub peak_concurrency: u32,
    pub admitted: u64,
    pub rejected: u64,
}

#[derive(Debug)]
struct Inner {
    arrivals: VecDeque<Instant>,
    admitted_in_window: VecDeque<Instant>,
    in_flight: u32,
    stats: LimiterStats,
}

/// A sliding-window rate limiter with an optional concurrency cap.
#[derive(Debug, Clone)]
pub struct Limiter {
    inner: Arc<Mutex<Inner>>,
    window: Duration,
}

/// Holds a concurrency slot until dropped.
#[derive(Debug)]
pub struct Permit {
    inner: Arc<Mutex<Inner>>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut inner = lock(&self.inner);
        inner.in_flight = inner.in_flight.saturating_sub(1);
    }
}

impl Limiter {
    pub fn new(name: impl Into<String>, window: Duration) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                arrivals: VecDeque::new(),
                admitted_in_window: VecDeque::new(),
                in_flight: 0,
                stats: LimiterStats {
                    name: name.into(),
                    window_ms: window.as_millis() as u64,
                    ..LimiterStats::default()
                },
            })),
            window,
        }
    }

    /// Records an arrival and admits it if both limits allow (0 disables a limit).
    /// The permit (held for the request's lifetime) is returned either way so the offered
    /// concurrency is measured; `Err` means "throttle this one".
    pub fn arrive(&self, rate_limit: u32, concurrency_limit: u32) -> Result<Permit, Permit> {
        let now = Instant::now();
        let mut inner = lock(&self.inner);
        let window = self.window;
        let expired = |q: &mut VecDeque<Instant>| {
            while q.front().is_some_and(|t| now.duration_since(*t) >= window) {
                q.pop_front();
            }
        };
        expired(&mut inner.arrivals);
        expired(&mut inner.admitted_in_window);
        inner.arrivals.push_back(now);
        inner.in_flight += 1;
        inner.stats.rate_limit = rate_limit;
        inner.stats.concurrency_limit = concurrency_limit;
        inner.stats.peak_rate = inner.stats.peak_rate.max(inner.arrivals.len() as u32);
        inner.stats.peak_concurrency = inner.stats.peak_concurrency.max(inner.in_flight);
        let over_rate = rate_limit > 0 && inner.admitted_in_window.len() as u32 >= rate_limit;
        let over_concurrency = concurrency_limit > 0 && inner.in_flight > concurrency_limit;
        let permit = Permit {
            inner: self.inner.clone(),
        };
        if over_rate || over_concurrency {
            inner.stats.rejected += 1;
            Err(permit)
        } else {
            inner.admitted_in_window.push_back(now);
            inner.stats.admitted += 1;
            Ok(permit)
        }
    }

    pub fn stats(&self) -> LimiterStats {
        lock(&self.inner).stats.clone()
    }

    fn reset(&self) {
        let mut inner = lock(&self.inner);
        inner.arrivals.clear();
        inner.admitted_in_window.clear();
        let name = std::mem::take(&mut inner.stats.name);
        inner.stats = LimiterStats {
            name,
            window_ms: self.window.as_millis() as u64,
            ..LimiterStats::default()
        };
    }
}

/// All limiters of the stand-in.
#[derive(Debug)]
pub struct Limits {
    imds: Limiter,
    registries: Mutex<BTreeMap<String, Limiter>>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            imds: Limiter::new("imds", Duration::from_secs(1)),
            registries: Mutex::new(BTreeMap::new()),
        }
    }
}

impl Limits {
    pub fn imds(&self) -> &Limiter {
        &self.imds
    }

    /// The per-minute limiter of a registry (created on first use).
    pub fn registry(&self, host: &str) -> Limiter {
        lock(&self.registries)
            .entry(host.to_ascii_lowercase())
            .or_insert_with(|| {
                Limiter::new(
                    format!("acr:{}", host.to_ascii_lowercase()),
                    Duration::from_secs(60),
                )
            })
            .clone()
    }

    pub fn stats(&self) -> Vec<LimiterStats> {
        let mut out = vec![self.imds.stats()];
        out.extend(lock(&self.registries).values().map(Limiter::stats));
        out
    }

    /// Clears windows and peaks (counters start over).
    pub fn reset(&self) {
        self.imds.reset();
        for l in lock(&self.registries).values() {
            l.reset();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_rejects_beyond_window_budget() {
        let l = Limiter::new("t", Duration::from_secs(60));
        let permits: Vec<_> = (0..3).map(|_| l.arrive(3, 0)).collect();
        assert!(permits.iter().all(Result::is_ok));
        assert!(l.arrive(3, 0).is_err());
        let s = l.stats();
        assert_eq!((s.admitted, s.rejected, s.peak_rate), (3, 1, 4));
    }

    #[test]
    fn concurrency_is_released_when_permits_drop() {
        let l = Limiter::new("t", Duration::from_secs(1));
        let a = l.arrive(0, 2).unwrap();
        let _b = l.arrive(0, 2).unwrap();
        assert!(l.arrive(0, 2).is_err());
        drop(a);
        assert!(l.arrive(0, 2).is_ok());
        assert_eq!(l.stats().peak_concurrency, 3);
    }
}
