//! Resource requests: parsing `/api/v1/...` and `/apis/<g>/<v>/...` paths into a
//! [`RequestInfo`] (verb, group, version, resource, subresource, namespace, name) the way the
//! API server's request-info resolver does, and serving each verb against the store.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};

use crate::checks::RequestChecks;
use crate::error::{ApiError, ApiResult};
use crate::patch::PatchType;
use crate::resources::ResourceType;
use crate::selector::{FieldSelector, LabelSelector, Selectors};
use crate::server::{Reply, Shared};
use crate::store::{DeleteOpts, ListOpts, WriteOpts};
use crate::watch::{self, present, WatchFaults, WatchParams};

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

fn is_true(q: &Query, k: &str) -> bool {
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

/// Facts of the request other than the path.
pub struct Call {
    /// Query.
    pub query: Query,
    /// Body bytes.
    pub body: Bytes,
    /// Content type.
    pub content_type: String,
    /// User agent.
    pub user_agent: String,
    /// Accept header.
    pub accept: String,
    /// Watch faults.
    pub watch_faults: WatchFaults,
    /// TokenRequest lifetime override.
    pub token_expiry: Option<i64>,
    /// Validation and admission of this request's writes.
    pub checks: Arc<RequestChecks>,
}

fn parse_body(call: &Call) -> ApiResult<Value> {
    if call.body.is_empty() {
        return Err(ApiError::bad_request("the body of the request was empty"));
    }
    let ct = call.content_type.split(';').next().unwrap_or("").trim();
    if ct.contains("yaml") {
        return serde_saphyr::from_slice::<Value>(&call.body)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")));
    }
    if !ct.is_empty() && !ct.contains("json") && ct != "*/*" {
        return Err(ApiError::unsupported_media_type(ct));
    }
    serde_json::from_slice(&call.body)
        .map_err(|e| ApiError::bad_request(format!("error decoding JSON body: {e}")))
}

fn manager(call: &Call) -> String {
    match call.query.get("fieldManager") {
        Some(m) if !m.is_empty() => m.clone(),
        _ => call
            .user_agent
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string(),
    }
}

/// The request's options as `request.options` shows them.
fn options(call: &Call) -> Value {
    let mut o = json!({});
    if let Some(m) = call.query.get("fieldManager") {
        o["fieldManager"] = json!(m);
    }
    if call.query.get("dryRun").is_some_and(|v| v == "All") {
        o["dryRun"] = json!(["All"]);
    }
    o
}

fn write_opts(call: &Call, version: &str) -> WriteOpts {
    WriteOpts {
        checks: call.checks.for_write(options(call)),
        dry_run: call.query.get("dryRun").is_some_and(|v| v == "All"),
        manager: manager(call),
        strict: call
            .query
            .get("fieldValidation")
            .is_some_and(|v| v == "Strict"),
        force: is_true(&call.query, "force"),
        version: version.to_string(),
        managed_fields: None,
    }
}

fn selectors(q: &Query, rt: &ResourceType) -> ApiResult<Selectors> {
    let label = LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or(""))
        .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?;
    let field = FieldSelector::parse(q.get("fieldSelector").map(String::as_str).unwrap_or(""), rt)
        .map_err(ApiError::bad_request)?;
    Ok(Selectors { label, field })
}

/// Serve a resource request.
pub async fn serve(shared: &Arc<Shared>, info: &RequestInfo, call: Call) -> ApiResult<Reply> {
    let rt = shared
        .store
        .type_by_path(&info.group, &info.version, &info.resource)
        .ok_or_else(ApiError::no_route)?;
    if rt.group == "events.k8s.io" && rt.plural == "events" {
        return serve_events_v1(shared, info, call).await;
    }
    serve_type(shared, rt, info, call).await
}

