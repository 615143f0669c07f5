//! The ACR token server on the registry itself (AZURE.md §3): `POST /oauth2/exchange` (identity
//! token → ACR refresh token), `POST /oauth2/token` (refresh token → scoped access token), and
//! the docker-style Basic-auth `GET /oauth2/token` used to verify a credential the way a
//! kubelet will use it.
//!
//! The host is always addressed as `https://<server>`; the pipeline checks it against the
//! allowed suffixes before calling any method here.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use futures::future::BoxFuture;
use futures::FutureExt;
use reqwest::header::RETRY_AFTER;
use reqwest::StatusCode;
use serde::Deserialize;

use super::clock::WallClock;
use super::error::{
    bare_code, hints, kind_for_status, parse_retry_after, quotable_host, quote_body, AzureError,
    ErrorKind,
};
use super::http_client::{read_body, MAX_BODY};
use crate::state::token::SecretToken;

/// The api-version the Go SDK sends (ACR ignores it; kept for fidelity).
const ACR_API_VERSION: &str = "2021-07-01";
/// The null GUID that tells ACR the password is an ACR token (dockercfg username).
pub const ACR_TOKEN_USERNAME: &str = "00000000-0000-0000-0000-000000000000";

/// `POST /oauth2/exchange`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeRequest {
    /// `host[:port]`; also sent as `service`.
    pub server: String,
    pub identity_token: SecretToken,
}

/// `POST /oauth2/token`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessTokenRequest {
    pub server: String,
    /// Space-separated scopes, sent as one form field.
    pub scope: String,
    pub refresh_token: SecretToken,
}

/// `GET /oauth2/token` with Basic `<null GUID>:<credential>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyRequest {
    pub server: String,
    /// One `scope` query parameter each.
    pub scopes: Vec<String>,
    /// An ACR refresh or access token, as stored in the pull secret.
    pub credential: SecretToken,
}

/// The ACR hop, substitutable in tests. Each method is one attempt.
pub trait AcrApi: Send + Sync + 'static {
    fn exchange<'a>(
        &'a self,
        request: &'a ExchangeRequest,
    ) -> BoxFuture<'a, Result<SecretToken, AzureError>>;

    fn token<'a>(
        &'a self,
        request: &'a AccessTokenRequest,
    ) -> BoxFuture<'a, Result<SecretToken, AzureError>>;

    fn verify<'a>(
        &'a self,
        request: &'a VerifyRequest,
    ) -> BoxFuture<'a, Result<SecretToken, AzureError>>;
}

/// ACR over reqwest.
#[derive(Debug, Clone)]
pub struct ReqwestAcr {
    client: reqwest::Client,
    clock: Arc<dyn WallClock>,
}

#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    refresh_token: String,
    #[serde(default)]
    access_token: String,
    #[serde(default)]
    token: String,
}

#[derive(Deserialize, Default)]
struct Failure {
    #[serde(default)]
    errors: Vec<FailureItem>,
}

#[derive(Deserialize, Default)]
struct FailureItem {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

fn endpoint(server: &str, path: &str) -> Result<reqwest::Url, AzureError> {
    reqwest::Url::parse(&format!("https://{server}{path}")).map_err(|_| {
        AzureError::new(
            ErrorKind::InvalidRequest,
            format!("registry server {server:?} is not a valid host"),
        )
    })
}

impl ReqwestAcr {
    pub fn new(client: reqwest::Client, clock: Arc<dyn WallClock>) -> Self {
        Self { client, clock }
    }

