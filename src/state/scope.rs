//! ACR token scope grammar (distribution's `scope` with ACR's types and actions):
//!
//! ```text
//! scope         := resourcescope ( ' ' resourcescope )*
//! resourcescope := type ':' name ':' action ( ',' action )*
//! name          := [ host [ ':' port ] '/' ] component ( '/' component )*
//! ```
//!
//! A name holds a colon only as the port of a leading host, so `repository:host:5000/app:pull`
//! is one scope while `repository:a:b:pull` is rejected. ACR has no wildcard repository.

use std::fmt;

/// At most this many scopes in one binding (a token request carries them all).
pub const MAX_SCOPES: usize = 64;
/// At most this many bytes of scope text.
pub const MAX_SCOPE_LEN: usize = 4096;

/// One parsed resource scope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceScope {
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

impl fmt::Display for ResourceScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.kind, self.name, self.actions.join(","))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    #[error("scope is empty; use e.g. repository:my-repo:pull")]
    Empty,
    #[error("scope is longer than {MAX_SCOPE_LEN} characters")]
    TooLong,
    #[error("more than {MAX_SCOPES} scopes")]
    TooMany,
    #[error("scope {0:?} must look like type:name:actions, e.g. repository:my-repo:pull")]
    Shape(String),
    #[error("scope {0:?} has an invalid type; use repository, registry or artifact-repository")]
    Type(String),
    #[error("scope {0:?} has an invalid repository name: {1}")]
    Name(String, &'static str),
    #[error("scope {0:?} has an invalid action list; actions are comma-separated, e.g. pull,push")]
    Actions(String),
    #[error("scope {0:?}: ACR has no wildcard repository; name each repository")]
    Wildcard(String),
}

/// Parse a space-separated scope list. Runs of spaces are tolerated; the canonical form (see
/// [`canonical`]) joins scopes with single spaces.
pub fn parse(scope: &str) -> Result<Vec<ResourceScope>, ScopeError> {
    if scope.len() > MAX_SCOPE_LEN {
        return Err(ScopeError::TooLong);
    }
    if scope
        .chars()
        .any(|c| c.is_control() || (c.is_whitespace() && c != ' '))
    {
        return Err(ScopeError::Shape(short(scope)));
    }
    let parts: Vec<&str> = scope.split(' ').filter(|p| !p.is_empty()).collect();
    if parts.is_empty() {
        return Err(ScopeError::Empty);
    }
    if parts.len() > MAX_SCOPES {
        return Err(ScopeError::TooMany);
    }
    parts.into_iter().map(parse_one).collect()
}

/// Scopes re-joined by single spaces, for the wire and for cache keys.
pub fn canonical(scopes: &[ResourceScope]) -> String {
    scopes
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

fn parse_one(raw: &str) -> Result<ResourceScope, ScopeError> {
    let (kind, rest) = raw
        .split_once(':')
        .ok_or_else(|| ScopeError::Shape(short(raw)))?;
    let (name, actions) = rest
        .rsplit_once(':')
        .ok_or_else(|| ScopeError::Shape(short(raw)))?;
    if kind.is_empty() || name.is_empty() || actions.is_empty() {
        return Err(ScopeError::Shape(short(raw)));
    }
    if !valid_type(kind) {
        return Err(ScopeError::Type(short(raw)));
    }
    if name == "*" || name.ends_with("/*") {
        return Err(ScopeError::Wildcard(short(raw)));
    }
    check_name(name).map_err(|why| ScopeError::Name(short(raw), why))?;
    let actions: Vec<String> = actions.split(',').map(str::to_string).collect();
    if actions.iter().any(|a| {
        a.is_empty()
            || !a
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_' || b == b'*')
    }) {
        return Err(ScopeError::Actions(short(raw)));
    }
    Ok(ResourceScope {
        kind: kind.to_string(),
        name: name.to_string(),
        actions,
    })
}

/// `repository`, `registry`, `artifact-repository`, optionally with a deprecated `(class)`.
fn valid_type(kind: &str) -> bool {
    let base = match kind.split_once('(') {
        Some((base, class)) => {
            let Some(class) = class.strip_suffix(')') else {
                return false;
            };
            if class.is_empty() || !class.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return false;
            }
            base
        }
        None => kind,
    };
    !base.is_empty()
        && base
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn check_name(name: &str) -> Result<(), &'static str> {
    if name.len() > 255 {
        return Err("longer than 255 characters");
    }
    let (components, host_part) = match name.split_once(':') {
        // A colon is allowed only as `host:port/` in front.
        Some((host, rest)) => {
            let (port, path) = rest
                .split_once('/')
                .ok_or("a ':' may only separate a host from its port")?;
            if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) || port.len() > 5 {
                return Err("a ':' may only separate a host from its port");
            }
            if host.is_empty() || host.contains('/') {
                return Err("a ':' may only separate a host from its port");
            }
            (path, Some(host))
        }
        None => (name, None),
    };
    if let Some(host) = host_part {
        if !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        {
            return Err("the host part is not a host name");
        }
    }
    for component in components.split('/') {
        if component.is_empty() {
            return Err("empty path component");
        }
        let bytes = component.as_bytes();
        if !bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(b))
        {
            return Err("use lower-case letters, digits and . _ - only");
        }
        if !bytes[0].is_ascii_alphanumeric() || !bytes[bytes.len() - 1].is_ascii_alphanumeric() {
            return Err("components start and end with a letter or digit");
        }
    }
    Ok(())
}

