//! Registry host validation: the guard that keeps tokens away from hosts outside the allowed
//! ACR suffixes. A binding's `server` must be a bare DNS host name (no scheme, userinfo, path,
//! query or fragment; a `:port` only where the operator allowed ports, e.g. in tests), and the
//! host must be an allowed suffix or a subdomain of one (case-insensitive, trailing dot ignored).

use std::fmt;

use super::reason::Reason;

/// The default allowed suffixes: the ACR login-server suffixes of the Azure clouds.
pub const DEFAULT_ALLOWED_SUFFIXES: [&str; 3] = ["azurecr.io", "azurecr.us", "azurecr.cn"];

/// Normalised allowed suffixes; empty means the check is disabled (operator's explicit choice).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowedSuffixes(Vec<String>);

impl AllowedSuffixes {
    /// Lower-cases, trims whitespace and dots, drops empties and duplicates.
    pub fn new<I, S>(suffixes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut out: Vec<String> = Vec::new();
        for s in suffixes {
            let s = s.as_ref().trim().trim_matches('.').to_ascii_lowercase();
            if !s.is_empty() && !out.contains(&s) {
                out.push(s);
            }
        }
        Self(out)
    }

    pub fn defaults() -> Self {
        Self::new(DEFAULT_ALLOWED_SUFFIXES)
    }

    /// True when no suffix check is done.
    pub fn is_disabled(&self) -> bool {
        self.0.is_empty()
    }

    pub fn as_slice(&self) -> &[String] {
        &self.0
    }

    /// Whether `host` (already normalised: lower case, no trailing dot) is allowed.
    pub fn allows(&self, host: &str) -> bool {
        self.0.is_empty()
            || self.0.iter().any(|s| {
                host == s
                    || (host.len() > s.len()
                        && host.ends_with(s.as_str())
                        && host.as_bytes()[host.len() - s.len() - 1] == b'.')
            })
    }
}

/// A validated registry address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryHost {
    /// Lower-case host name without a trailing dot.
    pub host: String,
    pub port: Option<u16>,
}

impl RegistryHost {
    /// `host` or `host:port`: the key in `.dockerconfigjson` and the ACR `service` value.
    pub fn authority(&self) -> String {
        match self.port {
            Some(p) => format!("{}:{p}", self.host),
            None => self.host.clone(),
        }
    }
}

