//! HTTP endpoints (axum). Probes live on `--health-probe-bind-address`; `/metrics` and
//! `/debug/bindings` on `--metrics-bind-address`.

pub mod health;
pub mod metrics;
