//! The ACR token server (AZURE.md §3): `/oauth2/exchange` (AAD token → ACR refresh token),
//! `POST /oauth2/token` (refresh token → scoped access token), `GET /oauth2/token` (Basic
//! auth with the null GUID, docker's path) and the `/v2/` challenge.
//!
//! Every token is an ES256 JWT a CNCF distribution registry accepts: libtrust `kid` plus an
//! `x5c` chain, integer times, string `aud` = service, configurable `iss`, `access` claim.

use axum::http::Method;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Value};

use crate::arm;
use crate::config::{Config, Identity, Registry, ACR_AUDIENCE};
use crate::http::{all, first, Incoming, Reply};
use crate::jwt::Unverified;
use crate::log::Hop;
use crate::scope::{self, ResourceScope};
use crate::state::State;

/// Username that marks the password as an ACR token.
pub const NULL_GUID: &str = "00000000-0000-0000-0000-000000000000";

/// Which ACR endpoint a path is.
pub fn hop_of(method: &Method, path: &str) -> Hop {
    match path {
        "/oauth2/exchange" => Hop::AcrExchange,
        "/oauth2/token" if method == Method::GET => Hop::AcrTokenGet,
        "/oauth2/token" => Hop::AcrToken,
        "/v2" | "/v2/" => Hop::V2,
        p if p.starts_with("/v2/") => Hop::V2,
        _ => Hop::Other,
    }
}

/// `{"errors":[{"code":..,"message":..}]}`.
pub fn error(status: u16, code: &str, message: &str) -> Reply {
    Reply::json(
        status,
        &json!({"errors": [{"code": code, "message": message}]}),
    )
    .error_code(code)
}

fn unauthorized(message: &str) -> Reply {
    error(401, "UNAUTHORIZED", message)
}

/// 429 as ACR answers when an operations limit is reached.
pub fn too_many_requests() -> Reply {
    error(
        429,
        "TOOMANYREQUESTS",
        "Too many requests. Please visit https://aka.ms/acr/skus#sku-feature-matrix to view limits of all service tiers.",
    )
}

/// The answer for an injected fault of this status.
pub fn fault_reply(status: u16, json_body: bool) -> Reply {
    match (status, json_body) {
        (_, false) => Reply::text(
            status,
            format!(
                "Ref A: {} Ref B: AMS231032607029 Ref C: {}",
                uuid::Uuid::new_v4().simple(),
                jiff::Timestamp::now()
            ),
        )
        .error_code("fault"),
        (429, true) => too_many_requests(),
        (404, true) => error(404, "NOT_FOUND", "not found"),
        (s, true) if s >= 500 => error(s, "UNKNOWN", "An unknown error occurred."),
        (s, true) => error(s, "DENIED", "Injected fault."),
    }
}

fn not_found() -> Reply {
    error(404, "NOT_FOUND", "404 page not found")
}

/// Identity keys named by the token a request carries (unverified), for fault scoping.
pub fn identity_keys(config: &Config, hop: Hop, inc: &Incoming) -> (Option<String>, Vec<String>) {
    let form = inc.form();
    let token = match hop {
        Hop::AcrExchange => first(&form, "access_token").or(first(&form, "refresh_token")),
        Hop::AcrToken => first(&form, "refresh_token").or(first(&form, "password")),
        Hop::AcrTokenGet => return basic_keys(config, inc),
        _ => None,
    };
    let mut keys = token.map(arm::unverified_identity_keys).unwrap_or_default();
    let identity = keys.iter().find_map(|k| resolve(config, Some(k), None));
    let client_id = identity.map(|i| i.client_id.clone());
    if let Some(i) = identity {
        keys.extend([i.name.clone(), i.client_id.clone()]);
    }
    (client_id, keys)
}

fn basic_keys(config: &Config, inc: &Incoming) -> (Option<String>, Vec<String>) {
    let Some((_, password)) = basic_credentials(inc) else {
        return (None, Vec::new());
    };
    let mut keys = arm::unverified_identity_keys(&password);
    let identity = keys.iter().find_map(|k| resolve(config, Some(k), None));
    let client_id = identity.map(|i| i.client_id.clone());
    if let Some(i) = identity {
        keys.extend([i.name.clone(), i.client_id.clone()]);
    }
    (client_id, keys)
}

