//! `/debug/bindings` and `/debug/bindings/{namespace}/{name}`: the tracker's records as JSON.
//!
//! Where it is served decides who may read it: on `--debug-bind-address` (loopback by
//! default, reachable only from inside the pod) everything is shown; behind
//! `--metrics-secure` each caller sees what Kubernetes lets them read (see
//! [`super::secure::Access`]): everything with `get` on the path as a non-resource URL, else the
//! bindings of the namespaces where they may `get` `acrpullbindings` — nothing a tenant could
//! not already read with `kubectl get apb -o yaml`.
//!
//! A standby replica answers with no bindings: it makes no passes, so whatever it saw while it
//! last led is stale (its tracker is also cleared when it loses the Lease).

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use tokio::sync::watch;

use super::secure::{Access, Authorizer, Caller};
use crate::k8s::tracker::{BindingEntry, Tracker};

#[derive(Clone)]
struct DebugState {
    tracker: Tracker,
    leader: watch::Receiver<bool>,
    /// `None`: every caller sees everything (the loopback listener).
    authz: Option<Arc<Authorizer>>,
}

/// The debug routes. With `authz`, a [`Caller`] must have been put in the request's
/// extensions by [`super::secure::authenticate`].
pub fn router(
    tracker: Tracker,
    leader: watch::Receiver<bool>,
    authz: Option<Arc<Authorizer>>,
) -> Router {
    Router::new()
        .route("/debug/bindings", get(list))
        .route("/debug/bindings/{namespace}/{name}", get(one))
        .with_state(DebugState {
            tracker,
            leader,
            authz,
        })
}

fn access(s: &DebugState, caller: Option<Extension<Caller>>) -> Option<Access> {
    match (&s.authz, caller) {
        (None, _) => Some(Access::All),
        (Some(authz), Some(Extension(caller))) => Some(Access::Checked(authz.clone(), caller)),
        // Secure mode without an authenticated caller: the middleware was not applied.
        (Some(_), None) => None,
    }
}

fn group_of(e: &BindingEntry) -> String {
    e.api_version
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string()
}

fn forbidden() -> Response {
    (StatusCode::FORBIDDEN, "Forbidden\n").into_response()
}

fn review_failed(e: impl std::fmt::Display) -> Response {
    tracing::warn!(error = %e, "could not authorize a debug request");
    (StatusCode::INTERNAL_SERVER_ERROR, "authorization failed\n").into_response()
}

fn entries(s: &DebugState, all: impl FnOnce() -> Vec<BindingEntry>) -> (bool, Vec<BindingEntry>) {
    let leads = *s.leader.borrow();
    (leads, if leads { all() } else { Vec::new() })
}

async fn list(State(s): State<DebugState>, caller: Option<Extension<Caller>>) -> Response {
    let Some(access) = access(&s, caller) else {
        return forbidden();
    };
    let (leads, mut bindings) = entries(&s, || s.tracker.list());
    let wanted: BTreeSet<(String, String)> = bindings
        .iter()
        .map(|e| (group_of(e), e.namespace.clone()))
        .collect();
    match access.filter("/debug/bindings", wanted).await {
        Err(e) => return review_failed(e),
        Ok(None) => {}
        Ok(Some(allowed)) => {
            if allowed.is_empty() {
                return forbidden();
            }
            bindings.retain(|e| allowed.contains(&(group_of(e), e.namespace.clone())));
        }
    }
    Json(serde_json::json!({ "leader": leads, "bindings": bindings })).into_response()
}

async fn one(
    State(s): State<DebugState>,
    caller: Option<Extension<Caller>>,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    let Some(access) = access(&s, caller) else {
        return forbidden();
    };
    // Authorize before looking: a refused caller must not learn whether the binding exists.
    let wanted: BTreeSet<(String, String)> = [
        crate::state::binding::Version::V1beta1,
        crate::state::binding::Version::V1beta2,
    ]
    .iter()
    .map(|v| {
        let group = v.api_version().split('/').next().unwrap_or_default();
        (group.to_string(), namespace.clone())
    })
    .collect();
    let path = format!("/debug/bindings/{namespace}/{name}");
    let allowed = match access.filter(&path, wanted).await {
        Err(e) => return review_failed(e),
        Ok(None) => None,
        Ok(Some(allowed)) if allowed.is_empty() => return forbidden(),
        Ok(Some(allowed)) => Some(allowed),
    };
    let (_, mut found) = entries(&s, || s.tracker.get(&namespace, &name));
    if let Some(allowed) = allowed {
        found.retain(|e| allowed.contains(&(group_of(e), e.namespace.clone())));
    }
    if found.is_empty() {
        return (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"error": format!("no binding {namespace}/{name} is tracked")})),
        )
            .into_response();
    }
    Json(serde_json::json!({ "bindings": found })).into_response()
}