/// `events.k8s.io/v1` is served from the core Events, converting on the way in and out.
async fn serve_events_v1(
    shared: &Arc<Shared>,
    info: &RequestInfo,
    mut call: Call,
) -> ApiResult<Reply> {
    use crate::events::{core_field_selector, to_core, to_events_v1};
    let core = shared
        .store
        .type_by_path("", "v1", "events")
        .ok_or_else(ApiError::no_route)?;
    if let Some(fs) = call.query.get("fieldSelector").cloned() {
        let mapped = core_field_selector(&fs).map_err(ApiError::bad_request)?;
        call.query.insert("fieldSelector".into(), mapped);
    }
    let ns = info.namespace.clone().unwrap_or_default();
    let name = info.name.clone().unwrap_or_default();
    if matches!(info.verb.as_str(), "create" | "update") {
        let body = parse_body(&call)?;
        call.body = Bytes::from(to_core(&body).to_string());
        call.content_type = "application/json".into();
    }
    if info.verb == "patch" {
        let ptype = PatchType::from_content_type(&call.content_type)
            .ok_or_else(|| ApiError::unsupported_media_type(&call.content_type))?;
        let patch = parse_body(&call)?;
        let opts = write_opts(&call, "v1");
        let current = match shared.store.get(&core, &ns, &name) {
            Ok(c) => c,
            Err(e) if ptype == PatchType::Apply => {
                let _ = e;
                let mut body = to_core(&patch);
                body["metadata"]["name"] = json!(name);
                let out = shared.store.create(&core, &ns, body, &opts)?;
                return Ok(Reply::json(201, to_events_v1(&out)));
            }
            Err(e) => return Err(e),
        };
        let mut view = to_events_v1(&current);
        match ptype {
            PatchType::Merge | PatchType::Strategic => crate::patch::merge(&mut view, &patch),
            PatchType::Json => crate::patch::json_patch(&mut view, &patch)
                .map_err(|e| ApiError::new(422, "Invalid", e))?,
            PatchType::Apply => crate::patch::apply_merge(&mut view, &patch),
        }
        let cur_rv = current["metadata"]["resourceVersion"].clone();
        if !view["metadata"]["resourceVersion"].is_null()
            && view["metadata"]["resourceVersion"] != cur_rv
        {
            return Err(ApiError::conflict_stale(&info.group, &info.resource, &name));
        }
        let mut body = to_core(&view);
        body["metadata"]["resourceVersion"] = cur_rv;
        let out = shared.store.update(&core, &ns, &name, body, None, &opts)?;
        return Ok(Reply::json(200, to_events_v1(&out)));
    }
    let mut core_info = info.clone();
    core_info.group = String::new();
    core_info.version = "v1".into();
    let reply = serve_type(shared, core, &core_info, call).await?;
    let convert = |v: Value| -> Value {
        match v["kind"].as_str() {
            Some("Event") => to_events_v1(&v),
            Some("EventList") => {
                let mut l = v.clone();
                l["apiVersion"] = json!("events.k8s.io/v1");
                if let Some(items) = l["items"].as_array_mut() {
                    for i in items.iter_mut() {
                        *i = to_events_v1(i);
                    }
                }
                l
            }
            _ => v,
        }
    };
    Ok(match reply {
        Reply::Json(code, v) => Reply::Json(code, convert(v)),
        Reply::Stream(mut rx) => {
            let (tx, out) = tokio::sync::mpsc::channel::<Bytes>(64);
            tokio::spawn(async move {
                while let Some(line) = rx.recv().await {
                    let mut ev: Value = serde_json::from_slice(&line).unwrap_or(Value::Null);
                    match ev["type"].as_str() {
                        Some("ERROR") | None => {}
                        Some("BOOKMARK") => ev["object"]["apiVersion"] = json!("events.k8s.io/v1"),
                        Some(_) => ev["object"] = to_events_v1(&ev["object"]),
                    }
                    let mut s = ev.to_string();
                    s.push('\n');
                    if tx.send(Bytes::from(s)).await.is_err() {
                        return;
                    }
                }
            });
            Reply::Stream(out)
        }
        other => other,
    })
}