fn resolve<'a>(config: &'a Config, oid: Option<&str>, appid: Option<&str>) -> Option<&'a Identity> {
    oid.and_then(|o| config.identity_by_object_id(o))
        .or_else(|| appid.and_then(|a| config.identity_by_client_id(a)))
}

pub fn handle(state: &State, inc: &Incoming, hop: Hop, registry: &Registry) -> Reply {
    match hop {
        Hop::AcrExchange => exchange(state, inc, registry),
        Hop::AcrToken => token_post(state, inc, registry),
        Hop::AcrTokenGet => token_get(state, inc, registry),
        Hop::V2 => v2(state, inc, registry),
        _ => not_found(),
    }
}

fn check_service(service: Option<&str>, registry: &Registry) -> Result<(), Reply> {
    match service {
        None | Some("") => Err(error(
            400,
            "UNSUPPORTED",
            "missing required parameter 'service'",
        )),
        Some(s) if s.eq_ignore_ascii_case(&registry.host) => Ok(()),
        Some(s) => Err(unauthorized(&format!(
            "service '{s}' does not match registry '{}'",
            registry.host
        ))),
    }
}

fn exchange(state: &State, inc: &Incoming, registry: &Registry) -> Reply {
    if inc.method != Method::POST {
        return not_found();
    }
    let form = inc.form();
    let field = |name| first(&form, name).filter(|v| !v.is_empty());
    let token = match field("grant_type") {
        Some("access_token") => field("access_token"),
        Some("access_token_refresh_token") => field("access_token").or(field("refresh_token")),
        Some("refresh_token") => field("refresh_token"),
        Some(other) => {
            return error(
                400,
                "UNSUPPORTED",
                &format!("grant_type '{other}' is not supported"),
            );
        }
        None => {
            return error(
                400,
                "UNSUPPORTED",
                "missing required parameter 'grant_type'",
            )
        }
    };
    if let Err(reply) = check_service(field("service"), registry) {
        return reply;
    }
    let Some(token) = token else {
        return error(
            400,
            "UNSUPPORTED",
            "missing required parameter 'access_token'",
        );
    };
    let claims = match arm::validate(state, token) {
        Ok(c) => c,
        Err(reason) => return unauthorized(&reason),
    };
    let config = state.config();
    let aud_ok = if registry.authentication_as_arm {
        config.is_arm_audience(&claims.aud) || is_acr_audience(&claims.aud)
    } else {
        is_acr_audience(&claims.aud)
    };
    if !aud_ok {
        return unauthorized(&format!(
            "AAD access token audience '{}' is not accepted by registry '{}'",
            claims.aud, registry.host
        ));
    }
    if let Some(tenant) = field("tenant") {
        if !tenant.eq_ignore_ascii_case(&claims.tid) {
            return unauthorized(&format!(
                "tenant '{tenant}' does not match the AAD access token's tenant"
            ));
        }
    }
    if config.tenant(&claims.tid).is_none()
        || registry
            .tenant
            .as_deref()
            .is_some_and(|t| !t.eq_ignore_ascii_case(&claims.tid))
    {
        return unauthorized(&format!(
            "AAD access token tenant '{}' is not authorized for registry '{}'",
            claims.tid, registry.host
        ));
    }
    let Some(identity) = resolve(&config, claims.oid.as_deref(), claims.appid.as_deref()) else {
        return unauthorized("the identity of the AAD access token is unknown");
    };
    if config
        .grants(&identity.name, &registry.host)
        .next()
        .is_none()
    {
        return unauthorized(&format!(
            "identity '{}' has no role assignment on registry '{}'",
            identity.client_id, registry.host
        ));
    }
    let now = arm::now();
    let claims = json!({
        "jti": uuid::Uuid::new_v4().to_string(),
        "sub": identity.object_id,
        "nbf": now,
        "exp": arm::expiry(now, config.lifetimes.acr_refresh_secs),
        "iat": now,
        "iss": config.acr_issuer,
        "aud": registry.host,
        "version": "1.0",
        "rid": uuid::Uuid::new_v4().simple().to_string(),
        "grant_type": "refresh_token",
        "appid": identity.client_id,
        "tenant": identity.tenant,
        "permissions": {"actions": ["*"], "notActions": []},
        "roles": [],
    });
    match state
        .acr
        .signer
        .sign_with_chain(&claims, config.acr_token_x5c)
    {
        Ok(t) => Reply::json(200, &json!({"refresh_token": t})),
        Err(e) => error(500, "UNKNOWN", &e.to_string()),
    }
}

