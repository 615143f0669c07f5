//! Reading claims from an unverified JWT (no I/O, no signature check).
//!
//! ACR returns its refresh and access tokens without `expires_in`; their lifetime is only in
//! the JWT `exp` claim. Like the Go controller (`jwt.ParseUnverified`), acrpull reads the
//! payload without checking the signature: the token came straight from the registry over
//! TLS, and acrpull only needs to know when to refresh it, not whether to trust it.
//!
//! Errors never contain the token or any part of it, so they can be logged and put into
//! a binding's status.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jiff::{SignedDuration, Timestamp};
use serde_json::Value;

/// Tokens longer than this are refused before decoding (a JWT from ACR or Entra is a few KiB).
const MAX_TOKEN_LEN: usize = 64 * 1024;

/// Why a token's claims could not be read. Never carries token material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("token is too long to be a JWT ({len} bytes)")]
    TooLong { len: usize },
    #[error("token is not a JWT: expected 3 dot-separated parts, found {found}")]
    PartCount { found: usize },
    #[error("JWT payload is not valid base64url")]
    Base64,
    #[error("JWT payload is not a JSON object")]
    NotJson,
    #[error("JWT has no `{claim}` claim")]
    MissingClaim { claim: &'static str },
    #[error("JWT `{claim}` claim is not a valid Unix time (must be a non-negative number of seconds before year 9999)")]
    InvalidTime { claim: &'static str },
    #[error("JWT `access` claim is malformed")]
    InvalidAccess,
}

/// The validity window of a token as stated by its own claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenTimes {
    /// `exp`.
    pub expires_at: Timestamp,
    /// `iat`, when present and valid.
    pub issued_at: Option<Timestamp>,
}

/// One entry of a registry token's `access` claim (distribution token spec shape).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct GrantedAccess {
    #[serde(rename = "type")]
    pub resource_type: String,
    pub name: String,
    #[serde(default)]
    pub actions: Vec<String>,
}

/// Reads `exp` (required) and `iat` (optional) from an unverified JWT.
///
/// `exp`/`iat` may be JSON integers, floats or numeric strings (Go's `json.Number` and some
/// token servers emit strings). A malformed `iat` is ignored rather than failing the token:
/// only `exp` decides refreshes.
pub fn token_times(token: &str) -> Result<TokenTimes, JwtError> {
    let payload = payload(token)?;
    let exp = payload
        .get("exp")
        .ok_or(JwtError::MissingClaim { claim: "exp" })?;
    let expires_at = unix_time(exp).ok_or(JwtError::InvalidTime { claim: "exp" })?;
    let issued_at = payload.get("iat").and_then(unix_time);
    Ok(TokenTimes {
        expires_at,
        issued_at,
    })
}

/// Reads the `access` claim of a registry token; a token without it grants nothing.
pub fn granted_access(token: &str) -> Result<Vec<GrantedAccess>, JwtError> {
    let payload = payload(token)?;
    match payload.get("access") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(access) => serde_json::from_value(access.clone()).map_err(|_| JwtError::InvalidAccess),
    }
}

/// The `access` claim of a registry token when it has one (`None`: the token carries no
/// claim at all, e.g. a refresh token, so what it grants cannot be read from it).
pub fn access_claim(token: &str) -> Result<Option<Vec<GrantedAccess>>, JwtError> {
    let payload = payload(token)?;
    match payload.get("access") {
        None | Some(Value::Null) => Ok(None),
        Some(access) => serde_json::from_value(access.clone())
            .map(Some)
            .map_err(|_| JwtError::InvalidAccess),
    }
}

/// Decodes the payload (second part) into a JSON object.
fn payload(token: &str) -> Result<serde_json::Map<String, Value>, JwtError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(JwtError::TooLong { len: token.len() });
    }
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        return Err(JwtError::PartCount { found: parts.len() });
    }
    // Tolerate padded encoders: the spec says unpadded, some emit `=`.
    let encoded = parts[1].trim_end_matches('=');
    let bytes = URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| JwtError::Base64)?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(JwtError::NotJson),
    }
}

