//! `/metrics` (OpenMetrics text from a prometheus-client registry); `/debug` is [`super::debug`].
//!
//! Binding gauges are computed at scrape time from the [`Tracker`] by a collector, so they are
//! never stale and cost nothing between scrapes. Labels are bounded: phases, hops, reasons —
//! never a binding name. The debug endpoint shows phases, times, reasons and names; tokens
//! never reach the tracker, so they cannot reach this output.
//!
//! Only the leader reports bindings: a replica that lost the Lease makes no more passes, so its
//! tracker holds what it saw when it last led, and an expiry computed from that would count
//! down to a false alarm. A standby reports every phase at 0 and no expiry.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use jiff::Timestamp;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use tokio::sync::watch;

use super::health::Readiness;
use crate::k8s::tracker::Tracker;
use crate::state::decide::Phase;

/// Upper bounds (seconds) of `acrpull_token_expiry_bindings`: 5 and 15 minutes, the
/// v1beta1 refresh point (30 minutes before expiry), then hours up to a day.
pub const EXPIRY_BOUNDS: [u32; 9] = [300, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400];

/// Scrape-time gauges from the tracker, the leadership channel and readiness.
#[derive(Debug)]
pub struct BindingCollector {
    tracker: Tracker,
    leader: watch::Receiver<bool>,
    /// The Lease name, when leader election is on: `leader_election_master_status{name}`.
    lease: Option<String>,
    readiness: Option<Readiness>,
}

impl BindingCollector {
    pub fn new(tracker: Tracker, leader: watch::Receiver<bool>) -> Self {
        Self {
            tracker,
            leader,
            lease: None,
            readiness: None,
        }
    }

    /// Also export client-go's `leader_election_master_status{name}` for this Lease (only
    /// with leader election on, as client-go does).
    pub fn with_lease(mut self, name: impl Into<String>) -> Self {
        self.lease = Some(name.into());
        self
    }

    /// Also export `acrpull_ready`, what `/readyz` answers.
    pub fn with_readiness(mut self, readiness: Readiness) -> Self {
        self.readiness = Some(readiness);
        self
    }
}

/// Bindings whose token expires within each of [`EXPIRY_BOUNDS`], then all with a token
/// (cumulative, like histogram buckets; an expired token counts in every bucket).
fn expiry_buckets(tracker: &Tracker, now: Timestamp) -> Vec<(String, u64)> {
    let (counts, total) = tracker.expiry_counts(now, &EXPIRY_BOUNDS);
    let mut out: Vec<(String, u64)> = EXPIRY_BOUNDS
        .iter()
        .zip(counts)
        .map(|(b, n)| (b.to_string(), n))
        .collect();
    out.push(("+Inf".to_string(), total));
    out
}

impl Collector for BindingCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let leads = *self.leader.borrow();
        let now = Timestamp::now();
        {
            let mut family = encoder.encode_descriptor(
                "acrpull_bindings",
                "Bindings by phase (the leader's view; 0 on a standby)",
                None,
                MetricType::Gauge,
            )?;
            let counts: Vec<(&'static str, u64)> = if leads {
                self.tracker.count_by_phase().into_iter().collect()
            } else {
                Phase::ALL.iter().map(|p| (p.as_str(), 0)).collect()
            };
            for (phase, n) in counts {
                let labels = [("phase", phase)];
                ConstGauge::new(n as i64).encode(family.encode_family(&labels)?)?;
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "acrpull_phase_transitions",
                "Phase transitions of bindings",
                None,
                MetricType::Counter,
            )?;
            for ((from, to), n) in self.tracker.transitions_total() {
                let labels = [("from", from), ("to", to)];
                ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
            }
        }
        if leads {
            if let Some(earliest) = self.tracker.earliest_expiry() {
                let secs = earliest.duration_since(now).as_secs_f64();
                let metric = encoder.encode_descriptor(
                    "acrpull_earliest_token_expiry",
                    "Seconds until the earliest pull-secret token expires (negative: already expired)",
                    Some(&Unit::Seconds),
                    MetricType::Gauge,
                )?;
                ConstGauge::new(secs).encode(metric)?;
            }
        }
        {
            let buckets = if leads {
                expiry_buckets(&self.tracker, now)
            } else {
                expiry_buckets(&Tracker::default(), now)
            };
            let mut family = encoder.encode_descriptor(
                "acrpull_token_expiry_bindings",
                "Bindings whose pull-secret token expires within le seconds (cumulative like histogram buckets; expired tokens count in every bucket; le=+Inf counts every binding with a token)",
                None,
                MetricType::Gauge,
            )?;
            for (le, n) in buckets {
                let labels = [("le", le.as_str())];
                ConstGauge::new(n as i64).encode(family.encode_family(&labels)?)?;
            }
        }
        {
            let metric = encoder.encode_descriptor(
                "acrpull_leader",
                "1 while this replica holds the leader Lease (or leader election is off)",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(i64::from(leads)).encode(metric)?;
        }
        if let Some(name) = &self.lease {
            let mut family = encoder.encode_descriptor(
                "leader_election_master_status",
                "Gauge of if the reporting system is master of the relevant lease, 0 indicates backup, 1 indicates master. 'name' is the string used to identify the lease. Please make sure to group by name. (client-go compatible)",
                None,
                MetricType::Gauge,
            )?;
            let labels = [("name", name.as_str())];
            ConstGauge::new(i64::from(leads)).encode(family.encode_family(&labels)?)?;
        }
        if let Some(readiness) = &self.readiness {
            let metric = encoder.encode_descriptor(
                "acrpull_ready",
                "1 while /readyz answers 200 (every watch has delivered its initial list and shutdown has not started)",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(i64::from(readiness.is_ready())).encode(metric)?;
        }
        Ok(())
    }
}

