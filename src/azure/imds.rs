//! IMDS managed-identity tokens: `GET {base}/metadata/identity/oauth2/token?api-version=2018-02-01
//! &resource=…&client_id=…|msi_res_id=…` with `Metadata: true` (AZURE.md §1).
//!
//! IMDS encodes every JSON primitive as a string, but clients in the wild also see numbers, so
//! `expires_on`/`expires_in` accept both; `expires_on` wins, then `expires_in`, then the
//! token's own `exp`.

use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;
use jiff::Timestamp;
use reqwest::header::RETRY_AFTER;
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::Value;

use super::clock::WallClock;
use super::error::{hints, kind_for_status, parse_retry_after, quote_body, AzureError, ErrorKind};
use super::http_client::{read_body, MAX_BODY};
use super::IdentityToken;
use crate::state::jwt;
use crate::state::token::SecretToken;

/// Default IMDS base URL.
pub const DEFAULT_IMDS_BASE_URL: &str = "http://169.254.169.254";
const IMDS_PATH: &str = "/metadata/identity/oauth2/token";
const IMDS_API_VERSION: &str = "2018-02-01";
/// IMDS says a 410 resolves "within 70 seconds"; MSAL.NET retries every 10 s.
const GONE_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

/// Which user-assigned identity IMDS should issue for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ImdsSelector {
    ClientId(String),
    ResourceId(String),
}

/// One IMDS token request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImdsTokenRequest {
    /// The App ID URI of the audience (no `/.default`).
    pub resource: String,
    pub selector: ImdsSelector,
}

/// The IMDS hop, substitutable in tests.
pub trait ImdsApi: Send + Sync + 'static {
    /// One attempt (no retry, no limiter: the pipeline adds those).
    fn token<'a>(
        &'a self,
        request: &'a ImdsTokenRequest,
    ) -> BoxFuture<'a, Result<IdentityToken, AzureError>>;
}

/// IMDS over reqwest.
#[derive(Debug, Clone)]
pub struct ReqwestImds {
    client: reqwest::Client,
    endpoint: reqwest::Url,
    clock: Arc<dyn WallClock>,
}

impl ReqwestImds {
    /// `base_url` is scheme + host (+ port), e.g. `http://169.254.169.254`.
    pub fn new(
        client: reqwest::Client,
        base_url: &str,
        clock: Arc<dyn WallClock>,
    ) -> Result<Self, AzureError> {
        let invalid = |why: &str| {
            AzureError::new(
                ErrorKind::InvalidConfig,
                format!("IMDS base URL {base_url:?} is invalid: {why}"),
            )
        };
        let base = reqwest::Url::parse(base_url).map_err(|_| invalid("not a URL"))?;
        if !matches!(base.scheme(), "http" | "https") || base.host_str().is_none() {
            return Err(invalid("needs an http(s) scheme and a host"));
        }
        let endpoint = base
            .join(IMDS_PATH)
            .map_err(|_| invalid("cannot append the token path"))?;
        Ok(Self {
            client,
            endpoint,
            clock,
        })
    }

    async fn fetch(&self, request: &ImdsTokenRequest) -> Result<IdentityToken, AzureError> {
        let selector = match &request.selector {
            ImdsSelector::ClientId(id) => ("client_id", id.as_str()),
            ImdsSelector::ResourceId(id) => ("msi_res_id", id.as_str()),
        };
        let what = format!("IMDS token request ({}={})", selector.0, selector.1);
        let response = self
            .client
            .get(self.endpoint.clone())
            .query(&[
                ("api-version", IMDS_API_VERSION),
                ("resource", request.resource.as_str()),
                selector,
            ])
            .header("Metadata", "true")
            .send()
            .await
            .map_err(|e| super::error::from_transport(&what, &e))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, self.clock.now()));
        let body = read_body(response, MAX_BODY, &what).await?;
        if status != StatusCode::OK {
            return Err(classify(&what, status.as_u16(), &body, retry_after));
        }
        parse_success(&what, &body, self.clock.now())
    }
}

impl ImdsApi for ReqwestImds {
    fn token<'a>(
        &'a self,
        request: &'a ImdsTokenRequest,
    ) -> BoxFuture<'a, Result<IdentityToken, AzureError>> {
        self.fetch(request).boxed()
    }
}

#[derive(Deserialize)]
struct Success {
    #[serde(default)]
    access_token: String,
    #[serde(default)]
    expires_on: Option<Value>,
    #[serde(default)]
    expires_in: Option<Value>,
}

#[derive(Deserialize, Default)]
struct Failure {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
}

pub(crate) fn parse_success(
    what: &str,
    body: &[u8],
    now: Timestamp,
) -> Result<IdentityToken, AzureError> {
    let invalid = |why: &str| AzureError::new(ErrorKind::InvalidResponse, format!("{what}: {why}"));
    let success: Success =
        serde_json::from_slice(body).map_err(|_| invalid("response is not the expected JSON"))?;
    if success.access_token.is_empty() {
        return Err(invalid("response has no access_token"));
    }
    let token = SecretToken::new(success.access_token);
    let expires_at = success
        .expires_on
        .as_ref()
        .and_then(unix_or_rfc3339)
        .or_else(|| {
            let seconds = success.expires_in.as_ref().and_then(number_or_string)?;
            now.checked_add(jiff::SignedDuration::from_secs(seconds))
                .ok()
        })
        .or_else(|| jwt::token_times(token.expose()).ok().map(|t| t.expires_at))
        .ok_or_else(|| invalid("response has no usable expires_on/expires_in"))?;
    Ok(IdentityToken { token, expires_at })
}

