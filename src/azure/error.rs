//! The pipeline's one error type and its classification.
//!
//! Every failure carries a static PascalCase [`ErrorKind`] whose [`AzureError::reason`] is reused
//! verbatim as the binding's condition reason, event reason and metric label; a human hint
//! (AADSTS codes and ACR/IMDS failures mapped to what the operator should check); whether it is
//! worth retrying; and the server's `Retry-After`, if any.
//!
//! Messages never contain a token: request bodies are never echoed, and response bodies are
//! quoted only through [`quote_body`], which removes the tokens we sent, strips anything
//! JWT-shaped or long enough to be a credential, and truncates.

use std::fmt;
use std::time::Duration;

use jiff::Timestamp;

use crate::state::token::SecretToken;

/// The static classification of a pipeline failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// IMDS: the identity is not assigned to the node; Entra: the client id is not in the tenant.
    IdentityNotFound,
    /// Entra: the tenant does not exist (AADSTS90002).
    TenantNotFound,
    /// Entra: no federated identity credential matches the ServiceAccount token (AADSTS70021).
    FederationMismatch,
    /// Entra: the ServiceAccount token is outside its validity window (AADSTS700024).
    AssertionExpired,
    /// Entra: the requested scope/audience is not valid (AADSTS70011).
    InvalidScope,
    /// 429 from any hop.
    Throttled,
    /// 5xx, IMDS 404/410, connection failures and timeouts.
    AzureUnavailable,
    /// ACR or Entra refused the credential (401/403 without a more precise mapping).
    Unauthorized,
    /// A 4xx the server attributes to the request, or a request acrpull refuses to build.
    InvalidRequest,
    /// The registry host is not under an allowed suffix; no token was sent.
    RegistryNotAllowed,
    /// An air-gapped authority host or audience the operator did not allow; nothing was sent.
    AuthorityNotAllowed,
    /// The Kubernetes TokenRequest for the asserting ServiceAccount failed.
    ServiceAccountTokenFailed,
    /// A success response that could not be read (bad JSON, missing token, unreadable JWT).
    InvalidResponse,
    /// The pipeline's own configuration is unusable (bad CA bundle, bad URL, zero limits, TLS trust).
    InvalidConfig,
}

impl ErrorKind {
    /// The PascalCase reason (condition reason, event reason, metric label).
    pub fn reason(self) -> &'static str {
        match self {
            ErrorKind::IdentityNotFound => "IdentityNotFound",
            ErrorKind::TenantNotFound => "TenantNotFound",
            ErrorKind::FederationMismatch => "FederationMismatch",
            ErrorKind::AssertionExpired => "AssertionExpired",
            ErrorKind::InvalidScope => "InvalidScope",
            ErrorKind::Throttled => "Throttled",
            ErrorKind::AzureUnavailable => "AzureUnavailable",
            ErrorKind::Unauthorized => "Unauthorized",
            ErrorKind::InvalidRequest => "InvalidRequest",
            ErrorKind::RegistryNotAllowed => "RegistryNotAllowed",
            ErrorKind::AuthorityNotAllowed => "AuthorityNotAllowed",
            ErrorKind::ServiceAccountTokenFailed => "ServiceAccountTokenFailed",
            ErrorKind::InvalidResponse => "InvalidResponse",
            ErrorKind::InvalidConfig => "InvalidConfig",
        }
    }

    /// Whether a failure of this kind is transient by default.
    pub fn retryable_by_default(self) -> bool {
        matches!(self, ErrorKind::Throttled | ErrorKind::AzureUnavailable)
    }

    /// Every kind, for exhaustive tests and pre-registering metric labels.
    pub const ALL: [ErrorKind; 14] = [
        ErrorKind::IdentityNotFound,
        ErrorKind::TenantNotFound,
        ErrorKind::FederationMismatch,
        ErrorKind::AssertionExpired,
        ErrorKind::InvalidScope,
        ErrorKind::Throttled,
        ErrorKind::AzureUnavailable,
        ErrorKind::Unauthorized,
        ErrorKind::InvalidRequest,
        ErrorKind::RegistryNotAllowed,
        ErrorKind::AuthorityNotAllowed,
        ErrorKind::ServiceAccountTokenFailed,
        ErrorKind::InvalidResponse,
        ErrorKind::InvalidConfig,
    ];

    fn default_hint(self) -> &'static str {
        match self {
            ErrorKind::IdentityNotFound => hints::IDENTITY_NOT_FOUND,
            ErrorKind::TenantNotFound => hints::TENANT_NOT_FOUND,
            ErrorKind::FederationMismatch => hints::FEDERATION_MISMATCH,
            ErrorKind::AssertionExpired => hints::ASSERTION_EXPIRED,
            ErrorKind::InvalidScope => hints::INVALID_SCOPE,
            ErrorKind::Throttled => {
                "Azure is throttling token requests; acrpull backs off and retries"
            }
            ErrorKind::AzureUnavailable => {
                "the Azure endpoint failed or did not answer in time; acrpull retries with backoff"
            }
            ErrorKind::Unauthorized => hints::ACR_UNAUTHORIZED,
            ErrorKind::InvalidRequest => {
                "the request was refused as malformed: check the binding's identity, server and scope"
            }
            ErrorKind::RegistryNotAllowed => {
                "the registry is not under an allowed suffix (--allowed-acr-server-suffixes); no token was sent"
            }
            ErrorKind::AuthorityNotAllowed => {
                "the air-gapped authority or audience is not allowed (--allowed-entra-authority-hosts, --allowed-resource-manager-audiences); nothing was sent"
            }
            ErrorKind::ServiceAccountTokenFailed => {
                "the controller could not request a token for the ServiceAccount: check that it exists and that the controller may create serviceaccounts/token for the configured audience"
            }
            ErrorKind::InvalidResponse => {
                "Azure answered with a response acrpull could not read"
            }
            ErrorKind::InvalidConfig => "check the controller's Azure endpoint and TLS configuration",
        }
    }
}

