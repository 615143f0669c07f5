//! The Entra ID stand-in (AZURE.md §2): tenant discovery, the signing keys, and the
//! client-credentials token endpoint with a federated (jwt-bearer) client assertion checked
//! against the identity's federated identity credentials.
//!
//! Assertions are verified like Entra does: `<iss>/.well-known/openid-configuration` →
//! `jwks_uri` → JWKS (cached), unless the issuer's JWKS is configured directly.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::Method;
use serde_json::{json, Value};

use crate::arm;
use crate::config::Config;
use crate::http::{first, Incoming, Reply};
use crate::jwt::{JwtError, Unverified};
use crate::log::{lock, Hop};
use crate::state::State;

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Scopes MSAL appends even for client credentials.
const TOLERATED_SCOPES: [&str; 3] = ["openid", "offline_access", "profile"];

/// What an Entra path asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Discovery { tenant: String },
    Keys { tenant: String },
    Token { tenant: String },
}

impl Route {
    pub fn parse(path: &str) -> Option<Self> {
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match segments.as_slice() {
            [t, "v2.0", ".well-known", "openid-configuration"] => Some(Route::Discovery {
                tenant: t.to_string(),
            }),
            [t, "discovery", "v2.0", "keys"] | [t, "discovery", "keys"] => Some(Route::Keys {
                tenant: t.to_string(),
            }),
            [t, "oauth2", "v2.0", "token"] => Some(Route::Token {
                tenant: t.to_string(),
            }),
            _ => None,
        }
    }

    pub fn hop(&self) -> Hop {
        match self {
            Route::Discovery { .. } | Route::Keys { .. } => Hop::EntraDiscovery,
            Route::Token { .. } => Hop::EntraToken,
        }
    }
}

/// An Entra error answer: `error`, `error_description` (with the AADSTS code, trace and
/// correlation ids and timestamp), `error_codes`, `timestamp`, `trace_id`, `correlation_id`,
/// `error_uri`.
pub fn error(authority: &str, status: u16, error: &str, code: u32, description: &str) -> Reply {
    let trace_id = uuid::Uuid::new_v4().to_string();
    let correlation_id = uuid::Uuid::new_v4().to_string();
    let timestamp = jiff::Timestamp::now()
        .strftime("%Y-%m-%d %H:%M:%SZ")
        .to_string();
    Reply::json(
        status,
        &json!({
            "error": error,
            "error_description": format!(
                "AADSTS{code}: {description} Trace ID: {trace_id} Correlation ID: {correlation_id} Timestamp: {timestamp}"
            ),
            "error_codes": [code],
            "timestamp": timestamp,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": format!("https://{authority}/error?code={code}"),
        }),
    )
    .error_code(format!("AADSTS{code}"))
}

/// The answer for an injected fault of this status.
pub fn fault_reply(authority: &str, status: u16, json_body: bool) -> Reply {
    match (status, json_body) {
        (_, false) => Reply::text(status, "Service unavailable").error_code("fault"),
        (429, true) => error(
            authority,
            429,
            "temporarily_unavailable",
            50196,
            "The server terminated an operation because it encountered a client request loop.",
        ),
        (s, true) if s >= 500 => error(
            authority,
            s,
            "temporarily_unavailable",
            90033,
            "A transient error has occurred. Please try again.",
        ),
        (s, true) => error(authority, s, "invalid_request", 90000, "Injected fault."),
    }
}

fn unknown_tenant(authority: &str, tenant: &str) -> Reply {
    error(
        authority,
        400,
        "invalid_tenant",
        90002,
        &format!(
            "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."
        ),
    )
}

/// Client id of a token request, and every key its identity is known by.
pub fn identity_keys(config: &Config, inc: &Incoming) -> (Option<String>, Vec<String>) {
    let form = inc.form();
    let Some(client_id) = first(&form, "client_id") else {
        return (None, Vec::new());
    };
    let mut keys = vec![client_id.to_owned()];
    if let Some(i) = config.identity_by_client_id(client_id) {
        keys.extend([i.name.clone(), i.object_id.clone()]);
    }
    (Some(client_id.to_owned()), keys)
}

