//! The IMDS managed-identity token endpoint `GET /metadata/identity/oauth2/token`
//! (AZURE.md §1): request checks in IMDS's order, identity selection, string-typed answers.

use axum::http::Method;
use serde_json::json;

use crate::arm;
use crate::config::{Config, Identity, IdentityKind};
use crate::http::{Incoming, Reply};
use crate::state::State;

pub const PATH: &str = "/metadata/identity/oauth2/token";

/// Identity selector parameters, in the order IMDS documents them.
const SELECTORS: [&str; 4] = ["client_id", "object_id", "msi_res_id", "mi_res_id"];

fn error(status: u16, error: &str, description: &str) -> Reply {
    Reply::json(
        status,
        &json!({"error": error, "error_description": description}),
    )
    .error_code(error)
}

pub fn identity_not_found() -> Reply {
    error(400, "invalid_request", "Identity not found")
}

/// The answer for an injected fault of this status.
pub fn fault_reply(status: u16, json_body: bool) -> Reply {
    match (status, json_body) {
        (429, true) => error(429, "too_many_requests", "Too many requests"),
        (429, false) => Reply::text(429, "Too many requests").error_code("too_many_requests"),
        (404, _) => Reply::text(404, "").error_code("not_found"),
        (410, _) => Reply::text(410, "IMDS is being updated").error_code("gone"),
        (s, _) if s >= 500 => error(
            s,
            "unknown",
            "Failed to retrieve token from the Active directory. For details see logs in /var/log/imds",
        ),
        (s, _) => error(s, "invalid_request", "Injected fault"),
    }
}

/// Every key the request's identity may be known by, for fault scoping.
pub fn identity_keys(config: &Config, inc: &Incoming) -> (Option<String>, Vec<String>) {
    let mut keys: Vec<String> = SELECTORS
        .iter()
        .filter_map(|s| inc.query(s))
        .map(str::to_owned)
        .collect();
    let identity = select(config, inc).ok().flatten();
    if let Some(identity) = identity {
        keys.extend([
            identity.name.clone(),
            identity.client_id.clone(),
            identity.object_id.clone(),
        ]);
    }
    (identity.map(|i| i.client_id.clone()), keys)
}

/// Resolves the selector to an identity assigned to this "VM". `Err` = the request named
/// more than one selector or none with several identities; `Ok(None)` = not found.
fn select<'a>(config: &'a Config, inc: &Incoming) -> Result<Option<&'a Identity>, &'static str> {
    let given: Vec<(&str, &str)> = SELECTORS
        .iter()
        .filter_map(|s| inc.query(s).map(|v| (*s, v)))
        .collect();
    let on_vm = |i: &&Identity| i.kind == IdentityKind::Managed && i.assigned_to_vm;
    match given.as_slice() {
        [] => {
            let assigned: Vec<&Identity> = config.identities.iter().filter(on_vm).collect();
            match assigned.as_slice() {
                [] => Ok(None),
                [one] => Ok(Some(one)),
                _ => Err(
                    "Multiple user assigned identities exist, please specify the clientId / resourceId of the identity in the token request",
                ),
            }
        }
        [(kind, value)] => Ok(match *kind {
            "client_id" => config.identity_by_client_id(value),
            "object_id" => config.identity_by_object_id(value),
            _ => config.identity_by_resource_id(value),
        }
        .filter(on_vm)),
        _ => Err("Only one of client_id, object_id and msi_res_id may be specified"),
    }
}

/// Handles one token request.
pub fn token(state: &State, inc: &Incoming) -> Reply {
    if inc.method != Method::GET {
        return error(
            405,
            "invalid_request",
            "The requested method is not supported",
        );
    }
    if inc.headers.contains_key("x-forwarded-for") {
        return error(
            400,
            "invalid_request",
            "Requests with X-Forwarded-For header are not allowed",
        );
    }
    if inc.header("metadata") != Some("true") {
        return error(
            400,
            "bad_request_102",
            "Required metadata header not specified",
        );
    }
    if let Some(name) = inc.duplicate_query_param() {
        return error(
            400,
            "invalid_request",
            &format!("Duplicate query parameter '{name}' is not allowed"),
        );
    }
    let Some(api_version) = inc.query("api-version") else {
        return Reply::json(
            400,
            &json!({
                "error": "Bad request. api-version was not specified in the request. For more information refer to aka.ms/azureimds",
                "newest-versions": ["2023-07-01", "2021-12-13", "2021-05-01"],
            }),
        )
        .error_code("missing_api_version");
    };
    if !valid_api_version(api_version) {
        return Reply::json(
            400,
            &json!({
                "error": "Bad request. api-version is invalid or was not specified in the proper format. For more information refer to aka.ms/azureimds",
                "newest-versions": ["2023-07-01", "2021-12-13", "2021-05-01"],
            }),
        )
        .error_code("invalid_api_version");
    }
    let resource = inc.query("resource").unwrap_or("").trim();
    let resource = resource.strip_suffix("/.default").unwrap_or(resource);
    if resource.is_empty() {
        return error(
            400,
            "invalid_request",
            "Required audience parameter not specified",
        );
    }
    let config = state.config();
    let identity = match select(&config, inc) {
        Ok(Some(identity)) => identity,
        Ok(None) => return identity_not_found(),
        Err(reason) => return error(400, "invalid_request", reason),
    };
    let lifetime = config.lifetimes.imds_secs;
    match arm::issue(state, identity, resource, lifetime) {
        Ok(issued) => Reply::json(
            200,
            &json!({
                "access_token": issued.token,
                "client_id": identity.client_id,
                "refresh_token": "",
                "expires_in": (issued.exp - issued.iat).to_string(),
                "expires_on": issued.exp.to_string(),
                "ext_expires_in": (issued.exp - issued.iat).to_string(),
                "not_before": issued.iat.to_string(),
                "resource": resource,
                "token_type": "Bearer",
            }),
        )
        .header("server", "IMDS/150.870.65.1854"),
        Err(e) => error(500, "unknown", &format!("Token signing failed: {e}")),
    }
}

/// IMDS accepts dated versions from 2018-02-01 on.
fn valid_api_version(v: &str) -> bool {
    let b = v.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && v.chars()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
        && v >= "2018-02-01"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_versions() {
        assert!(valid_api_version("2018-02-01"));
        assert!(valid_api_version("2021-12-13"));
        assert!(!valid_api_version("2017-09-01"));
        assert!(!valid_api_version("latest"));
        assert!(!valid_api_version("2018-2-01x"));
    }
}