impl From<ErrorKind> for crate::state::reason::Reason {
    fn from(kind: ErrorKind) -> Self {
        use crate::state::reason::Reason;
        match kind {
            ErrorKind::IdentityNotFound => Reason::IdentityNotFound,
            ErrorKind::TenantNotFound => Reason::TenantNotFound,
            ErrorKind::FederationMismatch => Reason::FederationMismatch,
            ErrorKind::AssertionExpired => Reason::AssertionExpired,
            ErrorKind::InvalidScope => Reason::InvalidScope,
            ErrorKind::Throttled => Reason::Throttled,
            ErrorKind::AzureUnavailable => Reason::AzureUnavailable,
            ErrorKind::Unauthorized => Reason::Unauthorized,
            ErrorKind::InvalidRequest => Reason::InvalidRequest,
            ErrorKind::RegistryNotAllowed => Reason::RegistryNotAllowed,
            ErrorKind::AuthorityNotAllowed => Reason::AuthorityNotAllowed,
            ErrorKind::ServiceAccountTokenFailed => Reason::ServiceAccountTokenFailed,
            ErrorKind::InvalidResponse => Reason::InvalidResponse,
            ErrorKind::InvalidConfig => Reason::InvalidConfig,
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

/// Human hints for the failures an operator can fix.
pub mod hints {
    pub const FEDERATION_MISMATCH: &str = "AADSTS70021: no federated identity credential matches the ServiceAccount token; check the issuer (the cluster's OIDC issuer URL), subject (system:serviceaccount:<namespace>:<name>) and audience (--service-account-token-audience) of the federated credential";
    pub const APP_NOT_IN_TENANT: &str = "AADSTS700016: the application (client id) was not found in the tenant; check the client id and the tenant id";
    pub const TENANT_NOT_FOUND: &str =
        "AADSTS90002: the tenant was not found; check the tenant id and the cloud environment";
    pub const ASSERTION_EXPIRED: &str = "AADSTS700024: the ServiceAccount token is not within its valid time range; check the clocks of the cluster and the token lifetime";
    pub const INVALID_SCOPE: &str = "AADSTS70011: the requested scope is not valid; check the environment and, for an air-gapped cloud, cloudConfig.resourceManagerAudience";
    pub const IDENTITY_NOT_FOUND: &str = "the managed identity is not assigned to this node's VM or VMSS; assign it or check the client id / resource id";
    pub const ACR_UNAUTHORIZED: &str = "the identity lacks the AcrPull role on the registry, or the registry has authentication-as-ARM disabled (then request identity tokens for the ACR audience)";
}

/// A classified failure of the token pipeline. `Display` is a one-line message safe for logs,
/// events and status; [`AzureError::hint`] says what to check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct AzureError {
    kind: ErrorKind,
    message: String,
    hint: Option<&'static str>,
    retryable: bool,
    retry_after: Option<Duration>,
    status: Option<u16>,
}

impl AzureError {
    /// A new error; `retryable` defaults from the kind.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            hint: None,
            retryable: kind.retryable_by_default(),
            retry_after: None,
            status: None,
        }
    }

