//! Request parsing: a URL path and method become a [`RequestInfo`] (verb, group, version,
//! resource, subresource, namespace, name) the way the API server's request-info resolver does
//! it; paths that are not resource requests (discovery, openapi, health) give `None`.

use std::collections::HashMap;

/// What a resource request addresses.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestInfo {
    /// Kubernetes verb.
    pub verb: String,
    /// API group.
    pub group: String,
    /// API version.
    pub version: String,
    /// Resource plural.
    pub resource: String,
    /// Subresource.
    pub subresource: String,
    /// Namespace (`None` for cluster-scoped or all-namespaces requests).
    pub namespace: Option<String>,
    /// Object name.
    pub name: Option<String>,
}

/// Parsed query parameters (last value wins).
pub type Query = HashMap<String, String>;

/// Parse a query string.
pub fn parse_query(q: &str) -> Query {
    form_urlencoded::parse(q.as_bytes()).into_owned().collect()
}

pub fn is_true(q: &Query, k: &str) -> bool {
    matches!(q.get(k).map(String::as_str), Some("true") | Some("1"))
}

/// Parse a resource path; `None` for paths that are not resource requests.
pub fn parse_path(method: &str, path: &str, q: &Query) -> Option<RequestInfo> {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] if !rest.is_empty() => ("", *v, rest),
        ["apis", g, v, rest @ ..] if !rest.is_empty() => (*g, *v, rest),
        _ => return None,
    };
    let mut info = RequestInfo {
        group: group.to_string(),
        version: version.to_string(),
        ..Default::default()
    };
    let rest: Vec<&str> = rest.to_vec();
    let (ns, rest) = if rest[0] == "namespaces"
        && rest.len() >= 3
        && !matches!(rest[2], "status" | "finalize")
    {
        (Some(rest[1]), &rest[2..])
    } else {
        (None, &rest[..])
    };
    info.namespace = ns.map(str::to_string);
    info.resource = rest[0].to_string();
    info.name = rest.get(1).map(|s| s.to_string());
    info.subresource = rest.get(2).map(|s| s.to_string()).unwrap_or_default();
    if rest.len() > 3 {
        return None;
    }
    // `namespaces/<name>` names the namespace object itself.
    if info.resource == "namespaces" && info.namespace.is_none() {
        if let Some(n) = &info.name {
            info.namespace = Some(n.clone());
        }
    }
    info.verb = match (method, info.name.is_some()) {
        ("GET", true) => "get",
        ("GET", false) if is_true(q, "watch") => "watch",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => "",
    }
    .to_string();
    Some(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let q = Query::new();
        let i = parse_path("GET", "/api/v1/namespaces/ns1/secrets/s1", &q).unwrap();
        assert_eq!(
            (i.verb.as_str(), i.namespace.as_deref(), i.name.as_deref()),
            ("get", Some("ns1"), Some("s1"))
        );
        let i = parse_path(
            "POST",
            "/api/v1/namespaces/ns1/serviceaccounts/sa/token",
            &q,
        )
        .unwrap();
        assert_eq!(
            (i.verb.as_str(), i.subresource.as_str()),
            ("create", "token")
        );
        let i = parse_path("GET", "/api/v1/namespaces/ns1", &q).unwrap();
        assert_eq!(
            (i.resource.as_str(), i.name.as_deref()),
            ("namespaces", Some("ns1"))
        );
        let mut wq = Query::new();
        wq.insert("watch".into(), "true".into());
        let i = parse_path(
            "GET",
            "/apis/acrpull.microsoft.com/v1beta2/acrpullbindings",
            &wq,
        )
        .unwrap();
        assert_eq!(
            (i.verb.as_str(), i.group.as_str(), i.namespace),
            ("watch", "acrpull.microsoft.com", None)
        );
        let i = parse_path("PATCH", "/apis/g/v1/namespaces/n/things/t/status", &q).unwrap();
        assert_eq!(
            (i.verb.as_str(), i.subresource.as_str()),
            ("patch", "status")
        );
        assert!(parse_path("GET", "/apis", &q).is_none());
        assert!(parse_path("GET", "/api/v1", &q).is_none());
        let i = parse_path("DELETE", "/api/v1/namespaces/n/secrets", &q).unwrap();
        assert_eq!(i.verb, "deletecollection");
    }
}
