//! Defense in depth for the one rule that must never break: no token is sent to a registry
//! host outside the allowed suffixes. The controller validates bindings first; the pipeline
//! checks again right before every request to `https://<server>`.
//!
//! Also the scope normalisation that makes equivalent scope strings share one cache entry.

use super::error::{AzureError, ErrorKind};

/// A registry server as given (`host` or `host:port`) and its host for suffix matching.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct RegistryHost {
    /// The server string used in URLs and as `service` (lower-cased).
    pub server: String,
    /// Lower-case host without port or trailing dot.
    pub host: String,
}

/// Parses a registry server: a bare DNS name or IP, optionally with a port; nothing else.
pub(crate) fn parse_server(server: &str) -> Result<RegistryHost, AzureError> {
    let invalid = |why: &str| {
        AzureError::new(
            ErrorKind::InvalidRequest,
            format!("registry server {server:?} is invalid: {why}"),
        )
    };
    if server.is_empty() || server.len() > 253 + 6 {
        return Err(invalid("empty or too long"));
    }
    if !server.is_ascii()
        || server
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '/' | '?' | '#' | '@' | '\\' | '%'))
    {
        return Err(invalid(
            "must be a bare host name (no scheme, path, query or credentials)",
        ));
    }
    let url = reqwest::Url::parse(&format!("https://{server}/"))
        .map_err(|_| invalid("not a host name"))?;
    let host = url.host_str().ok_or_else(|| invalid("no host"))?;
    let rebuilt = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    };
    let lower = server.to_ascii_lowercase();
    // The URL parser must not have reinterpreted anything (e.g. a default `:443`).
    if rebuilt != lower {
        return Err(invalid(
            "must be a bare host name, optionally with a non-default port",
        ));
    }
    Ok(RegistryHost {
        server: lower,
        host: host.trim_end_matches('.').to_string(),
    })
}

/// Normalises the operator's suffix list: lower case, no surrounding dots, no empties.
pub(crate) fn normalize_suffixes(suffixes: &[String]) -> Vec<String> {
    suffixes
        .iter()
        .map(|s| s.trim().trim_matches('.').to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

/// `host` equals a suffix or is any subdomain of one; an empty list allows every host.
pub(crate) fn host_allowed(host: &str, normalized_suffixes: &[String]) -> bool {
    if normalized_suffixes.is_empty() {
        return true;
    }
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    normalized_suffixes.iter().any(|suffix| {
        host == *suffix
            || (host.len() > suffix.len()
                && host.ends_with(suffix.as_str())
                && host.as_bytes()[host.len() - suffix.len() - 1] == b'.')
    })
}

/// Refuses `target` unless allowed.
pub(crate) fn ensure_allowed(
    target: &RegistryHost,
    normalized_suffixes: &[String],
) -> Result<(), AzureError> {
    if host_allowed(&target.host, normalized_suffixes) {
        Ok(())
    } else {
        Err(AzureError::new(
            ErrorKind::RegistryNotAllowed,
            format!(
                "registry {} is not under an allowed suffix ({}); no token was sent",
                target.host,
                normalized_suffixes.join(", ")
            ),
        ))
    }
}

/// Canonical form of a space-separated scope list: scopes sorted and deduplicated, actions
/// within a scope sorted and deduplicated. `None` if there is no scope at all.
pub(crate) fn normalize_scope(scope: &str) -> Option<String> {
    let mut scopes: Vec<String> = scope
        .split_whitespace()
        .map(|one| match one.rsplit_once(':') {
            // The actions follow the last colon (a name may hold a host:port colon).
            Some((resource, actions)) => {
                let mut actions: Vec<&str> = actions.split(',').filter(|a| !a.is_empty()).collect();
                actions.sort_unstable();
                actions.dedup();
                format!("{resource}:{}", actions.join(","))
            }
            None => one.to_string(),
        })
        .collect();
    scopes.sort();
    scopes.dedup();
    if scopes.is_empty() {
        None
    } else {
        Some(scopes.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffix_matching() {
        let suffixes =
            normalize_suffixes(&["azurecr.io".into(), ".AzureCR.us.".into(), " ".into()]);
        assert_eq!(suffixes, vec!["azurecr.io", "azurecr.us"]);
        let cases = [
            ("demo.azurecr.io", true),
            ("DEMO.AzureCR.IO", true),
            ("demo.azurecr.io.", true),
            ("azurecr.io", true),
            ("a.b.azurecr.us", true),
            ("evilazurecr.io", false),
            ("demo.azurecr.io.evil.com", false),
            ("demo.azurecr.cn", false),
            ("io", false),
        ];
        for (host, allowed) in cases {
            assert_eq!(host_allowed(host, &suffixes), allowed, "{host}");
        }
        assert!(host_allowed("anything.example", &[]));
    }

    #[test]
    fn server_parsing() {
        let ok = parse_server("Demo.azurecr.io:8443").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ok.server, "demo.azurecr.io:8443");
        assert_eq!(ok.host, "demo.azurecr.io");
        assert_eq!(
            parse_server("demo.azurecr.io.").map(|h| h.host),
            Ok("demo.azurecr.io".to_string())
        );
        for bad in [
            "",
            "https://demo.azurecr.io",
            "demo.azurecr.io/path",
            "user@demo.azurecr.io",
            "demo.azurecr.io?x",
            "demo.azurecr.io:443",
            "demo.azurecr.io:99999",
            "demo azurecr.io",
            "démo.azurecr.io",
            "demo.azurecr.io%2f",
        ] {
            let err = parse_server(bad).expect_err(bad);
            assert_eq!(err.reason(), "InvalidRequest", "{bad}");
        }
    }

    #[test]
    fn scope_normalisation() {
        assert_eq!(
            normalize_scope(" repository:b:push,pull  repository:a:pull repository:a:pull "),
            Some("repository:a:pull repository:b:pull,push".into())
        );
        assert_eq!(
            normalize_scope("repository:host:5000/app:pull"),
            Some("repository:host:5000/app:pull".into())
        );
        assert_eq!(normalize_scope("   "), None);
    }
}
