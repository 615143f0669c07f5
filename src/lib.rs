//! acrpull: a Kubernetes controller that turns Azure managed or workload identities into
//! Azure Container Registry pull secrets and keeps them fresh.
//!
//! Layout (dependency direction is top to bottom; `state` depends on nothing async):
//! - [`state`]: pure decisions — names, hashes, validation, refresh boundaries, the state machine.
//! - [`azure`]: the token pipeline (IMDS, Entra, ACR) with caching, coalescing and rate limits.
//! - [`k8s`]: the `AcrPullBinding` API types of both groups, watches, the single writer,
//!   leader election.
//! - [`http`]: health, readiness, metrics and debug endpoints.
//!
//! No `unsafe` anywhere in the library (which is also why fuzzing without AddressSanitizer, as
//! CI does on the stable toolchain, loses little). The binary's one use of it sets glibc's
//! malloc parameters at startup (`src/main.rs`).
#![forbid(unsafe_code)]

pub mod app;
pub mod azure;
pub mod config;
pub mod http;
pub mod k8s;
pub mod logging;
pub mod state;
pub mod upstream_flags;