    async fn send(
        &self,
        what: &str,
        builder: reqwest::RequestBuilder,
        sent: &[&SecretToken],
    ) -> Result<TokenResponse, AzureError> {
        let response = builder
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| super::error::from_transport(what, &e))?;
        let status = response.status();
        let quotable = quotable_host(response.url().host_str().unwrap_or_default());
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, self.clock.now()));
        let body = read_body(response, MAX_BODY, what).await?;
        if status != StatusCode::OK {
            let body = if quotable { body } else { codes_only(&body) };
            return Err(classify(what, status.as_u16(), &body, retry_after, sent));
        }
        serde_json::from_slice(&body).map_err(|_| {
            AzureError::new(
                ErrorKind::InvalidResponse,
                format!("{what}: response is not the expected JSON"),
            )
        })
    }

    async fn do_exchange(&self, request: &ExchangeRequest) -> Result<SecretToken, AzureError> {
        let what = format!("ACR token exchange at {}", request.server);
        let url = endpoint(&request.server, "/oauth2/exchange")?;
        let builder = self
            .client
            .post(url)
            .query(&[("api-version", ACR_API_VERSION)])
            .form(&[
                ("grant_type", "access_token"),
                ("service", request.server.as_str()),
                ("access_token", request.identity_token.expose()),
            ]);
        let response = self
            .send(&what, builder, &[&request.identity_token])
            .await?;
        non_empty(&what, response.refresh_token, "refresh_token")
    }

    async fn do_token(&self, request: &AccessTokenRequest) -> Result<SecretToken, AzureError> {
        let what = format!("ACR access token request at {}", request.server);
        let url = endpoint(&request.server, "/oauth2/token")?;
        let builder = self
            .client
            .post(url)
            .query(&[("api-version", ACR_API_VERSION)])
            .form(&[
                ("grant_type", "refresh_token"),
                ("service", request.server.as_str()),
                ("scope", request.scope.as_str()),
                ("refresh_token", request.refresh_token.expose()),
            ]);
        let response = self.send(&what, builder, &[&request.refresh_token]).await?;
        non_empty(&what, response.access_token, "access_token")
    }

    async fn do_verify(&self, request: &VerifyRequest) -> Result<SecretToken, AzureError> {
        let what = format!("ACR credential check at {}", request.server);
        let mut url = endpoint(&request.server, "/oauth2/token")?;
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("service", &request.server);
            query.append_pair("account", ACR_TOKEN_USERNAME);
            for scope in &request.scopes {
                query.append_pair("scope", scope);
            }
        }
        let basic = STANDARD.encode(format!(
            "{ACR_TOKEN_USERNAME}:{}",
            request.credential.expose()
        ));
        let builder = self
            .client
            .get(url)
            .header(reqwest::header::AUTHORIZATION, format!("Basic {basic}"));
        let response = self.send(&what, builder, &[&request.credential]).await?;
        let token = if response.access_token.is_empty() {
            response.token
        } else {
            response.access_token
        };
        non_empty(&what, token, "access_token")
    }
}

fn non_empty(what: &str, value: String, field: &str) -> Result<SecretToken, AzureError> {
    if value.is_empty() {
        Err(AzureError::new(
            ErrorKind::InvalidResponse,
            format!("{what}: response has no {field}"),
        ))
    } else {
        Ok(SecretToken::new(value))
    }
}

impl AcrApi for ReqwestAcr {
    fn exchange<'a>(
        &'a self,
        request: &'a ExchangeRequest,
    ) -> BoxFuture<'a, Result<SecretToken, AzureError>> {
        self.do_exchange(request).boxed()
    }

    fn token<'a>(
        &'a self,
        request: &'a AccessTokenRequest,
    ) -> BoxFuture<'a, Result<SecretToken, AzureError>> {
        self.do_token(request).boxed()
    }

    fn verify<'a>(
        &'a self,
        request: &'a VerifyRequest,
    ) -> BoxFuture<'a, Result<SecretToken, AzureError>> {
        self.do_verify(request).boxed()
    }
}

/// A foreign registry's error body reduced to its first bare error code (see
/// [`quotable_host`]).
fn codes_only(body: &[u8]) -> Vec<u8> {
    let failure: Failure = serde_json::from_slice(body).unwrap_or_default();
    match failure.errors.first().and_then(|e| bare_code(&e.code)) {
        Some(code) => serde_json::json!({"errors": [{"code": code, "message": "(not quoted: not an Azure registry)"}]})
            .to_string()
            .into_bytes(),
        None => Vec::new(),
    }
}

