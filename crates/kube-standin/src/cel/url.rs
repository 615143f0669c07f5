//! Go's `net/url.ParseRequestURI`, which the Kubernetes CEL URL library (`url()`, `isURL()`)
//! is defined by. A WHATWG parser would disagree with it (it lower-cases hosts, accepts
//! spaces, normalises paths), so this follows Go's rules: scheme, optional `//authority`
//! (userinfo, host, port), path, query; no fragment splitting.

/// A parsed URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoUrl {
    /// Lower-cased scheme (may be empty for a bare absolute path).
    pub scheme: String,
    /// Opaque part (`mailto:x` → `x`).
    pub opaque: String,
    /// Host with port (`example.com:8080`, `[::1]:443`).
    pub host: String,
    /// Path as written.
    pub path: String,
    /// Query without `?`.
    pub raw_query: String,
}

impl cel::objects::Opaque for GoUrl {
    fn runtime_type_name(&self) -> &str {
        "kubernetes.URL"
    }
}

fn valid_optional_port(p: &str) -> bool {
    match p.strip_prefix(':') {
        None => p.is_empty(),
        Some(digits) => digits.bytes().all(|b| b.is_ascii_digit()),
    }
}

fn host_char_ok(c: u8) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            b'-' | b'_'
                | b'.'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'['
                | b']'
                | b'<'
                | b'>'
                | b'"'
        )
}

fn check_escapes(s: &str, host: bool) -> Result<(), String> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let ok =
                i + 2 < b.len() && b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit();
            if !ok {
                let end = (i + 3).min(b.len());
                return Err(format!("invalid URL escape {:?}", &s[i..end]));
            }
            if host && b[i + 1] < b'8' && &s[i..i + 3] != "%25" {
                return Err(format!("invalid URL escape {:?}", &s[i..i + 3]));
            }
            i += 3;
            continue;
        }
        if host && b[i] < 0x80 && !host_char_ok(b[i]) {
            return Err(format!("invalid character {:?} in host name", &s[i..i + 1]));
        }
        i += 1;
    }
    Ok(())
}

fn parse_host(host: &str) -> Result<(), String> {
    if host.starts_with('[') {
        let Some(i) = host.rfind(']') else {
            return Err("missing ']' in host".to_string());
        };
        let port = &host[i + 1..];
        if !valid_optional_port(port) {
            return Err(format!("invalid port {port:?} after host"));
        }
    } else if let Some(i) = host.rfind(':') {
        let port = &host[i..];
        if !valid_optional_port(port) {
            return Err(format!("invalid port {port:?} after host"));
        }
    }
    check_escapes(host, true)
}

fn valid_userinfo(s: &str) -> bool {
    s.bytes().all(|c| {
        c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b':'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b'%'
                    | b'@'
            )
    })
}

/// `url.ParseRequestURI`; the error reads as Go's (`parse "x": invalid URI for request`).
pub fn parse_request_uri(raw: &str) -> Result<GoUrl, String> {
    parse(raw).map_err(|e| format!("parse {raw:?}: {e}"))
}

fn parse(raw: &str) -> Result<GoUrl, String> {
    if raw.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err("net/url: invalid control character in URL".to_string());
    }
    if raw.is_empty() {
        return Err("empty url".to_string());
    }
    let mut u = GoUrl {
        scheme: String::new(),
        opaque: String::new(),
        host: String::new(),
        path: String::new(),
        raw_query: String::new(),
    };
    if raw == "*" {
        u.path = "*".to_string();
        return Ok(u);
    }
    let (scheme, rest) = get_scheme(raw)?;
    u.scheme = scheme.to_ascii_lowercase();
    let mut rest = rest;
    if rest.ends_with('?') && rest.matches('?').count() == 1 {
        rest = &rest[..rest.len() - 1];
    } else if let Some(i) = rest.find('?') {
        u.raw_query = rest[i + 1..].to_string();
        rest = &rest[..i];
    }
    if !rest.starts_with('/') {
        if !u.scheme.is_empty() {
            u.opaque = rest.to_string();
            return Ok(u);
        }
        return Err("invalid URI for request".to_string());
    }
    if !u.scheme.is_empty() && rest.starts_with("//") {
        let after = &rest[2..];
        let (authority, path) = match after.find('/') {
            Some(i) => (&after[..i], &after[i..]),
            None => (after, ""),
        };
        let host = match authority.rfind('@') {
            None => authority,
            Some(i) => {
                if !valid_userinfo(&authority[..i]) {
                    return Err("net/url: invalid userinfo".to_string());
                }
                &authority[i + 1..]
            }
        };
        parse_host(host)?;
        u.host = host.to_string();
        rest = path;
    }
    check_escapes(rest, false)?;
    u.path = rest.to_string();
    Ok(u)
}