/// An integer number of seconds given as a JSON number or a numeric string.
pub(crate) fn number_or_string(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => {
            let s = s.trim();
            s.parse::<i64>().ok().or_else(|| {
                s.parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite())
                    .map(|f| f as i64)
            })
        }
        _ => None,
    }
    .filter(|n| *n >= 0)
}

fn unix_or_rfc3339(value: &Value) -> Option<Timestamp> {
    if let Some(seconds) = number_or_string(value) {
        return Timestamp::from_second(seconds).ok();
    }
    value.as_str()?.trim().parse::<Timestamp>().ok()
}

fn classify(
    what: &str,
    status: u16,
    body: &[u8],
    retry_after: Option<std::time::Duration>,
) -> AzureError {
    let text = String::from_utf8_lossy(body);
    let failure: Failure = serde_json::from_slice(body).unwrap_or_default();
    let detail = if failure.error.is_empty() && failure.error_description.is_empty() {
        quote_body(&text, &[])
    } else {
        quote_body(
            &format!("{}: {}", failure.error, failure.error_description),
            &[],
        )
    };
    let message = if detail.is_empty() {
        format!("{what} failed with HTTP {status}")
    } else {
        format!("{what} failed with HTTP {status}: {detail}")
    };
    let lower = failure.error_description.to_ascii_lowercase();
    let error = match status {
        400 if lower.contains("identity not found") => {
            AzureError::new(ErrorKind::IdentityNotFound, message).with_hint(hints::IDENTITY_NOT_FOUND)
        }
        400 if failure.error == "invalid_resource"
            || lower.contains("aadsts500011")
            || lower.contains("aadsts50001") =>
        {
            AzureError::new(ErrorKind::InvalidScope, message).with_hint(
                "IMDS does not know the requested resource (audience): check the environment or ARM_RESOURCE",
            )
        }
        // IMDS is updating ("element not found" / "gone"): documented as transient.
        404 => AzureError::new(ErrorKind::AzureUnavailable, message),
        410 => AzureError::new(ErrorKind::AzureUnavailable, message)
            .with_retry_after(Some(retry_after.unwrap_or(GONE_RETRY_AFTER))),
        _ => AzureError::new(kind_for_status(status), message),
    };
    let error = if status == 410 {
        error
    } else {
        error.with_retry_after(retry_after)
    };
    error.with_status(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        Timestamp::from_second(1_700_000_000).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    #[test]
    fn expiry_fields_as_strings_or_numbers() {
        let cases = [
            (
                r#"{"access_token":"t","expires_on":"1700003600","expires_in":"1"}"#,
                1_700_003_600,
            ),
            (
                r#"{"access_token":"t","expires_on":1700003600}"#,
                1_700_003_600,
            ),
            (r#"{"access_token":"t","expires_in":"3599"}"#, 1_700_003_599),
            (r#"{"access_token":"t","expires_in":86399}"#, 1_700_086_399),
            (
                r#"{"access_token":"t","expires_on":"2023-11-14T23:13:20Z"}"#,
                1_700_003_600,
            ),
        ];
        for (body, expected) in cases {
            let token = parse_success("IMDS", body.as_bytes(), now())
                .unwrap_or_else(|e| panic!("{body}: {e}"));
            assert_eq!(token.expires_at.as_second(), expected, "{body}");
            assert_eq!(token.token.expose(), "t");
        }
        for body in [r#"{"expires_in":"1"}"#, r#"{"access_token":"t"}"#, "<html>"] {
            let err = parse_success("IMDS", body.as_bytes(), now()).expect_err(body);
            assert_eq!(err.reason(), "InvalidResponse");
        }
    }

    #[test]
    fn error_classification() {
        let cases: [(u16, &str, &str, bool); 8] = [
            (
                400,
                r#"{"error":"invalid_request","error_description":"Identity not found"}"#,
                "IdentityNotFound",
                false,
            ),
            (
                400,
                r#"{"error":"bad_request_102","error_description":"Required metadata header not specified"}"#,
                "InvalidRequest",
                false,
            ),
            (
                400,
                r#"{"error":"invalid_resource","error_description":"AADSTS500011: resource principal not found"}"#,
                "InvalidScope",
                false,
            ),
            (404, "", "AzureUnavailable", true),
            (410, "", "AzureUnavailable", true),
            (429, "", "Throttled", true),
            (
                500,
                r#"{"error":"unknown","error_description":"Failed to retrieve token"}"#,
                "AzureUnavailable",
                true,
            ),
            (403, "unreachable", "Unauthorized", false),
        ];
        for (status, body, reason, retryable) in cases {
            let err = classify("IMDS", status, body.as_bytes(), None);
            assert_eq!(
                (err.reason(), err.retryable()),
                (reason, retryable),
                "{status} {body}"
            );
            assert_eq!(err.status(), Some(status));
        }
        let gone = classify("IMDS", 410, b"", None);
        assert_eq!(gone.retry_after(), Some(GONE_RETRY_AFTER));
        let throttled = classify("IMDS", 429, b"", Some(std::time::Duration::from_secs(3)));
        assert_eq!(
            throttled.retry_after(),
            Some(std::time::Duration::from_secs(3))
        );
        assert!(classify(
            "IMDS",
            400,
            br#"{"error_description":"Identity not found"}"#,
            None
        )
        .hint()
        .contains("VM or VMSS"));
    }
}