async fn serve_type(
    shared: &Arc<Shared>,
    rt: Arc<ResourceType>,
    info: &RequestInfo,
    call: Call,
) -> ApiResult<Reply> {
    let ns = if rt.namespaced {
        match (&info.namespace, info.verb.as_str()) {
            (Some(n), _) => n.clone(),
            (None, "list" | "watch") => String::new(),
            (None, _) => return Err(ApiError::no_route()),
        }
    } else {
        if info.namespace.is_some() && rt.plural != "namespaces" {
            return Err(ApiError::no_route());
        }
        String::new()
    };
    let sub = info.subresource.as_str();
    match sub {
        "" => {}
        "status"
            if rt.status_subresource
                && matches!(info.verb.as_str(), "get" | "update" | "patch") => {}
        "token" if rt.token_subresource && info.verb == "create" => {}
        _ => return Err(ApiError::no_route()),
    }
    let version = info.version.as_str();
    let name = info.name.clone().unwrap_or_default();
    let store = &shared.store;
    let present_v = |v: Value| present(&rt, version, v);
    match info.verb.as_str() {
        "get" => {
            let obj = present_v(store.get(&rt, &ns, &name)?);
            if crate::table::wants_table(&call.accept) {
                if let Some(t) = crate::table::table(&rt, version, &obj) {
                    return Ok(Reply::json(200, t));
                }
            }
            Ok(Reply::json(200, obj))
        }
        "list" => {
            let opts = ListOpts {
                selectors: selectors(&call.query, &rt)?,
                limit: call.query.get("limit").and_then(|l| l.parse().ok()),
                continue_token: call.query.get("continue").cloned(),
                resource_version: call.query.get("resourceVersion").cloned(),
                rv_match: call.query.get("resourceVersionMatch").cloned(),
            };
            let nsf = (!ns.is_empty()).then_some(ns.as_str());
            let mut list = store.list(&rt, nsf, &opts)?;
            list["apiVersion"] = json!(rt.api_version(version));
            if let Some(items) = list["items"].as_array_mut() {
                for i in items.iter_mut() {
                    i["apiVersion"] = json!(rt.api_version(version));
                }
            }
            if crate::table::wants_table(&call.accept) {
                if let Some(t) = crate::table::table(&rt, version, &list) {
                    return Ok(Reply::json(200, t));
                }
            }
            Ok(Reply::json(200, list))
        }
        "watch" => {
            let sel = selectors(&call.query, &rt)?;
            let send_initial = is_true(&call.query, "sendInitialEvents");
            let bookmarks = is_true(&call.query, "allowWatchBookmarks");
            if send_initial {
                if call.query.get("resourceVersionMatch").map(String::as_str)
                    != Some("NotOlderThan")
                {
                    return Err(ApiError::invalid("ListOptions", "meta.k8s.io", "", "resourceVersionMatch", "Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan"));
                }
                if !bookmarks {
                    return Err(ApiError::invalid(
                        "ListOptions",
                        "meta.k8s.io",
                        "",
                        "allowWatchBookmarks",
                        "Forbidden: sendInitialEvents requires allowWatchBookmarks=true",
                    ));
                }
            }
            let nsf = (!ns.is_empty()).then_some(ns.as_str());
            let start = store.watch_start(
                &rt,
                nsf,
                &sel,
                call.query.get("resourceVersion").map(String::as_str),
                send_initial,
            )?;
            let timeout = call
                .query
                .get("timeoutSeconds")
                .and_then(|t| t.parse::<u64>().ok())
                .filter(|t| *t > 0)
                .map(Duration::from_secs)
                .unwrap_or(Duration::from_secs(1800));
            let params = WatchParams {
                rt: rt.clone(),
                version: version.to_string(),
                namespace: nsf.map(str::to_string),
                selectors: sel,
                bookmarks,
                bookmark_interval: shared.bookmark_interval(),
                timeout,
                faults: call.watch_faults,
                initial_events_end: send_initial,
            };
            let rx = watch::spawn(shared.store.clone(), params, start);
            Ok(Reply::Stream(rx))
        }
        "create" if sub == "token" => {
            let sa = store.get(&rt, &ns, &name)?;
            let body = parse_body(&call)?;
            let issuer = shared.issuer();
            // Validating admission (crate::checks); too short a lifetime is rejected first.
            if body["spec"]["expirationSeconds"]
                .as_i64()
                .is_none_or(|s| s >= 600)
            {
                let opts = options(&call);
                store.read(|l| {
                    call.checks
                        .admit_token_request(l, &ns, &name, &body, &issuer, &opts)
                })?;
            }
            let now = jiff::Timestamp::now().as_second();
            let tr = shared
                .signer
                .token_request(&issuer, &sa, &body, call.token_expiry, now)?;
            Ok(Reply::json(201, tr))
        }
        "create" => {
            let body = parse_body(&call)?;
            let out = store.create(&rt, &ns, body, &write_opts(&call, version))?;
            Ok(Reply::json(201, present_v(out)))
        }
        "update" => {
            let body = parse_body(&call)?;
            let s = (!sub.is_empty()).then_some(sub);
            let out = store.update(&rt, &ns, &name, body, s, &write_opts(&call, version))?;
            Ok(Reply::json(200, present_v(out)))
        }
        "patch" => {
            let ptype = PatchType::from_content_type(&call.content_type)
                .ok_or_else(|| ApiError::unsupported_media_type(&call.content_type))?;
            let body = parse_body(&call)?;
            let s = (!sub.is_empty()).then_some(sub);
            let (out, created) = store.patch(
                &rt,
                &ns,
                &name,
                ptype,
                &body,
                s,
                &write_opts(&call, version),
            )?;
            Ok(Reply::json(if created { 201 } else { 200 }, present_v(out)))
        }
        "delete" => {
            let opts = delete_opts(&call)?;
            let (out, exists) = store.delete(&rt, &ns, &name, &opts)?;
            if exists {
                Ok(Reply::json(200, present_v(out)))
            } else {
                let mut details =
                    json!({"name": name, "kind": rt.plural, "uid": out["metadata"]["uid"]});
                if !rt.group.is_empty() {
                    details["group"] = json!(rt.group);
                }
                Ok(Reply::json(
                    200,
                    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}),
                ))
            }
        }
        "deletecollection" => {
            let opts = delete_opts(&call)?;
            let lopts = ListOpts {
                selectors: selectors(&call.query, &rt)?,
                ..Default::default()
            };
            let nsf = (!ns.is_empty()).then_some(ns.as_str());
            let list = store.list(&rt, nsf, &lopts)?;
            let mut items = Vec::new();
            for o in list["items"].as_array().into_iter().flatten() {
                let n = o["metadata"]["name"].as_str().unwrap_or_default();
                let ons = o["metadata"]["namespace"].as_str().unwrap_or_default();
                match store.delete(&rt, ons, n, &opts) {
                    Ok((d, _)) => items.push(present_v(d)),
                    // Gone meanwhile: fine. Denied (admission) or invalid: the request fails,
                    // as the API server's DeleteCollection does.
                    Err(e) if e.code == 404 => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(Reply::json(
                200,
                json!({"kind": format!("{}List", rt.kind), "apiVersion": rt.api_version(version), "metadata": {"resourceVersion": store.current_rv().to_string()}, "items": items}),
            ))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

fn delete_opts(call: &Call) -> ApiResult<DeleteOpts> {
    let body: Value = if call.body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(&call.body)
            .map_err(|e| ApiError::bad_request(format!("error decoding DeleteOptions: {e}")))?
    };
    let s = |v: &Value| v.as_str().map(str::to_string);
    let mut propagation =
        s(&body["propagationPolicy"]).or_else(|| call.query.get("propagationPolicy").cloned());
    if propagation.is_none() {
        match body["orphanDependents"].as_bool() {
            Some(true) => propagation = Some("Orphan".into()),
            Some(false) => propagation = Some("Background".into()),
            None => {}
        }
    }
    let dry = body["dryRun"]
        .as_array()
        .is_some_and(|a| a.iter().any(|v| v == "All"))
        || call.query.get("dryRun").is_some_and(|v| v == "All");
    let mut options = if body.is_object() {
        body.clone()
    } else {
        json!({})
    };
    if let Some(p) = &propagation {
        options["propagationPolicy"] = json!(p);
    }
    if dry {
        options["dryRun"] = json!(["All"]);
    }
    Ok(DeleteOpts {
        checks: call.checks.for_write(options),
        propagation,
        uid: s(&body["preconditions"]["uid"]),
        resource_version: s(&body["preconditions"]["resourceVersion"]),
        dry_run: dry,
    })
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
