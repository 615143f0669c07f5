//! Credential verification (`--verify-credentials`): present a freshly minted credential to the
//! registry's token endpoint the way a pull client does, and compare the access granted with the
//! binding's scopes, before the credential is written.
//!
//! Built on [`SingleFlight`], the pipeline's own cache: the pipeline hands one token to every
//! binding with the same identity, registry and scope, so those bindings are checked once —
//! concurrent checks of one token are one call, and a verified token stays verified until it
//! expires. A failed check is shared with the callers waiting on it but not kept: the next mint
//! checks again. Keys are (registry, scope, SHA-256 of the token); the token itself never is.

use futures::FutureExt;
use jiff::Timestamp;
use sha2::{Digest, Sha256};

use super::metrics::ControllerMetrics;
use crate::azure::{
    AcrCredential, AzureError, CacheResult, ErrorKind, SingleFlight, TokenPipeline,
};
use crate::state::binding::Resolved;
use crate::state::reason::Reason;
use crate::state::token::SecretToken;

/// What checking a fresh credential showed.
#[derive(Debug, Clone, PartialEq)]
pub enum Verification {
    /// Every requested scope was granted.
    Verified,
    /// Not checked (switched off) or the check could not be made (transient error): the
    /// credential is written unverified rather than letting a valid one lapse.
    Unknown,
    /// The registry refused: (reason, message).
    Failed(Reason, String),
}

/// The registry's answer for one token.
#[derive(Debug, Clone)]
enum Outcome {
    Verified,
    Refused(Reason, String),
}

type Key = (String, String, [u8; 32]);

#[derive(Clone)]
pub struct Verifier {
    enabled: bool,
    pipeline: TokenPipeline,
    checks: SingleFlight<Key, Outcome>,
    metrics: ControllerMetrics,
}

impl Verifier {
    pub fn new(pipeline: TokenPipeline, metrics: ControllerMetrics, enabled: bool) -> Self {
        Self {
            enabled,
            pipeline,
            checks: SingleFlight::new(),
            metrics,
        }
    }

    /// Check `credential`, minted for `request`. Counts against the registry's rate limiter
    /// (inside the pipeline).
    pub async fn verify(&self, request: &Resolved, credential: &AcrCredential) -> Verification {
        if !self.enabled {
            self.metrics.verification("skipped");
            return Verification::Unknown;
        }
        let scope = request.scope.clone().unwrap_or_default();
        let server = request.registry.authority();
        let key: Key = (
            server.clone(),
            scope.clone(),
            Sha256::digest(credential.token.expose().as_bytes()).into(),
        );
        let pipeline = self.pipeline.clone();
        let token = credential.token.clone();
        let expires_at = credential.expires_at;
        let (result, cache) = self
            .checks
            .get(
                &key,
                Timestamp::now(),
                |o| matches!(o, Outcome::Verified),
                move || {
                    async move {
                        let outcome = check(&pipeline, &server, &scope, &token).await?;
                        Ok((outcome, expires_at))
                    }
                    .boxed()
                },
            )
            .await;
        match result {
            Ok(Outcome::Verified) => {
                self.metrics.verification(match cache {
                    CacheResult::Miss => "verified",
                    _ => "cached",
                });
                Verification::Verified
            }
            Ok(Outcome::Refused(reason, message)) => {
                self.metrics.verification(match reason {
                    Reason::ScopeNotGranted => "scope_not_granted",
                    _ => "rejected",
                });
                Verification::Failed(reason, message)
            }
            Err(e) => {
                self.metrics.verification("unavailable");
                tracing::info!(
                    registry = %request.registry.authority(), reason = e.reason(),
                    "credential check unavailable; writing the credential unverified"
                );
                Verification::Unknown
            }
        }
    }
}

/// One check at the registry; `Err` when it could not be made.
async fn check(
    pipeline: &TokenPipeline,
    server: &str,
    scope: &str,
    token: &SecretToken,
) -> Result<Outcome, AzureError> {
    match pipeline.verify(server, token, scope).await {
        Ok(_) if scope.is_empty() => Ok(Outcome::Verified),
        Ok(registry_token) => {
            let granted =
                crate::state::jwt::granted_access(registry_token.expose()).unwrap_or_default();
            let missing = crate::state::verify::missing_access(scope, &granted);
            if missing.is_empty() {
                Ok(Outcome::Verified)
            } else {
                Ok(Outcome::Refused(
                    Reason::ScopeNotGranted,
                    format!(
                        "registry {server} did not grant {} to this identity; give the identity the AcrPull role on the registry (or on those repositories), or narrow spec.acr.scope",
                        missing.join(", ")
                    ),
                ))
            }
        }
        Err(e) if e.kind() == ErrorKind::Unauthorized => Ok(Outcome::Refused(
            Reason::CredentialRejected,
            format!(
                "registry {server} rejected the new credential: {}",
                e.user_message()
            ),
        )),
        Err(e) => Err(e),
    }
}
