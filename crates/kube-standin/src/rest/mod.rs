//! Resource requests after authentication and authorization: each verb served against the
//! store. Reads answer from storage (tables for `as=Table`); watches start a stream; writes run
//! mutating admission on the decoded request, then [`stages::write`] prepares the object,
//! runs validation and validating admission on it and commits.

pub mod events;
pub mod stages;
pub mod token;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};

use crate::admission::{self, Attributes, GroupVersionKind, Operation};
use crate::authn::UserInfo;
use crate::cluster::Cluster;
use crate::error::{ApiError, ApiResult};
use crate::patch::PatchType;
use crate::reply::Reply;
use crate::request::{is_true, Query, RequestInfo};
use crate::resources::ResourceType;
use crate::selector::{FieldSelector, LabelSelector, Selectors};
use crate::store::{DeleteOpts, ListOpts, Store, WriteOpts};
use crate::watch::{self, present, WatchFaults, WatchParams};
use stages::{Notes, WriteContext};

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
    /// The user (after impersonation).
    pub user: UserInfo,
    /// Warnings (for the response) and audit annotations (for the request log) of
    /// validation and admission.
    pub notes: Notes,
}

/// Decode a request body (JSON; YAML for apply patches; protobuf for the kinds
/// [`crate::proto`] knows).
pub fn parse_body(call: &Call) -> ApiResult<Value> {
    if call.body.is_empty() {
        return Err(ApiError::bad_request("the body of the request was empty"));
    }
    let ct = call.content_type.split(';').next().unwrap_or("").trim();
    if ct == crate::proto::MEDIA_TYPE {
        return crate::proto::decode_object(&call.body);
    }
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

/// `dryRun=All`.
fn dry_run(call: &Call) -> bool {
    call.query.get("dryRun").is_some_and(|v| v == "All")
}

/// The request's create, update or patch options as admission sees them
/// (`request.options`, without `kind`; a patch's are `UpdateOptions`, or `CreateOptions` for
/// an apply that creates, as the API server converts them).
fn options(call: &Call) -> Value {
    let mut o = json!({});
    if let Some(m) = call.query.get("fieldManager") {
        o["fieldManager"] = json!(m);
    }
    if dry_run(call) {
        o["dryRun"] = json!(["All"]);
    }
    if let Some(v) = call.query.get("fieldValidation") {
        o["fieldValidation"] = json!(v);
    }
    o
}

fn write_opts(call: &Call, version: &str) -> WriteOpts {
    WriteOpts {
        dry_run: dry_run(call),
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
pub async fn serve(
    cluster: &Arc<Cluster>,
    info: &RequestInfo,
    call: &mut Call,
) -> ApiResult<Reply> {
    let rt = cluster
        .store
        .type_by_path(&info.group, &info.version, &info.resource)
        .ok_or_else(ApiError::no_route)?;
    if rt.is("events.k8s.io", "events") {
        return events::serve(cluster, info, call).await;
    }
    serve_type(cluster, rt, info, call).await
}

fn table(rt: &ResourceType, version: &str, v: &Value, call: &Call) -> Option<Value> {
    let include = call
        .query
        .get("includeObject")
        .map(String::as_str)
        .unwrap_or("Metadata");
    crate::table::table(rt, version, v, include, jiff::Timestamp::now())
}

/// Mutating admission for a request that is about to be prepared.
#[allow(clippy::too_many_arguments)]
fn mutate(
    store: &Store,
    rt: &ResourceType,
    version: &str,
    operation: Operation,
    subresource: &str,
    ns: &str,
    name: &str,
    object: Option<&Value>,
    call: &Call,
) -> ApiResult<()> {
    let options = admission::options(operation, &json!({}));
    let attrs = Attributes {
        operation,
        resource: rt,
        version,
        kind: GroupVersionKind {
            group: rt.group.clone(),
            version: version.to_string(),
            kind: rt.kind.clone(),
        },
        subresource,
        namespace: ns,
        name,
        object,
        old_object: None,
        user: &call.user,
        dry_run: dry_run(call),
        options: &options,
    };
    admission::mutate(store, &attrs)
}

async fn serve_type(
    cluster: &Arc<Cluster>,
    rt: Arc<ResourceType>,
    info: &RequestInfo,
    call: &mut Call,
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
    if rt.review {
        if info.verb != "create" || info.name.is_some() || !info.subresource.is_empty() {
            return Err(ApiError::method_not_allowed());
        }
        let body = parse_body(call)?;
        let out =
            crate::authz::review::create(cluster, &rt.group, &rt.plural, &ns, &call.user, &body)?;
        return Ok(Reply::json(201, out));
    }
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
    let store = &cluster.store;
    let present_v = |v: Value| present(&rt, version, v);
    match info.verb.as_str() {
        "get" => {
            let obj = present_v(store.get(&rt, &ns, &name)?);
            if crate::table::wants_table(&call.accept) {
                if let Some(t) = table(&rt, version, &obj, call) {
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
                if let Some(t) = table(&rt, version, &list, call) {
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
                bookmark_interval: cluster.bookmark_interval(),
                timeout,
                faults: std::mem::take(&mut call.watch_faults),
                initial_events_end: send_initial,
            };
            let rx = watch::spawn(cluster.store.clone(), params, start);
            Ok(Reply::Stream(rx))
        }
        "create" if sub == "token" => {
            let sa = store.get(&rt, &ns, &name)?;
            token::create(cluster, &rt, version, &sa, call)
        }
        "create" => {
            let body = parse_body(call)?;
            let opts = write_opts(call, version);
            let body_name = body["metadata"]["name"].as_str().unwrap_or_default();
            mutate(
                store,
                &rt,
                version,
                Operation::Create,
                "",
                &ns,
                body_name,
                Some(&body),
                call,
            )?;
            let options = options(call);
            let ctx = write_context(cluster, &call.user, version, opts.dry_run, &options);
            let out = stages::write(&ctx, &mut call.notes, || {
                store.prepare_create(&rt, &ns, body.clone(), &opts)
            })?;
            Ok(Reply::json(201, present_v(out.object)))
        }
        "update" => {
            let body = parse_body(call)?;
            let opts = write_opts(call, version);
            mutate(
                store,
                &rt,
                version,
                Operation::Update,
                sub,
                &ns,
                &name,
                Some(&body),
                call,
            )?;
            let s = (!sub.is_empty()).then_some(sub);
            let options = options(call);
            let ctx = write_context(cluster, &call.user, version, opts.dry_run, &options);
            let out = stages::write(&ctx, &mut call.notes, || {
                store.prepare_update(&rt, &ns, &name, body.clone(), s, &opts)
            })?;
            Ok(Reply::json(200, present_v(out.object)))
        }
        "patch" => {
            let ptype = PatchType::from_content_type(&call.content_type)
                .ok_or_else(|| ApiError::unsupported_media_type(&call.content_type))?;
            let body = parse_body(call)?;
            let opts = write_opts(call, version);
            mutate(
                store,
                &rt,
                version,
                Operation::Update,
                sub,
                &ns,
                &name,
                None,
                call,
            )?;
            let s = (!sub.is_empty()).then_some(sub);
            let options = options(call);
            let ctx = write_context(cluster, &call.user, version, opts.dry_run, &options);
            let out = stages::write(&ctx, &mut call.notes, || {
                store.prepare_patch(&rt, &ns, &name, ptype, &body, s, &opts)
            })?;
            let code = if out.created { 201 } else { 200 };
            Ok(Reply::json(code, present_v(out.object)))
        }
        "delete" => {
            let (opts, options) = delete_opts(call)?;
            let out = delete_one(cluster, &rt, version, &ns, &name, &opts, &options, call)?;
            if out.exists {
                return Ok(Reply::json(200, present_v(out.object)));
            }
            let mut details =
                json!({"name": name, "kind": rt.plural, "uid": out.object["metadata"]["uid"]});
            if !rt.group.is_empty() {
                details["group"] = json!(rt.group);
            }
            Ok(Reply::json(
                200,
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}),
            ))
        }
        "deletecollection" => {
            let (opts, options) = delete_opts(call)?;
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
                match delete_one(cluster, &rt, version, ons, n, &opts, &options, call) {
                    Ok(d) => items.push(present_v(d.object)),
                    // Gone meanwhile: fine. Denied (admission) or invalid: the request fails
                    // with the first such error, as the API server's DeleteCollection does.
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

/// The stages' view of a write by this request.
fn write_context<'a>(
    cluster: &'a Cluster,
    user: &'a UserInfo,
    version: &'a str,
    dry_run: bool,
    options: &'a Value,
) -> WriteContext<'a> {
    WriteContext {
        cluster,
        user,
        version,
        dry_run,
        options,
    }
}

#[allow(clippy::too_many_arguments)]
fn delete_one(
    cluster: &Cluster,
    rt: &Arc<ResourceType>,
    version: &str,
    ns: &str,
    name: &str,
    opts: &DeleteOpts,
    options: &Value,
    call: &mut Call,
) -> ApiResult<crate::store::Written> {
    let store = &cluster.store;
    mutate(
        store,
        rt,
        version,
        Operation::Delete,
        "",
        ns,
        name,
        None,
        call,
    )?;
    let ctx = write_context(cluster, &call.user, version, opts.dry_run, options);
    stages::write(&ctx, &mut call.notes, || {
        store.prepare_delete(rt, ns, name, opts)
    })
}

/// The delete's options for storage, and its `DeleteOptions` as admission sees them
/// (`request.options`, without `kind`).
fn delete_opts(call: &Call) -> ApiResult<(DeleteOpts, Value)> {
    let ct = call.content_type.split(';').next().unwrap_or("").trim();
    let body: Value = if call.body.is_empty() {
        json!({})
    } else if ct == crate::proto::MEDIA_TYPE {
        // client-go's protobuf clients send DeleteOptions in protobuf (Helm's release
        // storage does, when `helm uninstall` purges the release record).
        let mut o = crate::proto::decode_object(&call.body)?;
        if o["kind"] != "DeleteOptions" {
            return Err(ApiError::bad_request(format!(
                "error decoding DeleteOptions: the body is a {}",
                o["kind"].as_str().unwrap_or("message of no kind")
            )));
        }
        if let Some(m) = o.as_object_mut() {
            m.remove("kind");
            m.remove("apiVersion");
        }
        o
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
        || dry_run(call);
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
    let opts = DeleteOpts {
        propagation,
        uid: s(&body["preconditions"]["uid"]),
        resource_version: s(&body["preconditions"]["resourceVersion"]),
        dry_run: dry,
    };
    Ok((opts, options))
}
