//! Fuzzes `acrpull::state::server::check_server`, the guard that keeps tokens away from hosts
//! outside the allowed suffixes. Invariants on acceptance: the host is a lower-case ASCII DNS
//! name without '/', '@', ':' or a trailing dot, is not an IP literal, sits under an allowed
//! suffix (checked here independently of `AllowedSuffixes::allows`), has a port only when ports
//! are allowed, and its authority re-checks to the same result.
#![no_main]

use acrpull::state::server::{check_server, AllowedSuffixes, DEFAULT_ALLOWED_SUFFIXES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Ok(server) = std::str::from_utf8(rest) else {
        return;
    };
    let allow_port = flags & 1 == 1;
    let allowed = AllowedSuffixes::defaults();
    match check_server(server, &allowed, allow_port) {
        Ok(reg) => {
            let host = &reg.host;
            assert!(!host.is_empty() && host.len() <= 253, "{host:?}");
            assert!(host.is_ascii(), "{host:?}");
            assert_eq!(*host, host.to_ascii_lowercase());
            assert!(
                host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-'),
                "{host:?}"
            );
            assert!(!host.contains('/') && !host.contains('@') && !host.contains(':'));
            assert!(!host.ends_with('.') && !host.contains(".."));
            assert!(host.parse::<std::net::IpAddr>().is_err());
            assert!(
                DEFAULT_ALLOWED_SUFFIXES
                    .iter()
                    .any(|s| host == s || host.ends_with(&format!(".{s}"))),
                "{host:?} is not under an allowed suffix"
            );
            assert!(allow_port || reg.port.is_none());
            if let Some(p) = reg.port {
                assert!(p != 0);
            }
            let again = check_server(&reg.authority(), &allowed, allow_port).expect("authority re-checks");
            assert_eq!(again, reg);
        }
        // Bounded: the input is cut to 80 characters and Debug-escaped (a control character
        // becomes `\u{1a}`), so the message stays under ~1 KiB whatever the input length.
        Err(e) => assert!(e.to_string().len() < 1200, "bounded error message"),
    }
});