pub async fn handle(state: &State, inc: &Incoming, route: &Route) -> Reply {
    match route {
        Route::Discovery { tenant } => discovery(state, inc, tenant),
        Route::Keys { tenant } => keys(state, inc, tenant),
        Route::Token { tenant } => token(state, inc, tenant).await,
    }
}

fn discovery(state: &State, inc: &Incoming, tenant: &str) -> Reply {
    let authority = &inc.authority;
    if inc.method != Method::GET {
        return Reply::text(405, "").error_code("method_not_allowed");
    }
    let config = state.config();
    let Some(t) = config.tenant(tenant) else {
        return unknown_tenant(authority, tenant);
    };
    let base = format!("https://{authority}/{tenant}");
    Reply::json(
        200,
        &json!({
            "token_endpoint": format!("{base}/oauth2/v2.0/token"),
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "jwks_uri": format!("https://{authority}/{tenant}/discovery/v2.0/keys"),
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["ES256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": format!("https://{authority}/{}/v2.0", t.id),
            "request_uri_parameter_supported": false,
            "authorization_endpoint": format!("{base}/oauth2/v2.0/authorize"),
            "device_authorization_endpoint": format!("{base}/oauth2/v2.0/devicecode"),
            "end_session_endpoint": format!("{base}/oauth2/v2.0/logout"),
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nbf", "tid", "oid"],
            "tenant_region_scope": "NA",
            "cloud_instance_name": authority,
        }),
    )
}

fn keys(state: &State, inc: &Incoming, tenant: &str) -> Reply {
    if state.config().tenant(tenant).is_none() {
        return unknown_tenant(&inc.authority, tenant);
    }
    Reply::json(200, &json!({"keys": [state.entra_signer.jwk()]}))
}

async fn token(state: &State, inc: &Incoming, tenant: &str) -> Reply {
    let authority = inc.authority.as_str();
    let err = |status, e, code, d: &str| error(authority, status, e, code, d);
    if inc.method != Method::POST {
        return err(
            405,
            "invalid_request",
            900561,
            "The endpoint only accepts POST requests.",
        );
    }
    let config = state.config();
    let Some(tenant) = config.tenant(tenant) else {
        return unknown_tenant(authority, tenant);
    };
    let form = inc.form();
    let field = |name| first(&form, name).filter(|v| !v.is_empty());
    let missing = |name: &str| {
        err(
            400,
            "invalid_request",
            900144,
            &format!("The request body must contain the following parameter: '{name}'."),
        )
    };
    match field("grant_type") {
        None => return missing("grant_type"),
        Some("client_credentials") => {}
        Some(other) => {
            return err(
                400,
                "unsupported_grant_type",
                70003,
                &format!("The app requested an unsupported grant type '{other}'."),
            );
        }
    }
    let Some(client_id) = field("client_id") else {
        return missing("client_id");
    };
    let Some(identity) = config
        .identity_by_client_id(client_id)
        .filter(|i| i.tenant.eq_ignore_ascii_case(&tenant.id))
    else {
        return err(
            400,
            "unauthorized_client",
            700016,
            &format!(
                "Application with identifier '{client_id}' was not found in the directory '{}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant.",
                tenant.id
            ),
        );
    };
    let Some(scope) = field("scope") else {
        return missing("scope");
    };
    let resource = match resource_of_scope(scope) {
        Ok(resource) => resource,
        Err(()) => {
            return err(
                400,
                "invalid_scope",
                70011,
                &format!(
                    "The provided request must include a 'scope' input parameter. The provided value for the input parameter 'scope' is not valid. The scope {scope} is not valid."
                ),
            );
        }
    };
    match field("client_assertion_type") {
        None => return missing("client_assertion_type"),
        Some(ASSERTION_TYPE) => {}
        Some(other) => {
            return err(
                400,
                "invalid_request",
                50027,
                &format!("Invalid client_assertion_type '{other}'."),
            );
        }
    }
    let Some(assertion) = field("client_assertion") else {
        return missing("client_assertion");
    };
    let Ok(assertion) = Unverified::parse(assertion) else {
        return err(
            400,
            "invalid_request",
            50027,
            "JWT token is invalid or malformed.",
        );
    };
    let iss = assertion.str_claim("iss").unwrap_or_default().to_owned();
    let sub = assertion.str_claim("sub").unwrap_or_default().to_owned();
    let auds = assertion.audiences();
    let matched = config.federated_credentials.iter().any(|f| {
        f.identity == identity.name
            && f.issuer == iss
            && f.subject == sub
            && f.audiences.iter().any(|a| auds.contains(&a.as_str()))
    });
    if !matched {
        return err(
            400,
            "invalid_request",
            70021,
            &format!(
                "No matching federated identity record found for presented assertion. Assertion Issuer: '{iss}'. Assertion Subject: '{sub}'. Assertion Audience: '{}'. https://docs.microsoft.com/azure/active-directory/develop/workload-identity-federation",
                auds.join(",")
            ),
        );
    }
    if let Err(reply) = verify_signature(state, &config, &assertion, &iss, authority).await {
        return reply;
    }
    let now = arm::now();
    let skew = i64::try_from(config.assertion_clock_skew_secs).unwrap_or(i64::MAX);
    let exp = assertion.time_claim("exp");
    let nbf = assertion.time_claim("nbf");
    if exp.is_none_or(|exp| exp.saturating_add(skew) <= now)
        || nbf.is_some_and(|nbf| nbf.saturating_sub(skew) > now)
    {
        let show = |t: Option<i64>| {
            t.and_then(|s| jiff::Timestamp::from_second(s).ok())
                .map(|ts| ts.to_string())
                .unwrap_or_else(|| "(none)".to_owned())
        };
        return err(
            401,
            "invalid_client",
            700024,
            &format!(
                "Client assertion is not within its valid time range. Current time: {}, assertion valid from {}, expiry time of assertion {}.",
                show(Some(now)),
                show(nbf),
                show(exp)
            ),
        );
    }
    match arm::issue(state, identity, &resource, config.lifetimes.entra_secs) {
        Ok(issued) => {
            let lifetime = issued.exp - issued.iat;
            Reply::json(
                200,
                &json!({
                    "token_type": "Bearer",
                    "expires_in": lifetime,
                    "ext_expires_in": lifetime,
                    "access_token": issued.token,
                }),
            )
        }
        Err(e) => err(
            500,
            "server_error",
            90033,
            &format!("Token signing failed: {e}"),
        ),
    }
}

/// `<resource>/.default` plus tolerated OIDC scopes → the resource (`/.default` stripped,
/// so `https://management.core.windows.net//.default` gives `https://management.core.windows.net/`).
fn resource_of_scope(scope: &str) -> Result<String, ()> {
    let scopes: Vec<&str> = scope
        .split_whitespace()
        .filter(|s| !TOLERATED_SCOPES.contains(s))
        .collect();
    match scopes.as_slice() {
        [one] => match one.strip_suffix("/.default") {
            Some(resource) if !resource.is_empty() => Ok(resource.to_owned()),
            _ => Err(()),
        },
        _ => Err(()),
    }
}

async fn verify_signature(
    state: &State,
    config: &Config,
    assertion: &Unverified,
    iss: &str,
    authority: &str,
) -> Result<(), Reply> {
    let discovery_failed = |why: String| {
        error(
            authority,
            400,
            "invalid_request",
            90061,
            &format!("Request to External OIDC endpoint failed. {why}"),
        )
    };
    let bad_signature = |why: JwtError| {
        error(
            authority,
            401,
            "invalid_client",
            700027,
            &format!("Client assertion failed signature validation. {why}"),
        )
    };
    let jwks = state
        .jwks
        .get(state, config, iss, false)
        .await
        .map_err(discovery_failed)?;
    match assertion.verify_with_jwks(&jwks) {
        Ok(()) => Ok(()),
        Err(JwtError::UnknownKey(_)) => {
            // The issuer may have rotated its keys since they were cached.
            let jwks = state
                .jwks
                .get(state, config, iss, true)
                .await
                .map_err(discovery_failed)?;
            assertion.verify_with_jwks(&jwks).map_err(bad_signature)
        }
        Err(e) => Err(bad_signature(e)),
    }
}

/// Discovered key sets by issuer, with their fetch time.
#[derive(Debug, Default)]
pub struct JwksCache {
    entries: Mutex<HashMap<String, (Instant, Value)>>,
}

impl JwksCache {
    pub fn clear(&self) {
        lock(&self.entries).clear();
    }

    /// The key set of `issuer`: configured directly, cached, or discovered.
    pub async fn get(
        &self,
        state: &State,
        config: &Config,
        issuer: &str,
        refresh: bool,
    ) -> Result<Value, String> {
        let key = issuer.trim_end_matches('/');
        if let Some(configured) = config
            .oidc_issuers
            .iter()
            .find(|o| o.issuer.trim_end_matches('/') == key)
        {
            return Ok(configured.jwks.clone());
        }
        let ttl = Duration::from_secs(config.jwks_cache_secs);
        if !refresh {
            if let Some((at, jwks)) = lock(&self.entries).get(key) {
                if at.elapsed() < ttl {
                    return Ok(jwks.clone());
                }
            }
        }
        let jwks = discover(&state.http, key).await?;
        lock(&self.entries).insert(key.to_owned(), (Instant::now(), jwks.clone()));
        Ok(jwks)
    }
}

async fn discover(http: &reqwest::Client, issuer: &str) -> Result<Value, String> {
    if !(issuer.starts_with("https://") || issuer.starts_with("http://")) {
        return Err(format!("issuer '{issuer}' is not an http(s) URL"));
    }
    let fetch = |url: String| async move {
        let response = http
            .get(&url)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("GET {url}: status {}", response.status()));
        }
        response
            .json::<Value>()
            .await
            .map_err(|e| format!("GET {url}: {e}"))
    };
    let discovery = fetch(format!("{issuer}/.well-known/openid-configuration")).await?;
    let jwks_uri = discovery
        .get("jwks_uri")
        .and_then(Value::as_str)
        .ok_or("openid-configuration has no jwks_uri")?;
    let jwks = fetch(jwks_uri.to_owned()).await?;
    if jwks.get("keys").and_then(Value::as_array).is_none() {
        return Err("JWKS has no keys".to_owned());
    }
    Ok(jwks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(
            Route::parse("/t1/v2.0/.well-known/openid-configuration"),
            Some(Route::Discovery {
                tenant: "t1".into()
            })
        );
        assert_eq!(
            Route::parse("/contoso.onmicrosoft.com/oauth2/v2.0/token"),
            Some(Route::Token {
                tenant: "contoso.onmicrosoft.com".into()
            })
        );
        assert_eq!(Route::parse("/oauth2/token"), None);
    }

    #[test]
    fn scopes() {
        assert_eq!(
            resource_of_scope(
                "https://management.core.windows.net//.default openid offline_access profile"
            ),
            Ok("https://management.core.windows.net/".to_owned())
        );
        assert_eq!(
            resource_of_scope("https://management.core.usgovcloudapi.net/.default"),
            Ok("https://management.core.usgovcloudapi.net".to_owned())
        );
        assert_eq!(resource_of_scope("/.default"), Err(()));
        assert_eq!(resource_of_scope("openid"), Err(()));
        assert_eq!(resource_of_scope("a/.default b/.default"), Err(()));
        assert_eq!(resource_of_scope("https://management.azure.com/"), Err(()));
    }
}
