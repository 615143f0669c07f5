//! The token pipeline: an Azure identity in, an ACR credential out (SPEC §5, AZURE.md).
//!
//! ```text
//! managed identity:  IMDS ─┐
//!                          ├─ identity token ─▶ ACR /oauth2/exchange ─▶ refresh token ─▶ ACR /oauth2/token ─▶ access token
//! workload identity: SA token ─▶ Entra ─┘                                  (unscoped: the credential)           (scoped: the credential)
//! ```
//!
//! Layout: one trait per Azure hop ([`ImdsApi`], [`EntraApi`], [`AcrApi`]) with reqwest
//! implementations that make exactly one attempt; [`TokenPipeline`] on top adds, per hop, a
//! single-flight cache, a shared rate/concurrency limiter, retries with backoff, timeouts and
//! metrics, and never sends a token to a registry outside the allowed suffixes. Tests substitute
//! the hop traits and run with `tokio::time::pause()`.
//!
//! # Why not the `azure_identity` crate
//!
//! This module talks to IMDS, Entra and ACR with a small client on reqwest instead of the
//! `azure_identity` crate, because `azure_identity`:
//! - hard-codes the IMDS address, and refuses non-https authority hosts, so it cannot be pointed
//!   at the stand-ins or at an arbitrary air-gapped IMDS base URL (every endpoint here is
//!   configurable, and hosts are mapped to loopback with resolve overrides while TLS stays on);
//! - has its own retries and token cache beneath ours, which would hide Azure calls from our
//!   limiter, single flight, metrics and `Retry-After` handling, and multiply attempts;
//! - pulls aws-lc-rs as a second TLS provider with default features (aws-lc must never enter
//!   this tree), and its workload-identity credential reads a token file, which does not fit
//!   per-binding ServiceAccounts;
//! - does not cover the ACR exchange, which has to be hand-written anyway.
//!
//! The three protocols are small (a GET and two form POSTs), documented in AZURE.md, and the
//! hand-written client is what lets every hop be cached, coalesced, limited and retried once.

mod acr;
mod cache;
mod clock;
mod cloud;
mod entra;
mod error;
mod http_client;
mod imds;
mod limits;
mod metrics;
mod pipeline;
mod registry_host;
mod retry;

use futures::future::BoxFuture;
use jiff::Timestamp;

use crate::state::token::SecretToken;

pub use acr::{
    AccessTokenRequest, AcrApi, ExchangeRequest, ReqwestAcr, VerifyRequest, ACR_TOKEN_USERNAME,
};
pub use cache::{InFlight, SingleFlight};
pub use clock::{SystemClock, TokioWallClock, WallClock};
pub use cloud::{
    AuthorityHosts, Cloud, IdentityAudience, CONTAINER_REGISTRY_AUDIENCE,
    V1BETA1_DEFAULT_ARM_RESOURCE,
};
pub use entra::{validate_tenant_id, EntraApi, EntraTokenRequest, ReqwestEntra};
pub use error::{hints, AzureError, ErrorKind};
pub use imds::{ImdsApi, ImdsSelector, ImdsTokenRequest, ReqwestImds, DEFAULT_IMDS_BASE_URL};
pub use limits::{LimitConfig, Limiter, LimiterPermit, LimiterSet, Limits, TokioClock};
pub use metrics::{CacheResult, Hop, PipelineMetrics};
pub use pipeline::{Fetch, FetchId, HopApis, PipelineConfig, Timeouts, TokenPipeline};
pub use retry::RetryPolicy;

/// Which Azure identity a binding uses.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    /// User-assigned managed identity by client id (IMDS `client_id`).
    ManagedClientId(String),
    /// Managed identity by ARM resource id (IMDS `msi_res_id`), path-normalised by the caller.
    ManagedResourceId(String),
    /// Workload identity: a token for `service_account_namespace/service_account_name` is
    /// exchanged at Entra for the app or identity `client_id` in `tenant_id`.
    Workload {
        tenant_id: String,
        client_id: String,
        service_account_namespace: String,
        service_account_name: String,
    },
}

/// One request for a registry credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialRequest {
    /// Registry host as validated by the caller (`host`, or `host:port` in tests).
    pub server: String,
    /// Space-separated ACR scopes; `None` (or blank) → the ACR refresh token is the credential.
    pub scope: Option<String>,
    pub identity: Identity,
    pub cloud: Cloud,
    /// `--identity-audience`; per request so it can become per binding.
    pub audience: IdentityAudience,
    /// v1beta1 `ARM_RESOURCE` (the caller passes [`V1BETA1_DEFAULT_ARM_RESOURCE`] when unset);
    /// replaces the cloud's Resource Manager audience.
    pub arm_resource_override: Option<String>,
    /// The expiry of the credential the caller already holds: a cached ACR token is served only
    /// if it expires later than this (and is before its own half-life).
    pub fresher_than: Option<Timestamp>,
}

/// The registry credential: the password of the pull secret (username
/// [`ACR_TOKEN_USERNAME`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcrCredential {
    pub token: SecretToken,
    /// The token's JWT `exp`.
    pub expires_at: Timestamp,
    /// The token's JWT `iat`, when present.
    pub issued_at: Option<Timestamp>,
}

/// An Entra/IMDS access token and its expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityToken {
    pub token: SecretToken,
    pub expires_at: Timestamp,
}

/// Mints ServiceAccount tokens (Kubernetes TokenRequest); implemented by the k8s layer.
pub trait ServiceAccountTokenSource: Send + Sync + 'static {
    /// TokenRequest for `namespace/name` with `audience`. Failures should be
    /// [`AzureError::service_account_token`] (reason `ServiceAccountTokenFailed`).
    fn token(
        &self,
        namespace: &str,
        name: &str,
        audience: &str,
    ) -> BoxFuture<'_, Result<SecretToken, AzureError>>;
}
