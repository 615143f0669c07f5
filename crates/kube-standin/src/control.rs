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

use crate::error::ApiError;
use crate::faults::Fault;
use crate::handle::Handle;
use crate::server::{Body, Reply, Shared};

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
pub async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().as_str().to_string();
    let path = req.uri().path().trim_end_matches('/').to_string();
    let q = crate::rest::parse_query(req.uri().query().unwrap_or_default());
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let h = Handle::from_shared(shared.clone());
    let reply = route(&h, &shared, &method, &path, &q, &body).await;
    crate::server::reply_response(reply)
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
    h: &Handle,
    shared: &Arc<Shared>,
    method: &str,
    path: &str,
    q: &crate::rest::Query,
    body: &Bytes,
) -> Reply {
    let qs = |k: &str| q.get(k).cloned().unwrap_or_default();
    let rest = path.trim_start_matches("/_standin");
    match (method, rest) {
        ("GET", "" | "/info") => ok(json!({
            "url": shared.url,
            "controlUrl": h.control_url(),
            "issuer": shared.issuer(),
            "resourceVersion": shared.store.current_rv().to_string(),
            "compactedResourceVersion": shared.store.compacted_rv().to_string(),
            "down": shared.is_down(),
        })),
        ("GET", "/faults") => ok(json!(shared.faults.list())),
        ("PUT" | "POST", "/faults") => match parse_faults(body) {
            Ok(fs) => {
                if method == "PUT" {
                    shared.faults.clear();
                }
                let ids: Vec<String> = fs.into_iter().map(|f| shared.faults.add(f)).collect();
                ok(json!({"ids": ids}))
            }
            Err(e) => err(400, e),
        },
        ("DELETE", "/faults") => {
            shared.faults.clear();
            ok(json!({}))
        }
        ("DELETE", p) if p.starts_with("/faults/") => {
            let id = &p["/faults/".len()..];
            if shared.faults.remove(id) {
                ok(json!({}))
            } else {
                err(404, format!("no fault {id:?}"))
            }
        }
        ("POST", "/compact") => {
            shared.store.compact();
            ok(json!({"compactedResourceVersion": shared.store.compacted_rv().to_string()}))
        }
        ("POST", "/down") => {
            match q.get("ms").and_then(|m| m.parse::<u64>().ok()) {
                Some(ms) => shared.down_for(Duration::from_millis(ms)),
                None => shared.down(),
            }
            ok(json!({"down": true}))
        }
        ("POST", "/up") => match shared.up().await {
            Ok(()) => ok(json!({"down": false})),
            Err(e) => err(500, e.to_string()),
        },
        ("GET", "/requests") => ok(json!(shared.log.all())),
        ("DELETE", "/requests") => {
            shared.log.clear();
            ok(json!({}))
        }
        ("GET", "/tokens") => ok(json!(shared.signer.issued())),
        ("GET", "/jwks") => ok(shared.signer.jwks()),
        ("GET", "/objects") => {
            let (av, kind, ns, name) = (qs("apiVersion"), qs("kind"), qs("namespace"), qs("name"));
            if name.is_empty() {
                match h.try_list(&av, &kind, (!ns.is_empty()).then_some(ns.as_str())) {
                    Ok(items) => ok(json!({"items": items})),
                    Err(e) => err(404, e.to_string()),
                }
            } else {
                match h.get(&av, &kind, &ns, &name) {
                    Some(o) => ok(o),
                    None => err(404, format!("{kind} {ns}/{name} not found")),
                }
            }
        }
        ("POST" | "PUT", "/objects") => match std::str::from_utf8(body) {
            Ok(text) => match h.apply_yaml(text) {
                Ok(objs) => ok(json!({"items": objs})),
                Err(e) => err(400, e.to_string()),
            },
            Err(_) => err(400, "body must be UTF-8 YAML or JSON"),
        },
        ("DELETE", "/objects") => match h.delete(
            &qs("apiVersion"),
            &qs("kind"),
            &qs("namespace"),
            &qs("name"),
        ) {
            Ok(()) => ok(json!({})),
            Err(e) => err(404, e.to_string()),
        },
        ("POST", "/lease-takeover") => {
            crate::server::take_over_lease(shared, &qs("namespace"), &qs("name"), &qs("holder"));
            ok(json!({}))
        }
        ("PUT" | "POST", "/bookmark-interval") => {
            match q.get("ms").and_then(|m| m.parse::<u64>().ok()) {
                Some(ms) => {
                    shared.set_bookmark_interval(Duration::from_millis(ms));
                    ok(json!({}))
                }
                None => err(400, "ms is required"),
            }
        }
        ("PUT" | "POST", "/resource-version") => {
            match q.get("set").and_then(|m| m.parse::<u64>().ok()) {
                Some(rv) => ok(json!({"resourceVersion": shared.store.set_rv(rv).to_string()})),
                None => err(400, "set is required"),
            }
        }
        _ => err(404, format!("no control route {method} {path}")),
    }
}
