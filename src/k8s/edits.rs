//! The small writes of a pass besides the pull Secret and the status: the binding's
//! finalizers, a ServiceAccount's `imagePullSecrets`, deleting a Secret. Each goes through the
//! leader-gated writer and puts the API server's answer into the caches.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{DeleteParams, Preconditions};
use kube::ResourceExt;
use serde_json::json;

use super::binding::BindingResource;
use super::context::Context;
use super::error::ReconcileError;

/// Set the binding's finalizers; returns the binding as written (also kept in the caches).
pub(super) async fn set_finalizers<K: BindingResource>(
    ctx: &Context,
    b: &K,
    finalizers: Vec<String>,
    op: &'static str,
) -> Result<Arc<K>, ReconcileError> {
    let _flight = ctx
        .caches
        .bindings
        .begin_write::<K>(&b.namespace().unwrap_or_default(), &b.name_any());
    let patch = json!({"metadata": {
        "resourceVersion": b.resource_version(),
        "finalizers": finalizers,
    }});
    let mut written: K = ctx
        .writer
        .patch::<K>(
            op,
            &b.namespace().unwrap_or_default(),
            &b.name_any(),
            &patch,
        )
        .await?;
    super::cache::trim_binding(&mut written);
    Ok(ctx.caches.bindings.written(written))
}

/// Set a ServiceAccount's `imagePullSecrets` to `list` (already in its final order), guarded by
/// the cached resourceVersion. `false`: the ServiceAccount is not in the cache (nothing sent).
pub(super) async fn set_pull_secrets(
    ctx: &Context,
    ns: &str,
    name: &str,
    list: &[String],
) -> Result<bool, ReconcileError> {
    let Some(current) = ctx.caches.service_accounts.get(ns, name) else {
        return Ok(false);
    };
    let _flight = ctx.caches.service_accounts.begin_write(ns, name);
    let refs: Vec<serde_json::Value> = list.iter().map(|n| json!({"name": n})).collect();
    let patch = json!({
        "metadata": {"resourceVersion": current.resource_version()},
        "imagePullSecrets": refs,
    });
    let mut written: ServiceAccount = ctx
        .writer
        .patch("update service account", ns, name, &patch)
        .await?;
    super::cache::trim_service_account(&mut written);
    ctx.caches.service_accounts.written(written);
    Ok(true)
}

pub(super) async fn delete_secret(
    ctx: &Context,
    ns: &str,
    name: &str,
) -> Result<(), ReconcileError> {
    let uid = ctx.caches.secrets.get(ns, name).and_then(|s| s.uid.clone());
    let dp = DeleteParams {
        preconditions: uid.map(|uid| Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..Default::default()
    };
    ctx.writer
        .delete::<Secret>("delete secret", ns, name, &dp)
        .await?;
    ctx.caches.secrets.deleted(ns, name);
    Ok(())
}
