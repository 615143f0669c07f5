//! Prometheus metrics of the token pipeline (prometheus-client).
//!
//! Labels are bounded by construction: `hop` is one of five names, `outcome` is `success` or an
//! [`ErrorKind`] reason, `limiter` is an endpoint class and `result` is hit/miss/coalesced.
//! Never a binding, identity or host.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use super::error::AzureError;

/// One network hop of the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hop {
    Imds,
    Entra,
    AcrExchange,
    AcrToken,
    AcrVerify,
}

impl Hop {
    pub const ALL: [Hop; 5] = [
        Hop::Imds,
        Hop::Entra,
        Hop::AcrExchange,
        Hop::AcrToken,
        Hop::AcrVerify,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Hop::Imds => "imds",
            Hop::Entra => "entra",
            Hop::AcrExchange => "acr_exchange",
            Hop::AcrToken => "acr_token",
            Hop::AcrVerify => "acr_verify",
        }
    }
}

/// How a cache lookup was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheResult {
    /// A cached token was usable.
    Hit,
    /// This caller started the fetch.
    Miss,
    /// This caller joined a fetch already in flight.
    Coalesced,
}

impl CacheResult {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheResult::Hit => "hit",
            CacheResult::Miss => "miss",
            CacheResult::Coalesced => "coalesced",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HopOutcome {
    hop: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HopLabel {
    hop: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LimiterLabel {
    limiter: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CacheLabel {
    hop: &'static str,
    result: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    // 5 ms … ~41 s
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

fn wait_histogram() -> Histogram {
    // 1 ms … ~33 s
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// The pipeline's metrics. Cheap to clone (handles share storage).
#[derive(Debug, Clone)]
pub struct PipelineMetrics {
    requests: Family<HopOutcome, Counter>,
    duration: HistogramFamily<HopLabel>,
    limiter_wait: HistogramFamily<LimiterLabel>,
    retries: Family<HopLabel, Counter>,
    cache: Family<CacheLabel, Counter>,
}

impl Default for PipelineMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl PipelineMetrics {
    fn empty() -> Self {
        Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            limiter_wait: Family::new_with_constructor(wait_histogram),
            retries: Family::default(),
            cache: Family::default(),
        }
    }
}

impl PipelineMetrics {
    /// Metrics with every bounded label combination pre-created at zero, so dashboards and
    /// alerts see the series before the first token request.
    pub fn new() -> Self {
        let metrics = Self::empty();
        for hop in Hop::ALL {
            let label = HopLabel { hop: hop.as_str() };
            let _ = metrics.requests.get_or_create(&HopOutcome {
                hop: hop.as_str(),
                outcome: "success",
            });
            let _ = metrics.duration.get_or_create(&label);
            let _ = metrics.retries.get_or_create(&label);
        }
        for limiter in ["imds", "entra", "acr"] {
            let _ = metrics
                .limiter_wait
                .get_or_create(&LimiterLabel { limiter });
        }
        for hop in [Hop::Imds, Hop::Entra, Hop::AcrExchange, Hop::AcrToken] {
            for result in [CacheResult::Hit, CacheResult::Miss, CacheResult::Coalesced] {
                let _ = metrics.cache.get_or_create(&CacheLabel {
                    hop: hop.as_str(),
                    result: result.as_str(),
                });
            }
        }
        metrics
    }

    /// Registers `acrpull_token_requests_total`, `acrpull_token_request_duration_seconds`,
    /// `acrpull_rate_limiter_wait_seconds`, `acrpull_token_retries_total` and
    /// `acrpull_token_cache_total` under their full names: pass a registry without an
    /// `acrpull` prefix of its own.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "acrpull_token_requests",
            "Token requests sent to Azure, by hop and outcome (success or the error reason)",
            self.requests.clone(),
        );
        registry.register_with_unit(
            "acrpull_token_request_duration",
            "Latency of one token request attempt, by hop",
            Unit::Seconds,
            self.duration.clone(),
        );
        registry.register_with_unit(
            "acrpull_rate_limiter_wait",
            "Time spent waiting for a client-side rate limiter or concurrency slot, by endpoint class",
            Unit::Seconds,
            self.limiter_wait.clone(),
        );
        registry.register(
            "acrpull_token_retries",
            "Token request attempts retried after a transient failure, by hop",
            self.retries.clone(),
        );
        registry.register(
            "acrpull_token_cache",
            "Token cache lookups by hop and result (hit, miss, coalesced)",
            self.cache.clone(),
        );
    }

    pub(crate) fn record_attempt(
        &self,
        hop: Hop,
        result: Result<(), &AzureError>,
        elapsed: Duration,
    ) {
        let outcome = match result {
            Ok(()) => "success",
            Err(e) => e.reason(),
        };
        self.requests
            .get_or_create(&HopOutcome {
                hop: hop.as_str(),
                outcome,
            })
            .inc();
        self.duration
            .get_or_create(&HopLabel { hop: hop.as_str() })
            .observe(elapsed.as_secs_f64());
    }

    pub(crate) fn record_retry(&self, hop: Hop) {
        self.retries
            .get_or_create(&HopLabel { hop: hop.as_str() })
            .inc();
    }

    pub(crate) fn record_limiter_wait(&self, limiter: &'static str, waited: Duration) {
        self.limiter_wait
            .get_or_create(&LimiterLabel { limiter })
            .observe(waited.as_secs_f64());
    }

    pub(crate) fn record_cache(&self, hop: Hop, result: CacheResult) {
        self.cache
            .get_or_create(&CacheLabel {
                hop: hop.as_str(),
                result: result.as_str(),
            })
            .inc();
    }

    /// Requests counted for `hop` with `outcome` (`"success"` or a reason); for tests and debug.
    pub fn requests_total(&self, hop: Hop, outcome: &'static str) -> u64 {
        self.requests
            .get_or_create(&HopOutcome {
                hop: hop.as_str(),
                outcome,
            })
            .get()
    }

    /// Retries counted for `hop`.
    pub fn retries_total(&self, hop: Hop) -> u64 {
        self.retries
            .get_or_create(&HopLabel { hop: hop.as_str() })
            .get()
    }

    /// Cache lookups counted for `hop` with `result`.
    pub fn cache_total(&self, hop: Hop, result: CacheResult) -> u64 {
        self.cache
            .get_or_create(&CacheLabel {
                hop: hop.as_str(),
                result: result.as_str(),
            })
            .get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::azure::error::ErrorKind;

    #[test]
    fn registers_the_documented_names() {
        let metrics = PipelineMetrics::new();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        metrics.record_attempt(Hop::Imds, Ok(()), Duration::from_millis(20));
        let err = AzureError::new(ErrorKind::Throttled, "x");
        metrics.record_attempt(Hop::AcrExchange, Err(&err), Duration::from_millis(20));
        metrics.record_retry(Hop::AcrExchange);
        metrics.record_limiter_wait("imds", Duration::from_millis(3));
        metrics.record_cache(Hop::AcrToken, CacheResult::Coalesced);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap_or_default();
        for needle in [
            r#"acrpull_token_requests_total{hop="imds",outcome="success"} 1"#,
            r#"acrpull_token_requests_total{hop="acr_exchange",outcome="Throttled"} 1"#,
            "acrpull_token_request_duration_seconds_bucket{",
            r#"acrpull_rate_limiter_wait_seconds_count{limiter="imds"} 1"#,
            r#"acrpull_token_retries_total{hop="acr_exchange"} 1"#,
            r#"acrpull_token_cache_total{hop="acr_token",result="coalesced"} 1"#,
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }
}