/// `/metrics` alone.
pub fn metrics_router(registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(registry)
}

/// `/metrics` and, when `debug`, the unauthenticated `/debug` routes on one listener: for
/// in-process tests, and for an operator who binds the metrics address to loopback. The
/// process itself serves `/debug` on its own (loopback) listener unless `--metrics-secure`.
pub fn router(
    registry: Arc<Registry>,
    tracker: Tracker,
    leader: watch::Receiver<bool>,
    debug: bool,
) -> Router {
    let app = metrics_router(registry);
    if debug {
        app.merge(super::debug::router(tracker, leader, None))
    } else {
        app
    }
}

async fn metrics(State(registry): State<Arc<Registry>>) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::tracker::{BindingKey, Report};
    use crate::state::binding::Version;

    fn scrape(collector: BindingCollector) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(collector));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    }

    /// Two bindings: Ready with a token expiring in 20 minutes, Failed with one that expired.
    fn tracker() -> Tracker {
        let tracker = Tracker::default();
        let now = Timestamp::now();
        for (name, phase, expiry) in [
            ("a", Phase::Ready, now + jiff::SignedDuration::from_mins(20)),
            ("b", Phase::Failed, now - jiff::SignedDuration::from_mins(1)),
        ] {
            let key = BindingKey {
                version: Version::V1beta2,
                namespace: "ns".into(),
                name: name.into(),
            };
            let report = Report {
                record: crate::state::record::Record {
                    phase,
                    reason: crate::state::reason::Reason::TokenIssued,
                    ready: phase == Phase::Ready,
                    message: String::new(),
                    error: String::new(),
                    last_refresh: None,
                    expiry: Some(expiry),
                    next_refresh: None,
                    consecutive_failures: 0,
                    observed_generation: 1,
                    verified: None,
                    permitted: None,
                },
                service_account: "default".into(),
            };
            tracker.record(&key, report, now);
        }
        tracker
    }

    #[test]
    fn the_leader_reports_phases_expiries_lease_and_readiness() {
        let (_tx, leader) = watch::channel(true);
        let readiness = Readiness::new(1);
        let collector = BindingCollector::new(tracker(), leader)
            .with_lease("aks.azure.com")
            .with_readiness(readiness.clone());
        let text = scrape(collector);
        for line in [
            r#"acrpull_bindings{phase="Ready"} 1"#,
            r#"acrpull_bindings{phase="Failed"} 1"#,
            r#"acrpull_bindings{phase="Pending"} 0"#,
            r#"acrpull_token_expiry_bindings{le="300"} 1"#,
            r#"acrpull_token_expiry_bindings{le="900"} 1"#,
            r#"acrpull_token_expiry_bindings{le="1800"} 2"#,
            r#"acrpull_token_expiry_bindings{le="86400"} 2"#,
            r#"acrpull_token_expiry_bindings{le="+Inf"} 2"#,
            "acrpull_leader 1",
            r#"leader_election_master_status{name="aks.azure.com"} 1"#,
            "acrpull_ready 0",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        let earliest: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("acrpull_earliest_token_expiry_seconds "))
            .and_then(|v| v.parse().ok())
            .expect("earliest expiry");
        assert!((-61.0..=-59.0).contains(&earliest), "{earliest}");
        readiness.synced();
        let (_tx, leader) = watch::channel(true);
        let text = scrape(BindingCollector::new(tracker(), leader).with_readiness(readiness));
        assert!(text.contains("acrpull_ready 1"), "{text}");
        // Without a Lease name (leader election off) there is no client-go series.
        assert!(!text.contains("leader_election_master_status"), "{text}");
    }

    #[test]
    fn a_standby_reports_no_bindings_and_no_expiry_from_its_stale_tracker() {
        let (_tx, leader) = watch::channel(false);
        let text = scrape(BindingCollector::new(tracker(), leader).with_lease("aks.azure.com"));
        for phase in Phase::ALL {
            let line = format!(r#"acrpull_bindings{{phase="{}"}} 0"#, phase.as_str());
            assert!(text.contains(&line), "missing {line} in\n{text}");
        }
        assert!(!text.contains("acrpull_earliest_token_expiry"), "{text}");
        assert!(text.contains(r#"acrpull_token_expiry_bindings{le="+Inf"} 0"#));
        assert!(text.contains("acrpull_leader 0"));
        assert!(text.contains(r#"leader_election_master_status{name="aks.azure.com"} 0"#));
        // The transitions it counted while it led are history, not state: they stay.
        assert!(text.contains("acrpull_phase_transitions_total"), "{text}");
    }
}
