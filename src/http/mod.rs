//! HTTP endpoints (axum). Probes live on `--health-probe-bind-address`; `/metrics` on
//! `--metrics-bind-address`; `/debug/*` on `--debug-bind-address` (loopback by default), or,
//! with `--metrics-secure`, all of them over HTTPS behind TokenReview + SubjectAccessReview on
//! the metrics address ([`secure`]).

pub mod debug;
pub mod health;
pub mod metrics;
pub mod secure;
