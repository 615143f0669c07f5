//! A redacting wrapper for bearer tokens (Azure identity tokens, ACR refresh and access
//! tokens, Kubernetes ServiceAccount tokens).
//!
//! Its `Debug` and `Display` print `<redacted>`, and it does not implement `Serialize`, so a
//! token cannot reach a log line, an event, a status field or a debug response by accident.
//! The raw value is reachable only through [`SecretToken::expose`], which is called where the
//! Secret bytes are built and where an HTTP request body is assembled.

use std::fmt;

/// A bearer token whose value never appears in `Debug`/`Display` output.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretToken(String);

impl SecretToken {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The raw token. Call this only to put the token on the wire or into Secret data.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for SecretToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let t = SecretToken::new("eyJhbGciOiJIUzI1NiJ9.canary-payload.sig");
        for rendered in [
            format!("{t:?}"),
            format!("{t}"),
            format!("{:#?}", Some(&t)),
            format!("{:?}", vec![t.clone()]),
        ] {
            assert!(!rendered.contains("canary"), "leaked: {rendered}");
            assert!(rendered.contains("<redacted>"));
        }
        assert_eq!(t.expose(), "eyJhbGciOiJIUzI1NiJ9.canary-payload.sig");
    }
}
