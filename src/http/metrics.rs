//! `/metrics` (OpenMetrics text from a prometheus-client registry) and `/debug/bindings`.
//!
//! Binding gauges are computed at scrape time from the [`Tracker`] by a collector, so they are
//! never stale and cost nothing between scrapes. Labels are bounded: phases, hops, reasons —
//! never a binding name. The debug endpoint shows phases, times, reasons and names; tokens
//! never reach the tracker, so they cannot reach this output.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use jiff::Timestamp;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};
use tokio::sync::watch;

use crate::k8s::tracker::Tracker;

/// Scrape-time gauges from the tracker and the leadership channel.
#[derive(Debug)]
pub struct BindingCollector {
    tracker: Tracker,
    leader: watch::Receiver<bool>,
}

impl BindingCollector {
    pub fn new(tracker: Tracker, leader: watch::Receiver<bool>) -> Self {
        Self { tracker, leader }
    }
}

impl Collector for BindingCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        {
            let mut family = encoder.encode_descriptor(
                "acrpull_bindings",
                "Bindings by phase",
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for (phase, n) in self.tracker.count_by_phase() {
                let labels = [("phase", phase)];
                ConstGauge::new(n as i64).encode(family.encode_family(&labels)?)?;
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "acrpull_phase_transitions",
                "Phase transitions of bindings",
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for ((from, to), n) in self.tracker.transitions_total() {
                let labels = [("from", from), ("to", to)];
                ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
            }
        }
        if let Some(earliest) = self.tracker.earliest_expiry() {
            let secs = earliest.duration_since(Timestamp::now()).as_secs_f64();
            let metric = encoder.encode_descriptor(
                "acrpull_earliest_token_expiry",
                "Seconds until the earliest pull-secret token expires (negative: already expired)",
                Some(&Unit::Seconds),
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            ConstGauge::new(secs).encode(metric)?;
        }
        let metric = encoder.encode_descriptor(
            "acrpull_leader",
            "1 while this replica holds the leader Lease (or leader election is off)",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        ConstGauge::new(i64::from(*self.leader.borrow())).encode(metric)?;
        Ok(())
    }
}

#[derive(Clone)]
struct AppState {
    registry: Arc<Registry>,
    tracker: Tracker,
    leader: watch::Receiver<bool>,
    debug: bool,
}

/// The metrics (and, when enabled, debug) routes.
pub fn router(
    registry: Arc<Registry>,
    tracker: Tracker,
    leader: watch::Receiver<bool>,
    debug: bool,
) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/debug/bindings", get(list))
        .route("/debug/bindings/{namespace}/{name}", get(one))
        .with_state(AppState {
            registry,
            tracker,
            leader,
            debug,
        })
}

async fn metrics(State(s): State<AppState>) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &s.registry) {
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

async fn list(State(s): State<AppState>) -> Response {
    if !s.debug {
        return StatusCode::NOT_FOUND.into_response();
    }
    Json(serde_json::json!({
        "leader": *s.leader.borrow(),
        "bindings": s.tracker.list(),
    }))
    .into_response()
}

async fn one(
    State(s): State<AppState>,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    if !s.debug {
        return StatusCode::NOT_FOUND.into_response();
    }
    let found = s.tracker.get(&namespace, &name);
    if found.is_empty() {
        return (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"error": format!("no binding {namespace}/{name} is tracked")})),
        )
            .into_response();
    }
    Json(serde_json::json!({ "bindings": found })).into_response()
}
