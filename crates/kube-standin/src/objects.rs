//! Object operations outside the API request path, by `apiVersion` and kind: what the typed
//! handle and the control API use to seed, read and delete objects, and the fault mutators
//! that act as another writer (a concurrent writer, another Lease holder).
//!
//! Writes run admission and validation as `system:admin` (like `kubectl apply` by a cluster
//! admin) but skip authentication, authorization and faults.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::authn::UserInfo;
use crate::error::ApiError;
use crate::request::RequestInfo;
use crate::resources::ResourceType;
use crate::rest::stages::{self, WriteContext};
use crate::store::{DeleteOpts, ListOpts, Store, WriteOpts};

/// Errors of the handle and of object operations.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// The API answered an error.
    #[error("{0}")]
    Api(#[from] ApiError),
    /// A document did not parse.
    #[error("invalid YAML/JSON: {0}")]
    Parse(String),
    /// No served type matches.
    #[error("no served type for apiVersion {0:?}, kind {1:?}")]
    UnknownType(String, String),
    /// A wait timed out.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// Binding or file IO.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// Parse multi-document YAML (or JSON) into objects, skipping empty documents.
pub fn parse_documents(text: &str) -> Result<Vec<Value>, HandleError> {
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(text).map_err(|e| HandleError::Parse(e.to_string()))?;
    let mut out = Vec::new();
    for v in docs {
        match v {
            Value::Null => {}
            Value::Object(ref m) if m.get("kind").and_then(Value::as_str) == Some("List") => {
                out.extend(
                    m.get("items")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default(),
                );
            }
            other => out.push(other),
        }
    }
    Ok(out)
}

fn is_events_v1(t: &ResourceType) -> bool {
    t.is("events.k8s.io", "events")
}

/// The stored type (events.k8s.io Events are stored as core Events).
pub fn resolve(
    store: &Store,
    api_version: &str,
    kind: &str,
) -> Result<Arc<ResourceType>, HandleError> {
    let reg = store.registry();
    let t = reg
        .by_api_version(api_version, kind)
        .ok_or_else(|| HandleError::UnknownType(api_version.into(), kind.into()))?;
    if is_events_v1(&t) {
        return reg
            .by_key("", "events")
            .ok_or_else(|| HandleError::UnknownType(api_version.into(), kind.into()));
    }
    Ok(t)
}

fn present(rt: &ResourceType, api_version: &str, v: Value) -> Value {
    let (group, version) = crate::resources::split_api_version(api_version);
    if group == "events.k8s.io" && rt.plural == "events" {
        return crate::events::to_events_v1(&v);
    }
    crate::watch::present(rt, version, v)
}

/// Create or replace one object (status included, written through the status subresource),
/// as `system:admin`: admission and validation run, so the write behaves like an admin's
/// `kubectl apply`.
pub fn apply(store: &Store, obj: Value) -> Result<Value, HandleError> {
    let av = obj["apiVersion"].as_str().unwrap_or_default().to_string();
    let kind = obj["kind"].as_str().unwrap_or_default().to_string();
    let rt = resolve(store, &av, &kind)?;
    let obj = if av.starts_with("events.k8s.io/") {
        crate::events::to_core(&obj)
    } else {
        obj
    };
    let ns = if rt.namespaced {
        obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_string()
    } else {
        String::new()
    };
    let version = crate::resources::split_api_version(&av).1.to_string();
    let version = if rt.serves(&version) {
        version
    } else {
        rt.storage_version().to_string()
    };
    let admin = UserInfo::admin();
    let mut warnings = Vec::new();
    let mut ctx = WriteContext {
        user: &admin,
        version: &version,
        dry_run: false,
        warnings: &mut warnings,
    };
    let out = store.put_unconditional(&rt, &ns, obj, "kube-standin", |plan| {
        stages::run(store, &mut ctx, plan)
    })?;
    Ok(present(&rt, &av, out))
}

/// Apply every document of a (multi-document) YAML or JSON text, in order.
pub fn apply_yaml(store: &Store, yaml: &str) -> Result<Vec<Value>, HandleError> {
    parse_documents(yaml)?
        .into_iter()
        .map(|d| apply(store, d))
        .collect()
}

/// One object (`ns` is `""` for cluster-scoped types); `kind` may also be the plural,
/// singular or a short name.
pub fn get(store: &Store, api_version: &str, kind: &str, ns: &str, name: &str) -> Option<Value> {
    let rt = resolve(store, api_version, kind).ok()?;
    let ns = if rt.namespaced { ns } else { "" };
    store
        .get(&rt, ns, name)
        .ok()
        .map(|v| present(&rt, api_version, v))
}

/// Objects of a type, in one namespace or all; fails for unknown types.
pub fn list(
    store: &Store,
    api_version: &str,
    kind: &str,
    ns: Option<&str>,
) -> Result<Vec<Value>, HandleError> {
    let rt = resolve(store, api_version, kind)?;
    let l = store.list(&rt, ns.filter(|n| !n.is_empty()), &ListOpts::default())?;
    Ok(l["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|v| present(&rt, api_version, v))
        .collect())
}

/// Delete an object (background propagation, finalizers honoured), as `system:admin`.
pub fn delete(
    store: &Store,
    api_version: &str,
    kind: &str,
    ns: &str,
    name: &str,
) -> Result<(), HandleError> {
    let rt = resolve(store, api_version, kind)?;
    let ns = if rt.namespaced { ns } else { "" };
    let version = crate::resources::split_api_version(api_version)
        .1
        .to_string();
    let admin = UserInfo::admin();
    let mut warnings = Vec::new();
    let attrs = crate::admission::Attributes {
        operation: crate::admission::Operation::Delete,
        resource: &rt,
        version: &version,
        kind: crate::admission::GroupVersionKind {
            group: rt.group.clone(),
            version: version.clone(),
            kind: rt.kind.clone(),
        },
        subresource: "",
        namespace: ns,
        name,
        object: None,
        old_object: None,
        user: &admin,
        dry_run: false,
    };
    crate::admission::mutate(store, &attrs)?;
    let mut ctx = WriteContext {
        user: &admin,
        version: &version,
        dry_run: false,
        warnings: &mut warnings,
    };
    let opts = DeleteOpts::default();
    store.write(
        false,
        || store.prepare_delete(&rt, ns, name, &opts),
        |plan| stages::run(store, &mut ctx, plan),
    )?;
    Ok(())
}

/// Another writer bumps the object's resourceVersion (an annotation write), for the
/// `concurrentWriter` fault.
pub fn concurrent_write(store: &Store, info: &RequestInfo, ns: &str, name: &str) {
    let Some(rt) = store.type_by_path(&info.group, &info.version, &info.resource) else {
        return;
    };
    let ns = if rt.namespaced { ns } else { "" };
    let Ok(mut obj) = store.get(&rt, ns, name) else {
        return;
    };
    let n = obj["metadata"]["annotations"]["kube-standin/concurrent-writer"]
        .as_str()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0)
        + 1;
    obj["metadata"]["annotations"]["kube-standin/concurrent-writer"] = json!(n.to_string());
    let opts = WriteOpts {
        manager: "kube-standin-concurrent-writer".into(),
        ..Default::default()
    };
    let _ = store.update(&rt, ns, name, obj, None, &opts);
}

/// Another identity takes the Lease.
pub fn take_over_lease(store: &Store, ns: &str, name: &str, holder: &str) {
    let Some(rt) = store.type_by_path("coordination.k8s.io", "v1", "leases") else {
        return;
    };
    let Ok(mut obj) = store.get(&rt, ns, name) else {
        return;
    };
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string();
    let transitions = obj["spec"]["leaseTransitions"].as_i64().unwrap_or(0);
    if obj["spec"]["holderIdentity"] != json!(holder) {
        obj["spec"]["leaseTransitions"] = json!(transitions + 1);
    }
    obj["spec"]["holderIdentity"] = json!(holder);
    obj["spec"]["acquireTime"] = json!(now);
    obj["spec"]["renewTime"] = json!(now);
    let opts = WriteOpts {
        manager: holder.to_string(),
        ..Default::default()
    };
    let _ = store.update(&rt, ns, name, obj, None, &opts);
}