    /// A failed ServiceAccount TokenRequest (for the Kubernetes layer's
    /// [`super::ServiceAccountTokenSource`]). `retryable` for 5xx/timeouts/409, not for 403/404.
    pub fn service_account_token(message: impl Into<String>, retryable: bool) -> Self {
        Self::new(ErrorKind::ServiceAccountTokenFailed, message).with_retryable(retryable)
    }

    pub fn with_hint(mut self, hint: &'static str) -> Self {
        self.hint = Some(hint);
        self
    }

    pub fn with_retryable(mut self, retryable: bool) -> Self {
        self.retryable = retryable;
        self
    }

    pub fn with_retry_after(mut self, retry_after: Option<Duration>) -> Self {
        self.retry_after = retry_after;
        self
    }

    pub fn with_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    /// Prefixes the message with context (e.g. which hop), keeping the classification.
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Static PascalCase reason (condition reason, event reason, metric label).
    pub fn reason(&self) -> &'static str {
        self.kind.reason()
    }

    /// What the operator should check.
    pub fn hint(&self) -> &'static str {
        self.hint.unwrap_or_else(|| self.kind.default_hint())
    }

    /// Whether retrying the same request later may succeed.
    pub fn retryable(&self) -> bool {
        self.retryable
    }

    /// The server's `Retry-After` (or the documented wait, e.g. IMDS 410), if any.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The HTTP status that produced this error, if one did.
    pub fn status(&self) -> Option<u16> {
        self.status
    }

    /// Message and hint in one line, for `status.error`.
    pub fn user_message(&self) -> String {
        format!("{} ({})", self.message, self.hint())
    }
}

/// The classification every hop shares for a non-success status; hops refine 400/401/404.
pub(crate) fn kind_for_status(status: u16) -> ErrorKind {
    match status {
        429 => ErrorKind::Throttled,
        408 | 500..=599 => ErrorKind::AzureUnavailable,
        401 | 403 => ErrorKind::Unauthorized,
        _ => ErrorKind::InvalidRequest,
    }
}

/// Classifies a transport failure (no HTTP status).
pub(crate) fn from_transport(what: &str, err: &reqwest::Error) -> AzureError {
    let detail = error_chain(err);
    if err.is_timeout() {
        return AzureError::new(
            ErrorKind::AzureUnavailable,
            format!("{what}: timed out ({detail})"),
        );
    }
    // An untrusted or mismatched certificate will not fix itself by retrying.
    let lower = detail.to_ascii_lowercase();
    if lower.contains("certificate") || lower.contains("unknownissuer") {
        return AzureError::new(
            ErrorKind::InvalidConfig,
            format!("{what}: TLS verification failed ({detail})"),
        )
        .with_hint("the server's certificate is not trusted for its name: check the extra CA bundle and the host name");
    }
    AzureError::new(ErrorKind::AzureUnavailable, format!("{what}: {detail}"))
}

/// `err` and its sources, joined. reqwest errors mention the URL, which never holds a token.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    quote_body(&out, &[])
}

/// Parses `Retry-After`: delay-seconds or an HTTP-date (relative to `now`).
pub(crate) fn parse_retry_after(value: &str, now: Timestamp) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    if let Ok(seconds) = value.parse::<f64>() {
        return Duration::try_from_secs_f64(seconds).ok();
    }
    let at = jiff::fmt::rfc2822::parse(value).ok()?.timestamp();
    let wait = at.duration_since(now);
    Some(Duration::try_from(wait).unwrap_or(Duration::ZERO))
}

/// Whether error bodies from `host` may be quoted into status and Events: only Azure's own
/// Entra authorities and ACR login servers. Any other host (an operator's air-gapped authority,
/// a registry under a custom suffix) is not Microsoft's service, and what it answers — text
/// that could pose as instructions to the user, links, or credentials it collected elsewhere —
/// would be shown to whoever can read the binding. From those, only a bare error code is kept.
pub(crate) fn quotable_host(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    const AUTHORITIES: [&str; 3] = [
        "login.microsoftonline.com",
        "login.microsoftonline.us",
        "login.chinacloudapi.cn",
    ];
    const REGISTRY_SUFFIXES: [&str; 3] = [".azurecr.io", ".azurecr.us", ".azurecr.cn"];
    AUTHORITIES.contains(&host.as_str()) || REGISTRY_SUFFIXES.iter().any(|s| host.ends_with(s))
}