fn is_acr_audience(aud: &str) -> bool {
    aud.trim_end_matches('/').eq_ignore_ascii_case(ACR_AUDIENCE)
}

/// A verified ACR token.
struct AcrToken {
    grant_type: String,
    sub: String,
    access: Vec<ResourceScope>,
}

fn validate_acr(
    state: &State,
    config: &Config,
    token: &str,
    registry: &Registry,
) -> Result<AcrToken, Reply> {
    let parsed = Unverified::parse(token).map_err(|e| unauthorized(&e.to_string()))?;
    parsed
        .verify(state.acr.signer.public_point())
        .map_err(|e| unauthorized(&format!("ACR token is invalid: {e}")))?;
    let now = arm::now();
    if parsed.time_claim("exp").is_none_or(|exp| exp <= now) {
        return Err(unauthorized("ACR token has expired"));
    }
    if parsed.str_claim("iss") != Some(config.acr_issuer.as_str()) {
        return Err(unauthorized("ACR token has an unexpected issuer"));
    }
    if !parsed
        .audiences()
        .iter()
        .any(|a| a.eq_ignore_ascii_case(&registry.host))
    {
        return Err(unauthorized(&format!(
            "ACR token was not issued for registry '{}'",
            registry.host
        )));
    }
    let access = parsed
        .claims
        .get("access")
        .cloned()
        .map(serde_json::from_value::<Vec<ResourceScope>>)
        .transpose()
        .map_err(|_| unauthorized("ACR token has a malformed access claim"))?
        .unwrap_or_default();
    Ok(AcrToken {
        grant_type: parsed
            .str_claim("grant_type")
            .unwrap_or_default()
            .to_owned(),
        sub: parsed.str_claim("sub").unwrap_or_default().to_owned(),
        access,
    })
}

/// Grants for a request: from the identity's role assignments (refresh token) or from the
/// presented access token's own `access` claim.
fn grant(
    config: &Config,
    registry: &Registry,
    presented: &AcrToken,
    requested: &[ResourceScope],
) -> Result<Vec<ResourceScope>, Reply> {
    if presented.grant_type == "refresh_token" {
        let Some(identity) = config.identity_by_object_id(&presented.sub) else {
            return Err(unauthorized(
                "the identity of the refresh token no longer exists",
            ));
        };
        let roles: Vec<_> = config.grants(&identity.name, &registry.host).collect();
        if roles.is_empty() {
            return Err(unauthorized(&format!(
                "identity '{}' has no role assignment on registry '{}'",
                identity.client_id, registry.host
            )));
        }
        Ok(scope::intersect(requested, |k, n| {
            scope::allowed_by_roles(roles.iter().copied(), k, n)
        }))
    } else {
        Ok(scope::intersect(requested, |k, n| {
            scope::allowed_by_access(&presented.access, k, n)
        }))
    }
}

fn issue_access(
    state: &State,
    config: &Config,
    registry: &Registry,
    sub: &str,
    access: &[ResourceScope],
) -> Result<String, Reply> {
    let now = arm::now();
    let claims = json!({
        "jti": uuid::Uuid::new_v4().to_string(),
        "sub": sub,
        "nbf": now,
        "exp": arm::expiry(now, config.lifetimes.acr_access_secs),
        "iat": now,
        "iss": config.acr_issuer,
        "aud": registry.host,
        "version": "1.0",
        "rid": uuid::Uuid::new_v4().simple().to_string(),
        "access": access,
        "roles": [],
        "grant_type": "access_token",
    });
    state
        .acr
        .signer
        .sign_with_chain(&claims, config.acr_token_x5c)
        .map_err(|e| error(500, "UNKNOWN", &e.to_string()))
}

