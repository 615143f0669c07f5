//! Fuzzes `acrpull::state::scope::parse` (a binding's `spec.acr.scope` / `spec.scope`).
//! Invariants: the canonical form of an accepted scope re-parses to the same scopes, stays within
//! the limits, and carries no whitespace inside a scope; errors are short.
#![no_main]

use acrpull::state::scope::{canonical, parse, MAX_SCOPES, MAX_SCOPE_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    match parse(input) {
        Ok(scopes) => {
            assert!(!scopes.is_empty() && scopes.len() <= MAX_SCOPES);
            let canon = canonical(&scopes);
            assert!(canon.len() <= MAX_SCOPE_LEN && canon.len() <= input.len());
            let again = parse(&canon).expect("canonical form re-parses");
            assert_eq!(again, scopes, "canonical form is a fixed point");
            assert_eq!(canonical(&again), canon);
            for s in &scopes {
                assert!(!s.kind.is_empty() && !s.name.is_empty() && !s.actions.is_empty());
                assert!(s.name != "*" && !s.name.ends_with("/*"), "no wildcard repository");
                let text = s.to_string();
                assert!(!text.chars().any(char::is_whitespace));
                assert!(text.is_ascii(), "accepted scopes are ASCII: {text:?}");
            }
        }
        // Bounded: 80 characters of input, Debug-escaped (up to 10 bytes each for `\u{…}`).
        Err(e) => assert!(e.to_string().len() < 1200, "bounded error message"),
    }
});
