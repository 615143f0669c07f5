//! Entra ID client-credentials with a jwt-bearer client assertion (workload identity
//! federation): `POST {authority}/{tenant}/oauth2/v2.0/token` (AZURE.md §2).
//!
//! The token endpoint is addressed directly rather than through
//! `/{tenant}/v2.0/.well-known/openid-configuration` discovery: every Azure cloud (and an
//! air-gapped Entra) serves it at that path, and skipping discovery saves a round trip per
//! token. The tenant id is validated (`^[0-9a-zA-Z-.]+$`, not only dots) so it cannot alter the
//! path.

use std::sync::Arc;

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
use super::imds::parse_success;
use super::IdentityToken;
use crate::state::token::SecretToken;

const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// One Entra token request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntraTokenRequest {
    /// `https://host[:port]`, no trailing slash (see [`super::Cloud::authority`]).
    pub authority: String,
    pub tenant_id: String,
    pub client_id: String,
    /// `<audience>/.default`.
    pub scope: String,
    /// The ServiceAccount token.
    pub assertion: SecretToken,
}

/// The Entra hop, substitutable in tests.
pub trait EntraApi: Send + Sync + 'static {
    /// One attempt (no retry, no limiter: the pipeline adds those).
    fn token<'a>(
        &'a self,
        request: &'a EntraTokenRequest,
    ) -> BoxFuture<'a, Result<IdentityToken, AzureError>>;
}

/// Refuses tenant ids that are not plain Entra tenant names/GUIDs.
pub fn validate_tenant_id(tenant_id: &str) -> Result<(), AzureError> {
    let ok = !tenant_id.is_empty()
        && tenant_id.len() <= 256
        && tenant_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        && !tenant_id.chars().all(|c| c == '.');
    if ok {
        Ok(())
    } else {
        Err(AzureError::new(
            ErrorKind::InvalidRequest,
            format!(
                "tenant id {tenant_id:?} is invalid: only letters, digits, '-' and '.' are allowed"
            ),
        ))
    }
}

/// Entra over reqwest.
#[derive(Debug, Clone)]
pub struct ReqwestEntra {
    client: reqwest::Client,
    clock: Arc<dyn WallClock>,
}

impl ReqwestEntra {
    pub fn new(client: reqwest::Client, clock: Arc<dyn WallClock>) -> Self {
        Self { client, clock }
    }

    async fn fetch(&self, request: &EntraTokenRequest) -> Result<IdentityToken, AzureError> {
        validate_tenant_id(&request.tenant_id)?;
        let what = format!(
            "Entra token request (client {} in tenant {})",
            request.client_id, request.tenant_id
        );
        let url = format!(
            "{}/{}/oauth2/v2.0/token",
            request.authority.trim_end_matches('/'),
            request.tenant_id
        );
        let response = self
            .client
            .post(url)
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", request.client_id.as_str()),
                ("client_assertion_type", CLIENT_ASSERTION_TYPE),
                ("client_assertion", request.assertion.expose()),
                ("scope", request.scope.as_str()),
            ])
            .send()
            .await
            .map_err(|e| super::error::from_transport(&what, &e))?;
        let status = response.status();
        let quotable = quotable_host(response.url().host_str().unwrap_or_default());
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, self.clock.now()));
        let body = read_body(response, MAX_BODY, &what).await?;
        if status != StatusCode::OK {
            let body = if quotable { body } else { codes_only(&body) };
            return Err(classify(
                &what,
                status.as_u16(),
                &body,
                retry_after,
                &request.assertion,
            ));
        }
        parse_success(&what, &body, self.clock.now())
    }
}

impl EntraApi for ReqwestEntra {
    fn token<'a>(
        &'a self,
        request: &'a EntraTokenRequest,
    ) -> BoxFuture<'a, Result<IdentityToken, AzureError>> {
        self.fetch(request).boxed()
    }
}

#[derive(Deserialize, Default)]
struct Failure {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
    #[serde(default)]
    error_codes: Vec<i64>,
}

