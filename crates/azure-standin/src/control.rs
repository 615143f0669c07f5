//! The `/_standin/...` control API on the plain-HTTP port: the same controls as the Rust
//! `Handle` (faults, request log, counters, configuration, certificates), for tests and
//! scripts that run the binary. Documented in the crate README.

use axum::http::Method;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::{
    Config, FederatedCredential, Identity, OidcIssuer, Registry, RoleAssignment, Tenant,
};
use crate::faults::FaultRule;
use crate::http::{Incoming, Reply};
use crate::log::Hop;
use crate::state::State;

pub const PREFIX: &str = "/_standin";

fn bad_request(message: impl std::fmt::Display) -> Reply {
    Reply::json(400, &json!({"error": message.to_string()}))
}

fn parse<T: for<'de> Deserialize<'de>>(inc: &Incoming) -> Result<T, Reply> {
    serde_json::from_slice(&inc.body).map_err(bad_request)
}

/// Information about the running stand-in (also what `--state-out` writes).
pub fn info(state: &State) -> Value {
    json!({
        "imds_url": format!("http://{}", state.imds_addr),
        "imds_addr": state.imds_addr.to_string(),
        "control_url": format!("http://{}{PREFIX}", state.imds_addr),
        "https_addr": state.https_addr.to_string(),
        "https_port": state.https_addr.port(),
        "ca_pem": state.tls.ca_pem(),
        "registry_signing_cert_pem": state.acr.cert_pem,
        "acr_issuer": state.config().acr_issuer,
    })
}

#[derive(Deserialize)]
struct MintArm {
    identity: String,
    resource: String,
    #[serde(default)]
    lifetime_secs: Option<u64>,
}

/// Applies `change` to the configuration; answers with the new configuration.
fn update(state: &State, change: impl FnOnce(&mut Config)) -> Reply {
    match state.update_config(change) {
        Ok(config) => Reply::json(200, &json!(*config)),
        Err(e) => bad_request(e),
    }
}

fn append<T: for<'de> Deserialize<'de>>(
    state: &State,
    inc: &Incoming,
    push: impl FnOnce(&mut Config, T),
) -> Reply {
    match parse::<T>(inc) {
        Ok(item) => update(state, |c| push(c, item)),
        Err(reply) => reply,
    }
}

pub async fn handle(state: &State, inc: &Incoming) -> Reply {
    let rest = inc.path[PREFIX.len()..].trim_end_matches('/');
    let method = &inc.method;
    match (method, rest) {
        (&Method::GET, "/healthz") => Reply::text(200, "ok"),
        (&Method::GET, "/info") => Reply::json(200, &info(state)),
        (&Method::GET, "/ca.pem") => {
            Reply::raw(200, Some("application/x-pem-file"), state.tls.ca_pem())
        }
        (&Method::GET, "/registry-signing-cert.pem") => {
            Reply::raw(200, Some("application/x-pem-file"), &state.acr.cert_pem)
        }
        (&Method::GET, "/requests") => {
            let hop: Option<Hop> = match inc.query("hop").map(|h| serde_json::from_value(json!(h)))
            {
                Some(Ok(hop)) => Some(hop),
                Some(Err(e)) => return bad_request(e),
                None => None,
            };
            let records: Vec<_> = state
                .log
                .records()
                .into_iter()
                .filter(|r| hop.is_none_or(|h| r.hop == h))
                .collect();
            Reply::json(200, &json!(records))
        }
        (&Method::DELETE, "/requests") => {
            state.log.clear();
            state.limits.reset();
            Reply::json(200, &json!({}))
        }
        (&Method::GET, "/counts") => Reply::json(
            200,
            &json!({"hops": state.log.counts(), "limiters": state.limits.stats()}),
        ),
        (&Method::GET, "/faults") => Reply::json(200, &json!(state.faults.list())),
        (&Method::POST, "/faults") => match parse::<FaultRule>(inc) {
            Ok(rule) => Reply::json(200, &json!({"id": state.faults.add(rule)})),
            Err(reply) => reply,
        },
        (&Method::DELETE, "/faults") => {
            state.faults.clear();
            Reply::json(200, &json!({}))
        }
        (&Method::DELETE, path) if path.starts_with("/faults/") => {
            match path["/faults/".len()..].parse::<u64>() {
                Ok(id) if state.faults.remove(id) => Reply::json(200, &json!({})),
                Ok(_) => Reply::json(404, &json!({"error": "no such fault"})),
                Err(e) => bad_request(e),
            }
        }
        (&Method::GET, "/config") => Reply::json(200, &json!(*state.config())),
        (&Method::PUT, "/config") => match parse::<Config>(inc) {
            Ok(config) => update(state, |c| *c = config),
            Err(reply) => reply,
        },
        (&Method::POST, "/tenants") => append(state, inc, |c, t: Tenant| c.tenants.push(t)),
        (&Method::POST, "/identities") => append(state, inc, |c, i: Identity| c.identities.push(i)),
        (&Method::POST, "/registries") => append(state, inc, |c, r: Registry| c.registries.push(r)),
        (&Method::POST, "/role-assignments") => append(state, inc, |c, r: RoleAssignment| {
            c.role_assignments.push(r)
        }),
        (&Method::POST, "/federated-credentials") => {
            append(state, inc, |c, f: FederatedCredential| {
                c.federated_credentials.push(f)
            })
        }
        (&Method::POST, "/oidc-issuers") => {
            append(state, inc, |c, o: OidcIssuer| c.oidc_issuers.push(o))
        }
        (&Method::POST, "/tokens/arm") => {
            let request = match parse::<MintArm>(inc) {
                Ok(r) => r,
                Err(reply) => return reply,
            };
            let config = state.config();
            let Some(identity) = config.identity_by_name(&request.identity) else {
                return bad_request(format!("unknown identity {}", request.identity));
            };
            let lifetime = request.lifetime_secs.unwrap_or(config.lifetimes.entra_secs);
            match crate::arm::issue(state, identity, &request.resource, lifetime) {
                Ok(issued) => Reply::json(
                    200,
                    &json!({"access_token": issued.token, "expires_on": issued.exp}),
                ),
                Err(e) => Reply::json(500, &json!({"error": e.to_string()})),
            }
        }
        _ => Reply::json(404, &json!({"error": "unknown control endpoint"})),
    }
}