fn get_scheme(raw: &str) -> Result<(&str, &str), String> {
    for (i, c) in raw.bytes().enumerate() {
        match c {
            b'a'..=b'z' | b'A'..=b'Z' => {}
            b'0'..=b'9' | b'+' | b'-' | b'.' => {
                if i == 0 {
                    return Ok(("", raw));
                }
            }
            b':' => {
                if i == 0 {
                    return Err("missing protocol scheme".to_string());
                }
                return Ok((&raw[..i], &raw[i + 1..]));
            }
            _ => return Ok(("", raw)),
        }
    }
    Ok(("", raw))
}

impl GoUrl {
    fn split_host_port(&self) -> (&str, &str) {
        let h = self.host.as_str();
        let (host, port) = match h.rfind(':') {
            Some(i) if valid_optional_port(&h[i..]) => (&h[..i], &h[i + 1..]),
            _ => (h, ""),
        };
        let host = host
            .strip_prefix('[')
            .and_then(|x| x.strip_suffix(']'))
            .unwrap_or(host);
        (host, port)
    }

    /// `u.Hostname()`.
    pub fn hostname(&self) -> &str {
        self.split_host_port().0
    }

    /// `u.Port()`.
    pub fn port(&self) -> &str {
        self.split_host_port().1
    }

    /// `u.Query()`: keys to values, `+` as space, percent-decoded; pairs that do not
    /// decode are skipped, as Go does.
    pub fn query(&self) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for pair in self.raw_query.split(['&']) {
            if pair.is_empty() || pair.contains(';') {
                continue;
            }
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let (Some(k), Some(v)) = (unescape_query(k), unescape_query(v)) else {
                continue;
            };
            match out.iter_mut().find(|(key, _)| *key == k) {
                Some((_, vs)) => vs.push(v),
                None => out.push((k, vec![v])),
            }
        }
        out
    }
}

fn unescape_query(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_go() {
        let u = parse_request_uri("https://Example.azurecr.io:443/v2/?a=1&a=2&b=x+y").unwrap();
        assert_eq!(u.scheme, "https");
        assert_eq!(u.host, "Example.azurecr.io:443");
        assert_eq!(u.hostname(), "Example.azurecr.io");
        assert_eq!(u.port(), "443");
        assert_eq!(u.path, "/v2/");
        assert_eq!(
            u.query(),
            vec![
                ("a".into(), vec!["1".into(), "2".into()]),
                ("b".into(), vec!["x y".into()])
            ]
        );
        let u = parse_request_uri("https://[::1]:8080").unwrap();
        assert_eq!((u.hostname(), u.port()), ("::1", "8080"));
        assert_eq!(parse_request_uri("https://").unwrap().hostname(), "");
        assert_eq!(
            parse_request_uri("https://https://x").unwrap().hostname(),
            "https"
        );
        assert_eq!(
            parse_request_uri("/just/a/path").unwrap().path,
            "/just/a/path"
        );
        assert!(parse_request_uri("mailto:x@y").is_ok());
    }

    #[test]
    fn rejects_like_go() {
        for bad in [
            "",
            "relative/path",
            "https://exa mple.com",
            "https://example.com:port",
            "https://ex%zzample",
            ":foo",
            "https://a\nb",
            "https://[::1",
        ] {
            assert!(parse_request_uri(bad).is_err(), "{bad:?} should not parse");
        }
        assert_eq!(
            parse_request_uri("https://example.com:x").unwrap_err(),
            "parse \"https://example.com:x\": invalid port \":x\" after host"
        );
    }
}