/// The AADSTS code: `error_codes[0]`, else the first `AADSTS<digits>` in the description.
fn aadsts_code(failure: &Failure) -> Option<i64> {
    if let Some(code) = failure.error_codes.first() {
        return Some(*code);
    }
    let at = failure.error_description.find("AADSTS")?;
    let digits: String = failure.error_description[at + 6..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// A foreign authority's error body reduced to its bare `error` code and numeric AADSTS codes
/// (see [`quotable_host`]).
fn codes_only(body: &[u8]) -> Vec<u8> {
    let failure: Failure = serde_json::from_slice(body).unwrap_or_default();
    match bare_code(&failure.error) {
        Some(code) => serde_json::json!({
            "error": code,
            "error_description": "(not quoted: not an Azure authority)",
            "error_codes": failure.error_codes,
        })
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
    assertion: &SecretToken,
) -> AzureError {
    let failure: Failure = serde_json::from_slice(body).unwrap_or_default();
    let detail = if failure.error.is_empty() && failure.error_description.is_empty() {
        quote_body(&String::from_utf8_lossy(body), &[assertion])
    } else {
        // Entra appends "Trace ID: … Timestamp: …" after CRLFs; keep the first line.
        let first_line = failure.error_description.lines().next().unwrap_or_default();
        quote_body(&format!("{}: {first_line}", failure.error), &[assertion])
    };
    let message = if detail.is_empty() {
        format!("{what} failed with HTTP {status}")
    } else {
        format!("{what} failed with HTTP {status}: {detail}")
    };
    let mapped = match aadsts_code(&failure) {
        Some(70021) => Some((ErrorKind::FederationMismatch, hints::FEDERATION_MISMATCH)),
        Some(700016) => Some((ErrorKind::IdentityNotFound, hints::APP_NOT_IN_TENANT)),
        Some(90002) => Some((ErrorKind::TenantNotFound, hints::TENANT_NOT_FOUND)),
        Some(700024) => Some((ErrorKind::AssertionExpired, hints::ASSERTION_EXPIRED)),
        Some(70011) => Some((ErrorKind::InvalidScope, hints::INVALID_SCOPE)),
        _ => None,
    };
    let error = match mapped {
        // Throttling and outages win over whatever code the body carries.
        Some((kind, hint)) if !kind_for_status(status).retryable_by_default() => {
            AzureError::new(kind, message).with_hint(hint)
        }
        _ => AzureError::new(kind_for_status(status), message),
    };
    error.with_retry_after(retry_after).with_status(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aadsts_codes_are_mapped() {
        let canary = SecretToken::new("CANARY-assertion-value");
        let cases: [(u16, String, &str, &str); 9] = [
            (400, r#"{"error":"invalid_request","error_description":"AADSTS70021: No matching federated identity record found for presented assertion.\r\nTrace ID: x","error_codes":[70021]}"#.into(), "FederationMismatch", "issuer"),
            (401, r#"{"error":"unauthorized_client","error_description":"AADSTS70021: No matching federated identity record found"}"#.into(), "FederationMismatch", "subject"),
            (400, r#"{"error":"unauthorized_client","error_description":"AADSTS700016: Application with identifier 'x' was not found","error_codes":[700016]}"#.into(), "IdentityNotFound", "tenant"),
            (400, r#"{"error":"invalid_tenant","error_description":"AADSTS90002: Tenant 'x' not found.","error_codes":[90002]}"#.into(), "TenantNotFound", "tenant id"),
            (401, r#"{"error":"invalid_client","error_description":"AADSTS700024: Client assertion is not within its valid time range.","error_codes":[700024]}"#.into(), "AssertionExpired", "clock"),
            (400, r#"{"error":"invalid_scope","error_description":"AADSTS70011: The provided value for the input parameter 'scope' is not valid.","error_codes":[70011]}"#.into(), "InvalidScope", "resourceManagerAudience"),
            (429, r#"{"error":"temporarily_unavailable","error_codes":[70021]}"#.into(), "Throttled", "throttling"),
            (503, "<html>Service Unavailable</html>".into(), "AzureUnavailable", "retries"),
            (400, r#"{"error":"invalid_request","error_description":"bad assertion CANARY-assertion-value"}"#.into(), "InvalidRequest", "malformed"),
        ];
        for (status, body, reason, hint) in cases {
            let err = classify("Entra", status, body.as_bytes(), None, &canary);
            assert_eq!(err.reason(), reason, "{body}");
            assert!(err.hint().contains(hint), "{reason}: {}", err.hint());
            let rendered = format!("{err} {err:?} {}", err.user_message());
            assert!(!rendered.contains("CANARY"), "{rendered}");
            assert!(!rendered.contains("Trace ID"), "{rendered}");
        }
    }

    #[test]
    fn tenant_ids_cannot_alter_the_path() {
        for ok in [
            "72f988bf-86f1-41af-91ab-2d7cd011db47",
            "contoso.onmicrosoft.com",
        ] {
            assert!(validate_tenant_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "..", ".", "a/b", "a?b", "x%2F", "tenant id"] {
            assert!(validate_tenant_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_foreign_authority_gets_no_words_in_status_but_keeps_its_code() {
        let canary = SecretToken::new("assertion-canary");
        let hostile = br#"{"error":"invalid_client","error_description":"AADSTS70021: call +1-555 or visit https://evil.example","error_codes":[70021]}"#;
        let err = classify("Entra", 400, &codes_only(hostile), None, &canary);
        assert_eq!(err.reason(), "FederationMismatch");
        let text = err.to_string();
        assert!(
            !text.contains("evil.example") && !text.contains("555"),
            "{text}"
        );
        let text = classify(
            "Entra",
            400,
            &codes_only(b"free text https://evil.example"),
            None,
            &canary,
        )
        .to_string();
        assert!(!text.contains("evil"), "{text}");
    }
}
