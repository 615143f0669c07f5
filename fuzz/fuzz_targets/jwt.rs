//! Fuzzes `acrpull::state::jwt` (the unverified claims of ACR and Entra tokens).
//! Invariants: errors never echo the token (they go into logs and status) — checked
//! structurally: every error variant carries numbers or static text only, and its message is its
//! fixed template — and accepted times are non-negative.
#![no_main]

use acrpull::state::jwt::{granted_access, token_times, JwtError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let check_err = |e: JwtError| {
        // Exhaustive on purpose: a variant that could carry token text must be looked at here.
        let template = match &e {
            JwtError::TooLong { len } => {
                assert_eq!(*len, token.len());
                JwtError::TooLong { len: 0 }.to_string()
            }
            JwtError::PartCount { found } => {
                assert_eq!(*found, token.split('.').count());
                JwtError::PartCount { found: 0 }.to_string()
            }
            JwtError::Base64
            | JwtError::NotJson
            | JwtError::MissingClaim { .. }
            | JwtError::InvalidTime { .. }
            | JwtError::InvalidAccess => e.to_string(),
        };
        let digits = |s: &str| s.chars().filter(|c| !c.is_ascii_digit()).collect::<String>();
        assert_eq!(digits(&e.to_string()), digits(&template));
        assert!(e.to_string().len() < 200);
    };
    match token_times(token) {
        Ok(t) => {
            assert!(t.expires_at.as_second() >= 0);
            if let Some(iat) = t.issued_at {
                assert!(iat.as_second() >= 0);
            }
        }
        Err(e) => check_err(e),
    }
    match granted_access(token) {
        Ok(access) => {
            for a in access {
                let _ = (a.resource_type.len(), a.name.len(), a.actions.len());
            }
        }
        Err(e) => check_err(e),
    }
});