fn short(s: &str) -> String {
    super::text::truncate(s, 80)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_scopes() {
        let cases: &[(&str, &str)] = &[
            ("repository:app:pull", "repository:app:pull"),
            (
                "repository:team/app:pull,push",
                "repository:team/app:pull,push",
            ),
            (
                "repository:team/app:pull  repository:base:pull",
                "repository:team/app:pull repository:base:pull",
            ),
            ("registry:catalog:*", "registry:catalog:*"),
            (
                "artifact-repository:charts/x:pull",
                "artifact-repository:charts/x:pull",
            ),
            (
                "repository:a.b_c-d/e__f:metadata_read",
                "repository:a.b_c-d/e__f:metadata_read",
            ),
            (
                "repository:localhost:5000/app:pull",
                "repository:localhost:5000/app:pull",
            ),
            ("repository(plugin):app:pull", "repository(plugin):app:pull"),
            (" repository:app:pull ", "repository:app:pull"),
        ];
        for (input, want) in cases {
            let parsed = parse(input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
            assert_eq!(canonical(&parsed), *want);
        }
        let p = parse("repository:team/app:pull,push").unwrap();
        assert_eq!(p[0].kind, "repository");
        assert_eq!(p[0].name, "team/app");
        assert_eq!(p[0].actions, ["pull", "push"]);
    }

    #[test]
    fn malformed_scopes() {
        let too_many = vec!["repository:a:pull"; MAX_SCOPES + 1].join(" ");
        let too_long = format!("repository:{}:pull", "a/".repeat(2100));
        let cases: Vec<(&str, &str)> = vec![
            ("", "empty"),
            ("   ", "empty"),
            ("repository", "type:name:actions"),
            ("repository:app", "type:name:actions"),
            (":app:pull", "type:name:actions"),
            ("repository::pull", "type:name:actions"),
            ("repository:app:", "type:name:actions"),
            ("repository:app:pull,", "action list"),
            ("repository:app:,pull", "action list"),
            ("repository:app:PULL", "action list"),
            ("repository:app:pull;rm", "action list"),
            ("repository:a:b:pull", "host from its port"),
            ("repository:host:port/app:pull", "host from its port"),
            ("repository:*:pull", "wildcard"),
            ("repository:team/*:pull", "wildcard"),
            ("repository:App:pull", "lower-case"),
            ("repository:a//b:pull", "empty path component"),
            ("repository:/a:pull", "empty path component"),
            ("repository:-a:pull", "start and end"),
            ("Repository:a:pull", "invalid type"),
            ("repo sitory:a:pull", "type:name:actions"),
            ("repository:a:pull\trepository:b:pull", "type:name:actions"),
            ("repository:a:pull\nrepository:b:pull", "type:name:actions"),
            ("repository:ä:pull", "lower-case"),
            (too_many.as_str(), "more than"),
            (too_long.as_str(), "longer than"),
        ];
        for (input, want) in cases {
            let err = parse(input).expect_err(input);
            assert!(err.to_string().contains(want), "{input:?}: {err} !~ {want}");
            assert!(err.to_string().len() < 300, "bounded message");
        }
    }
}
