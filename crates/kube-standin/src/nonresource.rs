//! Non-resource paths: version, discovery (aggregated and legacy), OpenAPI, health and the
//! service-account issuer's OIDC documents.

use bytes::Bytes;
use serde_json::Value;

use crate::cluster::Cluster;
use crate::error::ApiError;
use crate::reply::Reply;
use crate::{discovery, openapi, token};

/// Serve a non-resource request.
pub fn serve(cluster: &Cluster, method: &str, path: &str, accept: &str) -> Reply {
    if method != "GET" && method != "HEAD" {
        return ApiError::method_not_allowed().into();
    }
    let reg = cluster.store.registry();
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let agg = |core: bool| -> Reply {
        match discovery::aggregated_version(accept) {
            Some(dv) => Reply::Raw(
                200,
                format!("application/json;g=apidiscovery.k8s.io;v={dv};as=APIGroupDiscoveryList"),
                Bytes::from(discovery::aggregated(&reg, core, dv).to_string()),
            ),
            None if core => Reply::json(
                200,
                discovery::api_versions(&cluster.url.replace("http://", "")),
            ),
            None => Reply::json(200, discovery::api_group_list(&reg)),
        }
    };
    let found = |v: Option<Value>| {
        v.map(|v| Reply::json(200, v))
            .unwrap_or_else(|| ApiError::no_route().into())
    };
    match segs.as_slice() {
        ["version"] => Reply::json(200, discovery::version()),
        ["api"] => agg(true),
        ["apis"] => agg(false),
        ["api", v] => found(discovery::resource_list(&reg, "", v)),
        ["apis", g] => found(discovery::api_group(&reg, g)),
        ["apis", g, v] => found(discovery::resource_list(&reg, g, v)),
        ["openapi", "v3"] => Reply::json(200, openapi::index(&reg)),
        ["openapi", "v3", "api", v] => found(openapi::document(&reg, "", v)),
        ["openapi", "v3", "apis", g, v] => found(openapi::document(&reg, g, v)),
        ["healthz"] | ["livez"] | ["readyz"] => {
            Reply::Raw(200, "text/plain".into(), Bytes::from_static(b"ok"))
        }
        [".well-known", "openid-configuration"] => Reply::json(
            200,
            token::openid_configuration(&cluster.issuer(), &cluster.url),
        ),
        ["openid", "v1", "jwks"] => Reply::Raw(
            200,
            "application/jwk-set+json".into(),
            Bytes::from(cluster.signer.jwks().to_string()),
        ),
        _ => ApiError::no_route().into(),
    }
}
