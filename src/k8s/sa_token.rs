//! ServiceAccount tokens for workload identity, through the TokenRequest API (the token the
//! pipeline presents to Entra as a client assertion). Never cached here: the pipeline caches
//! the Entra token it buys with it.

use futures::future::BoxFuture;
use futures::FutureExt;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use kube::Client;

use crate::azure::{AzureError, ServiceAccountTokenSource};
use crate::state::token::SecretToken;

/// Lifetime asked for; the assertion is used once, right away (600 s is the API minimum).
const EXPIRATION_SECONDS: i64 = 600;

pub struct TokenRequests {
    client: Client,
    timeout: std::time::Duration,
}

impl TokenRequests {
    pub fn new(client: Client, timeout: std::time::Duration) -> Self {
        Self { client, timeout }
    }
}

impl ServiceAccountTokenSource for TokenRequests {
    fn token(
        &self,
        namespace: &str,
        name: &str,
        audience: &str,
    ) -> BoxFuture<'_, Result<SecretToken, AzureError>> {
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), namespace);
        let name = name.to_string();
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![audience.to_string()],
                expiration_seconds: Some(EXPIRATION_SECONDS),
                bound_object_ref: None,
            },
            ..Default::default()
        };
        let timeout = self.timeout;
        async move {
            let pp = PostParams::default();
            let call = api.create_token_request(&name, &pp, &request);
            match tokio::time::timeout(timeout, call).await {
                Ok(Ok(tr)) => tr
                    .status
                    .map(|s| SecretToken::new(s.token))
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| {
                        AzureError::service_account_token(
                            format!("TokenRequest for service account {name:?} returned no token"),
                            true,
                        )
                    }),
                Ok(Err(kube::Error::Api(s))) => Err(AzureError::service_account_token(
                    format!(
                        "TokenRequest for service account {name:?} failed: {} ({})",
                        s.message, s.code
                    ),
                    s.code >= 500 || s.code == 429,
                )),
                Ok(Err(e)) => Err(AzureError::service_account_token(
                    format!("TokenRequest for service account {name:?} failed: {e}"),
                    true,
                )),
                Err(_) => Err(AzureError::service_account_token(
                    format!("TokenRequest for service account {name:?} timed out"),
                    true,
                )),
            }
        }
        .boxed()
    }
}