pub(crate) fn classify(
    what: &str,
    status: u16,
    body: &[u8],
    retry_after: Option<std::time::Duration>,
    sent: &[&SecretToken],
) -> AzureError {
    let failure: Failure = serde_json::from_slice(body).unwrap_or_default();
    // 429s from the front door are not JSON ("Ref A: … Ref B: …"): quote whatever came.
    let detail = match failure.errors.first() {
        Some(item) => quote_body(&format!("{}: {}", item.code, item.message), sent),
        None => quote_body(&String::from_utf8_lossy(body), sent),
    };
    let message = if detail.is_empty() {
        format!("{what} failed with HTTP {status}")
    } else {
        format!("{what} failed with HTTP {status}: {detail}")
    };
    let error = match status {
        401 => AzureError::new(ErrorKind::Unauthorized, message).with_hint(hints::ACR_UNAUTHORIZED),
        403 => AzureError::new(ErrorKind::Unauthorized, message).with_hint(
            "the registry denied the request: check its network rules (firewall, private endpoint) and the identity's AcrPull role",
        ),
        404 => AzureError::new(ErrorKind::InvalidRequest, message)
            .with_hint("no ACR token endpoint at this host: check the registry server name"),
        _ => AzureError::new(kind_for_status(status), message),
    };
    error.with_retry_after(retry_after).with_status(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acr_errors_are_classified_without_tokens() {
        let sent = SecretToken::new("CANARY-identity-token");
        let cases: [(u16, &str, &str, bool); 6] = [
            (
                401,
                r#"{"errors":[{"code":"UNAUTHORIZED","message":"token CANARY-identity-token rejected"}]}"#,
                "Unauthorized",
                false,
            ),
            (
                403,
                r#"{"errors":[{"code":"DENIED","message":"client IP not allowed"}]}"#,
                "Unauthorized",
                false,
            ),
            (404, "404 page not found", "InvalidRequest", false),
            (
                429,
                "Ref A: 1234 Ref B: abc Ref C: 2024-01-01",
                "Throttled",
                true,
            ),
            (
                429,
                r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"Too many requests."}]}"#,
                "Throttled",
                true,
            ),
            (502, "", "AzureUnavailable", true),
        ];
        for (status, body, reason, retryable) in cases {
            let err = classify("ACR", status, body.as_bytes(), None, &[&sent]);
            assert_eq!(
                (err.reason(), err.retryable()),
                (reason, retryable),
                "{body}"
            );
            assert!(!format!("{err:?}").contains("CANARY"));
        }
        let err = classify("ACR", 401, b"", None, &[]);
        assert!(err.hint().contains("AcrPull"));
        assert!(err.hint().contains("authentication-as-ARM"));
    }

    #[test]
    fn endpoints_refuse_non_hosts() {
        assert!(endpoint("demo.azurecr.io", "/oauth2/token").is_ok());
        assert!(endpoint("demo.azurecr.io:8443", "/oauth2/token").is_ok());
        assert!(endpoint("demo azurecr", "/oauth2/token").is_err());
    }

    #[test]
    fn a_foreign_registry_gets_no_words_in_status() {
        let hostile = br#"{"errors":[{"code":"DENIED","message":"your token expired: paste it at https://evil.example/fix"}]}"#;
        let err = classify("ACR", 401, &codes_only(hostile), None, &[]);
        let text = err.to_string();
        assert!(text.contains("DENIED"), "{text}");
        assert!(!text.contains("evil.example"), "{text}");
        for body in [
            &b"<html>phish https://evil.example</html>"[..],
            br#"{"errors":[{"code":"see https://evil.example","message":"x"}]}"#,
        ] {
            let text = classify("ACR", 400, &codes_only(body), None, &[]).to_string();
            assert!(!text.contains("evil"), "{text}");
        }
        assert!(quotable_host("demo.azurecr.io"));
        assert!(quotable_host("login.microsoftonline.com."));
        assert!(!quotable_host("azurecr.io.evil.example"));
        assert!(!quotable_host("login.contoso.local"));
    }
}
