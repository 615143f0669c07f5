//! Credential verification (`--verify-credentials`): present a freshly minted credential to the
//! registry's token endpoint the way a pull client does, and compare the access granted with the
//! binding's scopes, before the credential is written.
//!
//! A scoped credential is an ACR access token that the registry's token endpoint issued for
//! exactly the binding's scopes, and its `access` claim is the registry's own answer to what it
//! granted. Presenting that token again at `GET /oauth2/token` can only yield a subset of that
//! claim (the distribution token protocol intersects a request with the presented token's
//! access; ACR documents an access token as a docker password for its own scope), so asking
//! again proves nothing the claim does not: the grant is read from the token itself and costs
//! no registry call. This halves the calls at each registry (one per access token instead of
//! two), which is what bounds convergence at scale. The registry is asked only when the token
//! carries no `access` claim: an unscoped binding's credential is the ACR refresh token
//! (checked with a plain login), or an issuer that does not put the claim in its tokens.
//!
//! Those checks are built on [`SingleFlight`], the pipeline's own cache: the pipeline hands one
//! token to every binding with the same identity and registry, so they are checked once per
//! identity × registry × token — concurrent checks of one token are one call, and a verified
//! token stays verified until it expires. A failed check is shared with the callers waiting on
//! it but not kept: the next mint checks again. Keys are (registry, scope, SHA-256 of the
//! token); the token itself never is.

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
        if !scope.is_empty() {
            if let Ok(Some(granted)) = crate::state::jwt::access_claim(credential.token.expose()) {
                return match granted_outcome(&server, &scope, &granted) {
                    Outcome::Verified => {
                        self.metrics.verification("from_token");
                        Verification::Verified
                    }
                    Outcome::Refused(reason, message) => {
                        self.metrics.verification("scope_not_granted");
                        Verification::Failed(reason, message)
                    }
                };
            }
        }
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
            Ok(granted_outcome(server, scope, &granted))
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

/// Whether `granted` covers every scope requested.
fn granted_outcome(
    server: &str,
    scope: &str,
    granted: &[crate::state::jwt::GrantedAccess],
) -> Outcome {
    let missing = crate::state::verify::missing_access(scope, granted);
    if missing.is_empty() {
        Outcome::Verified
    } else {
        Outcome::Refused(
            Reason::ScopeNotGranted,
            format!(
                "registry {server} did not grant {} to this identity; give the identity the AcrPull role on the registry (or on those repositories), or narrow spec.acr.scope",
                missing.join(", ")
            ),
        )
    }
}
