//! ServiceAccount tokens for workload identity, through the TokenRequest API (the token the
//! pipeline presents to Entra as a client assertion). Requested through the [`Writer`] like
//! every write — it creates a credential — so a replica that lost the Lease asks for none.
//! Never cached here: the pipeline caches the Entra token it buys with it.

use futures::future::BoxFuture;
use futures::FutureExt;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};

use super::error::ReconcileError;
use super::writer::Writer;
use crate::azure::{AzureError, ServiceAccountTokenSource};
use crate::state::token::SecretToken;

/// Lifetime asked for; the assertion is used once, right away (600 s is the API minimum).
/// The admission policy `acrpull-token-request` (deploy/) refuses longer ones: it carries the
/// same number, and tests/manifests checks that the two agree.
pub const EXPIRATION_SECONDS: i64 = 600;

pub struct TokenRequests {
    writer: Writer,
}

impl TokenRequests {
    pub fn new(writer: Writer) -> Self {
        Self { writer }
    }
}

impl ServiceAccountTokenSource for TokenRequests {
    fn token(
        &self,
        namespace: &str,
        name: &str,
        audience: &str,
    ) -> BoxFuture<'_, Result<SecretToken, AzureError>> {
        let namespace = namespace.to_string();
        let name = name.to_string();
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![audience.to_string()],
                expiration_seconds: Some(EXPIRATION_SECONDS),
                bound_object_ref: None,
            },
            ..Default::default()
        };
        async move {
            let failed = |what: String, retryable: bool| {
                AzureError::service_account_token(
                    format!("TokenRequest for service account {name:?} {what}"),
                    retryable,
                )
            };
            match self.writer.token_request(&namespace, &name, &request).await {
                Ok(tr) => tr
                    .status
                    .map(|s| SecretToken::new(s.token))
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| failed("returned no token".into(), true)),
                Err(ReconcileError::Kube {
                    source: kube::Error::Api(s),
                    ..
                }) => Err(failed(
                    format!("failed: {} ({})", s.message, s.code),
                    s.code >= 500 || s.code == 429,
                )),
                Err(ReconcileError::Timeout { .. }) => Err(failed("timed out".into(), true)),
                Err(ReconcileError::NotLeader { .. }) => Err(failed(
                    "was not sent: this replica does not hold the leader Lease".into(),
                    false,
                )),
                Err(e) => Err(failed(format!("failed: {e}"), true)),
            }
        }
        .boxed()
    }
}