fn token_post(state: &State, inc: &Incoming, registry: &Registry) -> Reply {
    let form = inc.form();
    let field = |name| first(&form, name).filter(|v| !v.is_empty());
    let (token, refresh_only) = match field("grant_type") {
        Some("refresh_token") => (field("refresh_token"), true),
        Some("password") => (field("password").or(field("refresh_token")), false),
        Some(other) => {
            return error(
                400,
                "UNSUPPORTED",
                &format!("grant_type '{other}' is not supported"),
            );
        }
        None => {
            return error(
                400,
                "UNSUPPORTED",
                "missing required parameter 'grant_type'",
            )
        }
    };
    if let Err(reply) = check_service(field("service"), registry) {
        return reply;
    }
    let requested = match scope::parse_all(all(&form, "scope")) {
        Ok(s) => s,
        Err(e) => return error(400, "UNSUPPORTED", &e.to_string()),
    };
    let Some(token) = token else {
        return error(
            400,
            "UNSUPPORTED",
            "missing required parameter 'refresh_token'",
        );
    };
    let config = state.config();
    let presented = match validate_acr(state, &config, token, registry) {
        Ok(p) => p,
        Err(reply) => return reply,
    };
    if refresh_only && presented.grant_type != "refresh_token" {
        return unauthorized("the presented token is not an ACR refresh token");
    }
    let access = match grant(&config, registry, &presented, &requested) {
        Ok(a) => a,
        Err(reply) => return reply,
    };
    match issue_access(state, &config, registry, &presented.sub, &access) {
        Ok(t) => Reply::json(200, &json!({"access_token": t})),
        Err(reply) => reply,
    }
}

fn basic_credentials(inc: &Incoming) -> Option<(String, String)> {
    let value = inc.header("authorization")?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

fn token_get(state: &State, inc: &Incoming, registry: &Registry) -> Reply {
    let challenge = format!("Basic realm=\"https://{}/oauth2/token\"", registry.host);
    let Some((user, password)) = basic_credentials(inc) else {
        return unauthorized("basic authentication with an ACR token is required")
            .header("www-authenticate", challenge);
    };
    if user != NULL_GUID {
        return unauthorized(&format!(
            "username '{user}' is not supported; use {NULL_GUID} with an ACR token"
        ))
        .header("www-authenticate", challenge);
    }
    if let Err(reply) = check_service(inc.query("service"), registry) {
        return reply;
    }
    let requested = match scope::parse_all(inc.query_all("scope")) {
        Ok(s) => s,
        Err(e) => return error(400, "UNSUPPORTED", &e.to_string()),
    };
    let config = state.config();
    let presented = match validate_acr(state, &config, &password, registry) {
        Ok(p) => p,
        Err(reply) => return reply,
    };
    let access = match grant(&config, registry, &presented, &requested) {
        Ok(a) => a,
        Err(reply) => return reply,
    };
    match issue_access(state, &config, registry, &presented.sub, &access) {
        Ok(t) => Reply::json(200, &json!({"access_token": t, "token": t})),
        Err(reply) => reply,
    }
}

fn v2(state: &State, inc: &Incoming, registry: &Registry) -> Reply {
    let bearer = inc
        .header("authorization")
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim().to_owned());
    let mut challenge = format!(
        "Bearer realm=\"https://{host}/oauth2/token\",service=\"{host}\"",
        host = registry.host
    );
    if let Some(token) = bearer {
        let config = state.config();
        match validate_acr(state, &config, &token, registry) {
            Ok(t) if t.grant_type == "access_token" && inc.path.trim_end_matches('/') == "/v2" => {
                return Reply::json(200, &Value::Object(Default::default()))
                    .header("docker-distribution-api-version", "registry/2.0");
            }
            _ => challenge.push_str(",error=\"invalid_token\""),
        }
    }
    unauthorized(
        "authentication required, visit https://aka.ms/acr/authorization for more information.",
    )
    .header("www-authenticate", challenge)
    .header("docker-distribution-api-version", "registry/2.0")
}
