//! The `/_standin/...` control API: the typed handle's controls over HTTP, for shell scripts
//! and kubectl-driven tests. Served on the API port and on a separate control port that stays
//! up while the API port is down. See the crate README for the routes.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::{json, Value};

use crate::cluster::Cluster;
use crate::error::ApiError;
use crate::faults::Fault;
use crate::listener::Listener;
use crate::objects;
use crate::reply::{plain, Body, Reply};
use crate::request::{parse_query, Query};

fn ok(v: Value) -> Reply {
    Reply::json(200, v)
}

fn err(code: u16, msg: impl Into<String>) -> Reply {
    ApiError::new(
        code,
        if code == 404 {
            "NotFound"
        } else {
            "BadRequest"
        },
        msg,
    )
    .into()
}

/// Serve one control request.
pub async fn handle(
    cluster: Arc<Cluster>,
    api: Arc<Listener>,
    req: Request<Incoming>,
) -> Response<Body> {
    let method = req.method().as_str().to_string();
    let path = req.uri().path().trim_end_matches('/').to_string();
    let q = parse_query(req.uri().query().unwrap_or_default());
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let reply = route(&cluster, &api, &method, &path, &q, &body).await;
    plain(reply)
}

fn parse_faults(body: &Bytes) -> Result<Vec<Fault>, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
    let list = match v {
        Value::Array(a) => a,
        other => vec![other],
    };
    list.into_iter()
        .map(|f| serde_json::from_value::<Fault>(f).map_err(|e| format!("invalid fault: {e}")))
        .collect()
}

async fn route(
    cluster: &Cluster,
    api: &Arc<Listener>,
    method: &str,
    path: &str,
    q: &Query,
    body: &Bytes,
) -> Reply {
    let store = &cluster.store;
    let qs = |k: &str| q.get(k).cloned().unwrap_or_default();
    let rest = path.trim_start_matches("/_standin");
    match (method, rest) {
        ("GET", "" | "/info") => ok(json!({
            "url": cluster.url,
            "controlUrl": cluster.control_url(),
            "issuer": cluster.issuer(),
            "resourceVersion": store.current_rv().to_string(),
            "compactedResourceVersion": store.compacted_rv().to_string(),
            "down": api.is_down(),
        })),
        ("GET", "/faults") => ok(json!(cluster.faults.list())),
        ("PUT" | "POST", "/faults") => match parse_faults(body) {
            Ok(fs) => {
                if method == "PUT" {
                    cluster.faults.clear();
                }
                let ids: Vec<String> = fs.into_iter().map(|f| cluster.faults.add(f)).collect();
                ok(json!({"ids": ids}))
            }
            Err(e) => err(400, e),
        },
        ("DELETE", "/faults") => {
            cluster.faults.clear();
            ok(json!({}))
        }
        ("DELETE", p) if p.starts_with("/faults/") => {
            let id = &p["/faults/".len()..];
            if cluster.faults.remove(id) {
                ok(json!({}))
            } else {
                err(404, format!("no fault {id:?}"))
            }
        }
        ("POST", "/compact") => {
            cluster.store.compact();
            ok(json!({"compactedResourceVersion": cluster.store.compacted_rv().to_string()}))
        }
        ("POST", "/down") => {
            match q.get("ms").and_then(|m| m.parse::<u64>().ok()) {
                Some(ms) => api.down_for(Duration::from_millis(ms)),
                None => api.down(),
            }
            ok(json!({"down": true}))
        }
        ("POST", "/up") => match api.up().await {
            Ok(()) => ok(json!({"down": false})),
            Err(e) => err(500, e.to_string()),
        },
        ("GET", "/requests") => ok(json!(cluster.log.all())),
        ("DELETE", "/requests") => {
            cluster.log.clear();
            ok(json!({}))
        }
        ("GET", "/tokens") => ok(json!(cluster.signer.issued())),
        ("GET", "/jwks") => ok(cluster.signer.jwks()),
        ("GET", "/objects") => {
            let (av, kind, ns, name) = (qs("apiVersion"), qs("kind"), qs("namespace"), qs("name"));
            if name.is_empty() {
                match objects::list(store, &av, &kind, (!ns.is_empty()).then_some(ns.as_str())) {
                    Ok(items) => ok(json!({"items": items})),
                    Err(e) => err(404, e.to_string()),
                }
            } else {
                match objects::get(store, &av, &kind, &ns, &name) {
                    Some(o) => ok(o),
                    None => err(404, format!("{kind} {ns}/{name} not found")),
                }
            }
        }
        ("POST" | "PUT", "/objects") => match std::str::from_utf8(body) {
            Ok(text) => match objects::apply_yaml(store, text) {
                Ok(objs) => ok(json!({"items": objs})),
                Err(e) => err(400, e.to_string()),
            },
            Err(_) => err(400, "body must be UTF-8 YAML or JSON"),
        },
        ("DELETE", "/objects") => match objects::delete(
            store,
            &qs("apiVersion"),
            &qs("kind"),
            &qs("namespace"),
            &qs("name"),
        ) {
            Ok(()) => ok(json!({})),
            Err(e) => err(404, e.to_string()),
        },
        ("POST", "/lease-takeover") => {
            objects::take_over_lease(store, &qs("namespace"), &qs("name"), &qs("holder"));
            ok(json!({}))
        }
        ("PUT" | "POST", "/bookmark-interval") => {
            match q.get("ms").and_then(|m| m.parse::<u64>().ok()) {
                Some(ms) => {
                    cluster.set_bookmark_interval(Duration::from_millis(ms));
                    ok(json!({}))
                }
                None => err(400, "ms is required"),
            }
        }
        ("PUT" | "POST", "/resource-version") => {
            match q.get("set").and_then(|m| m.parse::<u64>().ok()) {
                Some(rv) => ok(json!({"resourceVersion": cluster.store.set_rv(rv).to_string()})),
                None => err(400, "set is required"),
            }
        }
        _ => err(404, format!("no control route {method} {path}")),
    }
}