/// `code` when it is a bare error code (letters, digits, `_`, at most 64 characters).
pub(crate) fn bare_code(code: &str) -> Option<&str> {
    (!code.is_empty()
        && code.len() <= 64
        && code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
    .then_some(code)
}

/// Longest quoted excerpt of a response body.
const MAX_QUOTE: usize = 300;
/// Runs of token-alphabet characters at least this long are treated as credentials.
const LONG_RUN: usize = 48;

/// A response body made safe to quote: the tokens we sent (raw and form-encoded) are removed,
/// anything JWT-shaped or credential-long is replaced by `<redacted>`, control characters are
/// flattened and the result is truncated.
pub(crate) fn quote_body(body: &str, sent: &[&SecretToken]) -> String {
    let mut text = body.to_string();
    for token in sent {
        let raw = token.expose();
        if raw.len() >= 4 {
            text = text.replace(raw, "<redacted>");
            let encoded = form_encode(raw);
            if encoded != raw {
                text = text.replace(&encoded, "<redacted>");
            }
        }
    }
    let text = redact_token_shapes(&text);
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let flat = flat.trim();
    match flat.char_indices().nth(MAX_QUOTE) {
        Some((cut, _)) => format!("{}…", &flat[..cut]),
        None => flat.to_string(),
    }
}

fn form_encode(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for b in raw.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Replaces runs of the base64url/base64 alphabet (plus `.`) that look like a JWT (an `eyJ`
/// header segment followed by a dot) or are long enough to be an opaque credential.
fn redact_token_shapes(text: &str) -> String {
    fn in_alphabet(c: char) -> bool {
        c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+' | '/' | '=' | '%')
    }
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        // Every JWS/JWE header is a JSON object, so its base64url encoding starts with `eyJ`.
        let looks_like_jwt = run.contains("eyJ") && run.contains('.');
        if looks_like_jwt || run.len() >= LONG_RUN {
            out.push_str("<redacted>");
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in text.chars() {
        if in_alphabet(c) {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_static_pascal_case_and_unique() {
        let mut seen = std::collections::HashSet::new();
        for kind in ErrorKind::ALL {
            let reason = kind.reason();
            assert!(reason
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_uppercase()));
            assert!(
                reason.chars().all(|c| c.is_ascii_alphanumeric()),
                "{reason}"
            );
            assert!(seen.insert(reason), "duplicate {reason}");
            assert!(!AzureError::new(kind, "x").hint().is_empty());
            // The binding's reason is the same word.
            assert_eq!(crate::state::reason::Reason::from(kind).as_str(), reason);
        }
    }

    #[test]
    fn quoting_removes_tokens_and_truncates() {
        let sent = SecretToken::new("plain canary/with+chars");
        let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJleHAiOjF9.c2lnbmF0dXJl";
        let body = format!(
            "{{\"error\":\"invalid_request\",\"error_description\":\"AADSTS70021: bad assertion {jwt} echo plain canary/with+chars and plain+canary%2Fwith%2Bchars trace 255d1aef-0000-4000-8000-000000000000\"}}"
        );
        let quoted = quote_body(&body, &[&sent]);
        assert!(!quoted.contains("canary"), "{quoted}");
        assert!(!quoted.contains("eyJ"), "{quoted}");
        assert!(quoted.contains("AADSTS70021"));
        assert!(quoted.contains("255d1aef-0000-4000-8000-000000000000"));
        let long = "x ".repeat(1000);
        assert!(quote_body(&long, &[]).chars().count() <= MAX_QUOTE + 1);
        let opaque = "A".repeat(LONG_RUN);
        assert_eq!(quote_body(&opaque, &[]), "<redacted>");
    }

    #[test]
    fn retry_after_forms() {
        let now: Timestamp = "2015-10-21T07:27:00Z"
            .parse()
            .unwrap_or(Timestamp::UNIX_EPOCH);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("1.5", now),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:20:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn status_classification() {
        assert_eq!(kind_for_status(429), ErrorKind::Throttled);
        assert_eq!(kind_for_status(503), ErrorKind::AzureUnavailable);
        assert_eq!(kind_for_status(401), ErrorKind::Unauthorized);
        assert_eq!(kind_for_status(400), ErrorKind::InvalidRequest);
        assert!(AzureError::new(ErrorKind::Throttled, "x").retryable());
        assert!(!AzureError::new(ErrorKind::Unauthorized, "x").retryable());
    }
}
