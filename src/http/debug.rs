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
use axum::http::{header, StatusCode};
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

fn forbidden() -> Response {
    (StatusCode::FORBIDDEN, "Forbidden\n").into_response()
}

fn review_failed(e: impl std::fmt::Display) -> Response {
    tracing::warn!(error = %e, "could not authorize a debug request");
    (StatusCode::INTERNAL_SERVER_ERROR, "authorization failed\n").into_response()
}

async fn list(State(s): State<DebugState>, caller: Option<Extension<Caller>>) -> Response {
    let Some(access) = access(&s, caller) else {
        return forbidden();
    };
    let leads = *s.leader.borrow();
    let wanted = if leads {
        s.tracker.scopes()
    } else {
        BTreeSet::new()
    };
    let allowed = match access.filter("/debug/bindings", wanted).await {
        Err(e) => return review_failed(e),
        Ok(None) => None,
        Ok(Some(allowed)) if allowed.is_empty() => return forbidden(),
        Ok(Some(allowed)) => Some(allowed),
    };
    // Serialized straight from the tracker, under its lock: neither a copy of the entries nor
    // a `serde_json::Value` of them (about 2 KiB per binding; 20 MiB at 10,000 bindings) is
    // built, which made reading this page the controller's largest allocation.
    let body = s.tracker.list_json(leads, |k| {
        allowed
            .as_ref()
            .is_none_or(|a| a.contains(&(k.group().to_string(), k.namespace.clone())))
    });
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
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
    let mut found = if *s.leader.borrow() {
        s.tracker.get(&namespace, &name)
    } else {
        Vec::new()
    };
    if let Some(allowed) = allowed {
        found.retain(|e| allowed.contains(&(e.group().to_string(), e.namespace.clone())));
    }
    if found.is_empty() {
        return (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"error": format!("no binding {namespace}/{name} is tracked")})),
        )
            .into_response();
    }
    #[derive(serde::Serialize)]
    struct OneBody<'a> {
        bindings: &'a [BindingEntry],
    }
    Json(OneBody { bindings: &found }).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::tracker::{BindingKey, Report};
    use crate::state::binding::Version;
    use crate::state::reason::Reason;
    use crate::state::record::{Phase, Record};

    fn tracker() -> Tracker {
        let t = Tracker::default();
        let key = BindingKey {
            version: Version::V1beta2,
            namespace: "ns".into(),
            name: "a".into(),
        };
        let record = Record {
            phase: Phase::Ready,
            reason: Reason::TokenIssued,
            ready: true,
            message: String::new(),
            error: String::new(),
            last_refresh: None,
            expiry: None,
            next_refresh: None,
            consecutive_failures: 0,
            observed_generation: 1,
            verified: None,
            permitted: None,
        };
        let report = Report {
            record,
            service_account: "default".into(),
        };
        t.record(&key, report, jiff::Timestamp::now());
        t
    }

    async fn get(app: Router, path: &str) -> (u16, Value) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let _ = rustls::crypto::ring::default_provider().install_default();
        let r = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
        let code = r.status().as_u16();
        let body = r.json().await.unwrap_or_default();
        server.abort();
        (code, body)
    }

    use serde_json::Value;

    #[tokio::test]
    async fn a_standby_shows_nothing_it_saw_while_it_led() {
        let (tx, rx) = watch::channel(true);
        let t = tracker();
        let (code, body) = get(router(t.clone(), rx.clone(), None), "/debug/bindings").await;
        assert_eq!(code, 200);
        assert_eq!(body["bindings"].as_array().unwrap().len(), 1, "{body}");
        // The Lease is lost: the tracker is cleared, and the endpoint shows nothing anyway.
        let clearing = tokio::spawn(t.clone().clear_on_standby(rx.clone()));
        tx.send(false).unwrap();
        let (code, body) = get(router(t.clone(), rx.clone(), None), "/debug/bindings").await;
        assert_eq!(code, 200);
        assert_eq!(body["leader"], false);
        assert!(body["bindings"].as_array().unwrap().is_empty(), "{body}");
        let (code, _) = get(router(t.clone(), rx, None), "/debug/bindings/ns/a").await;
        assert_eq!(code, 404);
        // And the records themselves are gone (memory, and a later leadership starts clean).
        for _ in 0..100 {
            if t.list().is_empty() {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(t.list().is_empty());
        clearing.abort();
    }
}
