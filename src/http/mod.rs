//! HTTP endpoints (axum). Probes live on `--health-probe-bind-address`; metrics and debug on
//! `--metrics-bind-address` (added with the process issue).

pub mod health;
