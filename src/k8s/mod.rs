//! Everything that talks to the Kubernetes API: the `AcrPullBinding` types, watches and
//! caches, the single writer, and ServiceAccount tokens for workload identity.

pub mod api;
pub mod binding;
pub mod cache;
pub mod controller;
pub mod events;
pub mod leader;
pub mod metrics;
pub mod observe;
pub mod run;
pub mod sa_token;
pub mod tracker;