impl fmt::Display for RegistryHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.authority())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerError {
    #[error("server is empty: set spec.acr.server (v1beta2) or spec.acrServer / ACR_SERVER (v1beta1) to the registry's host name, e.g. example.azurecr.io")]
    Empty,
    #[error("server {0:?} must be a bare host name such as example.azurecr.io: {1}")]
    Malformed(String, &'static str),
    #[error("server {0:?} is an IP address; use the registry's DNS name, e.g. example.azurecr.io")]
    IpLiteral(String),
    #[error("server {0:?} has a port; registry ports are not allowed by this controller's configuration")]
    PortNotAllowed(String),
    #[error("server {server:?} is not under an allowed registry suffix ({allowed}); use a registry under one of them or ask the operator to extend --allowed-acr-server-suffixes")]
    NotAllowed { server: String, allowed: String },
}

impl ServerError {
    /// Condition/event reason.
    pub fn reason(&self) -> Reason {
        match self {
            ServerError::NotAllowed { .. } => Reason::RegistryNotAllowed,
            _ => Reason::InvalidSpec,
        }
    }
}

/// Validate `server` and check it against `allowed`. `allow_port` lets `host:port` through
/// (tests against a local registry); the suffix check still applies to the host.
pub fn check_server(
    server: &str,
    allowed: &AllowedSuffixes,
    allow_port: bool,
) -> Result<RegistryHost, ServerError> {
    let malformed = |why| ServerError::Malformed(truncate(server), why);
    if server.is_empty() {
        return Err(ServerError::Empty);
    }
    if server.len() > 260 {
        return Err(malformed("longer than a host name can be"));
    }
    if server.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(malformed("it contains whitespace"));
    }
    if server.contains("://") {
        return Err(malformed("remove the scheme (https://)"));
    }
    if server.contains('@') {
        return Err(malformed("remove the user information (user@)"));
    }
    if server.contains('/') {
        return Err(malformed("remove the path"));
    }
    if server.contains('?') {
        return Err(malformed("remove the query"));
    }
    if server.contains('#') {
        return Err(malformed("remove the fragment"));
    }
    if server.starts_with('[') || server.parse::<std::net::Ipv6Addr>().is_ok() {
        return Err(ServerError::IpLiteral(truncate(server)));
    }
    let (host, port) = match server.rsplit_once(':') {
        Some((h, p)) => {
            let port: u16 = p
                .parse()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| malformed("the port is not a number between 1 and 65535"))?;
            (h, Some(port))
        }
        None => (server, None),
    };
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    if host.is_empty() {
        return Err(malformed("the host name is empty"));
    }
    if host.parse::<std::net::Ipv4Addr>().is_ok()
        || host
            .split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(ServerError::IpLiteral(truncate(server)));
    }
    if !host.is_ascii() {
        return Err(malformed(
            "non-ASCII host names must be written in punycode (xn--...)",
        ));
    }
    if host.len() > 253 {
        return Err(malformed("host names are at most 253 characters"));
    }
    for label in host.split('.') {
        if label.is_empty() {
            return Err(malformed("it has an empty label (..)"));
        }
        if label.len() > 63 {
            return Err(malformed("a label is longer than 63 characters"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(malformed(
                "host names may only contain letters, digits, '-' and '.'",
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(malformed("a label starts or ends with '-'"));
        }
    }
    if port.is_some() && !allow_port {
        return Err(ServerError::PortNotAllowed(truncate(server)));
    }
    if !allowed.allows(&host) {
        return Err(ServerError::NotAllowed {
            server: truncate(server),
            allowed: allowed.as_slice().join(", "),
        });
    }
    Ok(RegistryHost { host, port })
}

/// Keep error messages bounded whatever the user wrote.
fn truncate(s: &str) -> String {
    super::text::truncate(s, 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(host: &str, port: Option<u16>) -> Result<RegistryHost, &'static str> {
        Ok(RegistryHost {
            host: host.into(),
            port,
        })
    }

    #[test]
    fn table() {
        let allowed = AllowedSuffixes::defaults();
        // (server, allow_port, expected: Ok(host) or Err(reason substring))
        let cases: Vec<(&str, bool, Result<RegistryHost, &str>)> = vec![
            ("example.azurecr.io", false, ok("example.azurecr.io", None)),
            ("Example.AzureCR.io", false, ok("example.azurecr.io", None)),
            ("example.azurecr.io.", false, ok("example.azurecr.io", None)),
            ("azurecr.io", false, ok("azurecr.io", None)),
            ("a.b.azurecr.us", false, ok("a.b.azurecr.us", None)),
            ("x.azurecr.cn", false, ok("x.azurecr.cn", None)),
            (
                "demo.azurecr.io:5000",
                true,
                ok("demo.azurecr.io", Some(5000)),
            ),
            ("demo.azurecr.io:5000", false, Err("has a port")),
            ("demo.azurecr.io:0", true, Err("port is not a number")),
            ("demo.azurecr.io:99999", true, Err("port is not a number")),
            ("demo.azurecr.io:", true, Err("port is not a number")),
            ("", false, Err("server is empty")),
            ("https://example.azurecr.io", false, Err("scheme")),
            ("example.azurecr.io/path", false, Err("path")),
            ("example.azurecr.io?x=1", false, Err("query")),
            ("example.azurecr.io#frag", false, Err("fragment")),
            ("user@example.azurecr.io", false, Err("user information")),
            ("user:pw@example.azurecr.io", false, Err("user information")),
            (" example.azurecr.io", false, Err("whitespace")),
            ("example.azurecr.io\n", false, Err("whitespace")),
            (
                "evil-azurecr.io",
                false,
                Err("not under an allowed registry suffix"),
            ),
            (
                "azurecr.io.evil.com",
                false,
                Err("not under an allowed registry suffix"),
            ),
            (
                "example.azurecr.io.evil.com",
                false,
                Err("not under an allowed registry suffix"),
            ),
            (
                "fakeazurecr.io",
                false,
                Err("not under an allowed registry suffix"),
            ),
            (
                "example.azurecr.de",
                false,
                Err("not under an allowed registry suffix"),
            ),
            ("10.0.0.1", false, Err("IP address")),
            ("169.254.169.254", false, Err("IP address")),
            ("[::1]", false, Err("IP address")),
            ("[::1]:443", true, Err("IP address")),
            ("::1", false, Err("IP address")),
            ("example..azurecr.io", false, Err("empty label")),
            (".azurecr.io", false, Err("empty label")),
            ("-x.azurecr.io", false, Err("starts or ends")),
            ("ex_ample.azurecr.io", false, Err("may only contain")),
            ("exämple.azurecr.io", false, Err("punycode")),
            (
                "xn--exmple-cua.azurecr.io",
                false,
                ok("xn--exmple-cua.azurecr.io", None),
            ),
        ];
        for (server, allow_port, want) in cases {
            let got = check_server(server, &allowed, allow_port);
            match (&got, &want) {
                (Ok(g), Ok(w)) => assert_eq!(g, w, "{server:?}"),
                (Err(e), Err(msg)) => {
                    assert!(e.to_string().contains(msg), "{server:?}: {e} !~ {msg}")
                }
                _ => panic!("{server:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn long_labels_and_names() {
        let allowed = AllowedSuffixes::defaults();
        let label64 = format!("{}.azurecr.io", "a".repeat(64));
        assert!(check_server(&label64, &allowed, false).is_err());
        let label63 = format!("{}.azurecr.io", "a".repeat(63));
        assert!(check_server(&label63, &allowed, false).is_ok());
        let huge = "a.".repeat(500);
        let err = check_server(&huge, &allowed, false).unwrap_err();
        assert!(err.to_string().len() < 400, "message stays bounded");
    }

    #[test]
    fn suffix_normalisation_and_disabling() {
        let allowed = AllowedSuffixes::new([" .Contoso.COM. ", "contoso.com", "", "  "]);
        assert_eq!(allowed.as_slice(), ["contoso.com"]);
        assert!(check_server("r.contoso.com", &allowed, false).is_ok());
        assert!(check_server("r.azurecr.io", &allowed, false).is_err());
        let none = AllowedSuffixes::new(Vec::<String>::new());
        assert!(none.is_disabled());
        assert!(check_server("anything.example", &none, false).is_ok());
        // Disabling the suffix check does not let malformed input through.
        assert!(check_server("https://x.example", &none, false).is_err());
        assert!(check_server("10.1.2.3", &none, false).is_err());
    }

    #[test]
    fn reasons() {
        let allowed = AllowedSuffixes::defaults();
        assert_eq!(
            check_server("evil.com", &allowed, false)
                .unwrap_err()
                .reason(),
            Reason::RegistryNotAllowed
        );
        assert_eq!(
            check_server("https://x", &allowed, false)
                .unwrap_err()
                .reason(),
            Reason::InvalidSpec
        );
    }
}