/// A NumericDate: integer, float or numeric string; negative or out-of-range values are refused.
fn unix_time(value: &Value) -> Option<Timestamp> {
    let seconds = match value {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    if !seconds.is_finite() || seconds < 0.0 {
        return None;
    }
    let duration = SignedDuration::try_from_secs_f64(seconds).ok()?;
    Timestamp::from_duration(duration).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &str) -> String {
        format!(
            "{}.{}.c2ln",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(payload)
        )
    }

    #[test]
    fn accepts_integer_float_and_string_exp() {
        let cases = [
            (r#"{"exp":1700000000}"#, 1_700_000_000, None),
            (
                r#"{"exp":1700000000.75,"iat":1699990000}"#,
                1_700_000_000,
                Some(1_699_990_000),
            ),
            (
                r#"{"exp":"1700000000","iat":"1699990000"}"#,
                1_700_000_000,
                Some(1_699_990_000),
            ),
            (
                r#"{"exp":1700000000,"iat":"yesterday"}"#,
                1_700_000_000,
                None,
            ),
            (r#"{"exp":0}"#, 0, None),
        ];
        for (payload, exp, iat) in cases {
            let times = token_times(&jwt(payload)).unwrap_or_else(|e| panic!("{payload}: {e}"));
            assert_eq!(times.expires_at.as_second(), exp, "{payload}");
            assert_eq!(times.issued_at.map(|t| t.as_second()), iat, "{payload}");
        }
    }

    #[test]
    fn padded_payload_is_tolerated() {
        let payload = base64::engine::general_purpose::URL_SAFE.encode(r#"{"exp":12}"#);
        let token = format!("e30.{payload}.sig");
        assert_eq!(
            token_times(&token).map(|t| t.expires_at.as_second()),
            Ok(12)
        );
    }

    #[test]
    fn malformed_tokens_are_refused_without_echoing_them() {
        let canary = "CANARYSECRET";
        let cases: Vec<(String, JwtError)> = vec![
            (canary.to_string(), JwtError::PartCount { found: 1 }),
            (format!("{canary}.x"), JwtError::PartCount { found: 2 }),
            (format!("a.b.c.{canary}"), JwtError::PartCount { found: 4 }),
            (format!("e30.{canary}!!.sig"), JwtError::Base64),
            (
                format!(
                    "e30.{}.sig",
                    URL_SAFE_NO_PAD.encode(format!("not json {canary}"))
                ),
                JwtError::NotJson,
            ),
            (jwt(r#"["exp", 1]"#), JwtError::NotJson),
            (
                jwt(r#"{"iat":1,"sub":"CANARYSECRET"}"#),
                JwtError::MissingClaim { claim: "exp" },
            ),
            (jwt(r#"{"exp":-5}"#), JwtError::InvalidTime { claim: "exp" }),
            (
                jwt(r#"{"exp":1e300}"#),
                JwtError::InvalidTime { claim: "exp" },
            ),
            (
                jwt(r#"{"exp":99999999999999}"#),
                JwtError::InvalidTime { claim: "exp" },
            ),
            (
                jwt(r#"{"exp":"soon"}"#),
                JwtError::InvalidTime { claim: "exp" },
            ),
            (
                jwt(r#"{"exp":null}"#),
                JwtError::InvalidTime { claim: "exp" },
            ),
            (
                jwt(r#"{"exp":true}"#),
                JwtError::InvalidTime { claim: "exp" },
            ),
            (
                "a".repeat(MAX_TOKEN_LEN + 1),
                JwtError::TooLong {
                    len: MAX_TOKEN_LEN + 1,
                },
            ),
        ];
        for (token, expected) in cases {
            let err = token_times(&token).expect_err("must fail");
            assert_eq!(err, expected);
            let rendered = format!("{err} {err:?}");
            assert!(!rendered.contains(canary), "leaked: {rendered}");
        }
    }

    #[test]
    fn reads_granted_access() {
        let token = jwt(
            r#"{"exp":1,"access":[{"type":"repository","name":"team/app","actions":["pull"]}]}"#,
        );
        assert_eq!(
            granted_access(&token),
            Ok(vec![GrantedAccess {
                resource_type: "repository".into(),
                name: "team/app".into(),
                actions: vec!["pull".into()],
            }])
        );
        assert_eq!(granted_access(&jwt(r#"{"exp":1}"#)), Ok(vec![]));
        assert_eq!(
            granted_access(&jwt(r#"{"exp":1,"access":"all"}"#)),
            Err(JwtError::InvalidAccess)
        );
        // The claim itself: absent (a refresh token) is not the same as granting nothing.
        assert_eq!(access_claim(&jwt(r#"{"exp":1}"#)), Ok(None));
        assert_eq!(
            access_claim(&jwt(r#"{"exp":1,"access":[]}"#)),
            Ok(Some(vec![]))
        );
        assert_eq!(
            access_claim(&token).map(|a| a.map(|a| a.len())),
            Ok(Some(1))
        );
    }
}
