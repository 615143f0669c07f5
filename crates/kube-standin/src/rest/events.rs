//! `events.k8s.io/v1` is served from the core Events, converting on the way in and out, as in
//! a cluster where both API versions serve the same stored objects.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{json, Value};

use crate::cluster::Cluster;
use crate::error::{ApiError, ApiResult};
use crate::events::{core_field_selector, to_core, to_events_v1};
use crate::patch::PatchType;
use crate::reply::Reply;
use crate::request::RequestInfo;

use super::stages::{self, WriteContext};
use super::{parse_body, serve_type, write_opts, Call};

/// Serve an `events.k8s.io/v1` request.
pub async fn serve(
    cluster: &Arc<Cluster>,
    info: &RequestInfo,
    call: &mut Call,
) -> ApiResult<Reply> {
    let core = cluster
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
        let body = parse_body(call)?;
        call.body = Bytes::from(to_core(&body).to_string());
        call.content_type = "application/json".into();
    }
    if info.verb == "patch" {
        let ptype = PatchType::from_content_type(&call.content_type)
            .ok_or_else(|| ApiError::unsupported_media_type(&call.content_type))?;
        let patch = parse_body(call)?;
        let opts = write_opts(call, "v1");
        let store = &cluster.store;
        let mut ctx = WriteContext {
            user: &call.user,
            version: "v1",
            dry_run: opts.dry_run,
            warnings: &mut call.warnings,
        };
        let prepare = || {
            let current = match store.get(&core, &ns, &name) {
                Ok(c) => c,
                Err(_) if ptype == PatchType::Apply => {
                    let mut body = to_core(&patch);
                    body["metadata"]["name"] = json!(name);
                    return store.prepare_create(&core, &ns, body, &opts);
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
            store.prepare_update(&core, &ns, &name, body, None, &opts)
        };
        let out = store.write(opts.dry_run, prepare, |plan| {
            stages::run(store, &mut ctx, plan)
        })?;
        let code = if out.created { 201 } else { 200 };
        return Ok(Reply::json(code, to_events_v1(&out.object)));
    }
    let mut core_info = info.clone();
    core_info.group = String::new();
    core_info.version = "v1".into();
    let reply = serve_type(cluster, core, &core_info, call).await?;
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
